//! Notifications as the worker hands them on: the store's model
//! (`crate::store::Notification`), the one shape nodes and worker share, as
//! the JSON a sink sends.
//!
//! The worker only inserts (daily summaries) and reads (to deliver); what
//! else a node does with a notification is not its business.

use serde_json::{json, Value};

use crate::clock::rfc3339;

pub use crate::store::Notification;

impl Notification {
    /// The JSON a sink hands on: ids as hex, times as RFC 3339, `data` as
    /// relaxed extended JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_hex(),
            "user_id": self.user_id.to_hex(),
            "type": self.kind,
            "title": self.title,
            "message": self.message,
            "data": bson::Bson::Document(self.data.clone()).into_relaxed_extjson(),
            "created_at": rfc3339(&self.created_at),
            "read": self.read,
        })
    }
}

//! Notifications in the `notifications` collection, as the worker reads and
//! writes them: the store's model (`crate::store::Notification`), the one
//! shape nodes and worker share.
//!
//! The worker only inserts (daily summaries) and reads (to deliver); what
//! else a node does with a notification is not its business.

use bson::doc;
use bson::oid::ObjectId;
use mongodb::{Collection, Database};
use serde_json::{json, Value};

use super::JobError;
use crate::store::model::rfc3339;

pub const COLLECTION: &str = "notifications";

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

fn collection(db: &Database) -> Collection<Notification> {
    db.collection(COLLECTION)
}

pub async fn load(db: &Database, id: ObjectId) -> Result<Option<Notification>, JobError> {
    Ok(collection(db).find_one(doc! {"_id": id}).await?)
}

/// Inserts a notification; one with the same id already there counts as
/// inserted (a re-run of the job that made it).
pub async fn insert(db: &Database, n: &Notification) -> Result<(), JobError> {
    match collection(db).insert_one(n).await {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

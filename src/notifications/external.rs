//! The external queue: notifications for users with no connection, waiting
//! for whatever delivers push or email (the `confab worker` consumes it).
//!
//! The contract: a notification that needs external delivery is stored with
//! `external: "pending"`, then its id (24 hex digits) is pushed with `LPUSH`
//! onto the Redis list `Keyspace::external_notifications`; a consumer takes the oldest with
//! `RPOP`/`BRPOP`, loads the notification by id (`Store::notification`) and
//! records the outcome with `Store::set_notification_delivery`. If the push
//! fails, the notification stays `pending` in MongoDB for a sweep to find.

use bson::oid::ObjectId;
use fred::prelude::*;

use super::count;
use super::Notifier;
use crate::store::Notification;

impl Notifier {
    /// Queues one notification for external delivery.
    pub async fn enqueue_external(&self, notification: &Notification) -> bool {
        self.enqueue(&[notification.id]).await
    }

    /// Queues notifications for external delivery.
    pub async fn enqueue_external_all(&self, notifications: &[Notification]) -> bool {
        let ids: Vec<ObjectId> = notifications.iter().map(|n| n.id).collect();
        self.enqueue(&ids).await
    }

    /// Pushes ids onto the external list in one command. If Redis refuses,
    /// the notifications stay `pending` in MongoDB for a sweep to find.
    pub(super) async fn enqueue(&self, ids: &[ObjectId]) -> bool {
        if ids.is_empty() {
            return true;
        }
        let hex: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();
        let pushed: Result<i64, _> = match self.redis() {
            Some(redis) => redis.lpush(self.keys.external_notifications(), hex).await,
            None => Err(fred::error::Error::new(fred::error::ErrorKind::IO, "not connected")),
        };
        match pushed {
            Ok(_) => {
                count("external", ids.len());
                true
            }
            Err(e) => {
                metrics::counter!("confab_notifications_external_failures_total").increment(ids.len() as u64);
                tracing::warn!(error = %e, "notifications not queued for external delivery; they stay pending");
                false
            }
        }
    }
}

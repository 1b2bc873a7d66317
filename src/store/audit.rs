//! The audit log: appended to, read newest first.

use bson::{doc, oid::ObjectId, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;

use super::mongo::timed;
use super::{AuditEntry, Store, StoreResult};

/// Which entries to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub actor_id: Option<ObjectId>,
    /// Only entries at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only entries older than this one (the previous page's last): its
    /// time and id.
    pub before: Option<(DateTime<Utc>, ObjectId)>,
    pub limit: i64,
}

impl Store {
    pub async fn insert_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        timed("insert_audit", self.audit.insert_one(entry)).await.map(|_| ())
    }

    /// A page of entries, newest first: by time (milliseconds), then id.
    pub async fn audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let mut filter = Document::new();
        if let Some(action) = &q.action {
            filter.insert("action", action);
        }
        if let Some(actor) = q.actor_id {
            filter.insert("actor_id", actor);
        }
        if let Some(since) = q.since {
            filter.insert("at", doc! {"$gte": bson::DateTime::from_chrono(since)});
        }
        if let Some((at, id)) = q.before {
            let at = bson::DateTime::from_chrono(at);
            filter.insert("$or", vec![doc! {"at": {"$lt": at}}, doc! {"at": at, "_id": {"$lt": id}}]);
        }
        timed("find_audit", async {
            self.audit.find(filter).sort(doc! {"at": -1, "_id": -1}).limit(q.limit).await?.try_collect().await
        })
        .await
    }
}

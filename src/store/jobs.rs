//! What the worker's batch jobs read and write: the archive's moves, and
//! the daily summaries' counts and markers. Archive moves handle messages
//! as whole documents, so that a field this build does not know survives
//! the move.

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use mongodb::error::ErrorKind;
use mongodb::Collection;

use super::mongo::{index, map_err, timed};
use super::{Member, Room, Store, StoreError, StoreResult};

/// Where the summaries job keeps each user's `last_summary_at`.
const SUMMARY_STATE: &str = "summary_state";

impl Store {
    /// Creates the indexes the archive job and archive reads use.
    pub async fn ensure_job_indexes(&self) -> StoreResult<()> {
        let archive = index(doc! {"room_id": 1, "seq": 1}, "archive_room_seq_unique", true);
        timed("create_index", self.archive.create_index(archive)).await?;
        let by_time = index(doc! {"timestamp": 1}, "messages_timestamp", false);
        timed("create_index", self.messages.create_index(by_time)).await?;
        Ok(())
    }

    fn raw_messages(&self) -> Collection<Document> {
        self.messages.clone_with_type()
    }

    fn raw_archive(&self) -> Collection<Document> {
        self.archive.clone_with_type()
    }

    /// The oldest-id `batch` of messages stored before `cutoff`, as stored.
    pub async fn messages_before(&self, cutoff: DateTime<Utc>, batch: i64) -> StoreResult<Vec<Document>> {
        let filter = doc! {"timestamp": {"$lt": bson::DateTime::from_chrono(cutoff)}};
        timed("find_messages", async {
            self.raw_messages().find(filter).sort(doc! {"_id": 1}).limit(batch).await?.try_collect().await
        })
        .await
    }

    /// Copies messages into the archive. Those already there (a move that
    /// stopped before its delete) are replaced with the given copy, which
    /// is the newer one.
    pub async fn copy_to_archive(&self, docs: &[Document]) -> StoreResult<()> {
        let archive = self.raw_archive();
        let duplicates: Vec<usize> = match archive.insert_many(docs).ordered(false).await {
            Ok(_) => return Ok(()),
            Err(e) => match &*e.kind {
                ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
                    let errors = m.write_errors.as_deref().unwrap_or_default();
                    if let Some(other) = errors.iter().find(|w| w.code != 11000) {
                        return Err(StoreError::Other(format!("archiving: {}", other.message).into()));
                    }
                    errors.iter().map(|w| w.index).collect()
                }
                _ => return Err(map_err(e)),
            },
        };
        for i in duplicates {
            let Some(doc) = docs.get(i) else { continue };
            let Some(id) = doc.get("_id") else { continue };
            timed("replace_archived", archive.replace_one(doc! {"_id": id.clone()}, doc).upsert(true)).await?;
        }
        Ok(())
    }

    /// Deletes the live copies of messages the archive now holds.
    pub async fn delete_archived(&self, docs: &[Document]) -> StoreResult<()> {
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        timed("delete_messages", self.raw_messages().delete_many(doc! {"_id": {"$in": ids}})).await.map(|_| ())
    }

    /// Every membership, a user's together (by user, then id).
    pub async fn memberships_by_user(&self) -> StoreResult<BoxStream<'static, StoreResult<Member>>> {
        let cursor = timed("find_members", self.members.find(doc! {}).sort(doc! {"user_id": 1, "_id": 1})).await?;
        Ok(cursor.map_err(map_err).boxed())
    }

    /// When the user's last daily summary was made.
    pub async fn last_summary_at(&self, user: ObjectId) -> StoreResult<Option<DateTime<Utc>>> {
        let state: Collection<Document> = self.db.collection(SUMMARY_STATE);
        let doc = timed("find_summary_state", state.find_one(doc! {"_id": user})).await?;
        Ok(doc.and_then(|d| d.get_datetime("last_summary_at").ok().map(|t| t.to_chrono())))
    }

    pub async fn set_last_summary_at(&self, user: ObjectId, at: DateTime<Utc>) -> StoreResult<()> {
        let state: Collection<Document> = self.db.collection(SUMMARY_STATE);
        let set = doc! {"$set": {"last_summary_at": bson::DateTime::from_chrono(at)}};
        timed("update_summary_state", state.update_one(doc! {"_id": user}, set).upsert(true)).await.map(|_| ())
    }

    /// For one membership: others' messages stored in (`from`, `until`], and
    /// others' messages past the member's read cursor up to `until` (at most
    /// `cap`); tombstones count in neither.
    pub async fn summary_counts(
        &self,
        m: &Member,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        cap: u64,
    ) -> StoreResult<(u64, u64)> {
        let until = bson::DateTime::from_chrono(until);
        let new = doc! {
            "room_id": m.room_id,
            "timestamp": {"$gt": bson::DateTime::from_chrono(from), "$lte": until},
            "sender_id": {"$ne": m.user_id},
            "deleted": {"$ne": true},
        };
        let unread = doc! {
            "room_id": m.room_id,
            "seq": {"$gt": m.read_seq},
            "timestamp": {"$lte": until},
            "sender_id": {"$ne": m.user_id},
            "deleted": {"$ne": true},
        };
        let messages = self.raw_messages();
        let new = timed("count_messages", messages.count_documents(new)).await?;
        let unread = timed("count_messages", messages.count_documents(unread).limit(cap)).await?;
        Ok((new, unread))
    }

    /// Rooms by id; unknown ids are left out.
    pub async fn rooms_by_id(&self, ids: &[ObjectId]) -> StoreResult<Vec<Room>> {
        timed("find_rooms", async { self.rooms.find(doc! {"_id": {"$in": ids}}).await?.try_collect().await }).await
    }
}

//! The archive job: messages older than N days move from `messages` to
//! `messages_archive`, in batches ordered by `_id`.
//!
//! Without transactions (FerretDB has none) a move is two steps, and the
//! order makes a crash harmless: copy a batch into the archive, then delete
//! it from `messages`. A crash after the copy leaves the batch in both; the
//! next run copies it again, finds it there (duplicate `_id`), refreshes
//! the archive copy with the live one in case it was edited meanwhile, and
//! deletes it. Nothing is lost, nothing is doubled, however often it runs.
//!
//! "Older than N days" is strict: a message stored exactly N days before
//! the run stays; one a millisecond older moves.

use std::collections::HashSet;

use bson::oid::ObjectId;
use bson::{doc, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::error::ErrorKind;
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};

use super::JobError;

pub const MESSAGES: &str = "messages";
pub const ARCHIVE: &str = "messages_archive";

/// Creates the indexes the job and archive reads use; safe on every start.
/// One index per call: FerretDB 1.x fails a multi-index createIndexes when
/// some exist already.
pub async fn ensure_indexes(db: &Database) -> Result<(), JobError> {
    let index = |keys: Document, name: &str, unique: bool| {
        IndexModel::builder()
            .keys(keys)
            .options(IndexOptions::builder().name(name.to_string()).unique(unique).build())
            .build()
    };
    let archive: Collection<Document> = db.collection(ARCHIVE);
    archive.create_index(index(doc! {"room_id": 1, "seq": 1}, "archive_room_seq_unique", true)).await?;
    let messages: Collection<Document> = db.collection(MESSAGES);
    messages.create_index(index(doc! {"timestamp": 1}, "messages_timestamp", false)).await?;
    Ok(())
}

/// The instant before which messages are archived.
pub fn cutoff(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    now - chrono::Duration::days(i64::from(days))
}

/// What a run moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moved {
    pub messages: u64,
    /// The rooms they came from (whose cached history pages are now stale).
    pub rooms: HashSet<ObjectId>,
}

/// Moves every message older than `days` at `now` into the archive, `batch`
/// at a time.
pub async fn run(db: &Database, now: DateTime<Utc>, days: u32, batch: i64) -> Result<Moved, JobError> {
    let mut moved = Moved::default();
    loop {
        let docs = next_batch(db, now, days, batch).await?;
        if docs.is_empty() {
            return Ok(moved);
        }
        moved.rooms.extend(docs.iter().filter_map(|d| d.get_object_id("room_id").ok()));
        copy(db, &docs).await?;
        let ids: Vec<Bson> = docs.iter().filter_map(|d| d.get("_id").cloned()).collect();
        let messages: Collection<Document> = db.collection(MESSAGES);
        messages.delete_many(doc! {"_id": {"$in": ids}}).await?;
        moved.messages += docs.len() as u64;
    }
}

/// The oldest-id batch of messages due for the archive.
pub async fn next_batch(db: &Database, now: DateTime<Utc>, days: u32, batch: i64) -> Result<Vec<Document>, JobError> {
    let messages: Collection<Document> = db.collection(MESSAGES);
    let filter = doc! {"timestamp": {"$lt": bson::DateTime::from_chrono(cutoff(now, days))}};
    Ok(messages.find(filter).sort(doc! {"_id": 1}).limit(batch).await?.try_collect().await?)
}

/// The first step alone: copies messages into the archive. Those already
/// there (a run that stopped before its delete) are replaced with the
/// given copy, which is the newer one.
pub async fn copy(db: &Database, docs: &[Document]) -> Result<(), JobError> {
    let archive: Collection<Document> = db.collection(ARCHIVE);
    let duplicates: Vec<usize> = match archive.insert_many(docs).ordered(false).await {
        Ok(_) => return Ok(()),
        Err(e) => match &*e.kind {
            ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
                let errors = m.write_errors.as_deref().unwrap_or_default();
                if let Some(other) = errors.iter().find(|w| w.code != 11000) {
                    return Err(JobError(format!("archiving: {}", other.message)));
                }
                errors.iter().map(|w| w.index).collect()
            }
            _ => return Err(e.into()),
        },
    };
    for i in duplicates {
        let Some(doc) = docs.get(i) else { continue };
        let Some(id) = doc.get("_id") else { continue };
        archive.replace_one(doc! {"_id": id.clone()}, doc).upsert(true).await?;
    }
    Ok(())
}

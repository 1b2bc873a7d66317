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
use bson::Document;
use chrono::{DateTime, Utc};

use super::JobError;
use crate::store::Store;

/// Creates the indexes the job and archive reads use; safe on every start.
pub async fn ensure_indexes(store: &Store) -> Result<(), JobError> {
    Ok(store.ensure_job_indexes().await?)
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
pub async fn run(store: &Store, now: DateTime<Utc>, days: u32, batch: i64) -> Result<Moved, JobError> {
    let mut moved = Moved::default();
    loop {
        let docs = next_batch(store, now, days, batch).await?;
        if docs.is_empty() {
            return Ok(moved);
        }
        moved.rooms.extend(docs.iter().filter_map(|d| d.get_object_id("room_id").ok()));
        copy(store, &docs).await?;
        store.delete_archived(&docs).await?;
        moved.messages += docs.len() as u64;
    }
}

/// The oldest-id batch of messages due for the archive.
pub async fn next_batch(store: &Store, now: DateTime<Utc>, days: u32, batch: i64) -> Result<Vec<Document>, JobError> {
    Ok(store.messages_before(cutoff(now, days), batch).await?)
}

/// The first step alone: copies messages into the archive. Those already
/// there (a run that stopped before its delete) are replaced with the
/// given copy, which is the newer one.
pub async fn copy(store: &Store, docs: &[Document]) -> Result<(), JobError> {
    Ok(store.copy_to_archive(docs).await?)
}

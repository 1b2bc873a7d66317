//! The intake: notification ids that nodes push onto `<prefix>:notify:external`
//! become delivery jobs.
//!
//! An id is moved atomically (`BLMOVE`) onto `<prefix>:notify:external:moving`,
//! queued for delivery, then removed from there. A worker that dies in
//! between leaves the id on the moving list, where any worker's housekeeping
//! finds it and queues it again; the delivery queue's idempotency key drops
//! the second push when the first one did land. So an id is never lost and
//! never delivered as two chains.

use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use tokio_util::sync::CancellationToken;

use super::queue::Queues;
use super::runner::Shared;
use super::JobError;
use crate::backend::redis::RedisConfig;
use crate::keyspace::Keyspace;

/// Longest a `BLMOVE` waits before looking at `stop` again, in seconds.
const BLOCK_SECS: f64 = 1.0;

/// Moves ids until `stop`. Blocking commands hold their connection, so the
/// intake has a Redis client of its own.
pub async fn run(shared: Arc<Shared>, redis: RedisConfig, stop: CancellationToken) {
    let timeout = Duration::from_secs_f64(BLOCK_SECS) + Duration::from_secs(5);
    let redis = match redis.connected(timeout).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the notification intake cannot reach Redis; it is not running");
            return;
        }
    };
    let keys = &shared.keys;
    while !stop.is_cancelled() {
        let moved = tokio::select! {
            _ = stop.cancelled() => break,
            r = take(&redis, keys) => r,
        };
        match moved {
            Ok(Some(id)) => {
                if let Err(e) = queue_one(&redis, &shared.queues, keys, &id).await {
                    tracing::warn!(notification = %id, error = %e, "queueing a notification failed; housekeeping retries it");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the notification list failed");
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    let _ = redis.quit().await;
}

/// Moves the oldest id from the external list onto the moving list, waiting
/// up to [`BLOCK_SECS`] for one; `None` when none came.
///
/// Sent as a plain command: fred's `blmove` turns the empty answer of a
/// block that ran out into a timeout error, which would make an idle
/// worker log a failure every time around.
pub async fn take(redis: &Client, keys: &Keyspace) -> Result<Option<String>, fred::error::Error> {
    let command = CustomCommand::new_static("BLMOVE", ClusterHash::FirstKey, true);
    let args: Vec<Value> = vec![
        keys.external_notifications().into(),
        keys.external_notifications_moving().into(),
        "RIGHT".into(),
        "LEFT".into(),
        BLOCK_SECS.into(),
    ];
    redis.custom(command, args).await
}

/// Queues every id left on the moving list; returns how many.
pub async fn recover(redis: &Client, queues: &Queues, keys: &Keyspace) -> Result<usize, JobError> {
    let ids: Vec<String> = redis.lrange(keys.external_notifications_moving(), 0, -1).await?;
    for id in &ids {
        queue_one(redis, queues, keys, id).await?;
    }
    if !ids.is_empty() {
        tracing::info!(count = ids.len(), "queued notification ids a stopped worker had taken");
    }
    Ok(ids.len())
}

async fn queue_one(redis: &Client, queues: &Queues, keys: &Keyspace, id: &str) -> Result<(), JobError> {
    match ObjectId::parse_str(id.trim()) {
        Ok(oid) => super::enqueue_delivery(queues, oid).await?,
        Err(_) => tracing::warn!(value = %id, "not a notification id on the notification list; dropped"),
    }
    let _: i64 = redis.lrem(keys.external_notifications_moving(), 1, id).await?;
    Ok(())
}

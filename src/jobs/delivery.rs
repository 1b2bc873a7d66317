//! Delivering one notification to the sink, with retries.
//!
//! Each attempt is its own queued job carrying its attempt number, so a
//! worker killed mid-delivery loses nothing: the job goes back on the queue
//! with the same number. A failed attempt queues the next one after an
//! exponential backoff (`retry_base × 2^(attempt-1)`, capped); the last one
//! moves the notification to the dead-letter list with the error, where
//! `confab jobs dead` shows it and `confab jobs retry-dead` queues it again
//! as a new round of attempts.
//!
//! Every push carries an idempotency key `d:<notification>:<round>:<attempt>`,
//! so repeating a step after a crash (the intake moving an id twice, an
//! attempt re-run after its worker died) never doubles a delivery chain.
//! A sink may still see a notification twice when a worker dies after the
//! sink accepted it and before the job was acknowledged: receivers dedupe by
//! notification id (`X-Confab-Notification-Id`).

use std::time::{Duration, Instant, SystemTime};

use bson::oid::ObjectId;
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use super::queue::Queues;
use super::runner::Shared;
use super::status;
use super::JobError;
use crate::keyspace::Keyspace;

/// One delivery attempt of one notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The notification's id, hex.
    pub notification_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// 0 at first; each `retry-dead` starts a new round.
    #[serde(default)]
    pub round: u32,
}

impl Delivery {
    fn key(&self) -> String {
        format!("d:{}:{}:{}", self.notification_id, self.round, self.attempt)
    }
}

/// Retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct RetryPolicy {
    /// Attempts at delivering a notification before it is dead-lettered.
    #[arg(long = "delivery-max-attempts", env = "CONFAB_DELIVERY_MAX_ATTEMPTS", default_value = "8", value_parser = crate::config::count32(1, 100))]
    pub max_attempts: u32,
    /// Wait after the first failed attempt, in milliseconds; doubles each time.
    #[arg(id = "retry_base", long = "retry-base-ms", env = "CONFAB_RETRY_BASE_MS", default_value = "1000", value_parser = crate::config::millis(1, 3_600_000))]
    pub base: Duration,
    /// Longest wait between attempts, in milliseconds (at least the base).
    #[arg(id = "retry_max", long = "retry-max-ms", env = "CONFAB_RETRY_MAX_MS", default_value = "300000", value_parser = crate::config::millis(1, 86_400_000))]
    pub cap: Duration,
}

impl RetryPolicy {
    /// How long to wait after failed attempt `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Queues the first attempt at delivering a notification. Safe to call more
/// than once for the same id: later calls within a week are no-ops.
pub async fn enqueue_delivery(queues: &Queues, notification_id: ObjectId) -> Result<(), JobError> {
    let job = Delivery { notification_id: notification_id.to_hex(), attempt: 1, round: 0 };
    queues.push_delivery(job.clone(), None, &job.key()).await
}

/// A delivery that used up its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// This entry's own id, for `retry-dead --id`.
    pub id: String,
    pub notification_id: String,
    pub attempts: u32,
    pub round: u32,
    pub error: String,
    pub failed_at: String,
}

/// Runs one attempt. An `Err` means the worker could not even try (MongoDB or
/// Redis trouble): apalis puts the job back and it is tried again without
/// counting as an attempt.
pub async fn attempt(shared: &Shared, job: Delivery) -> Result<(), JobError> {
    let started = Instant::now();
    let Ok(id) = ObjectId::parse_str(&job.notification_id) else {
        let error = format!("`{}` is not a notification id", job.notification_id);
        dead_letter(shared, &job, &error).await?;
        return Ok(());
    };
    let Some(n) = shared.store.notification(id).await? else {
        tracing::warn!(notification = %id, "notification to deliver no longer exists; skipped");
        return Ok(());
    };
    let outcome = shared.sink.deliver(&n).await;
    let elapsed = started.elapsed();
    match &outcome {
        Ok(()) => {
            tracing::debug!(notification = %id, attempt = job.attempt, "delivered");
        }
        Err(e) if job.attempt >= shared.retry.max_attempts => {
            tracing::warn!(notification = %id, attempt = job.attempt, error = %e, "delivery failed for the last time");
            dead_letter(shared, &job, &e.to_string()).await?;
        }
        Err(e) => {
            let wait = shared.retry.backoff(job.attempt);
            tracing::info!(notification = %id, attempt = job.attempt, error = %e, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
            let next = Delivery { attempt: job.attempt + 1, ..job.clone() };
            shared.queues.push_delivery(next.clone(), Some(SystemTime::now() + wait), &next.key()).await?;
        }
    }
    let failure = outcome.as_ref().err().map(|e| e.to_string());
    status::record_delivery(&shared.redis, &shared.keys, elapsed, failure.as_deref()).await;
    Ok(())
}

async fn dead_letter(shared: &Shared, job: &Delivery, error: &str) -> Result<(), JobError> {
    let entry = DeadLetter {
        id: format!("{:016x}", rand::random::<u64>()),
        notification_id: job.notification_id.clone(),
        attempts: job.attempt,
        round: job.round,
        error: error.to_string(),
        failed_at: crate::clock::rfc3339(&chrono::Utc::now()),
    };
    let text = serde_json::to_string(&entry).map_err(|e| JobError::step("encoding a dead letter", e))?;
    let size: i64 = shared.redis.lpush(shared.keys.dead_letters(), text).await?;
    metrics::gauge!("confab_deliveries_dead_letter").set(size as f64);
    metrics::counter!("confab_deliveries_dead_lettered_total").increment(1);
    Ok(())
}

/// The dead-letter list, newest first.
pub async fn dead_letters(redis: &Client, keys: &Keyspace) -> Result<Vec<DeadLetter>, JobError> {
    let raw: Vec<String> = redis.lrange(keys.dead_letters(), 0, -1).await?;
    Ok(raw.iter().filter_map(|r| serde_json::from_str(r).ok()).collect())
}

/// Queues dead deliveries again, all or the one entry with id `only`, each
/// as a new round starting at attempt 1. Returns how many were queued.
pub async fn retry_dead(
    redis: &Client,
    queues: &Queues,
    keys: &Keyspace,
    only: Option<&str>,
) -> Result<usize, JobError> {
    let raw: Vec<String> = redis.lrange(keys.dead_letters(), 0, -1).await?;
    let mut queued = 0;
    for text in raw {
        let Ok(entry) = serde_json::from_str::<DeadLetter>(&text) else { continue };
        if only.is_some_and(|id| id != entry.id) {
            continue;
        }
        let job = Delivery { notification_id: entry.notification_id.clone(), attempt: 1, round: entry.round + 1 };
        // Queue first, then remove: a crash in between re-queues the same
        // round next time, which the idempotency key drops.
        queues.push_delivery(job.clone(), None, &job.key()).await?;
        let _: i64 = redis.lrem(keys.dead_letters(), 1, text).await?;
        queued += 1;
    }
    let size: i64 = redis.llen(keys.dead_letters()).await?;
    metrics::gauge!("confab_deliveries_dead_letter").set(size as f64);
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy { max_attempts: 8, base: Duration::from_secs(1), cap: Duration::from_secs(30) };
        let waits: Vec<u64> = (1..=8).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(p.backoff(200), Duration::from_secs(30), "no overflow");
    }

    #[test]
    fn keys_name_the_round_and_attempt() {
        let d = Delivery { notification_id: "abc".into(), attempt: 3, round: 1 };
        assert_eq!(d.key(), "d:abc:1:3");
        let old: Delivery = serde_json::from_str(r#"{"notification_id":"abc","attempt":1}"#).unwrap();
        assert_eq!(old.round, 0);
    }
}

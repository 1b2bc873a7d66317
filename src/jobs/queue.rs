//! The two durable queues, on apalis' Redis storage: `delivery` (one job per
//! notification attempt) and `runs` (one job per run of a scheduled job).
//!
//! A job that a worker has taken sits in that worker's in-flight set until
//! it is acknowledged; a worker that stops heartbeating has its in-flight
//! jobs put back on the queue by the others. So a job is never lost, and may
//! run twice when a worker dies between doing it and acknowledging it: the
//! jobs are written to be harmless when repeated.

use std::time::{Duration, SystemTime};

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_redis::RedisStorage;

use super::delivery::Delivery;
use super::runner::Run;
use super::JobError;
use crate::backend::redis::{QueueConnection, RedisConfig};
use crate::keyspace::Keyspace;

pub type Storage<T> = RedisStorage<T, QueueConnection>;

/// How long an idempotency key keeps a second push of the same job out.
const IDEMPOTENCY_TTL: Duration = Duration::from_secs(7 * 86_400);

/// Handles on both queues; cheap to clone.
#[derive(Clone)]
pub struct Queues {
    delivery: Storage<Delivery>,
    runs: Storage<Run>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queues")
    }
}

/// The apalis configuration of one queue. `heartbeat` sets how soon a dead
/// worker's jobs are taken over: after three missed heartbeats.
pub fn config(keys: &Keyspace, name: &str, heartbeat: Duration) -> apalis_redis::Config {
    apalis_redis::Config::default()
        .queue(keys.job_queue(name))
        .heartbeat_interval(heartbeat)
        .missed_heartbeats(3)
        .emit_events(false)
        .idempotency_ttl(Some(IDEMPOTENCY_TTL))
}

pub const DELIVERY_QUEUE: &str = "delivery";
pub const RUNS_QUEUE: &str = "runs";

impl Queues {
    /// Connects to Redis (one multiplexed connection that reconnects by itself).
    pub async fn connect(redis: &RedisConfig, keys: &Keyspace, heartbeat: Duration) -> Result<Queues, JobError> {
        let conn = redis.queue_connection().await?;
        Ok(Queues {
            delivery: RedisStorage::new(conn.clone()).with_config(config(keys, DELIVERY_QUEUE, heartbeat)),
            runs: RedisStorage::new(conn).with_config(config(keys, RUNS_QUEUE, heartbeat)),
        })
    }

    pub fn delivery_storage(&self) -> Storage<Delivery> {
        self.delivery.clone()
    }

    pub fn runs_storage(&self) -> Storage<Run> {
        self.runs.clone()
    }

    /// Queues a delivery attempt, at `run_at` or now. A second push with the
    /// same `key` within a week is dropped: that is what makes re-running a
    /// crashed step harmless.
    pub async fn push_delivery(&self, job: Delivery, run_at: Option<SystemTime>, key: &str) -> Result<(), JobError> {
        let mut task = TaskBuilder::new(job).idempotency_key(key);
        if let Some(at) = run_at {
            // Apalis schedules in whole seconds: round up, never run early.
            let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            task = task.run_at_timestamp(since_epoch.as_millis().div_ceil(1000) as u64);
        }
        self.delivery.clone().push_task(task.build()).await.map_err(|e| JobError::step("queueing a delivery", e))
    }

    /// Queues a run of a scheduled job.
    pub async fn push_run(&self, run: Run) -> Result<(), JobError> {
        self.runs.clone().push(run).await.map_err(|e| JobError::step("queueing a run", e))
    }
}

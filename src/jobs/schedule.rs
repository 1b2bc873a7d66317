//! Scheduled ticks: every replica runs the same cron schedules, and each
//! tick is claimed by exactly one of them with
//! `SET <prefix>:jobs:tick:<job>:<tick> <worker> NX EX <ttl>`. The winner
//! queues the run; the run queue hands it to one worker.
//!
//! A tick is named by its scheduled instant, not by when a replica noticed
//! it, so replicas whose clocks differ by less than the lock's lifetime
//! still agree on which tick is which. Apalis' cron scheduler does not do
//! this itself: each replica's scheduler fires every tick.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use apalis_cron::CronScheduler;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::runner::{Run, Shared};
use super::{JobError, JobKind};
use crate::keyspace::Keyspace;

/// How long a claimed tick stays claimed: longer than any clock skew
/// between replicas, short enough that the keys do not pile up.
const TICK_LOCK_SECS: i64 = 3600;

/// Claims `tick` of `job` for `worker`; true if nobody had.
pub async fn claim(redis: &Client, keys: &Keyspace, job: JobKind, tick: u64, worker: &str) -> Result<bool, JobError> {
    let set: Option<String> = redis
        .set(
            keys.job_tick(job.as_str(), tick),
            worker,
            Some(Expiration::EX(TICK_LOCK_SECS)),
            Some(SetOptions::NX),
            false,
        )
        .await?;
    Ok(set.is_some())
}

/// Follows `expr` until `stop`, queueing a run for every tick this worker claims.
pub async fn run(job: JobKind, expr: String, shared: Arc<Shared>, stop: CancellationToken) {
    let Ok(schedule) = cron::Schedule::from_str(&expr) else {
        tracing::error!(job = %job, cron = %expr, "invalid cron expression; the job is not scheduled");
        return;
    };
    while !stop.is_cancelled() {
        // A stream that fell behind (the process was suspended past a tick)
        // yields an error and would keep doing so: start a fresh one.
        let mut ticks = Box::pin(CronScheduler::new(schedule.clone()).into_stream());
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => return,
                next = ticks.next() => next,
            };
            match next {
                Some(Ok(tick)) => on_tick(&shared, job, tick.get_timestamp()).await,
                Some(Err(e)) => {
                    tracing::warn!(job = %job, error = %e, "cron schedule fell behind; resuming from now");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                None => return,
            }
        }
    }
}

async fn on_tick(shared: &Shared, job: JobKind, tick: u64) {
    match claim(&shared.redis, &shared.keys, job, tick, &shared.worker_id).await {
        Ok(true) => {
            let run = Run { job, at_ms: tick as i64 * 1000, tick: Some(tick) };
            match shared.queues.push_run(run).await {
                Ok(()) => tracing::debug!(job = %job, tick, "tick claimed and queued"),
                Err(e) => tracing::error!(job = %job, tick, error = %e, "tick claimed but not queued; it is skipped"),
            }
        }
        Ok(false) => tracing::debug!(job = %job, tick, "tick claimed by another worker"),
        Err(e) => tracing::warn!(job = %job, tick, error = %e, "could not claim a tick; another worker may"),
    }
}

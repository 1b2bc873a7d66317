//! What the jobs did: a Redis hash per job (`<prefix>:jobs:status:<job>`)
//! for `confab jobs status`, a short history of runs, and Prometheus metrics.
//!
//! Scheduled jobs (archive, summaries) record each run: `last_run_at`,
//! `duration_ms`, `items` and `failures` of that run, `last_error`, and a
//! `runs` counter. Deliveries are many small runs, so their `items` (delivered)
//! and `failures` (failed attempts) count up over time instead.
//!
//! Recording never fails a job: a Redis error here is logged and dropped.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use super::queue::{self, DELIVERY_QUEUE, RUNS_QUEUE};
use super::{JobError, JobKind, DELIVERY};
use crate::clock::rfc3339;
use crate::keyspace::Keyspace;

/// Runs kept in each job's history list.
const HISTORY: i64 = 100;

/// What one run of a scheduled job did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub items: u64,
    pub failures: u64,
    /// Set when the run stopped early.
    pub error: Option<String>,
}

/// One entry of a job's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The scheduled tick (Unix seconds), or `None` for `confab jobs run`.
    pub tick: Option<u64>,
    pub started_at: String,
    pub duration_ms: u64,
    pub items: u64,
    pub failures: u64,
    pub error: Option<String>,
    pub worker: String,
}

/// Records one run of a scheduled job.
pub async fn record_run(redis: &Client, keys: &Keyspace, job: JobKind, entry: &HistoryEntry) {
    let label = job.as_str();
    metrics::counter!("confab_job_runs_total", "job" => label).increment(1);
    metrics::histogram!("confab_job_duration_seconds", "job" => label).record(entry.duration_ms as f64 / 1000.0);
    metrics::counter!("confab_job_items_total", "job" => label).increment(entry.items);
    let failures = entry.failures + u64::from(entry.error.is_some());
    metrics::counter!("confab_job_failures_total", "job" => label).increment(failures);
    let result: Result<(), JobError> = async {
        let fields: Vec<(&str, String)> = vec![
            ("last_run_at", entry.started_at.clone()),
            ("duration_ms", entry.duration_ms.to_string()),
            ("items", entry.items.to_string()),
            ("failures", entry.failures.to_string()),
            ("last_error", entry.error.clone().unwrap_or_default()),
            ("last_tick", entry.tick.map(|t| t.to_string()).unwrap_or_default()),
            ("worker", entry.worker.clone()),
        ];
        let pipe = redis.pipeline();
        let _: () = pipe.hset(keys.job_status(label), fields).await?;
        let _: () = pipe.hincrby(keys.job_status(label), "runs", 1).await?;
        let text = serde_json::to_string(entry).map_err(|e| JobError::step("encoding a status", e))?;
        let _: () = pipe.lpush(keys.job_history(label), text).await?;
        let _: () = pipe.ltrim(keys.job_history(label), 0, HISTORY - 1).await?;
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(job = label, error = %e, "could not record the run's status");
    }
}

pub async fn record_delivery(redis: &Client, keys: &Keyspace, elapsed: Duration, error: Option<&str>) {
    metrics::counter!("confab_job_runs_total", "job" => DELIVERY).increment(1);
    metrics::histogram!("confab_job_duration_seconds", "job" => DELIVERY).record(elapsed.as_secs_f64());
    let counter = if error.is_some() { "failures" } else { "items" };
    match error {
        Some(_) => metrics::counter!("confab_job_failures_total", "job" => DELIVERY).increment(1),
        None => metrics::counter!("confab_job_items_total", "job" => DELIVERY).increment(1),
    }
    let key = keys.job_status(DELIVERY);
    let result: Result<(), JobError> = async {
        let mut fields =
            vec![("last_run_at", rfc3339(&Utc::now())), ("duration_ms", (elapsed.as_millis() as u64).to_string())];
        if let Some(e) = error {
            fields.push(("last_error", e.to_string()));
        }
        let pipe = redis.pipeline();
        let _: () = pipe.hset(&key, fields).await?;
        let _: () = pipe.hincrby(&key, "runs", 1).await?;
        let _: () = pipe.hincrby(&key, counter, 1).await?;
        let _: Vec<Value> = pipe.all().await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record the delivery's status");
    }
}

/// A job's status hash (empty if it never ran).
pub async fn read(redis: &Client, keys: &Keyspace, job: &str) -> Result<HashMap<String, String>, JobError> {
    Ok(redis.hgetall(keys.job_status(job)).await?)
}

/// A job's most recent runs, newest first.
pub async fn history(redis: &Client, keys: &Keyspace, job: JobKind) -> Result<Vec<HistoryEntry>, JobError> {
    let raw: Vec<String> = redis.lrange(keys.job_history(job.as_str()), 0, -1).await?;
    Ok(raw.iter().filter_map(|r| serde_json::from_str(r).ok()).collect())
}

/// Jobs waiting in a queue: ready now, and scheduled for later.
pub async fn queued(redis: &Client, keys: &Keyspace, queue_name: &str) -> Result<(u64, u64), JobError> {
    let config = queue::config(keys, queue_name, Duration::from_secs(1));
    let ready: u64 = redis.llen(config.active_jobs_list()).await?;
    let later: u64 = redis.zcard(config.scheduled_jobs_set()).await?;
    Ok((ready, later))
}

/// The text `confab jobs status` prints.
pub async fn report(redis: &Client, keys: &Keyspace) -> Result<String, JobError> {
    let mut out = String::new();
    let field = |s: &HashMap<String, String>, k: &str| s.get(k).filter(|v| !v.is_empty()).cloned();
    for job in [JobKind::Archive.as_str(), JobKind::Summaries.as_str(), DELIVERY] {
        let s = read(redis, keys, job).await?;
        match field(&s, "last_run_at") {
            None => out.push_str(&format!("{job:<10} never ran\n")),
            Some(at) => {
                let get = |k: &str| field(&s, k).unwrap_or_else(|| "0".into());
                out.push_str(&format!(
                    "{job:<10} last run {at}  duration {} ms  items {}  failures {}  runs {}\n",
                    get("duration_ms"),
                    get("items"),
                    get("failures"),
                    get("runs"),
                ));
                if let Some(e) = field(&s, "last_error") {
                    out.push_str(&format!("{:<10} last error: {e}\n", ""));
                }
            }
        }
    }
    let dead: u64 = redis.llen(keys.dead_letters()).await?;
    let (d_ready, d_later) = queued(redis, keys, DELIVERY_QUEUE).await?;
    let (r_ready, r_later) = queued(redis, keys, RUNS_QUEUE).await?;
    out.push_str(&format!("dead letters: {dead}\n"));
    out.push_str(&format!("queued: deliveries {d_ready} (+{d_later} waiting to retry), runs {r_ready} (+{r_later})\n"));
    Ok(out)
}

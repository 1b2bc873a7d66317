//! One running worker process: the apalis workers for the two queues, the
//! cron schedulers, the notification intake, housekeeping, and the metrics
//! listener; and a clean stop.
//!
//! On stop, the schedulers and the intake stop at once; the apalis workers
//! stop fetching, finish the jobs in hand (up to [`DRAIN`]) and put back
//! those fetched but not started. A job cut off by the deadline stays in
//! this worker's in-flight set and is taken over by another worker after
//! three missed heartbeats: nothing is lost either way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{BackendExt, BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use chrono::{DateTime, Utc};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::WorkerConfig;
use super::delivery::{self, Delivery, RetryPolicy};
use super::queue::{self, Queues, DELIVERY_QUEUE, RUNS_QUEUE};
use super::sink::{self, Sink};
use super::status::{self, HistoryEntry, RunReport};
use super::{archive, intake, schedule, summary, JobError, JobKind};
use crate::cache::Cache;
use crate::clock::rfc3339;
use crate::keyspace::Keyspace;
use crate::store::Store;

/// How often an idle worker looks for jobs.
const POLL: Duration = Duration::from_millis(250);
/// How long a stopping worker waits for the jobs in hand.
pub const DRAIN: Duration = Duration::from_secs(20);
/// How often housekeeping runs.
const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// What every job of this worker shares.
pub struct Shared {
    pub store: Store,
    /// For status, locks and dead letters.
    pub redis: Client,
    pub queues: Queues,
    pub keys: Keyspace,
    pub sink: Box<dyn Sink>,
    pub retry: RetryPolicy,
    pub worker_id: String,
    pub archive_after_days: u32,
    pub archive_batch: i64,
    /// The nodes' cache, to mark rooms whose history the archive changed.
    pub cache: Cache,
}

impl Shared {
    /// Connects to MongoDB and Redis for `config`.
    pub async fn connect(config: &WorkerConfig) -> Result<Shared, JobError> {
        let keys = config.keys.clone().hash_tagged(config.redis.is_cluster());
        let redis = super::redis_client(&config.redis).await?;
        Ok(Shared {
            store: Store::connect_as(&config.mongo.mongo_url, &config.mongo.mongo_db, "confab-worker").await?,
            cache: Cache::new(Some(redis.clone()), keys.clone(), Duration::from_secs(1)),
            redis,
            queues: Queues::connect(&config.redis, &keys, config.heartbeat).await?,
            keys,
            sink: sink::build(&config.sink)?,
            retry: config.retry,
            worker_id: config.worker_id.clone(),
            archive_after_days: config.archive_after_days,
            archive_batch: config.archive_batch,
        })
    }
}

/// One run of a scheduled job, as queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub job: JobKind,
    /// The run's "now", Unix milliseconds: fixed when queued, so a run that
    /// is repeated (its worker died) covers exactly the same ground.
    pub at_ms: i64,
    /// The scheduled tick (Unix seconds), `None` for `confab jobs run`.
    pub tick: Option<u64>,
}

impl Run {
    /// A run requested now by hand.
    pub fn now(job: JobKind) -> Run {
        Run { job, at_ms: Utc::now().timestamp_millis(), tick: None }
    }
}

/// Runs one job and records what it did.
pub async fn execute(shared: &Shared, run: &Run) -> RunReport {
    let started_at = Utc::now();
    let clock = Instant::now();
    let now = DateTime::from_timestamp_millis(run.at_ms).unwrap_or(started_at);
    let result = match run.job {
        JobKind::Archive => {
            match archive::run(&shared.store, now, shared.archive_after_days, shared.archive_batch).await {
                Ok(moved) => {
                    // Nodes cache each room's newest page: those rooms' pages changed.
                    for room in &moved.rooms {
                        shared.cache.room_changed(*room).await;
                    }
                    Ok(RunReport { items: moved.messages, ..Default::default() })
                }
                Err(e) => Err(e),
            }
        }
        JobKind::Summaries => summary::run(&shared.store, &shared.queues, now).await,
    };
    let report = result.unwrap_or_else(|e| RunReport { error: Some(e.to_string()), ..Default::default() });
    let elapsed = clock.elapsed();
    match &report.error {
        None => {
            tracing::info!(job = %run.job, items = report.items, failures = report.failures, ms = elapsed.as_millis() as u64, "job ran")
        }
        Some(e) => tracing::warn!(job = %run.job, items = report.items, error = %e, "job failed"),
    }
    let entry = HistoryEntry {
        tick: run.tick,
        started_at: rfc3339(&started_at),
        duration_ms: elapsed.as_millis() as u64,
        items: report.items,
        failures: report.failures,
        error: report.error.clone(),
        worker: shared.worker_id.clone(),
    };
    status::record_run(&shared.redis, &shared.keys, run.job, &entry).await;
    report
}

async fn run_handler(run: Run, shared: Data<Arc<Shared>>) -> Result<(), BoxDynError> {
    execute(&shared, &run).await;
    Ok(())
}

async fn delivery_handler(job: Delivery, shared: Data<Arc<Shared>>) -> Result<(), BoxDynError> {
    delivery::attempt(&shared, job).await.map_err(Into::into)
}

/// A worker that is running; `shutdown` stops it.
pub struct RunningWorker {
    pub shared: Arc<Shared>,
    pub metrics_addr: Option<SocketAddr>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningWorker {
    pub async fn start(config: WorkerConfig) -> Result<RunningWorker, JobError> {
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| JobError::step(format!("cannot listen on {addr}"), e))?,
            ),
            None => None,
        };
        let metrics_addr = metrics.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(Shared::connect(&config).await?);
        if let Err(e) = archive::ensure_indexes(&shared.store).await {
            // Not fatal: the archive job works without them, only slower.
            tracing::warn!(error = %e, "creating the archive indexes failed; retried at the next start");
        }
        let stop = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(delivery_worker(shared.clone(), config.concurrency, stop.clone())),
            tokio::spawn(runs_worker(shared.clone(), stop.clone())),
            tokio::spawn(intake::run(shared.clone(), config.redis.clone(), stop.clone())),
            tokio::spawn(housekeeping(shared.clone(), stop.clone())),
        ];
        for (job, expr) in [(JobKind::Archive, &config.archive_cron), (JobKind::Summaries, &config.summary_cron)] {
            tasks.push(tokio::spawn(schedule::run(job, expr.clone(), shared.clone(), stop.clone())));
        }
        if let Some(listener) = metrics {
            tasks.push(tokio::spawn(serve_metrics(listener, stop.clone())));
        }
        crate::metrics::handle();
        crate::metrics::register_worker(&[JobKind::Archive.as_str(), JobKind::Summaries.as_str(), super::DELIVERY]);
        tracing::info!(worker = %config.worker_id, metrics = ?metrics_addr, "confab worker running");
        Ok(RunningWorker { shared, metrics_addr, stop, tasks })
    }

    /// Stops taking work, lets jobs in hand finish (up to [`DRAIN`]), and
    /// returns when everything has stopped.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(DRAIN + Duration::from_secs(2), all).await.is_err() {
            tracing::warn!("jobs still running at the deadline; other workers will take them over");
        }
        // The cache's client is `redis` too: closing it closes both.
        tokio::join!(self.shared.cache.shutdown(), self.shared.store.shutdown());
    }
}

/// Runs an apalis worker until `stop`, starting it again after an error
/// (Redis gone, its registration lost with a Redis restart).
async fn supervise<F, Fut>(name: &'static str, stop: CancellationToken, mut start: F)
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), apalis::prelude::WorkerError>>,
{
    while !stop.is_cancelled() {
        match start(stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(queue = name, error = %e, "job worker stopped; starting it again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Resolves on `stop`: the apalis worker then stops fetching and drains.
async fn stop_signal(stop: CancellationToken) -> Result<(), std::io::Error> {
    stop.cancelled().await;
    Ok(())
}

async fn delivery_worker(shared: Arc<Shared>, concurrency: usize, stop: CancellationToken) {
    supervise(DELIVERY_QUEUE, stop, |stop| {
        let worker = WorkerBuilder::new(format!("{}-{DELIVERY_QUEUE}", shared.worker_id))
            .backend(shared.queues.delivery_storage().poll_with_interval(POLL))
            .data(shared.clone())
            .concurrency(concurrency)
            .build(delivery_handler);
        worker.run_until(stop_signal(stop))
    })
    .await
}

async fn runs_worker(shared: Arc<Shared>, stop: CancellationToken) {
    supervise(RUNS_QUEUE, stop, |stop| {
        let worker = WorkerBuilder::new(format!("{}-{RUNS_QUEUE}", shared.worker_id))
            .backend(shared.queues.runs_storage().poll_with_interval(POLL))
            .data(shared.clone())
            .concurrency(1)
            .build(run_handler);
        worker.run_until(stop_signal(stop))
    })
    .await
}

/// Every [`HOUSEKEEPING`]: put back intake ids a dead worker left behind,
/// forget finished jobs, refresh the dead-letter gauge.
async fn housekeeping(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        if let Err(e) = intake::recover(&shared.redis, &shared.queues, &shared.keys).await {
            tracing::warn!(error = %e, "recovering notification ids failed");
        }
        for name in [DELIVERY_QUEUE, RUNS_QUEUE] {
            if let Err(e) = forget_done(&shared.redis, &shared.keys, name).await {
                tracing::warn!(queue = name, error = %e, "removing finished jobs failed");
            }
        }
        match shared.redis.llen::<u64, _>(shared.keys.dead_letters()).await {
            Ok(n) => metrics::gauge!("confab_deliveries_dead_letter").set(n as f64),
            Err(e) => tracing::debug!(error = %e, "reading the dead-letter size failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HOUSEKEEPING) => {}
        }
    }
}

/// Apalis keeps every finished job's data, metadata and id; we need none
/// of it once the job is done.
const FORGET_DONE: &str = r#"
local ids = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('DEL', ARGV[1] .. ':' .. id)
end
return #ids
"#;

async fn forget_done(redis: &Client, keys: &Keyspace, name: &str) -> Result<(), JobError> {
    let config = queue::config(keys, name, Duration::from_secs(1));
    loop {
        let n: i64 = redis
            .eval(
                FORGET_DONE,
                vec![config.done_jobs_set(), config.job_data_hash()],
                vec![config.job_meta_hash(), "1000".to_string()],
            )
            .await?;
        if n < 1000 {
            return Ok(());
        }
    }
}

async fn serve_metrics(listener: tokio::net::TcpListener, stop: CancellationToken) {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::handle().render())
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

//! `confab worker` and `confab jobs` settings, the same way as a node's:
//! flag, then environment variable, then TOML file (`--config`), then
//! default; every value checked at start, a bad one named in one line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use super::delivery::RetryPolicy;
use super::sink::SinkConfig;
use crate::backend::redis::RedisConfig;
use crate::config::{invalid, key_prefix, missing, redis, ConfigError};
use crate::keyspace::Keyspace;

#[derive(Debug, Clone, Default, Args)]
pub struct WorkerArgs {
    /// TOML file with any of the settings below (keys are the flag names with `_`).
    #[arg(long, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL (job queues, schedule locks, status); rediss:// for TLS.
    #[arg(long, env = "CONFAB_REDIS_URL")]
    pub redis_url: Option<String>,
    /// PEM file of CA certificates a rediss:// server's certificate may be
    /// signed by, besides the system's roots.
    #[arg(long, env = "CONFAB_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// MongoDB URL.
    #[arg(long, env = "CONFAB_MONGO_URL")]
    pub mongo_url: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "CONFAB_MONGO_DB")]
    pub mongo_db: Option<String>,
    /// This worker's name in the queues and logs (default: random); unique per replica.
    #[arg(long, env = "CONFAB_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Prefix of every Redis key the jobs use.
    #[arg(long, env = "CONFAB_KEY_PREFIX")]
    pub key_prefix: Option<String>,
    /// Where notifications are delivered: `log` or `webhook`.
    #[arg(long, env = "CONFAB_SINK")]
    pub sink: Option<String>,
    /// The webhook sink's URL (http or https).
    #[arg(long, env = "CONFAB_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The key that signs webhook bodies (at least 16 bytes).
    #[arg(long, env = "CONFAB_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Milliseconds a webhook request may take.
    #[arg(long, env = "CONFAB_WEBHOOK_TIMEOUT_MS")]
    pub webhook_timeout_ms: Option<u64>,
    /// Attempts at delivering a notification before it is dead-lettered.
    #[arg(long, env = "CONFAB_DELIVERY_MAX_ATTEMPTS")]
    pub delivery_max_attempts: Option<u32>,
    /// Wait after the first failed attempt, in milliseconds; doubles each time.
    #[arg(long, env = "CONFAB_RETRY_BASE_MS")]
    pub retry_base_ms: Option<u64>,
    /// Longest wait between attempts, in milliseconds.
    #[arg(long, env = "CONFAB_RETRY_MAX_MS")]
    pub retry_max_ms: Option<u64>,
    /// Messages older than this many days move to the archive.
    #[arg(long, env = "CONFAB_ARCHIVE_AFTER_DAYS")]
    pub archive_after_days: Option<u32>,
    /// Messages moved per batch.
    #[arg(long, env = "CONFAB_ARCHIVE_BATCH")]
    pub archive_batch: Option<i64>,
    /// When the archive job runs: cron, UTC, `sec min hour day month weekday [year]`.
    #[arg(long, env = "CONFAB_ARCHIVE_CRON")]
    pub archive_cron: Option<String>,
    /// When daily summaries are made: cron, UTC, as for --archive-cron.
    #[arg(long, env = "CONFAB_SUMMARY_CRON")]
    pub summary_cron: Option<String>,
    /// Deliveries in flight at once in this worker.
    #[arg(long, env = "CONFAB_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Address of this worker's /metrics listener, or `off`.
    #[arg(long, env = "CONFAB_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Seconds between heartbeats; a worker silent for three is presumed dead
    /// and its jobs are taken over.
    #[arg(long, env = "CONFAB_HEARTBEAT_SECS")]
    pub heartbeat_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    redis_url: Option<String>,
    redis_ca_file: Option<PathBuf>,
    mongo_url: Option<String>,
    mongo_db: Option<String>,
    worker_id: Option<String>,
    key_prefix: Option<String>,
    sink: Option<String>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    webhook_timeout_ms: Option<u64>,
    delivery_max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    archive_after_days: Option<u32>,
    archive_batch: Option<i64>,
    archive_cron: Option<String>,
    summary_cron: Option<String>,
    concurrency: Option<usize>,
    metrics_listen: Option<String>,
    heartbeat_secs: Option<u64>,
}

/// A validated worker configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub redis: RedisConfig,
    pub mongo_url: String,
    pub mongo_db: String,
    pub worker_id: String,
    /// The deployment's Redis names (`key_prefix`), shared with its nodes.
    pub keys: Keyspace,
    pub sink: SinkConfig,
    pub retry: RetryPolicy,
    pub archive_after_days: u32,
    pub archive_batch: i64,
    pub archive_cron: String,
    pub summary_cron: String,
    pub concurrency: usize,
    pub metrics_listen: Option<SocketAddr>,
    pub heartbeat: Duration,
}

pub const DEFAULT_ARCHIVE_CRON: &str = "0 0 3 * * *";
pub const DEFAULT_SUMMARY_CRON: &str = "0 0 7 * * *";

fn read_file<T: for<'de> Deserialize<'de> + Default>(path: &Option<PathBuf>) -> Result<T, ConfigError> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("config", "CONFAB_CONFIG", format!("{}: {e}", path.display())))?;
    toml::from_str::<T>(&text)
        .map_err(|e| invalid("config", "CONFAB_CONFIG", format!("{}: {}", path.display(), e.message())))
}

/// Parses a cron expression as the scheduler will, for a one-line error now
/// rather than a failure at the first tick.
pub fn cron(flag: &str, env: &str, expr: &str) -> Result<String, ConfigError> {
    if let Err(e) = cron::Schedule::from_str(expr) {
        // The parser's message spans lines (it draws a caret); its last line says why.
        let text = e.to_string();
        let why = text.lines().last().unwrap_or_default().trim().to_string();
        let form = "the form is `sec min hour day month weekday [year]`, e.g. `0 0 3 * * *`";
        return Err(invalid(flag, env, format!("`{expr}` is not a cron expression ({why}); {form}")));
    }
    Ok(expr.to_string())
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    flag: &str,
    env: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<T, ConfigError> {
    if value < lo || value > hi {
        return Err(invalid(flag, env, format!("must be between {lo} and {hi}")));
    }
    Ok(value)
}

impl WorkerArgs {
    pub fn resolve(self) -> Result<WorkerConfig, ConfigError> {
        let file: FileConfig = read_file(&self.config)?;
        let redis = redis(self.redis_url.or(file.redis_url), self.redis_ca_file.or(file.redis_ca_file))?;
        let mongo_url = self.mongo_url.or(file.mongo_url).ok_or_else(|| missing("mongo-url", "CONFAB_MONGO_URL"))?;
        if !(mongo_url.starts_with("mongodb://") || mongo_url.starts_with("mongodb+srv://")) {
            return Err(invalid("mongo-url", "CONFAB_MONGO_URL", "must start with mongodb:// or mongodb+srv://"));
        }
        let mongo_db = self.mongo_db.or(file.mongo_db).unwrap_or_else(|| "confab".into());
        if mongo_db.is_empty() || mongo_db.len() > 63 || mongo_db.contains(['/', '\\', '.', ' ', '"', '$']) {
            return Err(invalid("mongo-db", "CONFAB_MONGO_DB", "must be 1-63 characters without / \\ . space \" $"));
        }
        let worker_id =
            self.worker_id.or(file.worker_id).unwrap_or_else(|| format!("worker-{:08x}", rand::random::<u32>()));
        if worker_id.is_empty()
            || worker_id.len() > 64
            || !worker_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid("worker-id", "CONFAB_WORKER_ID", "must be 1-64 of [A-Za-z0-9_.-]"));
        }
        let keys = key_prefix(self.key_prefix.or(file.key_prefix))?;
        let sink = match self.sink.or(file.sink).as_deref().unwrap_or("log") {
            "log" => SinkConfig::Log,
            "webhook" => {
                let url = self
                    .webhook_url
                    .or(file.webhook_url)
                    .ok_or_else(|| missing("webhook-url", "CONFAB_WEBHOOK_URL"))?;
                if reqwest::Url::parse(&url).map_or(true, |u| !matches!(u.scheme(), "http" | "https")) {
                    return Err(invalid("webhook-url", "CONFAB_WEBHOOK_URL", "must be an http:// or https:// URL"));
                }
                let secret = self
                    .webhook_secret
                    .or(file.webhook_secret)
                    .ok_or_else(|| missing("webhook-secret", "CONFAB_WEBHOOK_SECRET"))?;
                if secret.len() < 16 {
                    return Err(invalid("webhook-secret", "CONFAB_WEBHOOK_SECRET", "must be at least 16 bytes"));
                }
                let ms = self.webhook_timeout_ms.or(file.webhook_timeout_ms).unwrap_or(10_000);
                let ms = range("webhook-timeout-ms", "CONFAB_WEBHOOK_TIMEOUT_MS", ms, 100, 300_000)?;
                SinkConfig::Webhook { url, secret, timeout: Duration::from_millis(ms) }
            }
            other => return Err(invalid("sink", "CONFAB_SINK", format!("`{other}` is not `log` or `webhook`"))),
        };
        let max_attempts = self.delivery_max_attempts.or(file.delivery_max_attempts).unwrap_or(8);
        let max_attempts = range("delivery-max-attempts", "CONFAB_DELIVERY_MAX_ATTEMPTS", max_attempts, 1, 100)?;
        let base = self.retry_base_ms.or(file.retry_base_ms).unwrap_or(1000);
        let base = range("retry-base-ms", "CONFAB_RETRY_BASE_MS", base, 1, 3_600_000)?;
        let cap = self.retry_max_ms.or(file.retry_max_ms).unwrap_or(300_000);
        let cap = range("retry-max-ms", "CONFAB_RETRY_MAX_MS", cap, base, 86_400_000)?;
        let days = self.archive_after_days.or(file.archive_after_days).unwrap_or(30);
        let days = range("archive-after-days", "CONFAB_ARCHIVE_AFTER_DAYS", days, 1, 36_500)?;
        let batch = self.archive_batch.or(file.archive_batch).unwrap_or(500);
        let batch = range("archive-batch", "CONFAB_ARCHIVE_BATCH", batch, 1, 10_000)?;
        let archive_cron = self.archive_cron.or(file.archive_cron).unwrap_or_else(|| DEFAULT_ARCHIVE_CRON.into());
        let archive_cron = cron("archive-cron", "CONFAB_ARCHIVE_CRON", &archive_cron)?;
        let summary_cron = self.summary_cron.or(file.summary_cron).unwrap_or_else(|| DEFAULT_SUMMARY_CRON.into());
        let summary_cron = cron("summary-cron", "CONFAB_SUMMARY_CRON", &summary_cron)?;
        let concurrency = self.concurrency.or(file.concurrency).unwrap_or(4);
        let concurrency = range("concurrency", "CONFAB_CONCURRENCY", concurrency, 1, 1024)?;
        let metrics_listen = match self.metrics_listen.or(file.metrics_listen).as_deref().unwrap_or("127.0.0.1:9091") {
            "off" => None,
            addr => Some(addr.parse::<SocketAddr>().map_err(|_| {
                invalid("metrics-listen", "CONFAB_METRICS_LISTEN", format!("`{addr}` is not host:port or `off`"))
            })?),
        };
        let heartbeat = self.heartbeat_secs.or(file.heartbeat_secs).unwrap_or(5);
        let heartbeat = range("heartbeat-secs", "CONFAB_HEARTBEAT_SECS", heartbeat, 1, 300)?;
        Ok(WorkerConfig {
            redis,
            mongo_url,
            mongo_db,
            worker_id,
            keys,
            sink,
            retry: RetryPolicy { max_attempts, base: Duration::from_millis(base), cap: Duration::from_millis(cap) },
            archive_after_days: days,
            archive_batch: batch,
            archive_cron,
            summary_cron,
            concurrency,
            metrics_listen,
            heartbeat: Duration::from_secs(heartbeat),
        })
    }
}

/// `confab jobs …` settings: only what reaching the queues takes.
#[derive(Debug, Clone, Default, Args)]
pub struct JobsArgs {
    /// The worker's TOML file; only `redis_url`, `redis_ca_file` and `key_prefix` are read.
    #[arg(long, env = "CONFAB_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Redis URL.
    #[arg(long, env = "CONFAB_REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// PEM file of CA certificates for a rediss:// server.
    #[arg(long, env = "CONFAB_REDIS_CA_FILE", global = true)]
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of every Redis key the jobs use.
    #[arg(long, env = "CONFAB_KEY_PREFIX", global = true)]
    pub key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct JobsFile {
    redis_url: Option<String>,
    redis_ca_file: Option<PathBuf>,
    key_prefix: Option<String>,
}

/// Validated `confab jobs` settings.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub redis: RedisConfig,
    pub keys: Keyspace,
}

impl JobsArgs {
    pub fn resolve(self) -> Result<JobsConfig, ConfigError> {
        let file: JobsFile = read_file(&self.config)?;
        Ok(JobsConfig {
            redis: redis(self.redis_url.or(file.redis_url), self.redis_ca_file.or(file.redis_ca_file))?,
            keys: key_prefix(self.key_prefix.or(file.key_prefix))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> WorkerArgs {
        WorkerArgs {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            mongo_url: Some("mongodb://127.0.0.1:27017".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let c = base().resolve().unwrap();
        assert_eq!(c.sink, SinkConfig::Log);
        assert_eq!(c.retry.max_attempts, 8);
        assert_eq!(c.retry.base, Duration::from_secs(1));
        assert_eq!((c.archive_after_days, c.archive_batch), (30, 500));
        assert_eq!((c.archive_cron.as_str(), c.summary_cron.as_str()), (DEFAULT_ARCHIVE_CRON, DEFAULT_SUMMARY_CRON));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(c.keys.prefix(), "confab");
        assert!(c.worker_id.starts_with("worker-"));
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (WorkerArgs { archive_cron: Some("every day".into()), ..base() }, "--archive-cron (CONFAB_ARCHIVE_CRON)"),
            (WorkerArgs { summary_cron: Some("0 0 25 * * *".into()), ..base() }, "--summary-cron"),
            (WorkerArgs { sink: Some("email".into()), ..base() }, "--sink (CONFAB_SINK)"),
            (WorkerArgs { sink: Some("webhook".into()), ..base() }, "--webhook-url (CONFAB_WEBHOOK_URL)"),
            (
                WorkerArgs {
                    sink: Some("webhook".into()),
                    webhook_url: Some("http://127.0.0.1:1/hook".into()),
                    webhook_secret: Some("short".into()),
                    ..base()
                },
                "--webhook-secret",
            ),
            (WorkerArgs { delivery_max_attempts: Some(0), ..base() }, "--delivery-max-attempts"),
            (WorkerArgs { archive_after_days: Some(0), ..base() }, "--archive-after-days"),
            (WorkerArgs { metrics_listen: Some("nowhere".into()), ..base() }, "--metrics-listen"),
            (WorkerArgs { key_prefix: Some("a b".into()), ..base() }, "--key-prefix"),
            (WorkerArgs { redis_url: None, ..base() }, "--redis-url"),
        ];
        for (args, name) in cases {
            let err = args.resolve().unwrap_err();
            assert!(err.0.contains(name), "{err}");
            assert_eq!(err.0.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn the_example_file_shows_every_setting_with_its_default() {
        let text = include_str!("../../config/worker.example.toml");
        let settings: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')))
            .map(|l| format!("{l}\n"))
            .collect();
        let f: FileConfig = toml::from_str(&settings).unwrap();
        assert_eq!((f.delivery_max_attempts, f.retry_base_ms, f.retry_max_ms), (Some(8), Some(1000), Some(300_000)));
        assert_eq!((f.archive_after_days, f.archive_batch, f.concurrency), (Some(30), Some(500), Some(4)));
        assert_eq!(f.archive_cron.as_deref(), Some(DEFAULT_ARCHIVE_CRON));
        assert_eq!(f.summary_cron.as_deref(), Some(DEFAULT_SUMMARY_CRON));
        assert_eq!((f.metrics_listen.as_deref(), f.heartbeat_secs), (Some("127.0.0.1:9091"), Some(5)));
        assert!(f.redis_url.is_some() && f.webhook_url.is_some() && f.key_prefix.is_some() && f.worker_id.is_some());
    }

    #[test]
    fn the_file_fills_gaps_and_metrics_can_be_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, "sink = \"webhook\"\nwebhook_url = \"https://hooks.example.com/x\"\nwebhook_secret = \"0123456789abcdef\"\nmetrics_listen = \"off\"\narchive_after_days = 7\n").unwrap();
        let c = WorkerArgs { config: Some(path.clone()), ..base() }.resolve().unwrap();
        assert!(matches!(c.sink, SinkConfig::Webhook { ref url, .. } if url == "https://hooks.example.com/x"));
        assert_eq!((c.metrics_listen, c.archive_after_days), (None, 7));
        let j = JobsArgs { config: Some(path), redis_url: Some("redis://x:1".into()), ..Default::default() }
            .resolve()
            .unwrap();
        assert_eq!(j.keys.prefix(), "confab");
    }
}

//! `confab worker` and `confab jobs` settings, declared the way a node's
//! are (see `crate::config`): flag, then environment variable, then TOML
//! file (`--config`), then default; every value checked at start, a bad one
//! named in one line.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;

use super::delivery::RetryPolicy;
use super::sink::SinkConfig;
use crate::config::{invalid, parse_keyspace, parse_name, random_id, ConfigError, MongoConfig, RedisConfig};
use crate::keyspace::Keyspace;

pub const DEFAULT_ARCHIVE_CRON: &str = "0 0 3 * * *";
pub const DEFAULT_SUMMARY_CRON: &str = "0 0 7 * * *";

/// A worker's settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub mongo: MongoConfig,
    /// This worker's name in the queues and logs (default: random); unique per replica.
    #[arg(long, env = "CONFAB_WORKER_ID", default_value_t = random_id("worker"), hide_default_value = true, value_parser = parse_name)]
    pub worker_id: String,
    /// Prefix of every Redis key and channel: the nodes' --key-prefix.
    #[arg(long = "key-prefix", env = "CONFAB_KEY_PREFIX", default_value = "confab", value_parser = parse_keyspace)]
    pub keys: Keyspace,
    #[command(flatten)]
    pub sink: SinkConfig,
    #[command(flatten)]
    pub retry: RetryPolicy,
    /// Messages older than this many days move to the archive.
    #[arg(long, env = "CONFAB_ARCHIVE_AFTER_DAYS", default_value = "30", value_parser = crate::config::count32(1, 36_500))]
    pub archive_after_days: u32,
    /// Messages moved per batch.
    #[arg(long, env = "CONFAB_ARCHIVE_BATCH", default_value = "500", value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub archive_batch: i64,
    /// When the archive job runs: cron, UTC, `sec min hour day month weekday [year]`.
    #[arg(long, env = "CONFAB_ARCHIVE_CRON", default_value = DEFAULT_ARCHIVE_CRON, value_parser = parse_cron)]
    pub archive_cron: String,
    /// When daily summaries are made: cron, UTC, as for --archive-cron.
    #[arg(long, env = "CONFAB_SUMMARY_CRON", default_value = DEFAULT_SUMMARY_CRON, value_parser = parse_cron)]
    pub summary_cron: String,
    /// Deliveries in flight at once in this worker.
    #[arg(long, env = "CONFAB_CONCURRENCY", default_value = "4", value_parser = crate::config::count(1, 1024))]
    pub concurrency: usize,
    /// Address of this worker's /metrics listener, or `off`.
    // Spelled out so that clap parses the value (`off` is none) rather than
    // reading an absent flag as none.
    #[arg(long, env = "CONFAB_METRICS_LISTEN", default_value = "127.0.0.1:9091", value_parser = parse_metrics_listen)]
    pub metrics_listen: ::std::option::Option<SocketAddr>,
    /// Seconds between heartbeats; a worker silent for three is presumed
    /// dead and its jobs are taken over.
    #[arg(long = "heartbeat-secs", env = "CONFAB_HEARTBEAT_SECS", default_value = "5", value_parser = crate::config::secs(1, 300))]
    pub heartbeat: Duration,
}

impl WorkerConfig {
    /// The checks that span several settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.redis.validate()?;
        self.sink.validate()?;
        if self.retry.cap < self.retry.base {
            let why = format!("must be at least --retry-base-ms ({})", self.retry.base.as_millis());
            return Err(invalid("retry-max-ms", "CONFAB_RETRY_MAX_MS", why));
        }
        Ok(())
    }

    /// The defaults, with Redis and MongoDB at the given URLs.
    pub fn defaults(redis_url: &str, mongo_url: &str) -> WorkerConfig {
        crate::config::defaults::<WorkerConfig>(&["--redis-url", redis_url, "--mongo-url", mongo_url])
    }
}

/// `confab jobs …` settings: only what reaching the queues takes. They read
/// the worker's file, skipping its other keys.
#[derive(Debug, Clone, Args)]
pub struct JobsConfig {
    #[command(flatten)]
    pub redis: RedisConfig,
    /// Prefix of every Redis key and channel.
    #[arg(long = "key-prefix", env = "CONFAB_KEY_PREFIX", default_value = "confab", value_parser = parse_keyspace)]
    pub keys: Keyspace,
}

/// Parses a cron expression as the scheduler will, for a one-line error now
/// rather than a failure at the first tick.
pub fn parse_cron(expr: &str) -> Result<String, String> {
    if let Err(e) = cron::Schedule::from_str(expr) {
        // The parser's message spans lines (it draws a caret); its last line says why.
        let text = e.to_string();
        let why = text.lines().last().unwrap_or_default().trim().to_string();
        let form = "the form is `sec min hour day month weekday [year]`, e.g. `0 0 3 * * *`";
        return Err(format!("`{expr}` is not a cron expression ({why}); {form}"));
    }
    Ok(expr.to_string())
}

fn parse_metrics_listen(raw: &str) -> Result<Option<SocketAddr>, String> {
    match raw {
        "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| format!("`{addr}` is not host:port or `off`")),
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::PathBuf;

    use super::*;
    use crate::config::{parse, Parsed};

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Worker {
            #[arg(long, env = "CONFAB_CONFIG")]
            config: Option<PathBuf>,
            #[command(flatten)]
            settings: Box<WorkerConfig>,
        },
        Jobs {
            #[arg(long, env = "CONFAB_CONFIG")]
            config: Option<PathBuf>,
            #[command(flatten)]
            settings: JobsConfig,
        },
    }

    fn worker(extra: &[&str]) -> Result<WorkerConfig, ConfigError> {
        let mut args: Vec<OsString> = ["confab", "worker", "--redis-url", "redis://127.0.0.1:6379"]
            .iter()
            .chain(["--mongo-url", "mongodb://127.0.0.1:27017"].iter())
            .chain(extra.iter())
            .map(OsString::from)
            .collect();
        args.shrink_to_fit();
        match parse::<Cli>(args, &["jobs"])? {
            Parsed::Ok(Cli { command: Sub::Worker { settings, .. } }) => {
                settings.validate()?;
                Ok(*settings)
            }
            _ => panic!("not the worker"),
        }
    }

    #[test]
    fn defaults() {
        let c = worker(&[]).unwrap();
        assert_eq!(c.sink, SinkConfig::log());
        assert_eq!((c.retry.max_attempts, c.retry.base), (8, Duration::from_secs(1)));
        assert_eq!((c.archive_after_days, c.archive_batch), (30, 500));
        assert_eq!((c.archive_cron.as_str(), c.summary_cron.as_str()), (DEFAULT_ARCHIVE_CRON, DEFAULT_SUMMARY_CRON));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(c.keys.prefix(), "confab");
        assert!(c.worker_id.starts_with("worker-"));
        assert_eq!(WorkerConfig::defaults("redis://r:1", "mongodb://m:2").concurrency, 4);
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases: [(&[&str], &str); 10] = [
            (&["--archive-cron", "every day"], "--archive-cron (CONFAB_ARCHIVE_CRON)"),
            (&["--summary-cron", "0 0 25 * * *"], "--summary-cron"),
            (&["--sink", "email"], "--sink (CONFAB_SINK)"),
            (&["--sink", "webhook"], "--webhook-url (CONFAB_WEBHOOK_URL)"),
            (
                &["--sink", "webhook", "--webhook-url", "http://127.0.0.1:1/hook", "--webhook-secret", "short"],
                "--webhook-secret",
            ),
            (&["--delivery-max-attempts", "0"], "--delivery-max-attempts"),
            (&["--archive-after-days", "0"], "--archive-after-days"),
            (&["--metrics-listen", "nowhere"], "--metrics-listen"),
            (&["--key-prefix", "a b"], "--key-prefix"),
            (&["--retry-base-ms", "5000", "--retry-max-ms", "1000"], "--retry-max-ms (CONFAB_RETRY_MAX_MS)"),
        ];
        for (args, name) in cases {
            let err = worker(args).unwrap_err();
            assert!(err.0.contains(name), "{args:?}: {err}");
            assert_eq!(err.0.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn the_file_fills_gaps_and_confab_jobs_reads_the_workers_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.toml");
        std::fs::write(&path, "sink = \"webhook\"\nwebhook_url = \"https://hooks.example.com/x\"\nwebhook_secret = \"0123456789abcdef\"\nmetrics_listen = \"off\"\narchive_after_days = 7\nkey_prefix = \"staging\"\n").unwrap();
        let path = path.to_string_lossy().into_owned();
        let c = worker(&["--config", &path]).unwrap();
        assert_eq!(c.sink.url.as_deref(), Some("https://hooks.example.com/x"));
        assert_eq!((c.metrics_listen, c.archive_after_days), (None, 7));
        let args = ["confab", "jobs", "--redis-url", "redis://x:1", "--config", &path].map(OsString::from).to_vec();
        match parse::<Cli>(args, &["jobs"]).unwrap() {
            Parsed::Ok(Cli { command: Sub::Jobs { settings, .. } }) => assert_eq!(settings.keys.prefix(), "staging"),
            _ => panic!("not jobs"),
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
        let table: toml::Table = toml::from_str(&settings).unwrap();
        let command = WorkerConfig::augment_args(clap::Command::new("x"));
        for arg in command.get_arguments() {
            let key = arg.get_long().unwrap().replace('-', "_");
            let shown = table.get(&key).unwrap_or_else(|| panic!("worker.example.toml does not show `{key}`"));
            if let Some(default) = arg.get_default_values().first().filter(|_| !arg.is_hide_default_value_set()) {
                let shown = shown.as_str().map(str::to_owned).unwrap_or_else(|| shown.to_string());
                assert_eq!(shown, default.to_string_lossy(), "`{key}` shows another value than its default");
            }
        }
    }
}

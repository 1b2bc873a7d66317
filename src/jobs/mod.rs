//! Background jobs: `confab worker` and `confab jobs …`.
//!
//! A worker is a separate process; any number may run against one Redis and
//! one MongoDB. Durable work lives in Redis queues managed by apalis (see
//! docs/adr/0007-jobs-on-apalis.md); this module adds what the library does
//! not decide for us:
//! - `delivery`: one queued job per notification, handed to a [`sink`]; our
//!   own attempt count and exponential backoff, then a dead-letter list.
//! - `intake`: moves notification ids that nodes push onto
//!   `<prefix>:notify:external` into the delivery queue, losing none.
//! - `archive` and `summary`: the two scheduled jobs, pure functions of
//!   (database, now) so that tests and re-runs are deterministic.
//! - `schedule`: cron ticks, each claimed by exactly one replica with a Redis
//!   lock, then queued as a `runs` job like `confab jobs run` queues one.
//! - `status`: last run, duration, items, failures per job, in Redis and as
//!   Prometheus metrics.

pub mod admin;
pub mod archive;
pub mod config;
pub mod delivery;
pub mod intake;
pub mod notification;
pub mod queue;
pub mod runner;
pub mod schedule;
pub mod sink;
pub mod status;
pub mod summary;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use delivery::enqueue_delivery;

use crate::backend::redis::RedisConfig;
pub use queue::Queues;

/// The scheduled jobs. (Deliveries are not scheduled: they are queued per
/// notification.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Archive,
    Summaries,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::Archive, JobKind::Summaries];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Archive => "archive",
            JobKind::Summaries => "summaries",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "archive" => Ok(JobKind::Archive),
            "summaries" => Ok(JobKind::Summaries),
            other => Err(format!("unknown job `{other}` (archive or summaries)")),
        }
    }
}

/// The name deliveries are reported under in status and metrics.
pub const DELIVERY: &str = "delivery";

/// A job failure, as a message for logs, status and the dead-letter list,
/// with its cause kept.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("redis: {0}")]
    RedisSetup(#[from] crate::backend::redis::RedisError),
    /// A step failed because of `source`; `what` says which step.
    #[error("{what}: {source}")]
    Step {
        what: String,
        #[source]
        source: crate::error::BoxError,
    },
    /// A failure with no cause beyond itself.
    #[error("{0}")]
    Failed(String),
}

impl JobError {
    /// `source`, as the failure of step `what`.
    pub fn step(what: impl Into<String>, source: impl Into<crate::error::BoxError>) -> Self {
        JobError::Step { what: what.into(), source: source.into() }
    }
}

/// A fred client for the worker's own keys (status, locks, dead letters).
pub async fn redis_client(redis: &RedisConfig) -> Result<fred::clients::Client, JobError> {
    Ok(redis.connected(std::time::Duration::from_secs(3)).await?)
}

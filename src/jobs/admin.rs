//! `confab jobs …`: what an operator does with the queues, each returning
//! the text to print.

use std::time::Duration;

use super::config::JobsConfig;
use super::delivery;
use super::queue::Queues;
use super::runner::Run;
use super::status;
use super::{JobError, JobKind};

/// What `confab jobs` was asked to do.
#[derive(Debug, Clone)]
pub enum Command {
    Run(JobKind),
    Status,
    Dead,
    RetryDead(Option<String>),
}

/// Longest the command waits for Redis.
const TIMEOUT: Duration = Duration::from_secs(10);

pub async fn execute(config: &JobsConfig, command: Command) -> Result<String, JobError> {
    tokio::time::timeout(TIMEOUT, execute_inner(config, command))
        .await
        .unwrap_or_else(|_| Err(JobError::Failed(format!("no answer from Redis at {} in time", config.redis.url))))
}

async fn execute_inner(config: &JobsConfig, command: Command) -> Result<String, JobError> {
    let keys = config.keys.clone().hash_tagged(config.redis.is_cluster());
    let redis = super::redis_client(&config.redis).await?;
    let out = match command {
        Command::Run(job) => {
            let queues = Queues::connect(&config.redis, &keys, Duration::from_secs(5)).await?;
            queues.push_run(Run::now(job)).await?;
            format!("queued a run of {job}\n")
        }
        Command::Status => status::report(&redis, &keys).await?,
        Command::Dead => {
            let dead = delivery::dead_letters(&redis, &keys).await?;
            let mut out = format!("{} dead deliveries\n", dead.len());
            for d in dead {
                out.push_str(&format!(
                    "{}  notification {}  attempts {}  round {}  failed {}  error: {}\n",
                    d.id, d.notification_id, d.attempts, d.round, d.failed_at, d.error
                ));
            }
            out
        }
        Command::RetryDead(only) => {
            let queues = Queues::connect(&config.redis, &keys, Duration::from_secs(5)).await?;
            let n = delivery::retry_dead(&redis, &queues, &keys, only.as_deref()).await?;
            if n == 0 && only.is_some() {
                return Err(JobError::Failed(format!("no dead delivery with id {}", only.unwrap_or_default())));
            }
            format!("queued {n} dead deliveries again\n")
        }
    };
    Ok(out)
}

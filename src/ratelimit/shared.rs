//! The limits every node must agree on, kept in Redis: REST requests per
//! user and server API requests per API key (GCRA), and failed logins per
//! username (a counter per window).
//!
//! Each check is one Lua script, so it is atomic however many nodes ask at
//! once. The limiter has its own connection, with a short command timeout,
//! and skips Redis while that connection is down: a Redis outage costs each
//! request at most [`COMMAND_TIMEOUT`], and every failure lets the request
//! through (fail open) with a warning and `confab_ratelimit_fail_open_total`.
//! Refusing everyone because the limiter is down would turn a Redis outage
//! into a full outage.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;
use tokio::sync::OnceCell;

use crate::backend::redis::{RedisConfig, RedisError};
use crate::config::RateLimits;
use crate::error::Error;
use crate::keyspace::Keyspace;

/// Longest a limit check may wait for Redis before the request goes ahead.
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);

/// At most one fail-open warning per this long; the metric counts them all.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A limit's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused; the same request would be allowed after this long.
    Limited(Duration),
}

impl Verdict {
    /// `Ok` when allowed, else the 429 error for `scope`'s rejection.
    pub fn into_result(self, scope: &'static str) -> Result<(), Error> {
        match self {
            Verdict::Allowed => Ok(()),
            Verdict::Limited(retry_after) => Err(super::rejection(scope, retry_after)),
        }
    }
}

/// What an address is limited as: itself (IPv4), or its /64 (IPv6).
fn client_network(address: std::net::IpAddr) -> String {
    match address {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// A Lua script run by EVALSHA, loaded once per process; EVAL when the
/// server has forgotten it (a restart, SCRIPT FLUSH), which also reloads it.
struct Script {
    source: &'static str,
    sha: OnceCell<String>,
}

impl Script {
    const fn new(source: &'static str) -> Self {
        Script { source, sha: OnceCell::const_new() }
    }

    async fn run(&self, client: &Client, key: String, args: Vec<i64>) -> FredResult<Value> {
        // Fail fast while reconnecting rather than wait out the timeout.
        if !client.is_connected() {
            return Err(fred::error::Error::new(fred::error::ErrorKind::IO, "not connected"));
        }
        let sha = self.sha.get_or_try_init(|| client.script_load::<String, _>(self.source)).await?;
        match client.evalsha(sha.as_str(), key.clone(), args.clone()).await {
            Err(e) if e.details().starts_with("NOSCRIPT") => client.eval(self.source, key, args).await,
            other => other,
        }
    }
}

static GCRA: Script = Script::new(include_str!("gcra.lua"));
static LOGIN_RESERVE: Script = Script::new(include_str!("login_reserve.lua"));
static LOGIN_RELEASE: Script = Script::new(include_str!("login_release.lua"));

/// The cluster-wide limits of one node.
pub struct SharedLimiter {
    client: Client,
    limits: RateLimits,
    keys: Keyspace,
    /// Unix milliseconds of the last fail-open warning.
    last_warning_ms: AtomicU64,
}

impl SharedLimiter {
    /// Starts the limiter's connection. An unreachable Redis is not an error:
    /// the client keeps reconnecting, and checks fail open meanwhile.
    pub async fn connect(redis: &RedisConfig, limits: RateLimits, keys: Keyspace) -> Result<SharedLimiter, RedisError> {
        let mut builder = redis.builder(16)?;
        // Per-command options (`with_options`) do not reach fred's Lua
        // commands, so the timeout is the whole client's: it is ours alone.
        builder
            .with_config(|c| c.fail_fast = false) // keep retrying when Redis is down at start
            .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
            // Never re-send a check after a reconnect: it would count twice.
            .with_connection_config(|c| c.max_command_attempts = 1);
        let client = builder.build()?;
        client.connect();
        if tokio::time::timeout(Duration::from_secs(1), client.wait_for_connect()).await.is_err() {
            tracing::warn!("rate limiter: redis not reachable yet; limits fail open until it is");
        }
        Ok(SharedLimiter { client, limits, keys, last_warning_ms: AtomicU64::new(0) })
    }

    /// Closes the limiter's connection.
    pub async fn shutdown(&self) {
        let _ = self.client.quit().await;
    }

    /// Counts one REST request by `user` against its per-minute limit.
    pub async fn rest(&self, user: ObjectId) -> Verdict {
        let per_minute = self.limits.rest_per_minute;
        if per_minute == 0 {
            return Verdict::Allowed;
        }
        let key = self.keys.rate_user(user);
        // The whole minute may be spent at once; then one request per interval.
        let args = vec![emission_interval_us(per_minute), i64::from(per_minute)];
        self.verdict("rest", GCRA.run(&self.client, key, args).await)
    }

    /// Counts one registration or login attempt from a client address
    /// against its per-minute limit: each costs a password hash, and names
    /// made up by the thousand must not buy an attacker the nodes' CPU. An
    /// IPv6 address counts by its /64, which one client usually holds whole.
    pub async fn address(&self, address: std::net::IpAddr) -> Verdict {
        let per_minute = self.limits.auth_per_minute;
        if per_minute == 0 {
            return Verdict::Allowed;
        }
        let key = self.keys.rate_address(&client_network(address));
        let args = vec![emission_interval_us(per_minute), i64::from(per_minute)];
        self.verdict("auth", GCRA.run(&self.client, key, args).await)
    }

    /// Counts one server API request made with API key `key` against the
    /// key's per-minute limit (the same GCRA as [`rest`](Self::rest)).
    pub async fn api_key(&self, key: ObjectId) -> Verdict {
        let per_minute = self.limits.api_per_minute;
        if per_minute == 0 {
            return Verdict::Allowed;
        }
        let key = self.keys.rate_api_key(key);
        let args = vec![emission_interval_us(per_minute), i64::from(per_minute)];
        self.verdict("api", GCRA.run(&self.client, key, args).await)
    }

    /// Reserves a login attempt for `username` (lower-cased): refused when
    /// the name's failures in the current window are used up. An allowed
    /// attempt counts as a failure unless [`login_succeeded`](Self::login_succeeded) gives it back.
    pub async fn login_attempt(&self, username: &str) -> Verdict {
        let max = self.limits.login_max_failures;
        if max == 0 {
            return Verdict::Allowed;
        }
        let window_ms = self.limits.login_window.as_millis().min(i64::MAX as u128) as i64;
        let key = self.keys.rate_login(username);
        self.verdict("login", LOGIN_RESERVE.run(&self.client, key, vec![i64::from(max), window_ms]).await)
    }

    /// The attempt's password was right: it is not a failure. This does not
    /// reset the count, so a victim's own logins never restore an attacker's
    /// guesses.
    pub async fn login_succeeded(&self, username: &str) {
        if self.limits.login_max_failures == 0 {
            return;
        }
        let key = self.keys.rate_login(username);
        if let Err(e) = LOGIN_RELEASE.run(&self.client, key, vec![]).await {
            self.fail_open("login", &e.to_string());
        }
    }

    fn verdict(&self, scope: &'static str, reply: FredResult<Value>) -> Verdict {
        let reply = reply.map_err(|e| e.to_string()).and_then(|v| parse_reply(&v));
        match reply {
            Ok(v) => v,
            Err(e) => {
                self.fail_open(scope, &e);
                Verdict::Allowed
            }
        }
    }

    fn fail_open(&self, scope: &'static str, error: &str) {
        metrics::counter!("confab_ratelimit_fail_open_total", "scope" => scope).increment(1);
        let now = crate::clock::now_us() / 1000;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64
            && self.last_warning_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                scope,
                error,
                "rate limit check failed; letting requests through (at most one warning per 10 s)"
            );
        }
    }
}

/// Microseconds between requests at `per_minute` (at least 1).
fn emission_interval_us(per_minute: u32) -> i64 {
    (60_000_000 / i64::from(per_minute.max(1))).max(1)
}

/// `{1, 0}` is allowed, `{0, ms}` refused for `ms`; anything else is an error.
fn parse_reply(value: &Value) -> Result<Verdict, String> {
    let items = match value {
        Value::Array(items) if items.len() == 2 => items,
        other => return Err(format!("unexpected reply from the limit script: {other:?}")),
    };
    match (items[0].as_i64(), items[1].as_i64()) {
        (Some(1), _) => Ok(Verdict::Allowed),
        (Some(0), Some(ms)) => Ok(Verdict::Limited(Duration::from_millis(ms.max(0) as u64))),
        _ => Err(format!("unexpected reply from the limit script: {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emission_interval_spreads_the_minute() {
        assert_eq!(emission_interval_us(1000), 60_000);
        assert_eq!(emission_interval_us(5), 12_000_000);
        assert_eq!(emission_interval_us(1_000_000), 60);
    }

    #[test]
    fn script_replies_parse_and_odd_ones_are_errors() {
        let reply = |a: i64, b: i64| Value::Array(vec![Value::Integer(a), Value::Integer(b)]);
        assert_eq!(parse_reply(&reply(1, 0)), Ok(Verdict::Allowed));
        assert_eq!(parse_reply(&reply(0, 1500)), Ok(Verdict::Limited(Duration::from_millis(1500))));
        assert!(parse_reply(&reply(7, 0)).is_err());
        assert!(parse_reply(&Value::Null).is_err());
    }

    #[test]
    fn only_refusals_are_errors() {
        assert!(Verdict::Allowed.into_result("rest").is_ok());
        let err = Verdict::Limited(Duration::from_millis(1500)).into_result("rest").unwrap_err();
        assert_eq!(err.retry_after_secs(), Some(2));
    }
}

//! Node configuration: one typed struct, filled from command-line flags, then
//! environment variables (clap reads both), then a TOML file, then defaults.
//!
//! Every setting is validated before the node touches the network, and a bad
//! one stops start-up with a single line naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

use crate::backend::redis::RedisConfig;
use crate::keyspace::Keyspace;

/// `confab serve` flags. Each is optional here so that the TOML file and the
/// defaults can fill whatever the command line and environment left out.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys are the flag names with `_`).
    #[arg(long, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on for HTTP and WebSocket traffic.
    #[arg(long, env = "CONFAB_LISTEN")]
    pub listen: Option<String>,
    /// Redis URL (Pub/Sub fan-out, presence, rate limits); rediss:// for TLS.
    #[arg(long, env = "CONFAB_REDIS_URL")]
    pub redis_url: Option<String>,
    /// PEM file of CA certificates a rediss:// server's certificate may be
    /// signed by, besides the system's roots.
    #[arg(long, env = "CONFAB_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// MongoDB URL (durable history).
    #[arg(long, env = "CONFAB_MONGO_URL")]
    pub mongo_url: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "CONFAB_MONGO_DB")]
    pub mongo_db: Option<String>,
    /// Prefix of every Redis key and channel; nodes and workers of one
    /// deployment share it (change it only to share one Redis between deployments).
    #[arg(long, env = "CONFAB_KEY_PREFIX")]
    pub key_prefix: Option<String>,
    /// Secret that signs access tokens (at least 32 bytes); all nodes share it.
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// This node's id in logs and metrics (default: random).
    #[arg(long, env = "CONFAB_NODE_ID")]
    pub node_id: Option<String>,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "CONFAB_TOKEN_TTL_SECS")]
    pub token_ttl_secs: Option<u64>,
    /// Largest WebSocket message accepted, in bytes (whole message, all fragments).
    #[arg(long, env = "CONFAB_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Frames queued for one connection before it is cut off as a slow consumer.
    #[arg(long, env = "CONFAB_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// Seconds a connection may take to send a request's head once it began.
    #[arg(long, env = "CONFAB_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a connection may wait for its first or next request (keep-alive).
    #[arg(long, env = "CONFAB_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds between server pings; two unanswered pings drop the connection.
    #[arg(long, env = "CONFAB_PING_INTERVAL_SECS")]
    pub ping_interval_secs: Option<u64>,
    /// Comma-separated Origins allowed to open WebSockets (empty: any).
    #[arg(long, env = "CONFAB_ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Pub/Sub messages buffered between Redis and the fan-out task.
    #[arg(long, env = "CONFAB_PUBSUB_BUFFER")]
    pub pubsub_buffer: Option<usize>,
    /// Threads that write a big room's fan-out, the bus reader's included
    /// (0: one per core; 1: the bus reader writes everything).
    #[arg(long, env = "CONFAB_FANOUT_LANES")]
    pub fanout_lanes: Option<usize>,
    /// Local receivers from which an event is split over the fan-out lanes.
    #[arg(long, env = "CONFAB_FANOUT_SPLIT_AT")]
    pub fanout_split_at: Option<usize>,
    /// Serve the RFC 6455 conformance echo endpoint at /ws/echo (for test runs).
    #[arg(long, env = "CONFAB_ECHO_ENDPOINT")]
    pub echo_endpoint: Option<bool>,
    /// Seconds a cached room list or history page may live in Redis (0: no cache).
    #[arg(long, env = "CONFAB_CACHE_TTL_SECS")]
    pub cache_ttl_secs: Option<u64>,
    /// Milliseconds a gap in a room's live seqs may stay open before it is filled from history.
    #[arg(long, env = "CONFAB_GAP_WAIT_MS")]
    pub gap_wait_ms: Option<u64>,
    /// REST requests per user per minute, shared by all nodes (0: no limit).
    #[arg(long, env = "CONFAB_REST_RATE_PER_MINUTE")]
    pub rest_rate_per_minute: Option<u32>,
    /// WebSocket frames per second per connection (0: no limit).
    #[arg(long, env = "CONFAB_SOCKET_RATE_PER_SEC")]
    pub socket_rate_per_sec: Option<u32>,
    /// Most WebSocket frames a connection may send at once, before its rate applies.
    #[arg(long, env = "CONFAB_SOCKET_BURST")]
    pub socket_burst: Option<u32>,
    /// Frames refused for rate within 10 s that close a connection with 1008.
    #[arg(long, env = "CONFAB_SOCKET_MAX_REJECTIONS")]
    pub socket_max_rejections: Option<u32>,
    /// Failed logins per username per window before logins are refused (0: no limit).
    #[arg(long, env = "CONFAB_LOGIN_MAX_FAILURES")]
    pub login_max_failures: Option<u32>,
    /// The window failed logins are counted in, in seconds.
    #[arg(long, env = "CONFAB_LOGIN_WINDOW_SECS")]
    pub login_window_secs: Option<u64>,
    /// Registrations and logins per client address per minute, shared by all nodes (0: no limit).
    #[arg(long, env = "CONFAB_AUTH_RATE_PER_MINUTE")]
    pub auth_rate_per_minute: Option<u32>,
    /// Comma-separated addresses or CIDR ranges of proxies whose
    /// X-Forwarded-For names the client (default: loopback).
    #[arg(long, env = "CONFAB_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Simultaneous WebSocket connections one user may hold, cluster-wide (0: no limit).
    #[arg(long, env = "CONFAB_MAX_SOCKETS_PER_USER")]
    pub max_sockets_per_user: Option<u32>,
    /// Server API requests per API key per minute, shared by all nodes (0: no limit).
    #[arg(long, env = "CONFAB_API_RATE_PER_MINUTE")]
    pub api_rate_per_minute: Option<u32>,
    /// Milliseconds a user stays online after their last connection closes,
    /// so that a quick reconnect is not seen as going offline and back.
    #[arg(long, env = "CONFAB_PRESENCE_GRACE_MS")]
    pub presence_grace_ms: Option<u64>,
    /// Seconds between this node's heartbeats in Redis (also how often it
    /// sweeps the connections of nodes whose heartbeat has expired).
    #[arg(long, env = "CONFAB_NODE_HEARTBEAT_SECS")]
    pub node_heartbeat_secs: Option<u64>,
    /// Seconds after its last heartbeat that a node counts as dead and its
    /// users' connections are swept.
    #[arg(long, env = "CONFAB_NODE_TTL_SECS")]
    pub node_ttl_secs: Option<u64>,
}

/// The same settings as they appear in a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    redis_url: Option<String>,
    redis_ca_file: Option<PathBuf>,
    mongo_url: Option<String>,
    mongo_db: Option<String>,
    key_prefix: Option<String>,
    jwt_secret: Option<String>,
    node_id: Option<String>,
    token_ttl_secs: Option<u64>,
    max_message_bytes: Option<usize>,
    outbound_queue: Option<usize>,
    header_timeout_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    api_rate_per_minute: Option<u32>,
    auth_rate_per_minute: Option<u32>,
    trusted_proxies: Option<String>,
    max_sockets_per_user: Option<u32>,
    ping_interval_secs: Option<u64>,
    allowed_origins: Option<String>,
    pubsub_buffer: Option<usize>,
    fanout_lanes: Option<usize>,
    fanout_split_at: Option<usize>,
    echo_endpoint: Option<bool>,
    cache_ttl_secs: Option<u64>,
    gap_wait_ms: Option<u64>,
    rest_rate_per_minute: Option<u32>,
    socket_rate_per_sec: Option<u32>,
    socket_burst: Option<u32>,
    socket_max_rejections: Option<u32>,
    login_max_failures: Option<u32>,
    login_window_secs: Option<u64>,
    presence_grace_ms: Option<u64>,
    node_heartbeat_secs: Option<u64>,
    node_ttl_secs: Option<u64>,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub redis: RedisConfig,
    pub mongo_url: String,
    pub mongo_db: String,
    /// The names of every Redis key and channel (`key_prefix`).
    pub keys: Keyspace,
    pub jwt_secret: String,
    pub node_id: String,
    pub token_ttl: Duration,
    pub max_message_bytes: usize,
    pub outbound_queue: usize,
    /// How long a request's head may take once its first bytes arrived.
    pub header_timeout: Duration,
    /// How long an HTTP connection may wait for a request.
    pub idle_timeout: Duration,
    pub ping_interval: Duration,
    pub allowed_origins: Vec<String>,
    pub pubsub_buffer: usize,
    /// Fan-out lanes, the bus reader's included (at least 1).
    pub fanout_lanes: usize,
    pub fanout_split_at: usize,
    pub echo_endpoint: bool,
    pub cache_ttl: Duration,
    pub gap_wait: Duration,
    pub rate_limits: RateLimits,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Simultaneous sockets per user, cluster-wide (0: no limit).
    pub max_sockets_per_user: u32,
    pub presence_grace: Duration,
    pub node_heartbeat: Duration,
    pub node_ttl: Duration,
}

/// Rate limits (docs/adr/0006-rate-limits.md). A zero rate turns that limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// REST requests per user per minute, counted in Redis across nodes.
    pub rest_per_minute: u32,
    /// Frames per second per WebSocket connection, counted on its node.
    pub socket_per_sec: u32,
    pub socket_burst: u32,
    /// Frames refused within ten seconds that close the connection (1008).
    pub socket_max_rejections: u32,
    /// Failed logins per username per `login_window`.
    pub login_max_failures: u32,
    pub login_window: Duration,
    /// Server API requests per API key per minute, counted in Redis across nodes.
    pub api_per_minute: u32,
    /// Registrations and logins per client address per minute, across nodes.
    pub auth_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            rest_per_minute: 1000,
            socket_per_sec: 20,
            socket_burst: 40,
            socket_max_rejections: 100,
            login_max_failures: 10,
            login_window: Duration::from_secs(900),
            api_per_minute: 10_000,
            auth_per_minute: 30,
        }
    }
}

/// An address range: `addr/bits`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: std::net::IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(raw: &str) -> Option<Cidr> {
        let (addr, bits) = match raw.split_once('/') {
            Some((a, b)) => (a.parse::<std::net::IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
            None => (raw.parse().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { network: addr, bits })
    }

    pub fn contains(&self, addr: std::net::IpAddr) -> bool {
        fn prefix(bytes: &[u8], bits: u8) -> impl Iterator<Item = u8> + '_ {
            bytes.iter().enumerate().map(move |(i, b)| {
                let keep = (bits as usize).saturating_sub(i * 8).min(8) as u32;
                if keep == 0 {
                    0
                } else {
                    b & (0xffu8 << (8 - keep))
                }
            })
        }
        match (self.network, addr.to_canonical()) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                prefix(&n.octets(), self.bits).eq(prefix(&a.octets(), self.bits))
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                prefix(&n.octets(), self.bits).eq(prefix(&a.octets(), self.bits))
            }
            _ => false,
        }
    }
}

/// A setting that is missing or invalid; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub(crate) fn invalid(flag: &str, env: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid setting --{flag} ({env}): {why}"))
}

pub(crate) fn missing(flag: &str, env: &str) -> ConfigError {
    ConfigError(format!(
        "missing setting --{flag} ({env}); set the flag, the variable, or `{}` in the config file",
        flag.replace('-', "_")
    ))
}

impl ServeArgs {
    /// Merges the flags/environment with the config file and validates the result.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = read_file(self.config.as_deref())?;
        let listen = self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen = listen
            .parse::<SocketAddr>()
            .map_err(|_| invalid("listen", "CONFAB_LISTEN", format!("`{listen}` is not host:port")))?;

        let redis = redis(self.redis_url.or(file.redis_url), self.redis_ca_file.or(file.redis_ca_file))?;
        let (mongo_url, mongo_db) = mongo(self.mongo_url.or(file.mongo_url), self.mongo_db.or(file.mongo_db))?;
        let keys = key_prefix(self.key_prefix.or(file.key_prefix))?;
        let jwt_secret =
            self.jwt_secret.or(file.jwt_secret).ok_or_else(|| missing("jwt-secret", "CONFAB_JWT_SECRET"))?;
        if jwt_secret.len() < 32 {
            return Err(invalid("jwt-secret", "CONFAB_JWT_SECRET", "must be at least 32 bytes"));
        }
        let node_id = self.node_id.or(file.node_id).unwrap_or_else(random_node_id);
        if node_id.is_empty()
            || node_id.len() > 64
            || !node_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid("node-id", "CONFAB_NODE_ID", "must be 1-64 of [A-Za-z0-9_.-]"));
        }
        let token_ttl_secs = self.token_ttl_secs.or(file.token_ttl_secs).unwrap_or(3600);
        if !(60..=30 * 86_400).contains(&token_ttl_secs) {
            return Err(invalid("token-ttl-secs", "CONFAB_TOKEN_TTL_SECS", "must be between 60 and 2592000"));
        }
        let max_message_bytes = self.max_message_bytes.or(file.max_message_bytes).unwrap_or(64 * 1024);
        if !(1024..=64 << 20).contains(&max_message_bytes) {
            return Err(invalid("max-message-bytes", "CONFAB_MAX_MESSAGE_BYTES", "must be between 1024 and 67108864"));
        }
        let outbound_queue = self.outbound_queue.or(file.outbound_queue).unwrap_or(1024);
        if !(8..=1_000_000).contains(&outbound_queue) {
            return Err(invalid("outbound-queue", "CONFAB_OUTBOUND_QUEUE", "must be between 8 and 1000000"));
        }
        let header_timeout_secs = self.header_timeout_secs.or(file.header_timeout_secs).unwrap_or(10);
        if !(1..=600).contains(&header_timeout_secs) {
            return Err(invalid("header-timeout-secs", "CONFAB_HEADER_TIMEOUT_SECS", "must be between 1 and 600"));
        }
        let idle_timeout_secs = self.idle_timeout_secs.or(file.idle_timeout_secs).unwrap_or(60);
        if !(1..=3600).contains(&idle_timeout_secs) {
            return Err(invalid("idle-timeout-secs", "CONFAB_IDLE_TIMEOUT_SECS", "must be between 1 and 3600"));
        }
        let ping_interval_secs = self.ping_interval_secs.or(file.ping_interval_secs).unwrap_or(25);
        if !(1..=3600).contains(&ping_interval_secs) {
            return Err(invalid("ping-interval-secs", "CONFAB_PING_INTERVAL_SECS", "must be between 1 and 3600"));
        }
        let allowed_origins = self
            .allowed_origins
            .or(file.allowed_origins)
            .unwrap_or_default()
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .filter(|o| !o.is_empty())
            .collect::<Vec<_>>();
        if let Some(bad) = allowed_origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://"))) {
            return Err(invalid(
                "allowed-origins",
                "CONFAB_ALLOWED_ORIGINS",
                format!("`{bad}` is not an http(s) origin"),
            ));
        }
        let pubsub_buffer = self.pubsub_buffer.or(file.pubsub_buffer).unwrap_or(16_384);
        if !(64..=4_194_304).contains(&pubsub_buffer) {
            return Err(invalid("pubsub-buffer", "CONFAB_PUBSUB_BUFFER", "must be between 64 and 4194304"));
        }
        let fanout_lanes = match self.fanout_lanes.or(file.fanout_lanes).unwrap_or(0) {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()).min(crate::gateway::lanes::MAX_LANES),
            n if n <= crate::gateway::lanes::MAX_LANES => n,
            _ => return Err(invalid("fanout-lanes", "CONFAB_FANOUT_LANES", "must be between 0 and 64")),
        };
        let fanout_split_at = self.fanout_split_at.or(file.fanout_split_at).unwrap_or(crate::gateway::lanes::SPLIT_AT);
        if !(1..=1_000_000).contains(&fanout_split_at) {
            return Err(invalid("fanout-split-at", "CONFAB_FANOUT_SPLIT_AT", "must be between 1 and 1000000"));
        }
        let cache_ttl_secs = self.cache_ttl_secs.or(file.cache_ttl_secs).unwrap_or(300);
        if cache_ttl_secs > 86_400 {
            return Err(invalid("cache-ttl-secs", "CONFAB_CACHE_TTL_SECS", "must be between 0 and 86400"));
        }
        let gap_wait_ms = self.gap_wait_ms.or(file.gap_wait_ms).unwrap_or(250);
        if !(1..=10_000).contains(&gap_wait_ms) {
            return Err(invalid("gap-wait-ms", "CONFAB_GAP_WAIT_MS", "must be between 1 and 10000"));
        }
        let d = RateLimits::default();
        let rest_per_minute = self.rest_rate_per_minute.or(file.rest_rate_per_minute).unwrap_or(d.rest_per_minute);
        if rest_per_minute > 1_000_000 {
            return Err(invalid(
                "rest-rate-per-minute",
                "CONFAB_REST_RATE_PER_MINUTE",
                "must be between 0 and 1000000",
            ));
        }
        let socket_per_sec = self.socket_rate_per_sec.or(file.socket_rate_per_sec).unwrap_or(d.socket_per_sec);
        if socket_per_sec > 1_000_000 {
            return Err(invalid("socket-rate-per-sec", "CONFAB_SOCKET_RATE_PER_SEC", "must be between 0 and 1000000"));
        }
        let socket_burst = self.socket_burst.or(file.socket_burst).unwrap_or(d.socket_burst);
        if !(1..=1_000_000).contains(&socket_burst) {
            return Err(invalid("socket-burst", "CONFAB_SOCKET_BURST", "must be between 1 and 1000000"));
        }
        let socket_max_rejections =
            self.socket_max_rejections.or(file.socket_max_rejections).unwrap_or(d.socket_max_rejections);
        if !(1..=1_000_000).contains(&socket_max_rejections) {
            return Err(invalid(
                "socket-max-rejections",
                "CONFAB_SOCKET_MAX_REJECTIONS",
                "must be between 1 and 1000000",
            ));
        }
        let login_max_failures = self.login_max_failures.or(file.login_max_failures).unwrap_or(d.login_max_failures);
        if login_max_failures > 1_000_000 {
            return Err(invalid("login-max-failures", "CONFAB_LOGIN_MAX_FAILURES", "must be between 0 and 1000000"));
        }
        let login_window_secs = self.login_window_secs.or(file.login_window_secs).unwrap_or(d.login_window.as_secs());
        if !(1..=86_400).contains(&login_window_secs) {
            return Err(invalid("login-window-secs", "CONFAB_LOGIN_WINDOW_SECS", "must be between 1 and 86400"));
        }
        let api_per_minute = self.api_rate_per_minute.or(file.api_rate_per_minute).unwrap_or(d.api_per_minute);
        if api_per_minute > 1_000_000 {
            return Err(invalid("api-rate-per-minute", "CONFAB_API_RATE_PER_MINUTE", "must be between 0 and 1000000"));
        }
        let auth_per_minute = self.auth_rate_per_minute.or(file.auth_rate_per_minute).unwrap_or(d.auth_per_minute);
        if auth_per_minute > 1_000_000 {
            return Err(invalid(
                "auth-rate-per-minute",
                "CONFAB_AUTH_RATE_PER_MINUTE",
                "must be between 0 and 1000000",
            ));
        }
        let trusted_proxies = self
            .trusted_proxies
            .or(file.trusted_proxies)
            .unwrap_or_else(|| "127.0.0.0/8,::1".into())
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| {
                Cidr::parse(p).ok_or_else(|| {
                    invalid(
                        "trusted-proxies",
                        "CONFAB_TRUSTED_PROXIES",
                        format!("`{p}` is not an address or CIDR range"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let max_sockets_per_user = self.max_sockets_per_user.or(file.max_sockets_per_user).unwrap_or(50);
        if max_sockets_per_user > 100_000 {
            return Err(invalid("max-sockets-per-user", "CONFAB_MAX_SOCKETS_PER_USER", "must be between 0 and 100000"));
        }
        let rate_limits = RateLimits {
            rest_per_minute,
            socket_per_sec,
            socket_burst,
            socket_max_rejections,
            login_max_failures,
            login_window: Duration::from_secs(login_window_secs),
            api_per_minute,
            auth_per_minute,
        };
        let presence_grace_ms = self.presence_grace_ms.or(file.presence_grace_ms).unwrap_or(5000);
        if presence_grace_ms > 600_000 {
            return Err(invalid("presence-grace-ms", "CONFAB_PRESENCE_GRACE_MS", "must be between 0 and 600000"));
        }
        let node_heartbeat_secs = self.node_heartbeat_secs.or(file.node_heartbeat_secs).unwrap_or(5);
        if !(1..=60).contains(&node_heartbeat_secs) {
            return Err(invalid("node-heartbeat-secs", "CONFAB_NODE_HEARTBEAT_SECS", "must be between 1 and 60"));
        }
        let node_ttl_secs = self.node_ttl_secs.or(file.node_ttl_secs).unwrap_or(15);
        if !(2 * node_heartbeat_secs..=600).contains(&node_ttl_secs) {
            return Err(invalid(
                "node-ttl-secs",
                "CONFAB_NODE_TTL_SECS",
                format!("must be between twice --node-heartbeat-secs ({}) and 600", 2 * node_heartbeat_secs),
            ));
        }
        Ok(Config {
            listen,
            redis,
            mongo_url,
            mongo_db,
            keys,
            jwt_secret,
            node_id,
            token_ttl: Duration::from_secs(token_ttl_secs),
            max_message_bytes,
            outbound_queue,
            header_timeout: Duration::from_secs(header_timeout_secs),
            idle_timeout: Duration::from_secs(idle_timeout_secs),
            ping_interval: Duration::from_secs(ping_interval_secs),
            allowed_origins,
            pubsub_buffer,
            fanout_lanes,
            fanout_split_at,
            echo_endpoint: self.echo_endpoint.or(file.echo_endpoint).unwrap_or(false),
            cache_ttl: Duration::from_secs(cache_ttl_secs),
            gap_wait: Duration::from_millis(gap_wait_ms),
            rate_limits,
            trusted_proxies,
            max_sockets_per_user,
            presence_grace: Duration::from_millis(presence_grace_ms),
            node_heartbeat: Duration::from_secs(node_heartbeat_secs),
            node_ttl: Duration::from_secs(node_ttl_secs),
        })
    }
}

/// The config file's settings (none without a file).
fn read_file(path: Option<&std::path::Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else { return Ok(FileConfig::default()) };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid("config", "CONFAB_CONFIG", format!("{}: {e}", path.display())))?;
    toml::from_str::<FileConfig>(&text).map_err(|e| {
        let msg = e.message().to_string();
        invalid("config", "CONFAB_CONFIG", format!("{}: {msg}", path.display()))
    })
}

/// The MongoDB URL (required) and database name, checked.
fn mongo(url: Option<String>, db: Option<String>) -> Result<(String, String), ConfigError> {
    let url = url.ok_or_else(|| missing("mongo-url", "CONFAB_MONGO_URL"))?;
    if !(url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")) {
        return Err(invalid("mongo-url", "CONFAB_MONGO_URL", "must start with mongodb:// or mongodb+srv://"));
    }
    let db = db.unwrap_or_else(|| "confab".into());
    if db.is_empty() || db.len() > 63 || db.contains(['/', '\\', '.', ' ', '"', '$']) {
        return Err(invalid("mongo-db", "CONFAB_MONGO_DB", "must be 1-63 characters without / \\ . space \" $"));
    }
    Ok((url, db))
}

/// The Redis URL (required) and CA file, checked.
pub(crate) fn redis(url: Option<String>, ca_file: Option<PathBuf>) -> Result<RedisConfig, ConfigError> {
    let url = url.ok_or_else(|| missing("redis-url", "CONFAB_REDIS_URL"))?;
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(invalid("redis-url", "CONFAB_REDIS_URL", "must start with redis:// or rediss://"));
    }
    if let Some(path) = &ca_file {
        if !path.is_file() {
            return Err(invalid("redis-ca-file", "CONFAB_REDIS_CA_FILE", format!("{} is not a file", path.display())));
        }
    }
    let redis = RedisConfig { url, ca_file };
    // Parses the URL and loads the CA now, so that a bad one stops the start.
    redis.builder(16).map_err(|e| invalid("redis-url", "CONFAB_REDIS_URL", e))?;
    Ok(redis)
}

/// The Redis key prefix (`--key-prefix`), checked, as the keyspace it names.
pub(crate) fn key_prefix(value: Option<String>) -> Result<Keyspace, ConfigError> {
    let prefix = value.unwrap_or_else(|| crate::keyspace::DEFAULT_PREFIX.into());
    if !crate::keyspace::valid_prefix(&prefix) {
        return Err(invalid("key-prefix", "CONFAB_KEY_PREFIX", "must be 1-64 of [A-Za-z0-9_.-]"));
    }
    Ok(Keyspace::new(&prefix))
}

/// The settings of commands that only talk to MongoDB (`confab apikey`):
/// the same flags, variables and file keys as `confab serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// TOML file with the settings (the same file `confab serve` reads).
    #[arg(long, env = "CONFAB_CONFIG")]
    pub config: Option<PathBuf>,
    /// MongoDB URL.
    #[arg(long, env = "CONFAB_MONGO_URL")]
    pub mongo_url: Option<String>,
    /// MongoDB database name.
    #[arg(long, env = "CONFAB_MONGO_DB")]
    pub mongo_db: Option<String>,
}

impl StoreArgs {
    /// The MongoDB URL and database name.
    pub fn resolve(self) -> Result<(String, String), ConfigError> {
        let file = read_file(self.config.as_deref())?;
        mongo(self.mongo_url.or(file.mongo_url), self.mongo_db.or(file.mongo_db))
    }
}

fn random_node_id() -> String {
    format!("node-{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ServeArgs {
        ServeArgs {
            redis_url: Some("redis://127.0.0.1:6379".into()),
            mongo_url: Some("mongodb://127.0.0.1:27017".into()),
            jwt_secret: Some("x".repeat(32)),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let c = base().resolve().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.mongo_db, "confab");
        assert_eq!(c.max_message_bytes, 65536);
        assert!(c.node_id.starts_with("node-"));
    }

    #[test]
    fn missing_secret_names_the_setting() {
        let err = ServeArgs { jwt_secret: None, ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--jwt-secret (CONFAB_JWT_SECRET)"), "{err}");
    }

    #[test]
    fn bad_listen_and_urls_are_rejected() {
        let err = ServeArgs { listen: Some("nope".into()), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--listen"), "{err}");
        let err = ServeArgs { redis_url: Some("http://x".into()), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--redis-url"), "{err}");
        let err = ServeArgs { jwt_secret: Some("short".into()), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("at least 32"), "{err}");
    }

    #[test]
    fn file_fills_gaps_but_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9999\"\nmongo_db = \"fromfile\"\n").unwrap();
        let c = ServeArgs { config: Some(path), mongo_db: Some("fromflag".into()), ..base() }.resolve().unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.mongo_db, "fromflag");
    }

    #[test]
    fn rate_limits_default_and_come_from_the_file() {
        assert_eq!(base().resolve().unwrap().rate_limits, RateLimits::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "rest_rate_per_minute = 0\nsocket_burst = 5\nlogin_window_secs = 60\n").unwrap();
        let c = ServeArgs { config: Some(path), socket_rate_per_sec: Some(7), ..base() }.resolve().unwrap();
        let l = c.rate_limits;
        assert_eq!((l.rest_per_minute, l.socket_per_sec, l.socket_burst), (0, 7, 5));
        assert_eq!((l.login_max_failures, l.login_window), (10, Duration::from_secs(60)));
        assert_eq!(l.api_per_minute, 10_000);
        let path = dir.path().join("api.toml");
        std::fs::write(&path, "api_rate_per_minute = 60\n").unwrap();
        assert_eq!(ServeArgs { config: Some(path), ..base() }.resolve().unwrap().rate_limits.api_per_minute, 60);
    }

    #[test]
    fn bad_rate_limits_name_the_setting() {
        let cases = [
            (ServeArgs { rest_rate_per_minute: Some(1_000_001), ..base() }, "--rest-rate-per-minute"),
            (ServeArgs { socket_rate_per_sec: Some(1_000_001), ..base() }, "--socket-rate-per-sec"),
            (ServeArgs { socket_burst: Some(0), ..base() }, "--socket-burst (CONFAB_SOCKET_BURST)"),
            (ServeArgs { socket_max_rejections: Some(0), ..base() }, "--socket-max-rejections"),
            (ServeArgs { login_max_failures: Some(1_000_001), ..base() }, "--login-max-failures"),
            (ServeArgs { login_window_secs: Some(0), ..base() }, "--login-window-secs (CONFAB_LOGIN_WINDOW_SECS)"),
            (
                ServeArgs { api_rate_per_minute: Some(1_000_001), ..base() },
                "--api-rate-per-minute (CONFAB_API_RATE_PER_MINUTE)",
            ),
        ];
        for (args, name) in cases {
            let err = args.resolve().unwrap_err();
            assert!(err.0.contains(name), "{err}");
        }
    }

    #[test]
    fn store_commands_read_the_same_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "mongo_url = \"mongodb://db:27017\"\nredis_url = \"redis://r\"\n").unwrap();
        let (url, db) = StoreArgs { config: Some(path), ..Default::default() }.resolve().unwrap();
        assert_eq!((url.as_str(), db.as_str()), ("mongodb://db:27017", "confab"));
        let err = StoreArgs::default().resolve().unwrap_err();
        assert!(err.0.contains("--mongo-url (CONFAB_MONGO_URL)"), "{err}");
        let args =
            StoreArgs { mongo_url: Some("mongodb://x".into()), mongo_db: Some("a.b".into()), ..Default::default() };
        assert!(args.resolve().unwrap_err().0.contains("--mongo-db"));
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "lissten = \"x\"\n").unwrap();
        let err = ServeArgs { config: Some(path), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--config") && err.0.contains("lissten"), "{err}");
    }

    #[test]
    fn fanout_lanes_default_to_one_per_core_and_are_bounded() {
        let c = base().resolve().unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!((c.fanout_lanes, c.fanout_split_at), (cores.min(64), 64));
        let c = ServeArgs { fanout_lanes: Some(1), fanout_split_at: Some(2), ..base() }.resolve().unwrap();
        assert_eq!((c.fanout_lanes, c.fanout_split_at), (1, 2));
        let err = ServeArgs { fanout_lanes: Some(65), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--fanout-lanes (CONFAB_FANOUT_LANES)"), "{err}");
        let err = ServeArgs { fanout_split_at: Some(0), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--fanout-split-at (CONFAB_FANOUT_SPLIT_AT)"), "{err}");
    }

    #[test]
    fn presence_timings_are_checked_together() {
        let c = base().resolve().unwrap();
        assert_eq!((c.presence_grace.as_millis(), c.node_heartbeat.as_secs(), c.node_ttl.as_secs()), (5000, 5, 15));
        let err = ServeArgs { node_heartbeat_secs: Some(5), node_ttl_secs: Some(9), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--node-ttl-secs (CONFAB_NODE_TTL_SECS)"), "{err}");
        let err = ServeArgs { node_heartbeat_secs: Some(0), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--node-heartbeat-secs"), "{err}");
        let err = ServeArgs { presence_grace_ms: Some(600_001), ..base() }.resolve().unwrap_err();
        assert!(err.0.contains("--presence-grace-ms"), "{err}");
    }
}

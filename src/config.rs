//! Settings, declared once: each is a field of a clap `Args` struct with its
//! flag, its `CONFAB_*` environment variable, its default and its check.
//!
//! A TOML file (`--config FILE` / `CONFAB_CONFIG`) fills in what the command
//! line and the environment leave unset: its keys are the flag names with
//! `_` for `-`, and before the command line is parsed each key's value
//! becomes its setting's default. So the precedence is clap's own (flag,
//! variable, file, built-in default), and every value, wherever it came
//! from, passes the same check. A bad setting stops the command with one
//! line naming the flag and the variable.
//!
//! [`Config`] is a node's settings (`confab serve`); the worker's are in
//! `jobs::config`. Both flatten the shared [`RedisConfig`] and
//! [`MongoConfig`].

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command};

pub use crate::backend::mongo::MongoConfig;
pub use crate::backend::redis::RedisConfig;
use crate::keyspace::Keyspace;

/// The `iss` and `aud` of access tokens, unless configured.
pub const DEFAULT_JWT_ISSUER: &str = "confab";
pub const DEFAULT_JWT_AUDIENCE: &str = "confab";

/// Most fan-out lanes a node may run.
pub const MAX_LANES: usize = 64;

/// Local receivers from which an event is split over the lanes, unless configured.
pub const SPLIT_AT: usize = 64;

/// `--seq-void-after-ms` unless configured, as clap takes a default.
pub const SEQ_VOID_AFTER_MS: &str = "5000";

/// `--seq-void-after-ms` unless configured: how long a seq may be missing
/// below a stored one before catch-up reads void it. A client that must see
/// every hole settled (the chaos soak's final catch-up) waits longer.
pub fn default_seq_void_after() -> Duration {
    Duration::from_millis(SEQ_VOID_AFTER_MS.parse().expect("SEQ_VOID_AFTER_MS is a number"))
}

/// A node's settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on for HTTP and WebSocket traffic.
    #[arg(long, env = "CONFAB_LISTEN", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub redis: RedisConfig,
    #[command(flatten)]
    pub mongo: MongoConfig,
    /// Prefix of every Redis key and channel; nodes and workers of one
    /// deployment share it (change it only to share one Redis between deployments).
    #[arg(long = "key-prefix", env = "CONFAB_KEY_PREFIX", default_value = "confab", value_parser = parse_keyspace)]
    pub keys: Keyspace,
    /// Secret that signs access tokens (at least 32 bytes); all nodes share it.
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret: String,
    /// Comma-separated earlier secrets: tokens they signed are still
    /// accepted, so the secret rotates without logging anyone out.
    #[arg(long, env = "CONFAB_JWT_PREVIOUS_SECRETS", default_value = "", hide_env_values = true, hide_default_value = true, value_parser = parse_secrets)]
    pub jwt_previous_secrets: Secrets,
    /// The `iss` claim of access tokens (checked on every token).
    #[arg(long, env = "CONFAB_JWT_ISSUER", default_value = DEFAULT_JWT_ISSUER, value_parser = parse_claim)]
    pub jwt_issuer: String,
    /// The `aud` claim of access tokens (checked on every token).
    #[arg(long, env = "CONFAB_JWT_AUDIENCE", default_value = DEFAULT_JWT_AUDIENCE, value_parser = parse_claim)]
    pub jwt_audience: String,
    /// This node's id in logs and metrics (default: random).
    #[arg(long, env = "CONFAB_NODE_ID", default_value_t = random_id("node"), hide_default_value = true, value_parser = parse_name)]
    pub node_id: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long = "token-ttl-secs", env = "CONFAB_TOKEN_TTL_SECS", default_value = "900", value_parser = secs(60, 86_400))]
    pub token_ttl: Duration,
    /// Lifetime of a login session without use, in seconds: each refresh
    /// extends it by this much.
    #[arg(long = "refresh-ttl-secs", env = "CONFAB_REFRESH_TTL_SECS", default_value = "2592000", value_parser = secs(300, 365 * 86_400))]
    pub refresh_ttl: Duration,
    /// Accept access tokens without a session (`sid`), as `confab token`
    /// mints them for load tests: off, every token must belong to a live session.
    #[arg(long, env = "CONFAB_SESSIONLESS_TOKENS", default_value_t = false, action = clap::ArgAction::Set)]
    pub sessionless_tokens: bool,
    /// Largest WebSocket message accepted, in bytes (whole message, all fragments).
    #[arg(long, env = "CONFAB_MAX_MESSAGE_BYTES", default_value = "65536", value_parser = count(1024, 64 << 20))]
    pub max_message_bytes: usize,
    /// Frames queued for one connection before it is cut off as a slow consumer.
    #[arg(long, env = "CONFAB_OUTBOUND_QUEUE", default_value = "1024", value_parser = count(8, 1_000_000))]
    pub outbound_queue: usize,
    /// Bytes of kernel send buffer per connection (`SO_SNDBUF`; the kernel
    /// doubles it). 0: the kernel sizes it, up to `net.ipv4.tcp_wmem`'s
    /// maximum. A fixed size bounds the memory a connection that does not
    /// read can hold, so a slow consumer reaches `outbound_queue` sooner.
    #[arg(long = "socket-send-buffer-bytes", env = "CONFAB_SOCKET_SEND_BUFFER_BYTES", default_value = "0", value_parser = count(0, 64 << 20))]
    pub socket_send_buffer: usize,
    /// Seconds a connection may take to send a request's head once it began.
    #[arg(long = "header-timeout-secs", env = "CONFAB_HEADER_TIMEOUT_SECS", default_value = "10", value_parser = secs(1, 600))]
    pub header_timeout: Duration,
    /// Seconds a connection may wait for its first or next request (keep-alive).
    #[arg(long = "idle-timeout-secs", env = "CONFAB_IDLE_TIMEOUT_SECS", default_value = "60", value_parser = secs(1, 3600))]
    pub idle_timeout: Duration,
    /// Seconds between server pings; two unanswered pings drop the connection.
    #[arg(long = "ping-interval-secs", env = "CONFAB_PING_INTERVAL_SECS", default_value = "25", value_parser = secs(1, 3600))]
    pub ping_interval: Duration,
    /// Comma-separated Origins allowed to open WebSockets (empty: any).
    #[arg(long, env = "CONFAB_ALLOWED_ORIGINS", default_value = "", value_parser = parse_origins)]
    pub allowed_origins: Origins,
    /// Pub/Sub messages buffered between Redis and the fan-out task.
    #[arg(long, env = "CONFAB_PUBSUB_BUFFER", default_value = "16384", value_parser = count(64, 4_194_304))]
    pub pubsub_buffer: usize,
    /// Threads that write a big room's fan-out, the bus reader's included
    /// (0: one per core; 1: the bus reader writes everything).
    #[arg(long, env = "CONFAB_FANOUT_LANES", default_value = "0", value_parser = parse_lanes)]
    pub fanout_lanes: usize,
    /// Local receivers from which an event is split over the fan-out lanes.
    #[arg(long, env = "CONFAB_FANOUT_SPLIT_AT", default_value_t = SPLIT_AT, value_parser = count(1, 1_000_000))]
    pub fanout_split_at: usize,
    /// Offer permessage-deflate (RFC 7692) to WebSocket clients that ask for it.
    #[arg(long, env = "CONFAB_WS_DEFLATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub ws_deflate: bool,
    /// With permessage-deflate on: frames smaller than this many bytes go uncompressed.
    #[arg(long, env = "CONFAB_WS_DEFLATE_MIN_BYTES", default_value = "256", value_parser = count(0, 64 << 20))]
    pub ws_deflate_min_bytes: usize,
    /// Serve the RFC 6455 conformance echo endpoint at /ws/echo (for test runs).
    #[arg(long, env = "CONFAB_ECHO_ENDPOINT", default_value_t = false, action = clap::ArgAction::Set)]
    pub echo_endpoint: bool,
    /// Seconds a cached room list or history page may live in Redis (0: no cache).
    #[arg(long = "cache-ttl-secs", env = "CONFAB_CACHE_TTL_SECS", default_value = "300", value_parser = secs(0, 86_400))]
    pub cache_ttl: Duration,
    /// Milliseconds a gap in a room's live seqs may stay open before it is filled from history.
    #[arg(long = "gap-wait-ms", env = "CONFAB_GAP_WAIT_MS", default_value = "250", value_parser = millis(1, 10_000))]
    pub gap_wait: Duration,
    /// Milliseconds after a later message was stored that a seq still
    /// missing below it is given up for good (voided): catch-up reads wait
    /// this long for a slow write before they read past its seq.
    #[arg(long = "seq-void-after-ms", env = "CONFAB_SEQ_VOID_AFTER_MS", default_value = SEQ_VOID_AFTER_MS, value_parser = millis(100, 600_000))]
    pub seq_void_after: Duration,
    #[command(flatten)]
    pub rate_limits: RateLimits,
    /// Comma-separated addresses or CIDR ranges of proxies whose
    /// X-Forwarded-For names the client.
    #[arg(long, env = "CONFAB_TRUSTED_PROXIES", default_value = "127.0.0.0/8,::1", value_parser = parse_proxies)]
    pub trusted_proxies: Proxies,
    /// Simultaneous WebSocket connections one user may hold, cluster-wide (0: no limit).
    #[arg(long, env = "CONFAB_MAX_SOCKETS_PER_USER", default_value = "50", value_parser = count32(0, 100_000))]
    pub max_sockets_per_user: u32,
    /// Milliseconds a user stays online after their last connection closes,
    /// so that a quick reconnect is not seen as going offline and back.
    #[arg(long = "presence-grace-ms", env = "CONFAB_PRESENCE_GRACE_MS", default_value = "5000", value_parser = millis(0, 600_000))]
    pub presence_grace: Duration,
    /// Seconds between this node's heartbeats in Redis (also how often it
    /// sweeps the connections of nodes whose heartbeat has expired).
    #[arg(long = "node-heartbeat-secs", env = "CONFAB_NODE_HEARTBEAT_SECS", default_value = "5", value_parser = secs(1, 60))]
    pub node_heartbeat: Duration,
    /// Seconds after its last heartbeat that a node counts as dead and its
    /// users' connections are swept (at least twice the heartbeat).
    #[arg(long = "node-ttl-secs", env = "CONFAB_NODE_TTL_SECS", default_value = "15", value_parser = secs(2, 600))]
    pub node_ttl: Duration,
    /// OpenTelemetry collector to send traces to over OTLP/HTTP: its base
    /// URL (`/v1/traces` is added) or the whole traces URL. Empty: no traces.
    #[arg(long, env = "CONFAB_OTLP_ENDPOINT", default_value = "", value_parser = parse_endpoint)]
    pub otlp_endpoint: String,
}

/// Rate limits (docs/adr/0006-rate-limits.md). A zero rate turns that limit off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct RateLimits {
    /// REST requests per user per minute, shared by all nodes (0: no limit).
    #[arg(long = "rest-rate-per-minute", env = "CONFAB_REST_RATE_PER_MINUTE", default_value = "1000", value_parser = count32(0, 1_000_000))]
    pub rest_per_minute: u32,
    /// WebSocket frames per second per connection (0: no limit).
    #[arg(long = "socket-rate-per-sec", env = "CONFAB_SOCKET_RATE_PER_SEC", default_value = "20", value_parser = count32(0, 1_000_000))]
    pub socket_per_sec: u32,
    /// Most WebSocket frames a connection may send at once, before its rate applies.
    #[arg(long = "socket-burst", env = "CONFAB_SOCKET_BURST", default_value = "40", value_parser = count32(1, 1_000_000))]
    pub socket_burst: u32,
    /// Frames refused for rate within 10 s that close a connection with 1008.
    #[arg(long = "socket-max-rejections", env = "CONFAB_SOCKET_MAX_REJECTIONS", default_value = "100", value_parser = count32(1, 1_000_000))]
    pub socket_max_rejections: u32,
    /// Failed logins per username per window before logins are refused (0: no limit).
    #[arg(long = "login-max-failures", env = "CONFAB_LOGIN_MAX_FAILURES", default_value = "10", value_parser = count32(0, 1_000_000))]
    pub login_max_failures: u32,
    /// The window failed logins are counted in, in seconds.
    #[arg(long = "login-window-secs", env = "CONFAB_LOGIN_WINDOW_SECS", default_value = "900", value_parser = secs(1, 86_400))]
    pub login_window: Duration,
    /// Server API requests per API key per minute, shared by all nodes (0: no limit).
    #[arg(long = "api-rate-per-minute", env = "CONFAB_API_RATE_PER_MINUTE", default_value = "10000", value_parser = count32(0, 1_000_000))]
    pub api_per_minute: u32,
    /// Registrations and logins per client address per minute, shared by all nodes (0: no limit).
    #[arg(long = "auth-rate-per-minute", env = "CONFAB_AUTH_RATE_PER_MINUTE", default_value = "30", value_parser = count32(0, 1_000_000))]
    pub auth_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        defaults::<RateLimits>(&[])
    }
}

impl Config {
    /// The defaults, with Redis and MongoDB at the given URLs and the given
    /// secret: what a test or an embedding program starts from.
    pub fn defaults(redis_url: &str, mongo_url: &str, jwt_secret: &str) -> Config {
        defaults::<Config>(&["--redis-url", redis_url, "--mongo-url", mongo_url, "--jwt-secret", jwt_secret])
    }

    /// The checks that span several settings (each setting is checked
    /// alone as it is parsed).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_ttl < 2 * self.node_heartbeat {
            return Err(invalid(
                "node-ttl-secs",
                "CONFAB_NODE_TTL_SECS",
                format!("must be at least twice --node-heartbeat-secs ({} s)", 2 * self.node_heartbeat.as_secs()),
            ));
        }
        self.redis.validate()
    }
}

/// Browser Origins allowed to open WebSockets, lower-cased, without a
/// trailing `/`; empty: any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(pub Vec<String>);

impl std::ops::Deref for Origins {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

/// Earlier token secrets, still accepted (never shown in logs).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(pub Vec<String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} hidden)", self.0.len())
    }
}

/// Proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies(pub Vec<Cidr>);

impl std::ops::Deref for Proxies {
    type Target = [Cidr];
    fn deref(&self) -> &[Cidr] {
        &self.0
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

// --- Parsing -----------------------------------------------------------------

/// A setting that is missing or invalid; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub fn invalid(flag: &str, env: &str, why: impl std::fmt::Display) -> ConfigError {
    // `why` may quote the value, which a multi-line TOML string can break
    // over lines: control characters are shown escaped, so the message
    // stays one line.
    let mut why_line = String::new();
    for c in why.to_string().chars() {
        if c.is_control() {
            why_line.extend(c.escape_default());
        } else {
            why_line.push(c);
        }
    }
    ConfigError(format!("invalid setting --{flag} ({env}): {why_line}"))
}

fn missing(flag: &str, env: &str) -> ConfigError {
    ConfigError(format!(
        "missing setting --{flag} ({env}); set the flag, the variable, or `{}` in the config file",
        flag.replace('-', "_")
    ))
}

/// What a clap parse ended with that is not a configuration.
pub enum Parsed<T> {
    Ok(T),
    /// `--help` or `--version`: clap's output, to print and exit with 0.
    Shown(clap::Error),
}

/// Parses a command line into `C`, whose subcommands may take `--config`:
/// the file given there fills in the defaults of that subcommand's settings.
/// `lenient` names subcommands that read another command's file and skip
/// the keys they do not know (operator commands reading a node's or a
/// worker's file); any other unknown key is an error.
pub fn parse<C: clap::Parser>(args: Vec<OsString>, lenient: &[&str]) -> Result<Parsed<C>, ConfigError> {
    parse_with(args, lenient, C::command())
}

/// [`parse`] with the command as `command` (`C::command()`, adjusted).
pub fn parse_with<C: clap::Parser>(
    args: Vec<OsString>,
    lenient: &[&str],
    command: Command,
) -> Result<Parsed<C>, ConfigError> {
    parse_reading(args, lenient, command, |file| std::fs::read_to_string(file))
}

/// [`parse_with`], with `read` giving the text of the file `--config` names
/// (`std::fs::read_to_string` for a real command line; a fuzz target gives
/// its bytes without a file).
pub fn parse_reading<C: clap::Parser>(
    args: Vec<OsString>,
    lenient: &[&str],
    command: Command,
    read: impl FnOnce(&Path) -> std::io::Result<String>,
) -> Result<Parsed<C>, ConfigError> {
    // A setting given twice takes its last value, as the environment would.
    let command = overriding(command);
    // A first pass that minds no error, to find the subcommand and its file.
    let first = command.clone().ignore_errors(true).try_get_matches_from(args.clone());
    let mut command = command;
    if let Ok(matches) = first {
        let mut path = Vec::new();
        let mut at = &matches;
        let mut file = None;
        while let Some((name, sub)) = at.subcommand() {
            path.push(name.to_string());
            if let Ok(Some(p)) = sub.try_get_one::<PathBuf>("config") {
                file = Some((path.clone(), p.clone()));
            }
            at = sub;
        }
        if let Some((path, file)) = file {
            let strict = !path.iter().any(|p| lenient.contains(&p.as_str()));
            command = with_file(command, &path, &file, read, strict)?;
        }
    }
    let matches = match command.clone().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Parsed::Shown(e));
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            return Ok(Parsed::Shown(e));
        }
        Err(e) => return Err(one_line(&command, &e)),
    };
    C::from_arg_matches(&matches).map(Parsed::Ok).map_err(|e| one_line(&command, &e))
}

/// `command` with the settings of the subcommand at `path` defaulting to
/// the file's values.
fn with_file(
    command: Command,
    path: &[String],
    file: &Path,
    read: impl FnOnce(&Path) -> std::io::Result<String>,
    strict: bool,
) -> Result<Command, ConfigError> {
    let bad = |why: String| invalid("config", "CONFAB_CONFIG", format!("{}: {why}", file.display()));
    let text = read(file).map_err(|e| bad(e.to_string()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        // The parser's message may run over several lines; ours is one.
        let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        match e.span() {
            Some(span) => {
                let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1;
                bad(format!("line {line}: {message}"))
            }
            None => bad(message),
        }
    })?;
    let mut values = Vec::new();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
                .collect::<Vec<_>>()
                .join(","),
            _ => return Err(bad(format!("`{key}` is not a string, number, boolean or list"))),
        };
        values.push((key, text));
    }
    let mut unknown = None;
    let command = at_path(command, path, &mut |sub: Command| {
        let mut sub = sub;
        for (key, text) in &values {
            let long = key.replace('_', "-");
            let id = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
                .map(|a| a.get_id().clone());
            match id {
                Some(id) => sub = sub.mut_arg(id, |a| a.default_value(clap::builder::OsStr::from(text.clone()))),
                None if strict => {
                    unknown.get_or_insert_with(|| key.clone());
                }
                None => {}
            }
        }
        sub
    });
    match unknown {
        Some(key) => Err(bad(format!("unknown setting `{key}`"))),
        None => Ok(command),
    }
}

fn overriding(command: Command) -> Command {
    let names: Vec<String> = command.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.iter().fold(command.args_override_self(true), |c, name| c.mut_subcommand(name, overriding))
}

fn at_path(command: Command, path: &[String], f: &mut dyn FnMut(Command) -> Command) -> Command {
    match path.split_first() {
        None => f(command),
        Some((first, rest)) => command.mut_subcommand(first, |sub| at_path(sub, rest, f)),
    }
}

/// A clap error as one line naming the setting and its variable.
fn one_line(command: &Command, e: &clap::Error) -> ConfigError {
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    let flag = arg.as_deref().and_then(|a| a.strip_prefix("--")).map(|a| a.split([' ', '=', '<']).next().unwrap_or(a));
    // An argument found missing only when the settings are read names its id.
    let by_id = (e.kind() == ErrorKind::MissingRequiredArgument && flag.is_none())
        .then(|| first_line(e).rsplit(": ").next().and_then(|id| long_of(command, id.trim())))
        .flatten();
    let flag = flag.or(by_id.as_deref());
    let env = flag.and_then(|f| env_of(command, f)).unwrap_or_default();
    match (e.kind(), flag) {
        (ErrorKind::MissingRequiredArgument, Some(flag)) => missing(flag, &env),
        (ErrorKind::ValueValidation | ErrorKind::InvalidValue, Some(flag)) => {
            let why = std::error::Error::source(e).map_or_else(
                || first_line(e).rsplit(": ").next().unwrap_or("not valid").to_string(),
                |s| s.to_string(),
            );
            invalid(flag, &env, why)
        }
        _ => ConfigError(first_line(e)),
    }
}

fn first_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// The flag of the setting whose id is `id`, in any subcommand of `command`.
fn long_of(command: &Command, id: &str) -> Option<String> {
    for arg in command.get_arguments() {
        if arg.get_id() == id {
            return arg.get_long().map(str::to_owned);
        }
    }
    command.get_subcommands().find_map(|sub| long_of(sub, id))
}

/// The environment variable of the setting whose flag is `--long`, in any
/// subcommand of `command`.
fn env_of(command: &Command, long: &str) -> Option<String> {
    for arg in command.get_arguments() {
        if arg.get_long() == Some(long) {
            return arg.get_env().map(|e| e.to_string_lossy().into_owned());
        }
    }
    command.get_subcommands().find_map(|sub| env_of(sub, long))
}

/// `A` with nothing given but `args`: its defaults.
pub(crate) fn defaults<A: Args>(args: &[&str]) -> A {
    let command = A::augment_args(Command::new("defaults").no_binary_name(true));
    // The environment must not leak in: parse with every env lookup off.
    let command = strip_env(command);
    let matches = command.try_get_matches_from(args).expect("the defaults parse");
    A::from_arg_matches(&matches).expect("the defaults parse")
}

fn strip_env(command: Command) -> Command {
    let ids: Vec<clap::Id> = command.get_arguments().map(|a| a.get_id().clone()).collect();
    ids.into_iter().fold(command, |c, id| c.mut_arg(id, |a| a.env(None::<&str>)))
}

// --- Value parsers -------------------------------------------------------------

pub(crate) fn secs(lo: u64, hi: u64) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64).range(lo..=hi).map(Duration::from_secs)
}

pub(crate) fn millis(lo: u64, hi: u64) -> impl TypedValueParser<Value = Duration> {
    clap::value_parser!(u64).range(lo..=hi).map(Duration::from_millis)
}

pub(crate) fn count(lo: u64, hi: u64) -> impl TypedValueParser<Value = usize> {
    clap::value_parser!(u64).range(lo..=hi).map(|n| n as usize)
}

pub(crate) fn count32(lo: u32, hi: u32) -> impl TypedValueParser<Value = u32> {
    clap::value_parser!(u32).range(i64::from(lo)..=i64::from(hi))
}

fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    raw.parse().map_err(|_| format!("`{raw}` is not host:port"))
}

fn parse_secret(raw: &str) -> Result<String, String> {
    if raw.len() < 32 {
        return Err("must be at least 32 bytes".into());
    }
    Ok(raw.to_string())
}

/// A node's or worker's name: 1-64 of `[A-Za-z0-9_.-]`.
pub fn parse_name(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 64 || !raw.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err("must be 1-64 of [A-Za-z0-9_.-]".into());
    }
    Ok(raw.to_string())
}

/// `<kind>-` and eight random hex digits.
pub fn random_id(kind: &str) -> String {
    format!("{kind}-{:08x}", rand::random::<u32>())
}

pub fn parse_keyspace(raw: &str) -> Result<Keyspace, String> {
    if !crate::keyspace::valid_prefix(raw) {
        return Err("must be 1-64 of [A-Za-z0-9_.-]".into());
    }
    Ok(Keyspace::new(raw))
}

fn parse_secrets(raw: &str) -> Result<Secrets, String> {
    let secrets = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
    let checked = secrets.map(|s| parse_secret(s).map_err(|e| format!("each secret {e}")));
    Ok(Secrets(checked.collect::<Result<_, _>>()?))
}

/// An `iss` or `aud` value: 1-128 printable ASCII characters.
fn parse_claim(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.len() > 128 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be 1-128 printable ASCII characters, no spaces".into());
    }
    Ok(raw.to_string())
}

fn parse_origins(raw: &str) -> Result<Origins, String> {
    let origins: Vec<String> =
        raw.split(',').map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase()).filter(|o| !o.is_empty()).collect();
    if let Some(bad) = origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://"))) {
        return Err(format!("`{bad}` is not an http(s) origin"));
    }
    Ok(Origins(origins))
}

fn parse_endpoint(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if !(raw.is_empty() || raw.starts_with("http://") || raw.starts_with("https://")) {
        return Err(format!("`{raw}` is not an http(s) URL"));
    }
    Ok(raw.to_string())
}

fn parse_lanes(raw: &str) -> Result<usize, String> {
    match raw.parse::<usize>() {
        Ok(0) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_LANES)),
        Ok(n) if n <= MAX_LANES => Ok(n),
        _ => Err(format!("must be between 0 and {}", MAX_LANES)),
    }
}

fn parse_proxies(raw: &str) -> Result<Proxies, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| Cidr::parse(p).ok_or_else(|| format!("`{p}` is not an address or CIDR range")))
        .collect::<Result<Vec<_>, _>>()
        .map(Proxies)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Serve {
            #[arg(long, env = "CONFAB_CONFIG")]
            config: Option<PathBuf>,
            #[command(flatten)]
            settings: Box<Config>,
        },
    }

    const BASE: &[&str] =
        &["confab", "serve", "--redis-url", "redis://127.0.0.1:6379", "--mongo-url", "mongodb://127.0.0.1:27017"];

    #[test]
    fn the_seq_void_wait_defaults_to_its_constant() {
        assert_eq!(parse_args(&[]).unwrap().seq_void_after, default_seq_void_after());
        assert_eq!(default_seq_void_after(), Duration::from_secs(5));
    }

    fn parse_args(extra: &[&str]) -> Result<Config, ConfigError> {
        parse_args_reading(extra, |file| std::fs::read_to_string(file))
    }

    fn parse_args_reading(
        extra: &[&str],
        read: impl FnOnce(&Path) -> std::io::Result<String>,
    ) -> Result<Config, ConfigError> {
        let secret = "x".repeat(32);
        let mut args: Vec<OsString> = BASE.iter().map(OsString::from).collect();
        args.extend(["--jwt-secret", secret.as_str()].iter().map(OsString::from));
        args.extend(extra.iter().map(OsString::from));
        match parse_reading::<Cli>(args, &[], Cli::command(), read)? {
            Parsed::Ok(Cli { command: Sub::Serve { settings, .. } }) => {
                settings.validate()?;
                Ok(*settings)
            }
            Parsed::Shown(e) => panic!("{e}"),
        }
    }

    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.to_string_lossy().into_owned())
    }

    #[test]
    fn defaults_fill_what_is_not_given() {
        let c = parse_args(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!((c.mongo.mongo_db.as_str(), c.keys.prefix()), ("confab", "confab"));
        assert_eq!(c.max_message_bytes, 65536);
        assert!(c.node_id.starts_with("node-"));
        assert_eq!(c.rate_limits, RateLimits::default());
        assert_eq!((c.presence_grace.as_millis(), c.node_heartbeat.as_secs(), c.node_ttl.as_secs()), (5000, 5, 15));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!((c.fanout_lanes, c.fanout_split_at), (cores.min(64), 64));
        assert_eq!(Config::defaults("redis://r:1", "mongodb://m:2", &"s".repeat(32)).redis.url, "redis://r:1");
    }

    #[test]
    fn previous_token_secrets_are_each_checked_and_never_shown() {
        let (old, older) = ("o".repeat(32), "p".repeat(40));
        let list = format!(" {old} ,{older},");
        let c = parse_args(&["--jwt-previous-secrets", &list]).unwrap();
        assert_eq!(c.jwt_previous_secrets.0, [old.clone(), older]);
        assert!(!format!("{c:?}").contains(&old), "secrets stay out of Debug output");
        assert!(parse_args(&[]).unwrap().jwt_previous_secrets.0.is_empty());
        let err = parse_args(&["--jwt-previous-secrets", &format!("{old},short")]).unwrap_err().to_string();
        assert!(
            err.contains("--jwt-previous-secrets") && err.contains("each secret must be at least 32 bytes"),
            "{err}"
        );
        let err = parse_args(&["--jwt-issuer", "has space"]).unwrap_err().to_string();
        assert!(err.contains("--jwt-issuer"), "{err}");
        assert_eq!((c.jwt_issuer.as_str(), c.jwt_audience.as_str()), ("confab", "confab"));
    }

    #[test]
    fn a_missing_or_bad_setting_is_named_in_one_line() {
        let err = parse::<Cli>(BASE.iter().map(OsString::from).collect(), &[]).err().unwrap();
        assert_eq!(
            err.0,
            "missing setting --jwt-secret (CONFAB_JWT_SECRET); set the flag, the variable, or `jwt_secret` in the config file"
        );
        let cases = [
            (&["--listen", "nope"][..], "--listen (CONFAB_LISTEN): `nope` is not host:port"),
            (&["--jwt-secret", "short"], "--jwt-secret (CONFAB_JWT_SECRET): must be at least 32 bytes"),
            (&["--redis-url", "http://x"], "--redis-url (CONFAB_REDIS_URL)"),
            (&["--socket-burst", "0"], "--socket-burst (CONFAB_SOCKET_BURST)"),
            (&["--login-window-secs", "0"], "--login-window-secs (CONFAB_LOGIN_WINDOW_SECS)"),
            (&["--api-rate-per-minute", "1000001"], "--api-rate-per-minute (CONFAB_API_RATE_PER_MINUTE)"),
            (&["--fanout-lanes", "65"], "--fanout-lanes (CONFAB_FANOUT_LANES)"),
            (&["--fanout-split-at", "0"], "--fanout-split-at (CONFAB_FANOUT_SPLIT_AT)"),
            (&["--node-heartbeat-secs", "5", "--node-ttl-secs", "9"], "--node-ttl-secs (CONFAB_NODE_TTL_SECS)"),
            (&["--presence-grace-ms", "600001"], "--presence-grace-ms"),
            (&["--key-prefix", "a b"], "--key-prefix (CONFAB_KEY_PREFIX)"),
            (&["--trusted-proxies", "10.0.0.0/33"], "--trusted-proxies (CONFAB_TRUSTED_PROXIES)"),
            (&["--allowed-origins", "ftp://x"], "--allowed-origins (CONFAB_ALLOWED_ORIGINS)"),
            (&["--mongo-db", "a.b"], "--mongo-db (CONFAB_MONGO_DB)"),
        ];
        for (args, want) in cases {
            let err = parse_args(args).unwrap_err();
            assert!(err.0.contains(want), "{args:?}: {err}");
            assert_eq!(err.0.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn the_file_fills_gaps_but_flags_win_and_its_values_are_checked_too() {
        let (_dir, path) =
            file("listen = \"127.0.0.1:9999\"\nmongo_db = \"fromfile\"\nsocket_burst = 5\nrest_rate_per_minute = 0\n");
        let c = parse_args(&["--config", &path, "--mongo-db", "fromflag"]).unwrap();
        assert_eq!((c.listen.port(), c.mongo.mongo_db.as_str()), (9999, "fromflag"));
        assert_eq!((c.rate_limits.socket_burst, c.rate_limits.rest_per_minute), (5, 0));
        let (_dir, path) = file("socket_burst = 0\n");
        let err = parse_args(&["--config", &path]).unwrap_err();
        assert!(err.0.contains("--socket-burst (CONFAB_SOCKET_BURST)"), "{err}");
        let (_dir, path) = file("lissten = \"x\"\n");
        let err = parse_args(&["--config", &path]).unwrap_err();
        assert!(err.0.contains("--config") && err.0.contains("lissten"), "{err}");
        // Found by fuzzing: the TOML parser's message for this is two lines.
        let (_dir, path) = file("listeni = 5\nunknown = n\"x\"\n");
        let err = parse_args(&["--config", &path]).unwrap_err().to_string();
        assert!(!err.contains('\n') && err.contains("line 2: invalid string"), "{err}");
        // Found by fuzzing: a multi-line string quoted in the message.
        let (_dir, path) = file("listen = \"\"\"\nnope\n\"\"\"\n");
        let err = parse_args(&["--config", &path]).unwrap_err().to_string();
        assert!(!err.contains('\n') && err.contains("--listen (CONFAB_LISTEN): `nope\\n` is not host:port"), "{err}");
        let (_dir, path) = file("allowed_origins = [\"https://a.example\", \"https://B.example/\"]\n");
        assert_eq!(
            parse_args(&["--config", &path]).unwrap().allowed_origins.0,
            ["https://a.example", "https://b.example"]
        );
    }

    #[test]
    fn a_text_given_directly_reads_as_its_file_would() {
        let cases: [&[u8]; 5] = [
            b"node_id = \"n1\"\nlisten = \"127.0.0.1:9999\"\nsocket_burst = 5\n",
            b"node_id = \"n1\"\nsocket_burst = 0\n",
            b"listeni = 5\nunknown = n\"x\"\n",
            b"node_id = \"\xff\"\n",
            include_bytes!("../fuzz/corpus/config_file/multi-line-value-in-message"),
        ];
        for bytes in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("node.toml");
            std::fs::write(&path, bytes).unwrap();
            let args = ["--config", path.to_str().unwrap()];
            let shown = |r: Result<Config, ConfigError>| r.map(|c| format!("{c:?}")).map_err(|e| e.0);
            let given = shown(parse_args_reading(&args, |_| std::io::read_to_string(bytes)));
            assert_eq!(given, shown(parse_args(&args)), "{}", String::from_utf8_lossy(bytes));
            if let Err(e) = given {
                assert_eq!(e.lines().count(), 1, "{e}");
            }
        }
    }

    #[test]
    fn the_example_file_shows_every_setting() {
        let text = include_str!("../config/confab.example.toml");
        let shown: Vec<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.to_string()))
            .filter(|k| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            .collect();
        let command = Config::augment_args(Command::new("x"));
        for arg in command.get_arguments() {
            let key = arg.get_long().unwrap().replace('-', "_");
            assert!(shown.contains(&key), "config/confab.example.toml does not show `{key}`");
        }
    }

    #[test]
    fn the_otlp_endpoint_is_off_or_an_http_url() {
        assert_eq!(parse_endpoint(""), Ok(String::new()));
        assert_eq!(parse_endpoint(" http://otel:4318 "), Ok("http://otel:4318".into()));
        assert!(parse_endpoint("https://otel.example/v1/traces").is_ok());
        assert!(parse_endpoint("otel:4318").is_err());
        assert!(parse_endpoint("grpc://otel:4317").is_err());
    }

    #[test]
    fn proxies_match_their_ranges() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()) && !c.contains("10.2.0.1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert!(one.contains("::1".parse().unwrap()) && !one.contains("::2".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.0/8").unwrap().contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none() && Cidr::parse("nope").is_none());
    }
}

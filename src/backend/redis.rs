//! Redis clients: one factory for every connection of a node or worker.
//!
//! Every client reconnects by itself (with a capped exponential backoff),
//! keeps retrying when Redis is down at start, and bounds how long a
//! command may wait, so that a Redis outage fails calls instead of hanging
//! them. A `rediss://` URL connects with TLS (rustls): the server's
//! certificate is checked against the system's roots, plus the CA in
//! `ca_file` when one is given (a private CA, as self-hosted Redis often
//! has).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface, ReconnectPolicy};
use fred::types::config::TlsConnector;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// A Redis connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Client(#[from] fred::error::Error),
    #[error("redis (job queue): {0}")]
    Queue(#[from] ::redis::RedisError),
    #[error("the Redis URL {0}")]
    Url(String),
    #[error("the Redis CA file {}: {source}", path.display())]
    CaFile { path: PathBuf, source: std::io::Error },
    #[error("the Redis CA file {}: {source}", path.display())]
    CaCertificate { path: PathBuf, source: rustls::pki_types::pem::Error },
    #[error("the Redis CA file {}: {source}", path.display())]
    CaRejected { path: PathBuf, source: rustls::Error },
}

/// Where Redis is and how to trust it: the settings every node, worker
/// and operator command shares.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RedisConfig {
    /// Redis URL: redis://, or rediss:// for TLS.
    #[arg(id = "redis_url", long = "redis-url", env = "CONFAB_REDIS_URL", value_name = "URL", value_parser = parse_url)]
    pub url: String,
    /// PEM file of CA certificates a rediss:// server's certificate may be
    /// signed by, besides the system's roots.
    #[arg(id = "redis_ca_file", long = "redis-ca-file", env = "CONFAB_REDIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// The URL schemes a node takes, and the deployment each names.
const SCHEMES: [(&str, Topology); 6] = [
    ("redis", Topology::Single),
    ("rediss", Topology::Single),
    ("redis-sentinel", Topology::Sentinel),
    ("rediss-sentinel", Topology::Sentinel),
    ("redis-cluster", Topology::Cluster),
    ("rediss-cluster", Topology::Cluster),
];

/// How Redis is deployed, as its URL says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://`), perhaps a managed one with its own failover.
    Single,
    /// A master found through Sentinel (`redis-sentinel://`), followed
    /// across failovers.
    Sentinel,
    /// Redis Cluster (`redis-cluster://`): keys and sharded channels spread
    /// over its masters by hash slot.
    Cluster,
}

fn parse_url(raw: &str) -> Result<String, String> {
    let scheme = raw.split_once("://").map(|(s, _)| s).unwrap_or_default();
    if !SCHEMES.iter().any(|(s, _)| *s == scheme) {
        return Err("must start with redis://, rediss://, redis-sentinel://, rediss-sentinel://, redis-cluster:// or rediss-cluster://".into());
    }
    let url = url::Url::parse(raw).map_err(|e| e.to_string())?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("names no host".into());
    }
    if scheme.ends_with("-sentinel") && !url.query_pairs().any(|(k, v)| k == "sentinelServiceName" && !v.is_empty()) {
        return Err("a Sentinel URL needs ?sentinelServiceName=<the master's name>".into());
    }
    Ok(raw.to_string())
}

/// How long a command may wait unless a client says otherwise.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

impl RedisConfig {
    /// Redis at `url`, trusted through the system's roots.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig { url: url.into(), ca_file: None }
    }

    /// Checks that a client can be built: the URL parses and the CA file
    /// holds certificates.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        if let Some(path) = &self.ca_file {
            if !path.is_file() {
                let why = format!("{} is not a file", path.display());
                return Err(crate::config::invalid("redis-ca-file", "CONFAB_REDIS_CA_FILE", why));
            }
        }
        self.builder(16).map(|_| ()).map_err(|e| crate::config::invalid("redis-url", "CONFAB_REDIS_URL", e))
    }

    fn tls(&self) -> bool {
        self.url.starts_with("rediss")
    }

    /// The deployment the URL names.
    pub fn topology(&self) -> Topology {
        let scheme = self.url.split_once("://").map(|(s, _)| s).unwrap_or_default();
        SCHEMES.iter().find(|(s, _)| *s == scheme).map_or(Topology::Single, |(_, t)| *t)
    }

    /// Whether Redis is a Cluster: names then carry hash tags, and room and
    /// user channels are sharded.
    pub fn is_cluster(&self) -> bool {
        self.topology() == Topology::Cluster
    }

    /// Every server the URL names (`host:port`, then each `node=`), with
    /// this URL's credentials, as `redis://` or `rediss://` URLs.
    fn server_urls(&self) -> Result<Vec<String>, RedisError> {
        let url = url::Url::parse(&self.url).map_err(|e| RedisError::Url(e.to_string()))?;
        let host = url.host_str().ok_or_else(|| RedisError::Url("names no host".into()))?;
        let first = format!("{host}:{}", url.port().unwrap_or(6379));
        let others = url.query_pairs().filter(|(k, _)| k == "node").map(|(_, v)| v.into_owned());
        let scheme = if self.tls() { "rediss" } else { "redis" };
        let auth = match (url.username(), url.password()) {
            ("", None) => String::new(),
            (user, Some(password)) => format!("{user}:{password}@"),
            (user, None) => format!("{user}@"),
        };
        Ok(std::iter::once(first).chain(others).map(|server| format!("{scheme}://{auth}{server}")).collect())
    }

    /// A fred builder; `broadcast_capacity` sizes the channel Pub/Sub
    /// messages arrive through.
    pub fn builder(&self, broadcast_capacity: usize) -> Result<Builder, RedisError> {
        let mut config = Config::from_url(&self.url)?;
        // Keep retrying even when Redis is down at start (fred's default gives up).
        config.fail_fast = false;
        if self.tls() {
            config.tls = Some(TlsConnector::from(self.rustls()?).into());
        }
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|p| {
                p.broadcast_channel_capacity = broadcast_capacity;
                p.default_command_timeout = COMMAND_TIMEOUT;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(3);
                c.internal_command_timeout = Duration::from_secs(3);
                c.tcp.nodelay = Some(true);
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2));
        Ok(builder)
    }

    /// A client whose commands give up after `command_timeout`, connecting
    /// in the background (for parts of a node that must fall back quickly
    /// when Redis is slow or away).
    pub fn client(&self, command_timeout: Duration) -> Result<Client, RedisError> {
        let mut builder = self.builder(16)?;
        builder.with_performance_config(|p| p.default_command_timeout = command_timeout);
        let client = builder.build()?;
        client.connect();
        Ok(client)
    }

    /// A client that is connected when returned (for commands and workers
    /// that have nothing to do without Redis).
    pub async fn connected(&self, command_timeout: Duration) -> Result<Client, RedisError> {
        let mut builder = self.builder(64)?;
        builder.with_performance_config(|p| p.default_command_timeout = command_timeout);
        let client = builder.build()?;
        client.init().await?;
        Ok(client)
    }

    /// The CA certificates a `redis` crate client trusts besides the
    /// system's roots.
    fn queue_certificates(&self) -> Result<Option<::redis::TlsCertificates>, RedisError> {
        match (&self.ca_file, self.tls()) {
            (Some(path), true) => {
                let root_cert =
                    std::fs::read(path).map_err(|source| RedisError::CaFile { path: path.clone(), source })?;
                Ok(Some(::redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) }))
            }
            _ => Ok(None),
        }
    }

    /// The job queue's connection (apalis runs on the `redis` crate), to
    /// whichever deployment the URL names.
    pub async fn queue_connection(&self) -> Result<QueueConnection, RedisError> {
        let certificates = self.queue_certificates()?;
        match self.topology() {
            Topology::Single => {
                let client = match certificates {
                    Some(certificates) => ::redis::Client::build_with_tls(self.url.as_str(), certificates)?,
                    None => ::redis::Client::open(self.url.as_str())?,
                };
                Ok(QueueConnection::Single(client.get_connection_manager().await?))
            }
            Topology::Cluster => {
                let mut builder = ::redis::cluster::ClusterClient::builder(self.server_urls()?);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                let client = builder.build()?;
                Ok(QueueConnection::Cluster(client.get_async_connection().await?))
            }
            Topology::Sentinel => Ok(QueueConnection::Sentinel(SentinelQueue::connect(self, certificates).await?)),
        }
    }

    /// The TLS settings of a `rediss://` connection.
    fn rustls(&self) -> Result<rustls::ClientConfig, RedisError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = &self.ca_file {
            for cert in ca_certificates(path)? {
                roots.add(cert).map_err(|source| RedisError::CaRejected { path: path.clone(), source })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| RedisError::CaRejected { path: self.ca_file.clone().unwrap_or_default(), source })?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// `GET` of every key, in order, in one round trip: one `MGET`, or on Redis
/// Cluster (where one command's keys must share a slot) a pipeline of
/// `GET`s, which fred sends to each key's master.
pub async fn get_many<T: fred::types::FromValue>(client: &Client, keys: Vec<String>) -> Result<T, fred::error::Error> {
    if !client.is_clustered() {
        return client.mget(keys).await;
    }
    let pipeline = client.pipeline();
    for key in keys {
        let _: () = pipeline.get(key).await?;
    }
    pipeline.all().await
}

/// The job queue's connection to any of the three deployments: apalis
/// takes whatever implements the `redis` crate's `ConnectionLike`.
#[derive(Clone)]
pub enum QueueConnection {
    /// Reconnects by itself.
    Single(::redis::aio::ConnectionManager),
    /// Follows slots as the cluster moves them.
    Cluster(::redis::cluster_async::ClusterConnection),
    /// Asks the sentinels for the master again when it stops answering.
    Sentinel(SentinelQueue),
}

impl ::redis::aio::ConnectionLike for QueueConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a ::redis::Cmd) -> ::redis::RedisFuture<'a, ::redis::Value> {
        match self {
            QueueConnection::Single(c) => c.req_packed_command(cmd),
            QueueConnection::Cluster(c) => c.req_packed_command(cmd),
            QueueConnection::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        match self {
            QueueConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            QueueConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            QueueConnection::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            QueueConnection::Single(c) => c.get_db(),
            QueueConnection::Cluster(c) => c.get_db(),
            QueueConnection::Sentinel(c) => c.get_db(),
        }
    }
}

/// The queue's connection to a Sentinel-watched master: a reconnecting
/// connection to the master the sentinels named, replaced by one to the
/// master they name now whenever a command finds the old one gone or
/// demoted (after a failover the old master comes back as a read-only
/// replica). The failed command returns its error; apalis tries again.
#[derive(Clone)]
pub struct SentinelQueue {
    sentinels: Arc<tokio::sync::Mutex<::redis::sentinel::SentinelClient>>,
    master: Arc<std::sync::RwLock<::redis::aio::ConnectionManager>>,
}

impl SentinelQueue {
    async fn connect(
        config: &RedisConfig,
        certificates: Option<::redis::TlsCertificates>,
    ) -> Result<SentinelQueue, RedisError> {
        use ::redis::sentinel::{SentinelClientBuilder, SentinelServerType};
        let url = url::Url::parse(&config.url).map_err(|e| RedisError::Url(e.to_string()))?;
        let query = |key: &str| url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned());
        let service =
            query("sentinelServiceName").ok_or_else(|| RedisError::Url("needs sentinelServiceName".into()))?;
        let sentinels: Vec<::redis::ConnectionAddr> = config
            .server_urls()?
            .iter()
            .map(|u| ::redis::IntoConnectionInfo::into_connection_info(u.as_str()).map(|i| i.addr().clone()))
            .collect::<Result<_, _>>()?;
        let mut builder = SentinelClientBuilder::new(sentinels, service, SentinelServerType::Master)?;
        let db = url.path().trim_start_matches('/').parse::<i64>().unwrap_or(0);
        builder = builder.set_client_to_redis_db(db);
        if !url.username().is_empty() {
            builder = builder.set_client_to_redis_username(url.username());
        }
        if let Some(password) = url.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = query("sentinelUsername") {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = query("sentinelPassword") {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if config.tls() {
            builder = builder
                .set_client_to_redis_tls_mode(::redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(::redis::TlsMode::Secure);
            if let Some(certificates) = certificates {
                builder = builder.set_client_to_redis_certificates(certificates);
            }
        }
        let mut sentinels = builder.build()?;
        let master = sentinels.async_get_client().await?.get_connection_manager().await?;
        Ok(SentinelQueue {
            sentinels: Arc::new(tokio::sync::Mutex::new(sentinels)),
            master: Arc::new(std::sync::RwLock::new(master)),
        })
    }

    fn current(&self) -> ::redis::aio::ConnectionManager {
        self.master.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// After `error`, asks the sentinels for the master again if the error
    /// says the one in use is gone or no longer the master.
    async fn follow(&self, error: &::redis::RedisError) {
        let demoted = error.kind() == ::redis::ErrorKind::Server(::redis::ServerErrorKind::ReadOnly);
        if !(demoted || error.is_io_error() || error.is_connection_dropped() || error.is_timeout()) {
            return;
        }
        let Ok(mut sentinels) = self.sentinels.try_lock() else {
            return; // Another command is asking already.
        };
        let asked = async { sentinels.async_get_client().await?.get_connection_manager().await };
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(master)) => {
                *self.master.write().unwrap_or_else(|e| e.into_inner()) = master;
                tracing::info!("job queue: connected to the master the sentinels name");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "job queue: the sentinels named no reachable master"),
            Err(_) => tracing::warn!("job queue: the sentinels did not answer in time"),
        }
    }

    fn req_packed_command<'a>(&'a mut self, cmd: &'a ::redis::Cmd) -> ::redis::RedisFuture<'a, ::redis::Value> {
        Box::pin(async move {
            let mut master = self.current();
            let out = ::redis::aio::ConnectionLike::req_packed_command(&mut master, cmd).await;
            if let Err(e) = &out {
                self.follow(e).await;
            }
            out
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a ::redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> ::redis::RedisFuture<'a, Vec<::redis::Value>> {
        Box::pin(async move {
            let mut master = self.current();
            let out = ::redis::aio::ConnectionLike::req_packed_commands(&mut master, pipeline, offset, count).await;
            if let Err(e) = &out {
                self.follow(e).await;
            }
            out
        })
    }

    fn get_db(&self) -> i64 {
        ::redis::aio::ConnectionLike::get_db(&self.current())
    }
}

/// The certificates in a PEM file.
fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, RedisError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|source| RedisError::CaCertificate { path: path.to_owned(), source })?
        .collect();
    let certs = certs.map_err(|source| RedisError::CaCertificate { path: path.to_owned(), source })?;
    if certs.is_empty() {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidData, "no certificate in it");
        return Err(RedisError::CaFile { path: path.to_owned(), source });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_url_gets_tls_and_a_plain_one_does_not() {
        let plain = RedisConfig::new("redis://127.0.0.1:6379").builder(16).unwrap();
        assert!(plain.get_config().unwrap().tls.is_none());
        let tls = RedisConfig::new("rediss://127.0.0.1:6380").builder(16).unwrap();
        assert!(tls.get_config().unwrap().tls.is_some());
    }

    #[test]
    fn the_scheme_names_the_deployment() {
        let cases = [
            ("redis://127.0.0.1:6379", Topology::Single),
            ("rediss://redis.internal:6380", Topology::Single),
            ("redis-sentinel://s1:26379/0?sentinelServiceName=confab&node=s2:26379", Topology::Sentinel),
            ("redis-cluster://r1:6379?node=r2:6379&node=r3:6379", Topology::Cluster),
            ("rediss-cluster://:pw@r1:6379", Topology::Cluster),
        ];
        for (url, topology) in cases {
            assert_eq!(parse_url(url).as_deref(), Ok(url), "{url}");
            let config = RedisConfig::new(url);
            assert_eq!(config.topology(), topology, "{url}");
            assert_eq!(config.is_cluster(), topology == Topology::Cluster);
            assert!(config.builder(16).is_ok(), "{url}");
        }
        for (bad, why) in [
            ("http://127.0.0.1:6379", "must start with"),
            ("127.0.0.1:6379", "must start with"),
            ("redis-sentinel://s1:26379/0", "sentinelServiceName"),
            ("redis-sentinel://s1:26379/0?sentinelServiceName=", "sentinelServiceName"),
            ("redis-cluster://", "host"),
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn every_server_of_a_url_is_listed_with_its_credentials() {
        let config = RedisConfig::new("rediss-cluster://user:pw@r1:7000?node=r2:7001&node=r3:7002");
        assert_eq!(
            config.server_urls().unwrap(),
            ["rediss://user:pw@r1:7000", "rediss://user:pw@r2:7001", "rediss://user:pw@r3:7002"]
        );
        let plain = RedisConfig::new("redis-sentinel://s1/0?sentinelServiceName=m");
        assert_eq!(plain.server_urls().unwrap(), ["redis://s1:6379"]);
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = RedisConfig { url: "rediss://127.0.0.1:6380".into(), ca_file: Some(dir.path().join("nope.pem")) };
        let err = missing.builder(16).unwrap_err().to_string();
        assert!(err.contains("nope.pem"), "{err}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = RedisConfig { ca_file: Some(empty), ..missing }.builder(16).unwrap_err().to_string();
        assert!(err.contains("empty.pem") && err.contains("no certificate"), "{err}");
    }
}

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

use fred::prelude::{Builder, Client, ClientLike, Config, ReconnectPolicy};
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

fn parse_url(raw: &str) -> Result<String, String> {
    if !(raw.starts_with("redis://") || raw.starts_with("rediss://")) {
        return Err("must start with redis:// or rediss://".into());
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
        self.url.starts_with("rediss://")
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

    /// The job queue's connection (apalis runs on the `redis` crate).
    pub async fn queue_connection(&self) -> Result<::redis::aio::ConnectionManager, RedisError> {
        let client = match (&self.ca_file, self.tls()) {
            (Some(path), true) => {
                let root_cert =
                    std::fs::read(path).map_err(|source| RedisError::CaFile { path: path.clone(), source })?;
                let certificates = ::redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                ::redis::Client::build_with_tls(self.url.as_str(), certificates)?
            }
            _ => ::redis::Client::open(self.url.as_str())?,
        };
        Ok(client.get_connection_manager().await?)
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

//! One running node: connects the backends, builds the shared [`App`], serves
//! HTTP and WebSocket traffic, and shuts down cleanly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::auth::Tokens;
use crate::bus::redis::RedisBus;
use crate::bus::{Bus, BusError};
use crate::cache::Cache;
use crate::config::Config;
use crate::fanout::lanes::Lanes;
use crate::fanout::{Fanout, FanoutInbox, Registry, Sequencer, Subscriptions};
use crate::notifications::Notifier;
use crate::presence::redis::RedisTracker;
use crate::presence::Presence;
use crate::ratelimit::SharedLimiter;
use crate::seq::Seqs;
use crate::store::mongo::MongoStore;
use crate::store::Store;
use crate::typing::{RedisThrottle, Typing};

/// Everything a request handler or socket needs. Shared as one `Arc`.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub tokens: Tokens,
    pub fanout: Fanout,
    pub cache: Cache,
    /// Hands out each room's message seqs.
    pub seqs: Seqs,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// REST and login limits, shared with every node through Redis.
    /// Turns messages into notifications, off the send path.
    pub notifier: Notifier,
    pub limiter: SharedLimiter,
    /// Set once the store's indexes exist; until then the node is not ready.
    pub indexes_ready: AtomicBool,
    pub presence: Presence,
    pub typing: Typing,
}

/// A node that is serving; dropping it does not stop it, `shutdown` does.
pub struct RunningNode {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Backend(String),
}

impl RunningNode {
    /// Connects to Redis and MongoDB and starts serving on `config.listen`.
    pub async fn start(config: Config) -> Result<RunningNode, StartError> {
        let listener = TcpListener::bind(config.listen).await.map_err(|e| StartError::Listen(config.listen, e))?;
        let addr = listener.local_addr().map_err(|e| StartError::Listen(config.listen, e))?;
        let store: Arc<dyn Store> = Arc::new(
            MongoStore::connect(&config.mongo.mongo_url, &config.mongo.mongo_db)
                .await
                .map_err(|e| StartError::Backend(e.to_string()))?,
        );
        let lanes = Lanes::new(config.fanout_lanes, config.fanout_split_at, tokio::runtime::Handle::current());
        let registry = Arc::new(Registry::with_lanes(lanes));
        let sequencer = Arc::new(Sequencer::default());
        let inbox = Arc::new(FanoutInbox {
            registry: registry.clone(),
            sequencer: sequencer.clone(),
            subscriptions: OnceLock::new(),
            store: store.clone(),
            gap_wait: config.gap_wait,
            shown_live: {
                let store = store.clone();
                Box::new(move |user, _id, stored_at_us, frame| {
                    crate::notifications::delivered_live(&store, user, stored_at_us, frame)
                })
            },
        });
        let bus: Arc<dyn Bus> =
            RedisBus::connect(&config.redis, config.keys.clone(), config.pubsub_buffer, inbox.clone())
                .await
                .map_err(|e| StartError::Backend(e.to_string()))?;
        let seqs = Seqs::connect(&config.redis, config.keys.clone(), store.clone())
            .map_err(|e| StartError::Backend(e.to_string()))?;
        let subscriptions = Subscriptions::spawn(bus.clone(), registry.clone(), sequencer, seqs.clone());
        let _ = inbox.subscriptions.set(subscriptions.clone());
        let fanout = Fanout { subscriptions, registry, shutdown: CancellationToken::new() };
        let (notifier, notification_jobs) = Notifier::connect(&config).map_err(StartError::Backend)?;
        let cache = Cache::new(
            cache_client(&config).map_err(|e| StartError::Backend(e.to_string()))?,
            config.keys.clone(),
            config.cache_ttl,
        );
        let limiter = SharedLimiter::connect(&config.redis, config.rate_limits, config.keys.clone())
            .await
            .map_err(StartError::Backend)?;
        let redis = crate::presence::redis::client(&config.redis).map_err(|e| StartError::Backend(e.to_string()))?;
        let presence = Presence::new(Arc::new(RedisTracker::new(redis.clone(), config.keys.clone())), &config);
        let typing = Typing::new(Arc::new(RedisThrottle::new(redis)), config.keys.clone());
        let app = Arc::new(App {
            tokens: Tokens::new(&config.jwt_secret, config.token_ttl),
            config,
            store,
            bus,
            fanout,
            cache,
            seqs,
            metrics: {
                let handle = crate::metrics::handle();
                crate::metrics::register_node();
                handle
            },
            limiter,
            indexes_ready: AtomicBool::new(false),
            presence,
            typing,
            notifier,
        });
        tokio::spawn(ensure_indexes(app.clone()));
        tokio::spawn(crate::notifications::run(app.clone(), notification_jobs));
        crate::presence::start(&app);

        let stop = CancellationToken::new();
        let service = NormalizePathLayer::trim_trailing_slash().layer(crate::http::router(app.clone()));
        let timeouts =
            crate::http::serve::Timeouts { header: app.config.header_timeout, idle: app.config.idle_timeout };
        let task = tokio::spawn(crate::http::serve::accept_loop(listener, service, timeouts, stop.clone()));
        tracing::info!(node = %app.config.node_id, %addr, "confab node serving");
        Ok(RunningNode { addr, app, stop, task })
    }

    /// Stops accepting, closes every socket with 1001, takes the node's
    /// connections out of presence, and waits for the server task to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.app.fanout.close_all().await;
        crate::presence::shutdown(&self.app).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// The cache's own Redis connection, with short timeouts: a Redis outage
/// must cost a request little before it falls back to MongoDB.
fn cache_client(config: &Config) -> Result<Option<fred::clients::Client>, BusError> {
    if config.cache_ttl.is_zero() {
        return Ok(None);
    }
    config.redis.client(Duration::from_millis(200)).map(Some).map_err(|e| BusError(e.to_string()))
}

/// Creates the indexes, retrying while MongoDB is unreachable.
async fn ensure_indexes(app: Arc<App>) {
    let mut delay = Duration::from_millis(200);
    loop {
        match app.store.ensure_indexes().await {
            Ok(()) => {
                app.indexes_ready.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "creating indexes failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

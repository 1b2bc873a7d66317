//! One running node: connects the backends, builds the services, serves
//! HTTP and WebSocket traffic, and shuts down cleanly.
//!
//! The wiring, from the bottom up: backends (store, bus, Redis clients),
//! then fan-out (registry, sequencer, subscriptions), then the domain
//! services, then the edges (`http::Api`, `ws::Sockets`). Every task the
//! node starts belongs to one of them and ends with [`RunningNode::shutdown`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::audit::Audit;
use crate::auth::{ApiKeys, Tokens};
use crate::bus::{Bus, BusError};
use crate::cache::Cache;
use crate::config::Config;
use crate::contacts::Contacts;
use crate::fanout::lanes::Lanes;
use crate::fanout::{Fanout, Registry};
use crate::health::Health;
use crate::http::{Api, Edge};
use crate::messages::Messages;
use crate::notifications::Notifier;
use crate::presence::{Presence, Tracker};
use crate::ratelimit::SharedLimiter;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::search::Searcher;
use crate::seq::Seqs;
use crate::sessions::Sessions;
use crate::store::Store;
use crate::typing::{RedisThrottle, Typing};
use crate::users::Users;
use crate::ws::{self, Sockets};

/// A node that is serving; dropping it does not stop it, `shutdown` does.
pub struct RunningNode {
    pub addr: SocketAddr,
    node_id: String,
    /// Cancelled first at shutdown: stops accepting connections.
    accepting: CancellationToken,
    accept: JoinHandle<()>,
    /// Cancelled once the sockets are closed: ends the services' tasks.
    stop: CancellationToken,
    /// The node's own tasks (index creation).
    tasks: TaskTracker,
    sockets: Arc<Sockets>,
    presence: Arc<Presence>,
    notifier: Arc<Notifier>,
    fanout: Fanout,
    backends: Backends,
}

/// The connections closed last, once nothing uses them.
struct Backends {
    store: Arc<Store>,
    bus: Arc<Bus>,
    seqs: Seqs,
    cache: Cache,
    limiter: Arc<SharedLimiter>,
    /// Presence's and typing's.
    redis: fred::clients::Client,
}

impl Backends {
    async fn close(self) {
        use fred::interfaces::ClientLike;
        tokio::join!(
            self.bus.shutdown(),
            self.cache.shutdown(),
            self.seqs.shutdown(),
            self.limiter.shutdown(),
            async {
                let _ = self.redis.quit().await;
            },
            self.store.shutdown(),
        );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error("{what}: {source}")]
    Backend {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StartError {
    fn backend(what: &'static str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> StartError {
        move |source| StartError::Backend { what, source }
    }
}

impl RunningNode {
    /// Connects to Redis and MongoDB and starts serving on `config.listen`.
    pub async fn start(mut config: Config) -> Result<RunningNode, StartError> {
        // On Redis Cluster, what one script touches shares a hash tag.
        config.keys = config.keys.clone().hash_tagged(config.redis.is_cluster());
        let listener = TcpListener::bind(config.listen).await.map_err(|e| StartError::Listen(config.listen, e))?;
        let addr = listener.local_addr().map_err(|e| StartError::Listen(config.listen, e))?;
        let stop = CancellationToken::new();
        let keys = &config.keys;

        // Backends.
        let store: Arc<Store> = Arc::new(
            Store::connect(&config.mongo.mongo_url, &config.mongo.mongo_db)
                .await
                .map_err(|e| StartError::backend("MongoDB")(e.into()))?,
        );
        let lanes = Lanes::new(config.fanout_lanes, config.fanout_split_at, tokio::runtime::Handle::current());
        let registry = Arc::new(Registry::with_lanes(lanes));
        let (shown, shown_rx) = tokio::sync::mpsc::unbounded_channel();
        let (fanout, inbox, keeper) = Fanout::new(registry.clone(), store.clone(), config.gap_wait, shown);
        let bus: Arc<Bus> = Bus::connect(&config.redis, keys.clone(), config.pubsub_buffer, inbox)
            .await
            .map_err(|e| StartError::backend("Redis Pub/Sub")(e.into()))?;
        let seqs = Seqs::connect(&config.redis, keys.clone(), store.clone())
            .map_err(|e| StartError::backend("Redis (seqs)")(e.into()))?;
        let cache = Cache::new(
            cache_client(&config).map_err(|e| StartError::backend("Redis (cache)")(e.into()))?,
            keys.clone(),
            config.cache_ttl,
        );
        let limiter = Arc::new(
            SharedLimiter::connect(&config.redis, config.rate_limits, keys.clone())
                .await
                .map_err(|e| StartError::backend("Redis (rate limits)")(e.into()))?,
        );
        let redis = crate::presence::redis::client(&config.redis)
            .map_err(|e| StartError::backend("Redis (presence)")(e.into()))?;
        keeper.start(bus.clone(), seqs.clone());

        // Domain services.
        let tokens = Tokens::with(
            &config.jwt_secret,
            &config.jwt_previous_secrets.0,
            &config.jwt_issuer,
            &config.jwt_audience,
            config.token_ttl,
        );
        let (notifier, notification_jobs) =
            Notifier::connect(&config, store.clone(), bus.clone(), cache.clone(), registry, stop.child_token())
                .map_err(|e| StartError::backend("Redis (notifications)")(e.into()))?;
        let notifier = Arc::new(notifier);
        let presence = Arc::new(Presence::new(
            Arc::new(Tracker::new(redis.clone(), keys.clone())),
            bus.clone(),
            store.clone(),
            &config,
            stop.child_token(),
        ));
        let typing = Arc::new(Typing::new(Arc::new(RedisThrottle::new(redis.clone())), keys.clone(), bus.clone()));
        let audit = Arc::new(Audit::new(store.clone()));
        let rooms = Arc::new(Rooms::new(store.clone(), seqs.clone(), bus.clone(), cache.clone(), audit.clone()));
        let sessions = Arc::new(Sessions::new(
            redis.clone(),
            keys.clone(),
            tokens,
            bus.clone(),
            store.clone(),
            audit.clone(),
            crate::sessions::Settings { refresh_ttl: config.refresh_ttl, sessionless: config.sessionless_tokens },
        ));
        let users = Arc::new(Users::new(store.clone(), sessions.clone(), limiter.clone(), audit.clone()));
        let messages = Arc::new(Messages::new(
            store.clone(),
            seqs.clone(),
            bus.clone(),
            cache.clone(),
            rooms.clone(),
            notifier.clone(),
            audit.clone(),
            config.seq_void_after,
        ));
        let receipts = Arc::new(Receipts::new(store.clone(), bus.clone(), cache.clone(), rooms.clone()));
        let health = Arc::new(Health::new(config.node_id.clone(), bus.clone(), store.clone(), {
            let handle = crate::metrics::handle();
            crate::metrics::register_node();
            handle
        }));

        // Edges.
        let sockets = Arc::new(Sockets::new(
            fanout.clone(),
            ws::Services {
                messages: messages.clone(),
                rooms: rooms.clone(),
                receipts: receipts.clone(),
                presence: presence.clone(),
                typing,
                sessions: sessions.clone(),
            },
            ws::Settings::of(&config),
        ));
        let api = Api {
            contacts: Arc::new(Contacts::new(store.clone(), users.clone(), presence.clone())),
            searcher: Arc::new(Searcher::new(store.clone(), rooms.clone())),
            api_keys: Arc::new(ApiKeys::new(store.clone())),
            users,
            rooms,
            messages,
            receipts,
            presence: presence.clone(),
            notifier: notifier.clone(),
            health: health.clone(),
            sockets: sockets.clone(),
            sessions,
            limiter: limiter.clone(),
            edge: Arc::new(Edge {
                trusted_proxies: config.trusted_proxies.0.clone(),
                echo_endpoint: config.echo_endpoint,
                cors: crate::http::cors::Cors::new(&config.allowed_origins.0),
            }),
            audit: audit.clone(),
        };

        let tasks = TaskTracker::new();
        tasks.spawn({
            let stop = stop.clone();
            async move { health.ensure_indexes(stop).await }
        });
        notifier.start(notification_jobs, shown_rx);
        presence.start();
        tasks.spawn(sockets.clone().expire_tokens(stop.child_token()));

        let accepting = CancellationToken::new();
        let service = NormalizePathLayer::trim_trailing_slash().layer(crate::http::router(api));
        let limits = crate::http::serve::Limits {
            header: config.header_timeout,
            idle: config.idle_timeout,
            send_buffer: (config.socket_send_buffer > 0).then_some(config.socket_send_buffer),
        };
        let accept = tokio::spawn(crate::http::serve::accept_loop(listener, service, limits, accepting.clone()));
        tracing::info!(node = %config.node_id, %addr, "confab node serving");
        Ok(RunningNode {
            addr,
            node_id: config.node_id,
            accepting,
            accept,
            stop,
            tasks,
            sockets,
            presence,
            notifier,
            fanout,
            backends: Backends { store, bus, seqs, cache, limiter, redis },
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Shuts the node down in a fixed order, within a few seconds: stop
    /// accepting; say goodbye (1001) to every socket and let its outbound
    /// frames drain; take the node's connections out of presence and stop
    /// the services' tasks; stop the fan-out; close the backends. Nothing
    /// the node started runs afterwards.
    pub async fn shutdown(self) {
        self.accepting.cancel();
        self.sockets.close_all().await;
        self.stop.cancel();
        self.tasks.close();
        tokio::join!(self.presence.shutdown(), self.notifier.shutdown(), async {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
        });
        self.fanout.stop().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.accept).await;
        self.backends.close().await;
    }
}

/// The cache's own Redis connection, with short timeouts: a Redis outage
/// must cost a request little before it falls back to MongoDB.
fn cache_client(config: &Config) -> Result<Option<fred::clients::Client>, BusError> {
    if config.cache_ttl.is_zero() {
        return Ok(None);
    }
    Ok(Some(config.redis.client(Duration::from_millis(200))?))
}

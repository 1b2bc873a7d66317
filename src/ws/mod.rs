//! The WebSocket edge of a node: upgraded connections, read and written
//! (`socket`, `frames`, `assembler`), and what a chat connection does with
//! each client frame (`session`). `echo` is the RFC 6455 conformance
//! endpoint, on the same socket code.
//!
//! - `socket`: one connection's reader and writer, limits, pings, close codes.
//! - `frames`: reads client frames with a buffer only while bytes arrive.
//! - `assembler`: joins fragmented messages under a size cap, checking UTF-8.
//! - `deflate`: permessage-deflate, when offered: negotiation and codec.
//! - `session`: applies each client [`Command`](crate::protocol::Command).

pub mod assembler;
pub mod deflate;
pub mod echo;
pub mod frames;
pub mod session;
pub mod socket;

use std::sync::Arc;

use fastwebsockets::WebSocket;
use tokio_util::task::TaskTracker;

use crate::auth::Caller;
use crate::config::{Config, RateLimits};
use crate::error::{Error, Result};
use crate::fanout::line::Compression;
use crate::fanout::{Expiry, Fanout, Outbound, Outbox};
use crate::messages::Messages;
use crate::presence::Presence;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::sessions::Sessions;
use crate::typing::Typing;

/// An upgraded WebSocket, as the HTTP layer hands it over.
pub type Upgraded = WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// The node's sockets: what a connection may use, and every connection's
/// task, so that shutdown can wait for them all to end.
pub struct Sockets {
    fanout: Fanout,
    messages: Arc<Messages>,
    rooms: Arc<Rooms>,
    receipts: Arc<Receipts>,
    presence: Arc<Presence>,
    typing: Arc<Typing>,
    sessions: Arc<Sessions>,
    settings: Settings,
    tasks: TaskTracker,
}

/// The domain services a chat connection uses.
pub struct Services {
    pub messages: Arc<Messages>,
    pub rooms: Arc<Rooms>,
    pub receipts: Arc<Receipts>,
    pub presence: Arc<Presence>,
    pub typing: Arc<Typing>,
    pub sessions: Arc<Sessions>,
}

/// How long before its token expires a connection is told so: a minute,
/// or half the token's life for shorter ones.
pub fn expiry_warning(token_ttl: std::time::Duration) -> u64 {
    (token_ttl.as_secs() / 2).min(60)
}

/// The socket settings, from the node's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub limits: socket::Limits,
    pub outbound_queue: usize,
    pub rate_limits: RateLimits,
    /// Browser origins allowed to connect; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Open connections one user may hold across the cluster; 0: no cap.
    pub max_per_user: u32,
    /// permessage-deflate is offered, compressing payloads from this size.
    pub deflate_min_bytes: Option<usize>,
}

impl Settings {
    pub fn of(config: &Config) -> Self {
        Settings {
            limits: socket::Limits { max_message_bytes: config.max_message_bytes, ping_interval: config.ping_interval },
            outbound_queue: config.outbound_queue,
            rate_limits: config.rate_limits,
            allowed_origins: config.allowed_origins.0.clone(),
            max_per_user: config.max_sockets_per_user,
            deflate_min_bytes: config.ws_deflate.then_some(config.ws_deflate_min_bytes),
        }
    }
}

impl Sockets {
    pub fn new(fanout: Fanout, services: Services, settings: Settings) -> Self {
        let Services { messages, rooms, receipts, presence, typing, sessions } = services;
        Sockets { fanout, messages, rooms, receipts, presence, typing, sessions, settings, tasks: TaskTracker::new() }
    }

    /// Once a second, tells each connection whose token expires soon
    /// (`token_expiring`, see [`expiry_warning`]) and closes those whose
    /// token has expired without a `refresh` (4002), until `stop`. After the
    /// bus lost its subscriptions (a revocation's close may have been
    /// missed), checks every connection's session again first.
    pub async fn expire_tokens(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let lead = expiry_warning(self.sessions.tokens().ttl());
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut epoch = self.fanout.registry.bus_epoch();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let now_epoch = self.fanout.registry.bus_epoch();
            if now_epoch != epoch && self.recheck_sessions().await {
                epoch = now_epoch;
            }
            let now = jsonwebtoken::get_current_timestamp();
            self.fanout.registry.each_connection(|outbox| match outbox.expiry_due(now, lead) {
                Expiry::None => {}
                Expiry::Warn(left) => {
                    let _ = outbox.offer(Outbound::Text(crate::protocol::token_expiring(left)));
                }
                Expiry::Expired => {
                    metrics::counter!("confab_ws_token_expired_total").increment(1);
                    outbox.close(crate::protocol::CloseCode::TokenExpired, "token expired");
                }
            });
        }
    }

    /// Whether `caller` may open a chat connection from a page at `origin`
    /// (None: not a browser): 403 for an origin not allowed, 429 when the
    /// user already holds as many connections as allowed.
    pub async fn admit(&self, caller: &Caller, origin: Option<&str>) -> Result<()> {
        let allowed = &self.settings.allowed_origins;
        if let Some(origin) = origin {
            if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/'))) {
                return Err(Error::Forbidden("origin not allowed".into()));
            }
        }
        self.presence.may_connect(caller.user_id, self.settings.max_per_user).await
    }

    /// The extensions to agree to, given the request's
    /// `Sec-WebSocket-Extensions` values.
    pub fn extensions<'a>(&self, offers: impl IntoIterator<Item = &'a str>) -> socket::Extensions {
        let deflate = self.settings.deflate_min_bytes.and_then(|_| deflate::negotiate(offers));
        socket::Extensions { deflate }
    }

    /// Closes (4001) the connections whose session has ended; false if
    /// Redis could not say for some (they are checked again next time).
    async fn recheck_sessions(&self) -> bool {
        use futures::StreamExt;
        let mut sessions = std::collections::HashSet::new();
        self.fanout.registry.each_connection(|o| {
            if let (Some(user), Some(session)) = (o.user_id, o.session) {
                sessions.insert((user, session));
            }
        });
        let checks = futures::stream::iter(sessions)
            .map(|(user, session)| async move { (user, session, self.sessions.is_live(user, session).await) })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        let mut complete = true;
        for (user, session, live) in checks {
            match live {
                Ok(true) => {}
                Ok(false) => {
                    let reason = "session revoked";
                    self.fanout.registry.close_user(
                        user,
                        Some(session),
                        crate::protocol::CloseCode::SessionRevoked,
                        reason,
                    );
                }
                Err(_) => complete = false,
            }
        }
        complete
    }

    /// A new connection's outbox, compressing as agreed: the caller's, or
    /// an anonymous one (echo).
    fn outbox(&self, caller: Option<&Caller>, extensions: socket::Extensions) -> Arc<Outbox> {
        let kill = self.fanout.shutdown.child_token();
        let outbox = Outbox::of_session(
            caller.map(|c| c.user_id),
            caller.and_then(|c| c.session),
            self.settings.outbound_queue,
            kill,
        );
        if let Some(caller) = caller {
            outbox.expires_at(caller.expires_at);
        }
        if let (Some(agreed), Some(min_bytes)) = (extensions.deflate, self.settings.deflate_min_bytes) {
            outbox.line.compress_with(Compression { min_bytes, window: agreed.window, compress: deflate::shared });
        }
        outbox
    }

    /// Serves one authenticated chat connection, once upgraded, until it ends.
    pub fn spawn_chat<F>(self: &Arc<Self>, caller: Caller, extensions: socket::Extensions, upgrade: F)
    where
        F: std::future::Future<Output = std::result::Result<Upgraded, fastwebsockets::WebSocketError>> + Send + 'static,
    {
        let sockets = self.clone();
        self.tasks.spawn(async move {
            match upgrade.await {
                Ok(ws) => sockets.run_chat(caller, extensions, ws).await,
                Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
            }
        });
    }

    /// Serves one conformance-echo connection, once upgraded, until it ends.
    pub fn spawn_echo<F>(self: &Arc<Self>, extensions: socket::Extensions, upgrade: F)
    where
        F: std::future::Future<Output = std::result::Result<Upgraded, fastwebsockets::WebSocketError>> + Send + 'static,
    {
        let sockets = self.clone();
        self.tasks.spawn(async move {
            if let Ok(ws) = upgrade.await {
                sockets.run_echo(extensions, ws).await;
            }
        });
    }

    async fn run_chat(self: Arc<Self>, caller: Caller, extensions: socket::Extensions, ws: Upgraded) {
        let Some(halves) = split(ws) else { return };
        let fanout = &self.fanout;
        let outbox = self.outbox(Some(&caller), extensions);
        fanout.registry.register(outbox.clone());
        // Receipts and presence reach a user through their own topic. Counting
        // the connection for presence goes alongside: with Redis down, each
        // waits out its own timeout, not one after the other. Boxed: these
        // Redis calls' futures are large, and unboxed they would be part of
        // this task's state for the connection's whole life.
        let (subscribed, ()) = Box::pin(async {
            tokio::join!(fanout.listen_user(caller.user_id), self.presence.connected(caller.user_id, outbox.id))
        })
        .await;
        match subscribed {
            Ok(()) => outbox.mark_user_topic_subscribed(),
            Err(e) => tracing::warn!(error = %e, "user topic not subscribed; receipts reach this connection late"),
        }
        let limits = self.settings.limits;
        let session = session::ChatSession::new(self, caller, outbox.clone());
        socket::drive(halves, outbox, limits, extensions, session).await;
    }

    async fn run_echo(self: Arc<Self>, extensions: socket::Extensions, ws: Upgraded) {
        let Some(halves) = split(ws) else { return };
        let outbox = self.outbox(None, extensions);
        let echo = echo::Echo { outbox: outbox.clone() };
        socket::drive(halves, outbox, self.settings.limits, extensions, echo).await;
    }

    /// Says goodbye (1001) to every connection, cuts off the stragglers, and
    /// waits (briefly) for every connection's task to end.
    pub async fn close_all(&self) {
        self.tasks.close();
        self.fanout.close_all().await;
        if tokio::time::timeout(std::time::Duration::from_secs(2), self.tasks.wait()).await.is_err() {
            tracing::warn!(left = self.tasks.len(), "connections still open after shutdown");
        }
    }
}

/// The socket's halves; None (logged) if the upgrade is not a TCP stream.
fn split(ws: Upgraded) -> Option<(socket::ReadSide, tokio::net::tcp::OwnedWriteHalf)> {
    let halves = socket::split(ws);
    if halves.is_none() {
        tracing::error!("upgraded connection is not a TCP stream; dropped");
    }
    halves
}

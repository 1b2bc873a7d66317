//! The socket edge of a node: live WebSocket connections, the registry that
//! maps rooms and users to local connections, and fan-out of bus events to
//! them.
//!
//! - `socket`: one connection's reader/writer pair, limits, pings, close codes.
//! - `assembler`: joins fragmented messages under a size cap, checking UTF-8.
//! - `registry`: sharded maps room → local connections, user → local
//!   connections, connection → queue.
//! - `subscriptions`: keeps the node subscribed to a room's or user's bus
//!   topic exactly while it has local listeners, off the delivery path.
//! - `protocol`: the JSON envelope of client and server frames.
//! - `session`: what a chat connection does with each client frame.
//! - `echo`: the RFC 6455 conformance endpoint, on the same socket code.

pub mod assembler;
pub mod echo;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod socket;
pub mod subscriptions;

use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

pub use registry::{ConnId, Outbound, Outbox, Registry};
pub use subscriptions::Subscriptions;

use crate::bus::{Delivery, Inbox, Kind, Topic};

/// The node's gateway: registry plus subscription keeper. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub subscriptions: Subscriptions,
    /// Cancelled at shutdown; every connection's own token is a child.
    pub shutdown: CancellationToken,
}

/// What the bus delivers into: the registry, plus the subscription keeper
/// (set once the bus exists) for rooms an eviction leaves empty.
pub struct GatewayInbox {
    pub registry: Arc<Registry>,
    pub subscriptions: OnceLock<Subscriptions>,
}

impl Inbox for GatewayInbox {
    fn deliver(&self, topic: Topic, delivery: Delivery) {
        match (topic, delivery.kind, delivery.subject) {
            (Topic::Room(room), Kind::Evict, Some(user)) => {
                if self.registry.evict(room, user, &delivery.frame) {
                    if let Some(subscriptions) = self.subscriptions.get() {
                        subscriptions.release(topic);
                    }
                }
            }
            (Topic::Room(room), _, _) => {
                self.registry.fan_out(room, &delivery);
            }
            (Topic::User(user), _, _) => {
                self.registry.send_to_user(user, &delivery.frame);
            }
        }
    }
}

use fastwebsockets::WebSocket;

use crate::auth::Caller;
use crate::node::App;

fn limits(app: &App) -> socket::Limits {
    socket::Limits { max_message_bytes: app.config.max_message_bytes, ping_interval: app.config.ping_interval }
}

/// An upgraded WebSocket, as the HTTP layer hands it over.
pub type Upgraded = WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Serves one authenticated chat connection until it ends.
pub async fn run_chat(app: Arc<App>, caller: Caller, ws: Upgraded) {
    let gateway = app.gateway.clone();
    let (outbox, queues) = Outbox::new(Some(caller.user_id), app.config.outbound_queue, gateway.shutdown.child_token());
    gateway.registry.register(outbox.clone());
    // Receipts and presence reach a user through their own topic. Counting
    // the connection for presence goes alongside: with Redis down, each
    // waits out its own timeout, not one after the other.
    let (subscribed, ()) = tokio::join!(
        gateway.subscriptions.ensure(Topic::User(caller.user_id)),
        crate::presence::connected(&app, caller.user_id, outbox.id),
    );
    if let Err(e) = subscribed {
        tracing::warn!(error = %e, "user topic not subscribed; receipts reach this connection late");
    }
    let session = session::ChatSession::new(app.clone(), caller, outbox.clone());
    socket::drive(socket::split(ws), outbox, queues, limits(&app), session).await;
}

/// Serves one conformance-echo connection until it ends.
pub async fn run_echo(app: Arc<App>, ws: Upgraded) {
    let (outbox, queues) = Outbox::new(None, app.config.outbound_queue, app.gateway.shutdown.child_token());
    let echo = echo::Echo { outbox: outbox.clone() };
    socket::drive(socket::split(ws), outbox, queues, limits(&app), echo).await;
}

impl Gateway {
    /// Says goodbye (1001) to every connection, then cuts off the stragglers.
    pub async fn close_all(&self) {
        for outbox in self.registry.connections() {
            outbox.close(1001, "server shutting down");
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.registry.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.shutdown.cancel();
    }
}

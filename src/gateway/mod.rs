//! The socket edge of a node: live WebSocket connections, the registry that
//! maps rooms and users to local connections, and fan-out of bus events to
//! them.
//!
//! - `socket`: one connection's reader/writer pair, limits, pings, close codes.
//! - `frames`: reads client frames with a buffer only while bytes arrive.
//! - `assembler`: joins fragmented messages under a size cap, checking UTF-8.
//! - `registry`: sharded maps room → local connections, user → local
//!   connections, connection → queue.
//! - `lanes`: writes a big room's fan-out on several cores, each
//!   connection's frames in order.
//! - `subscriptions`: keeps the node subscribed to a room's or user's bus
//!   topic exactly while it has local listeners, off the delivery path.
//! - `sequencer`: keeps each room's live messages in seq order, fills gaps.
//! - `watching`: hints that a user watches a room on every connection, so
//!   their notifications about it need not be sent.
//! - `protocol`: the JSON envelope of client and server frames.
//! - `session`: what a chat connection does with each client frame.
//! - `echo`: the RFC 6455 conformance endpoint, on the same socket code.

pub mod assembler;
pub mod echo;
pub mod frames;
pub mod lanes;
pub mod line;
pub mod protocol;
pub mod registry;
pub mod sequencer;
pub mod session;
pub mod socket;
pub mod subscriptions;
pub mod watching;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bson::oid::ObjectId;
use tokio_util::sync::CancellationToken;

pub use registry::{ConnId, Outbound, Outbox, Registry};
pub use sequencer::Sequencer;
pub use subscriptions::Subscriptions;

use crate::bus::{Delivery, Inbox, Kind, Topic};
use crate::store::{HistoryQuery, Message, Store};
use sequencer::Accepted;

/// The node's gateway: registry plus subscription keeper. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub registry: Arc<Registry>,
    pub subscriptions: Subscriptions,
    /// Cancelled at shutdown; every connection's own token is a child.
    pub shutdown: CancellationToken,
}

/// What the bus delivers into: the sequencer and registry, plus the
/// subscription keeper (set once the bus exists) for rooms an eviction
/// leaves empty, and the store that gap fills read.
pub struct GatewayInbox {
    pub registry: Arc<Registry>,
    pub sequencer: Arc<Sequencer>,
    pub subscriptions: OnceLock<Subscriptions>,
    pub store: Arc<dyn Store>,
    /// How long a gap in a room's seqs may stay open before history fills it.
    pub gap_wait: Duration,
}

impl Inbox for GatewayInbox {
    fn resubscribed(&self) {
        self.registry.bus_resubscribed();
    }

    fn deliver(&self, topic: Topic, delivery: Delivery) {
        match (topic, delivery.kind, delivery.subject) {
            (Topic::Room(room), Kind::Message, _) => {
                let lock = self.sequencer.room(room);
                let mut order = lock.lock();
                match order.accept(delivery) {
                    Accepted::Deliver(ready) => {
                        for d in &ready {
                            self.registry.fan_out(room, d);
                        }
                    }
                    Accepted::Wait { schedule_fill: true } => {
                        metrics::counter!("confab_seq_gaps_total").increment(1);
                        tokio::spawn(fill_gaps(self.fill_context(), room));
                    }
                    Accepted::Wait { schedule_fill: false } => {}
                }
            }
            (_, Kind::Presence, Some(user)) => {
                if let Some(change) = delivery.id {
                    self.registry.presence(topic, change, user, &delivery.frame);
                }
            }
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
            (Topic::User(user), Kind::Evict, Some(room)) => {
                if self.registry.revoke(user, room, &delivery.frame) {
                    if let Some(subscriptions) = self.subscriptions.get() {
                        subscriptions.release(Topic::Room(room));
                    }
                }
            }
            (Topic::User(user), Kind::Notify, room) => {
                let delivered = self.registry.send_to_user_except_room(user, room, &delivery.frame);
                if delivered > 0 {
                    crate::notifications::delivered_live(&self.store, user, &delivery);
                } else if let Some(room) = room.filter(|_| self.registry.user_connections(user) > 0) {
                    // Every connection of theirs here watches the room.
                    self.registry.watching.note(user, room);
                }
            }
            (Topic::User(user), _, _) => {
                self.registry.send_to_user(user, &delivery.frame);
            }
        }
    }
}

impl GatewayInbox {
    fn fill_context(&self) -> FillContext {
        FillContext {
            registry: self.registry.clone(),
            sequencer: self.sequencer.clone(),
            store: self.store.clone(),
            wait: self.gap_wait,
        }
    }
}

struct FillContext {
    registry: Arc<Registry>,
    sequencer: Arc<Sequencer>,
    store: Arc<dyn Store>,
    wait: Duration,
}

/// Messages one gap fill reads at most; a wider gap is given up beyond them
/// (clients page the rest from history).
const MAX_FILL: usize = 2000;

/// Waits, then reads a room's missing seqs from history and delivers them
/// with the messages waiting behind them; repeats while gaps remain.
async fn fill_gaps(ctx: FillContext, room: ObjectId) {
    let lock = ctx.sequencer.room(room);
    let mut read = 0;
    let mut waited = false;
    loop {
        if !waited {
            tokio::time::sleep(ctx.wait).await;
            waited = true;
        }
        let (after, before) = {
            let mut order = lock.lock();
            match order.gap() {
                Some(gap) => gap,
                None => {
                    // Cleared under the lock that saw no gap: a message that
                    // opens a new gap afterwards schedules its own fill.
                    order.filling = false;
                    return;
                }
            }
        };
        let limit = 500.min(MAX_FILL - read) as i64;
        let query = HistoryQuery {
            room_id: room,
            after_seq: Some(after),
            before_seq: Some(before),
            forward: true,
            limit,
            ..Default::default()
        };
        let (found, more) = match ctx.store.history(&query).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, room = %room, "gap fill could not read history; moving on");
                (Vec::new(), false)
            }
        };
        read += found.len();
        let partial = more && read < MAX_FILL;
        let floor = if partial { found.last().map_or(before, |m| m.seq) } else { before };
        let found: Vec<Delivery> = found.iter().map(from_history).collect();
        metrics::counter!("confab_seq_gap_filled_total").increment(found.len() as u64);
        let order = &mut *lock.lock();
        for d in &order.filled(found, floor) {
            ctx.registry.fan_out(room, d);
        }
        if !partial {
            // The next gap, if any, gets its own wait and its own budget.
            waited = false;
            read = 0;
        }
    }
}

/// A stored message as a live delivery (the same frame its sender published).
fn from_history(m: &Message) -> Delivery {
    Delivery {
        kind: Kind::Message,
        id: Some(m.id),
        subject: None,
        frame: protocol::message(m),
        stored_at_us: m.timestamp.timestamp_micros().max(0) as u64,
        seq: m.seq,
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
    let Some(halves) = split(ws) else { return };
    let gateway = app.gateway.clone();
    let outbox = Outbox::new(Some(caller.user_id), app.config.outbound_queue, gateway.shutdown.child_token());
    gateway.registry.register(outbox.clone());
    // Receipts and presence reach a user through their own topic. Counting
    // the connection for presence goes alongside: with Redis down, each
    // waits out its own timeout, not one after the other.
    let (subscribed, ()) = tokio::join!(
        gateway.subscriptions.ensure(Topic::User(caller.user_id)),
        crate::presence::connected(&app, caller.user_id, outbox.id),
    );
    match subscribed {
        Ok(()) => outbox.mark_user_topic_subscribed(),
        Err(e) => tracing::warn!(error = %e, "user topic not subscribed; receipts reach this connection late"),
    }
    let session = session::ChatSession::new(app.clone(), caller, outbox.clone());
    socket::drive(halves, outbox, limits(&app), session).await;
}

/// Serves one conformance-echo connection until it ends.
pub async fn run_echo(app: Arc<App>, ws: Upgraded) {
    let Some(halves) = split(ws) else { return };
    let outbox = Outbox::new(None, app.config.outbound_queue, app.gateway.shutdown.child_token());
    let echo = echo::Echo { outbox: outbox.clone() };
    socket::drive(halves, outbox, limits(&app), echo).await;
}

/// The socket's halves; None (logged) if the upgrade is not a TCP stream.
fn split(ws: Upgraded) -> Option<(socket::ReadSide, tokio::net::tcp::OwnedWriteHalf)> {
    let halves = socket::split(ws);
    if halves.is_none() {
        tracing::error!("upgraded connection is not a TCP stream; dropped");
    }
    halves
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

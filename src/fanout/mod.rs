//! Delivery on this node: which local connections listen to which rooms
//! and users, and the fan-out of bus events to them, in order.
//!
//! - `registry`: sharded maps room → local connections, user → local
//!   connections, connection → [`Outbox`].
//! - `line`: one connection's outbound side: frames written straight to
//!   the socket when it takes them, a bounded backlog when it does not.
//! - `lanes`: writes a big room's fan-out on several cores, each
//!   connection's frames in order.
//! - `subscriptions`: keeps the node subscribed to a room's or user's bus
//!   topic exactly while it has local listeners, off the delivery path.
//! - `sequencer`: keeps each room's live messages in seq order, fills gaps.
//! - `watching`: hints that a user watches a room on every connection, so
//!   their notifications about it need not be sent.
//!
//! The bus hands every event it receives to [`FanoutInbox`]; the WebSocket
//! edge (`ws`) registers connections here and joins them to rooms.

pub mod lanes;
pub mod line;
pub mod registry;
pub mod sequencer;
pub mod subscriptions;
pub mod watching;

use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use registry::{ConnId, Expiry, Outbound, Outbox, Registry, RoomFrame};
pub use sequencer::Sequencer;
pub use subscriptions::{Keeper, Subscriptions};

use crate::bus::{Delivery, Inbox, Stored, Topic};
use crate::protocol::CloseCode;
use crate::store::{HistoryQuery, Message, Store};
use sequencer::Accepted;

/// The node's fan-out: registry plus subscription keeper. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    pub registry: Arc<Registry>,
    subscriptions: Subscriptions,
    /// Cancelled at shutdown; every connection's own token is a child.
    pub shutdown: CancellationToken,
    /// Gap fills in flight, and the token that ends them.
    fills: TaskTracker,
    stop: CancellationToken,
}

/// What the bus delivers into: the sequencer and registry, the
/// subscription keeper for rooms an eviction leaves empty, and the store
/// that gap fills read.
pub struct FanoutInbox {
    registry: Arc<Registry>,
    sequencer: Arc<Sequencer>,
    subscriptions: Subscriptions,
    store: Arc<Store>,
    /// How long a gap in a room's seqs may stay open before history fills it.
    gap_wait: Duration,
    shown: mpsc::UnboundedSender<Shown>,
    fills: TaskTracker,
    stop: CancellationToken,
}

/// A notification shown to at least one connection here, for the
/// notifications service to count and to store if nobody has yet.
#[derive(Debug)]
pub struct Shown {
    pub user: ObjectId,
    /// When the notification was stored (µs since the epoch), 0 if it was not.
    pub stored_at_us: u64,
    pub frame: Bytes,
}

impl Fanout {
    /// The fan-out over `registry`, the inbox the bus is to deliver into, and
    /// the subscription keeper to start once that bus exists. Notifications
    /// shown here are reported on `shown`.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<Store>,
        gap_wait: Duration,
        shown: mpsc::UnboundedSender<Shown>,
    ) -> (Fanout, Arc<FanoutInbox>, Keeper) {
        let sequencer = Arc::new(Sequencer::default());
        let (subscriptions, keeper) = Subscriptions::new(registry.clone(), sequencer.clone());
        let (fills, stop) = (TaskTracker::new(), CancellationToken::new());
        let inbox = Arc::new(FanoutInbox {
            registry: registry.clone(),
            sequencer,
            subscriptions: subscriptions.clone(),
            store,
            gap_wait,
            shown,
            fills: fills.clone(),
            stop: stop.clone(),
        });
        let fanout = Fanout { registry, subscriptions, shutdown: CancellationToken::new(), fills, stop };
        (fanout, inbox, keeper)
    }

    /// Waits until this node is subscribed to the room's topic (call after
    /// registering the local listener): what is published next reaches it.
    pub async fn listen_room(&self, room: ObjectId) -> Result<(), crate::bus::BusError> {
        self.subscriptions.ensure(Topic::Room(room)).await
    }

    /// Waits until this node is subscribed to the user's topic.
    pub async fn listen_user(&self, user: ObjectId) -> Result<(), crate::bus::BusError> {
        self.subscriptions.ensure(Topic::User(user)).await
    }

    /// Lets the node unsubscribe from the room if nobody here listens to it.
    pub fn release_room(&self, room: ObjectId) {
        self.subscriptions.release(Topic::Room(room));
    }

    /// Lets the node unsubscribe from the user if none of theirs is here.
    pub fn release_user(&self, user: ObjectId) {
        self.subscriptions.release(Topic::User(user));
    }

    /// Ends gap fills and the subscription keeper, and waits for them.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.fills.close();
        tokio::join!(self.fills.wait(), self.subscriptions.stop());
    }
}

impl Inbox for FanoutInbox {
    fn resubscribed(&self) {
        self.registry.bus_resubscribed();
    }

    fn deliver(&self, topic: Topic, delivery: Delivery) {
        match (topic, delivery) {
            (Topic::Room(room), Delivery::Message { message, .. }) => {
                let lock = self.sequencer.room(room);
                let mut order = lock.lock();
                match order.accept(message) {
                    Accepted::Deliver(ready) => {
                        for m in ready {
                            self.registry.fan_out(room, &RoomFrame::Message(m));
                        }
                    }
                    Accepted::Wait { schedule_fill: true } => {
                        metrics::counter!("confab_seq_gaps_total").increment(1);
                        self.fills.spawn(fill_gaps(self.fill_context(), room));
                    }
                    Accepted::Wait { schedule_fill: false } => {}
                }
            }
            (Topic::Room(room), Delivery::Ephemeral { skip, frame }) => {
                self.registry.fan_out(room, &RoomFrame::Ephemeral { skip, frame });
            }
            (Topic::Room(room), Delivery::Evict { user }) => {
                if self.registry.evict(room, user, &Bytes::new()) {
                    self.subscriptions.release(topic);
                }
            }
            (topic, Delivery::Presence { change, user, frame }) => {
                self.registry.presence(topic, change, user, &frame);
            }
            (Topic::User(user), Delivery::MembershipEnded { room, frame }) => {
                if self.registry.revoke(user, room, &frame) {
                    self.subscriptions.release(Topic::Room(room));
                }
            }
            (Topic::User(user), Delivery::Notify { room, stored_at_us, frame, .. }) => {
                let delivered = self.registry.send_to_user_except_room(user, room, &frame);
                if delivered > 0 {
                    // Unbounded: the notifier takes these as fast as they come,
                    // and one lost here is a notification never stored.
                    let _ = self.shown.send(Shown { user, stored_at_us, frame });
                } else if let Some(room) = room.filter(|_| self.registry.user_connections(user) > 0) {
                    // Every connection of theirs here watches the room.
                    self.registry.watching.note(user, room);
                }
            }
            (Topic::User(user), Delivery::Close { session, code, reason }) => match CloseCode::of(code) {
                Some(code) => {
                    let reason = String::from_utf8_lossy(&reason);
                    self.registry.close_user(user, session, code, &reason);
                }
                None => tracing::debug!(code, "a close with an unknown code; dropped"),
            },
            (Topic::User(user), Delivery::Ephemeral { frame, .. }) => {
                self.registry.send_to_user(user, &frame);
            }
            (topic, delivery) => {
                tracing::debug!(?topic, ?delivery, "an event that does not belong on its topic; dropped");
            }
        }
    }
}

impl FanoutInbox {
    fn fill_context(&self) -> FillContext {
        FillContext {
            registry: self.registry.clone(),
            sequencer: self.sequencer.clone(),
            store: self.store.clone(),
            wait: self.gap_wait,
            stop: self.stop.clone(),
        }
    }
}

struct FillContext {
    registry: Arc<Registry>,
    sequencer: Arc<Sequencer>,
    store: Arc<Store>,
    wait: Duration,
    stop: CancellationToken,
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
            tokio::select! {
                _ = tokio::time::sleep(ctx.wait) => {}
                // Shutting down: the room's listeners are gone with the node.
                _ = ctx.stop.cancelled() => return,
            }
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
        let found: Vec<Stored> = found.iter().map(from_history).collect();
        metrics::counter!("confab_seq_gap_filled_total").increment(found.len() as u64);
        let order = &mut *lock.lock();
        for m in order.filled(found, floor) {
            ctx.registry.fan_out(room, &RoomFrame::Message(m));
        }
        if !partial {
            // The next gap, if any, gets its own wait and its own budget.
            waited = false;
            read = 0;
        }
    }
}

/// A stored message as a live delivery (the same frame its sender published).
fn from_history(m: &Message) -> Stored {
    Stored {
        seq: m.seq,
        stored_at_us: m.timestamp.timestamp_micros().max(0) as u64,
        frame: crate::protocol::ServerEvent::Message(m).encode(),
    }
}

impl Fanout {
    /// Says goodbye (1001) to every connection, then cuts off the stragglers.
    pub async fn close_all(&self) {
        for outbox in self.registry.connections() {
            outbox.close(CloseCode::GoingAway, "server shutting down");
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.registry.connection_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        self.shutdown.cancel();
    }
}

//! Who is connected to this node, and to which rooms.
//!
//! Sharded maps (DashMap): room → local connections, user → local
//! connections, and connection → its outbound queue. Fan-out takes one shard's read lock, offers the shared
//! frame bytes to each queue without waiting, and cuts off any connection
//! whose queue is full: a slow client loses its connection, the room loses
//! nothing.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bson::oid::ObjectId;
use bytes::Bytes;
use dashmap::DashMap;

use super::watching::Watching;
use crate::bus::{Delivery, Kind, Topic};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

/// A frame on its way to one socket. Message frames are encoded once per node
/// and the same `Bytes` is shared by every receiver.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A room event from the bus, with its store time (Unix µs) for the
    /// delivery-latency metric.
    Delivery(Bytes, u64),
    Text(Bytes),
    Binary(Bytes),
}

/// Control frames that must not wait behind data: pongs, close. Boxed
/// payloads keep the enum small: every connection's control queue holds a
/// block of them.
#[derive(Debug)]
pub enum Control {
    Pong(Box<[u8]>),
    Close(u16, Box<str>),
    /// A close frame the protocol obliges us to echo, already encoded.
    CloseEcho(Box<[u8]>),
}

/// WebSocket close code for a client cut off for not reading fast enough
/// (1013, "try again later": reconnect and catch up from history).
pub const CLOSE_SLOW_CONSUMER: u16 = 1013;

/// The sending side of one connection.
pub struct Outbox {
    pub id: ConnId,
    pub user_id: Option<ObjectId>,
    data: mpsc::Sender<Outbound>,
    control: mpsc::Sender<Control>,
    /// Cancelled to drop the connection at once, whatever it is doing.
    pub kill: CancellationToken,
    /// While a join replays a room's history, that room's live deliveries
    /// wait here, so replay and live traffic reach the client in seq order.
    holding: AtomicBool,
    hold: Mutex<Option<Hold>>,
    /// Rooms this connection was removed from by a membership change on some
    /// node; the session drains them before acting on its next frame.
    revoked: Mutex<Vec<ObjectId>>,
    /// The node's subscription to this connection's user topic was confirmed;
    /// it lasts while the connection is registered.
    user_topic: AtomicBool,
}

struct Hold {
    room: ObjectId,
    /// Live frames with their seq; events that are not messages have none
    /// and follow the messages on release.
    frames: Vec<(Option<i64>, Outbound)>,
}

/// Live frames one connection may hold while replaying before it counts as
/// a slow consumer.
pub const MAX_HELD: usize = 10_000;

/// The receiving ends, owned by the connection's writer.
pub struct OutboxReceivers {
    pub data: mpsc::Receiver<Outbound>,
    pub control: mpsc::Receiver<Control>,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl Outbox {
    pub fn new(user_id: Option<ObjectId>, capacity: usize, kill: CancellationToken) -> (Arc<Outbox>, OutboxReceivers) {
        let (data_tx, data_rx) = mpsc::channel(capacity);
        let (control_tx, control_rx) = mpsc::channel(16);
        let outbox = Outbox {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            user_id,
            data: data_tx,
            control: control_tx,
            kill,
            holding: AtomicBool::new(false),
            hold: Mutex::new(None),
            revoked: Mutex::new(Vec::new()),
            user_topic: AtomicBool::new(false),
        };
        (Arc::new(outbox), OutboxReceivers { data: data_rx, control: control_rx })
    }

    /// Queues a frame without waiting; false if the queue is full or closed.
    pub fn offer(&self, frame: Outbound) -> bool {
        self.data.try_send(frame).is_ok()
    }

    /// Queues a room delivery, or holds it while that room is replaying.
    fn offer_delivery(&self, room: ObjectId, d: &Delivery) -> bool {
        let frame = Outbound::Delivery(d.frame.clone(), d.stored_at_us);
        if self.holding.load(Ordering::Acquire) {
            let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = hold.as_mut().filter(|h| h.room == room) {
                if h.frames.len() >= MAX_HELD {
                    return false;
                }
                h.frames.push(((d.kind == Kind::Message).then_some(d.seq), frame));
                return true;
            }
        }
        self.offer(frame)
    }

    /// Starts holding `room`'s live deliveries (before subscribing to it).
    pub fn start_hold(&self, room: ObjectId) {
        *self.hold.lock().unwrap_or_else(|e| e.into_inner()) = Some(Hold { room, frames: Vec::new() });
        self.holding.store(true, Ordering::Release);
    }

    /// Stops holding: queues the held deliveries with seq above `after`, in
    /// seq order and once each, before any later delivery can overtake them.
    /// False if they did not fit (the caller treats it as a slow consumer).
    pub fn release_hold(&self, after: i64) -> bool {
        let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        let mut ok = true;
        if let Some(mut h) = hold.take() {
            // Stable: events without a seq keep their order, after the messages.
            h.frames.sort_by_key(|(seq, _)| seq.unwrap_or(i64::MAX));
            let mut last = after;
            for (seq, frame) in h.frames {
                match seq {
                    Some(seq) if seq <= last => continue,
                    Some(seq) => last = seq,
                    None => {}
                }
                ok &= self.offer(frame);
            }
        }
        self.holding.store(false, Ordering::Release);
        ok
    }

    /// Notes that the user was removed from `room` (see `take_revoked`).
    fn revoke(&self, room: ObjectId) {
        self.revoked.lock().unwrap_or_else(|e| e.into_inner()).push(room);
    }

    /// Notes that this node is subscribed to the connection's user topic
    /// (after `Subscriptions::ensure` succeeded for it).
    pub fn mark_user_topic_subscribed(&self) {
        self.user_topic.store(true, Ordering::Release);
    }

    /// Rooms this connection lost since the last call.
    pub fn take_revoked(&self) -> Vec<ObjectId> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Queues a frame, waiting for room (for replies to this client's own
    /// requests, where waiting slows only this client).
    pub async fn send(&self, frame: Outbound) -> bool {
        self.data.send(frame).await.is_ok()
    }

    pub async fn control(&self, c: Control) -> bool {
        self.control.send(c).await.is_ok()
    }

    pub fn control_sender(&self) -> mpsc::Sender<Control> {
        self.control.clone()
    }

    /// Closes a connection that cannot keep up (1013) and drops it a moment
    /// later, since its writer may be stuck on a full socket.
    pub fn cut_off_slow(&self) {
        metrics::counter!("confab_slow_consumer_disconnects_total").increment(1);
        tracing::info!(conn = self.id, "slow consumer cut off");
        self.close(CLOSE_SLOW_CONSUMER, "slow consumer");
        let kill = self.kill.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            kill.cancel();
        });
    }

    /// Asks the writer to send a close frame, then drop the connection. If
    /// even the control queue is full the connection is dropped at once.
    pub fn close(&self, code: u16, reason: &str) {
        if self.control.try_send(Control::Close(code, reason.into())).is_err() {
            self.kill.cancel();
        }
    }
}

type Members = HashMap<ConnId, Arc<Outbox>>;

#[derive(Default)]
pub struct Registry {
    rooms: DashMap<ObjectId, Members>,
    users: DashMap<ObjectId, Members>,
    conns: DashMap<ConnId, Arc<Outbox>>,
    /// Which users watch which rooms with every local connection.
    pub watching: Watching,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection; true if it is its user's first on this node.
    pub fn register(&self, outbox: Arc<Outbox>) -> bool {
        let mut first = false;
        if let Some(user) = outbox.user_id {
            // A new connection watches no room yet.
            self.watching.ended_all(user);
            let mut entry = self.users.entry(user).or_default();
            first = entry.is_empty();
            entry.insert(outbox.id, outbox.clone());
        }
        self.conns.insert(outbox.id, outbox);
        metrics::gauge!("confab_connections_active").set(self.conns.len() as f64);
        first
    }

    /// Removes a connection; true if it was its user's last on this node.
    pub fn unregister(&self, conn: ConnId) -> bool {
        let mut last = false;
        if let Some((_, outbox)) = self.conns.remove(&conn) {
            if let Some(user) = outbox.user_id {
                last = remove_member(&self.users, user, conn);
                if last {
                    self.watching.ended_all(user);
                }
            }
        }
        metrics::gauge!("confab_connections_active").set(self.conns.len() as f64);
        last
    }

    /// Whether this node holds a connection of `user` whose user-topic
    /// subscription is confirmed: while it stays registered, the node cannot
    /// unsubscribe, so it receives everything published to the user.
    pub fn user_topic_held(&self, user: ObjectId) -> bool {
        self.users.get(&user).is_some_and(|m| m.values().any(|o| o.user_topic.load(Ordering::Acquire)))
    }

    /// Whether `user` has connections here and every one of them is
    /// subscribed to `room` (a notification about it would reach none).
    pub fn watches_here(&self, user: ObjectId, room: ObjectId) -> bool {
        let conns: Vec<ConnId> = match self.users.get(&user) {
            Some(m) => m.keys().copied().collect(),
            None => return false,
        };
        !conns.is_empty() && self.rooms.get(&room).is_some_and(|m| conns.iter().all(|c| m.contains_key(c)))
    }

    /// How many connections `user` has on this node.
    pub fn user_connections(&self, user: ObjectId) -> usize {
        self.users.get(&user).map_or(0, |m| m.len())
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Every live connection (for shutdown).
    pub fn connections(&self) -> Vec<Arc<Outbox>> {
        self.conns.iter().map(|e| e.value().clone()).collect()
    }

    /// Adds a connection to a room; true if it is the room's first local one.
    pub fn join(&self, room: ObjectId, outbox: &Arc<Outbox>) -> bool {
        let mut entry = self.rooms.entry(room).or_default();
        let first = entry.is_empty();
        entry.insert(outbox.id, outbox.clone());
        first
    }

    /// Removes a connection from a room; true if the room has no local one left.
    pub fn leave(&self, room: ObjectId, conn: ConnId) -> bool {
        if let Some(user) = self.conns.get(&conn).and_then(|o| o.user_id) {
            self.watching.ended(user, room);
        }
        remove_member(&self.rooms, room, conn)
    }

    /// Whether any local connection listens to the topic.
    pub fn has_local(&self, topic: Topic) -> bool {
        let map = match topic {
            Topic::Room(_) => &self.rooms,
            Topic::User(_) => &self.users,
        };
        let (Topic::Room(id) | Topic::User(id)) = topic;
        map.get(&id).is_some_and(|m| !m.is_empty())
    }

    pub fn local_subscribers(&self, room: ObjectId) -> usize {
        self.rooms.get(&room).map_or(0, |m| m.len())
    }

    /// Offers one frame to every local subscriber of `room` (except the
    /// connections of an ephemeral event's own user); connections whose queue
    /// is full are cut off as slow consumers. Returns how many got it.
    pub fn fan_out(&self, room: ObjectId, delivery: &Delivery) -> usize {
        let skip = if delivery.kind == Kind::Ephemeral { delivery.subject } else { None };
        let delivered = match self.rooms.get(&room) {
            Some(members) => offer_all(
                members.values(),
                |o| skip.is_none() || o.user_id != skip,
                |o| o.offer_delivery(room, delivery),
            ),
            None => 0,
        };
        if delivery.kind == Kind::Message {
            metrics::counter!("confab_messages_delivered_total").increment(delivered as u64);
        }
        delivered
    }

    /// Offers one frame to every local connection of `user`.
    pub fn send_to_user(&self, user: ObjectId, frame: &Bytes) -> usize {
        match self.users.get(&user) {
            Some(conns) => offer_all(conns.values(), |_| true, |o| o.offer(Outbound::Text(frame.clone()))),
            None => 0,
        }
    }

    /// Offers a notification frame to `user`'s local connections that are
    /// not subscribed to `room` (to all of them without a room): a
    /// connection watching the room sees the message itself. Returns how
    /// many got it.
    pub fn send_to_user_except_room(&self, user: ObjectId, room: Option<ObjectId>, frame: &Bytes) -> usize {
        // The user's few connections first, so no two shard locks are held at once.
        let conns: Vec<Arc<Outbox>> = match self.users.get(&user) {
            Some(conns) => conns.values().cloned().collect(),
            None => return 0,
        };
        let watching = |o: &Outbox| room.is_some_and(|r| self.rooms.get(&r).is_some_and(|m| m.contains_key(&o.id)));
        offer_all(conns.iter(), |o| !watching(o), |o| o.offer(Outbound::Text(frame.clone())))
    }

    /// Takes `user`'s local connections out of `room` and sends them `frame`
    /// (if not empty). Returns true if the room has no local subscriber left.
    pub fn evict(&self, room: ObjectId, user: ObjectId, frame: &Bytes) -> bool {
        self.watching.ended(user, room);
        let mut evicted = Vec::new();
        let emptied = self.rooms.remove_if_mut(&room, |_, members| {
            members.retain(|_, o| {
                let keep = o.user_id != Some(user);
                if !keep {
                    evicted.push(o.clone());
                }
                keep
            });
            members.is_empty()
        });
        for outbox in evicted {
            outbox.revoke(room);
            if !frame.is_empty() && !outbox.offer(Outbound::Text(frame.clone())) {
                outbox.cut_off_slow();
            }
        }
        emptied.is_some()
    }
}

/// Removes `conn` from the set under `key`; true if that emptied it.
fn remove_member(map: &DashMap<ObjectId, Members>, key: ObjectId, conn: ConnId) -> bool {
    map.remove_if_mut(&key, |_, members| {
        members.remove(&conn);
        members.is_empty()
    })
    .is_some()
}

/// Offers a frame to each wanted connection; cuts off those that are full.
fn offer_all<'a>(
    conns: impl Iterator<Item = &'a Arc<Outbox>>,
    wanted: impl Fn(&Outbox) -> bool,
    offer: impl Fn(&Outbox) -> bool,
) -> usize {
    let mut slow: Vec<Arc<Outbox>> = Vec::new();
    let mut delivered = 0;
    for outbox in conns.filter(|o| wanted(o)) {
        if offer(outbox) {
            delivered += 1;
        } else if !outbox.kill.is_cancelled() {
            slow.push(outbox.clone());
        }
    }
    for outbox in slow {
        outbox.cut_off_slow();
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq_of(o: Outbound) -> i64 {
        match o {
            Outbound::Delivery(b, _) => std::str::from_utf8(&b).unwrap().parse().unwrap(),
            _ => panic!("not a delivery"),
        }
    }

    #[tokio::test]
    async fn held_deliveries_are_released_in_seq_order_without_duplicates() {
        let reg = Registry::new();
        let (room, other) = (ObjectId::new(), ObjectId::new());
        let (o, mut rx) = outbox(64);
        o.start_hold(room);
        reg.join(room, &o);
        reg.join(other, &o);
        let d = |seq: i64| Delivery::message(Bytes::from(seq.to_string()), seq);
        for seq in [7, 5, 6, 5] {
            reg.fan_out(room, &d(seq));
        }
        reg.fan_out(other, &d(100)); // another room is not held
        assert_eq!(seq_of(rx.data.try_recv().unwrap()), 100);
        assert!(rx.data.try_recv().is_err(), "held frames wait");
        assert!(o.release_hold(5)); // replay covered up to seq 5
        reg.fan_out(room, &d(8));
        let got: Vec<i64> = std::iter::from_fn(|| rx.data.try_recv().ok()).map(seq_of).collect();
        assert_eq!(got, [6, 7, 8]);
    }

    fn outbox(cap: usize) -> (Arc<Outbox>, OutboxReceivers) {
        Outbox::new(None, cap, CancellationToken::new())
    }

    #[test]
    fn ephemeral_events_skip_their_user_and_evictions_remove_only_theirs() {
        let reg = Registry::new();
        let room = ObjectId::new();
        let (alice, bob) = (ObjectId::new(), ObjectId::new());
        let (a1, mut ra1) = Outbox::new(Some(alice), 8, CancellationToken::new());
        let (a2, mut ra2) = Outbox::new(Some(alice), 8, CancellationToken::new());
        let (b, mut rb) = Outbox::new(Some(bob), 8, CancellationToken::new());
        assert!(reg.register(a1.clone()), "alice's first connection");
        assert!(!reg.register(a2.clone()));
        assert!(reg.register(b.clone()));
        for o in [&a1, &a2, &b] {
            reg.join(room, o);
        }
        let typing = Delivery {
            kind: Kind::Ephemeral,
            subject: Some(alice),
            frame: Bytes::from_static(b"typing"),
            stored_at_us: 0,
            seq: 0,
        };
        assert_eq!(reg.fan_out(room, &typing), 1, "only bob hears alice typing");
        assert!(rb.data.try_recv().is_ok());
        assert!(ra1.data.try_recv().is_err());

        assert!(!reg.evict(room, alice, &Bytes::from_static(b"removed")), "bob is still here");
        assert_eq!(a1.take_revoked(), [room]);
        assert!(a1.take_revoked().is_empty(), "drained once");
        assert!(matches!(ra2.data.try_recv(), Ok(Outbound::Text(f)) if &f[..] == b"removed"));
        assert_eq!(reg.fan_out(room, &Delivery::message(Bytes::from_static(b"m"), 1)), 1, "alice gets no more");
        assert!(reg.evict(room, bob, &Bytes::from_static(b"removed")), "room emptied");

        assert_eq!(reg.send_to_user(alice, &Bytes::from_static(b"receipt")), 2);
        assert!(!reg.unregister(a1.id));
        assert!(reg.unregister(a2.id), "alice's last connection");
        assert_eq!(reg.send_to_user(alice, &Bytes::from_static(b"receipt")), 0);
    }

    #[test]
    fn notifications_skip_the_connections_watching_their_room() {
        let reg = Registry::new();
        let (room, other) = (ObjectId::new(), ObjectId::new());
        let alice = ObjectId::new();
        let (watching, mut rw) = Outbox::new(Some(alice), 8, CancellationToken::new());
        let (elsewhere, mut re) = Outbox::new(Some(alice), 8, CancellationToken::new());
        reg.register(watching.clone());
        reg.register(elsewhere.clone());
        reg.join(room, &watching);
        reg.join(other, &elsewhere);
        let frame = Bytes::from_static(b"notification");
        assert_eq!(reg.send_to_user_except_room(alice, Some(room), &frame), 1);
        assert!(rw.data.try_recv().is_err(), "the connection in the room sees the message itself");
        assert!(matches!(re.data.try_recv(), Ok(Outbound::Text(f)) if &f[..] == b"notification"));
        assert_eq!(reg.send_to_user_except_room(alice, None, &frame), 2, "without a room: every connection");
        assert!(!reg.watches_here(alice, room));
        reg.join(room, &elsewhere);
        assert!(reg.watches_here(alice, room));
        assert!(!reg.watches_here(alice, other) && !reg.watches_here(ObjectId::new(), room));
        assert_eq!(reg.send_to_user_except_room(alice, Some(room), &frame), 0);
        assert_eq!(reg.send_to_user_except_room(ObjectId::new(), Some(room), &frame), 0, "nobody here");
    }

    #[test]
    fn join_and_leave_report_first_and_last() {
        let reg = Registry::new();
        let room = ObjectId::new();
        let (a, _ra) = outbox(4);
        let (b, _rb) = outbox(4);
        assert!(reg.join(room, &a));
        assert!(!reg.join(room, &b));
        assert!(!reg.leave(room, a.id));
        assert!(reg.has_local(Topic::Room(room)));
        assert!(reg.leave(room, b.id));
        assert!(!reg.has_local(Topic::Room(room)));
        assert!(!reg.leave(room, b.id), "leaving an empty room is a no-op");
    }

    #[tokio::test]
    async fn fan_out_shares_bytes_and_cuts_off_full_queues() {
        let reg = Registry::new();
        let room = ObjectId::new();
        let (fast, mut fast_rx) = outbox(8);
        let (slow, mut slow_rx) = outbox(1);
        reg.join(room, &fast);
        reg.join(room, &slow);
        let frame = Bytes::from_static(b"{\"type\":\"message\"}");
        let d = Delivery::message(frame.clone(), 1);
        assert_eq!(reg.fan_out(room, &d), 2);
        assert_eq!(reg.fan_out(room, &d), 1, "slow queue is full");
        let Some(Outbound::Delivery(got, _)) = fast_rx.data.recv().await else { panic!("no frame") };
        assert_eq!(got.as_ptr(), frame.as_ptr(), "the same bytes, not a copy");
        assert!(matches!(slow_rx.control.recv().await, Some(Control::Close(CLOSE_SLOW_CONSUMER, _))));
        assert!(slow_rx.data.recv().await.is_some());
    }
}

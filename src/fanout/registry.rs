//! Who is connected to this node, and to which rooms.
//!
//! Sharded maps (DashMap): room → local connections, user → local
//! connections, and connection → its outbound line. Fan-out takes one
//! shard's read lock, offers the shared frame bytes to each connection
//! without waiting (written straight to the socket when it takes them, see
//! `line`; a big room's connections split over the node's cores, see
//! `lanes`), and cuts off any connection whose backlog is full: a slow
//! client loses its connection, the room loses nothing.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bson::oid::ObjectId;
use bytes::Bytes;
use dashmap::DashMap;

use super::lanes::{offer_all, Lanes, Tally};
use super::line::{Line, Op, Refused};
use super::watching::Watching;
use crate::bus::{Stored, Topic};
use crate::protocol::CloseCode;
use tokio_util::sync::CancellationToken;

pub type ConnId = u64;

/// A room's event, for its local subscribers.
#[derive(Debug, Clone)]
pub enum RoomFrame {
    /// A stored message, in seq order (held while a join replays).
    Message(Stored),
    /// Not stored; not for the connections of `skip`.
    Ephemeral { skip: Option<ObjectId>, frame: Bytes },
}

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

impl Outbound {
    fn parts(self) -> (Op, Bytes, u64) {
        match self {
            Outbound::Delivery(b, stored_at_us) => (Op::Text, b, stored_at_us),
            Outbound::Text(b) => (Op::Text, b, 0),
            Outbound::Binary(b) => (Op::Binary, b, 0),
        }
    }
}

/// Most bytes of a close reason (a close frame's payload is at most 125).
const MAX_CLOSE_REASON: usize = 123;

/// The sending side of one connection.
pub struct Outbox {
    pub id: ConnId,
    pub user_id: Option<ObjectId>,
    /// The socket's outbound side: frames are written through it.
    pub line: Line,
    /// Cancelled to drop the connection at once, whatever it is doing.
    pub kill: CancellationToken,
    /// Cancelled when the connection is cut off as a slow consumer.
    slow: CancellationToken,
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
    /// The login session the connection was opened with, if any: revoking
    /// it closes the connection.
    pub session: Option<ObjectId>,
    /// When the connection's access token expires, Unix seconds (0: never);
    /// a `refresh` moves it.
    expires_at: AtomicU64,
    /// The client was told its token is about to expire.
    warned: AtomicBool,
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

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

impl Outbox {
    /// A connection whose backlog holds up to `capacity` frames the socket
    /// has not taken yet.
    pub fn new(user_id: Option<ObjectId>, capacity: usize, kill: CancellationToken) -> Arc<Outbox> {
        Outbox::of_session(user_id, None, capacity, kill)
    }

    /// A connection opened with a token of `session`.
    pub fn of_session(
        user_id: Option<ObjectId>,
        session: Option<ObjectId>,
        capacity: usize,
        kill: CancellationToken,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            user_id,
            line: Line::new(capacity),
            kill,
            slow: CancellationToken::new(),
            holding: AtomicBool::new(false),
            hold: Mutex::new(None),
            revoked: Mutex::new(Vec::new()),
            user_topic: AtomicBool::new(false),
            session,
            expires_at: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// Sets when the connection's token expires (Unix seconds), and that
    /// the client has not been warned about this one yet.
    pub fn expires_at(&self, at: u64) {
        self.expires_at.store(at, Ordering::Release);
        self.warned.store(false, Ordering::Release);
    }

    /// What is due for a connection whose token expires at some point, at
    /// `now` (Unix seconds), warning `lead` seconds ahead; each warning is
    /// due once per token.
    pub fn expiry_due(&self, now: u64, lead: u64) -> Expiry {
        let at = self.expires_at.load(Ordering::Acquire);
        if at == 0 {
            Expiry::None
        } else if now >= at {
            Expiry::Expired
        } else if now + lead >= at && !self.warned.swap(true, Ordering::AcqRel) {
            Expiry::Warn(at - now)
        } else {
            Expiry::None
        }
    }

    /// Writes or queues a frame without waiting. `Refused::Full` means the
    /// client does not keep up.
    pub fn offer(&self, frame: Outbound) -> Result<(), Refused> {
        let (op, body, stored_at_us) = frame.parts();
        self.line.offer(op, body, stored_at_us)
    }

    /// Offers a room delivery, or holds it while that room is replaying.
    fn offer_delivery(&self, room: ObjectId, d: &RoomFrame) -> Result<(), Refused> {
        let (seq, frame) = match d {
            RoomFrame::Message(m) => (Some(m.seq), Outbound::Delivery(m.frame.clone(), m.stored_at_us)),
            RoomFrame::Ephemeral { frame, .. } => (None, Outbound::Delivery(frame.clone(), 0)),
        };
        if self.holding.load(Ordering::Acquire) {
            let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(h) = hold.as_mut().filter(|h| h.room == room) {
                if h.frames.len() >= MAX_HELD {
                    return Err(Refused::Full);
                }
                h.frames.push((seq, frame));
                return Ok(());
            }
        }
        self.offer(frame)
    }

    /// Starts holding `room`'s live deliveries (before subscribing to it).
    pub fn start_hold(&self, room: ObjectId) {
        *self.hold.lock().unwrap_or_else(|e| e.into_inner()) = Some(Hold { room, frames: Vec::new() });
        self.holding.store(true, Ordering::Release);
    }

    /// Stops holding: sends the held deliveries with seq above `after`, in
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
                ok &= self.offer(frame).is_ok();
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

    /// Whether this node's subscription to the connection's user topic is
    /// confirmed (see `mark_user_topic_subscribed`).
    pub fn user_topic_subscribed(&self) -> bool {
        self.user_topic.load(Ordering::Acquire)
    }

    /// Rooms this connection lost since the last call.
    pub fn take_revoked(&self) -> Vec<ObjectId> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sends a frame, waiting for room in the backlog (for replies to this
    /// client's own requests, where waiting slows only this client). False
    /// once the connection is closing.
    pub async fn send(&self, frame: Outbound) -> bool {
        let (op, body, _) = frame.parts();
        self.line.send(op, body).await
    }

    /// Closes a connection that cannot keep up (1013); the connection's
    /// task drops it a moment later ([`cut_off`](Self::cut_off)), since its
    /// socket may take no more bytes, not even the close.
    pub fn cut_off_slow(&self) {
        if self.slow.is_cancelled() {
            return;
        }
        metrics::counter!("confab_slow_consumer_disconnects_total").increment(1);
        tracing::info!(conn = self.id, "slow consumer cut off");
        self.close(CloseCode::TryAgainLater, "slow consumer");
        self.slow.cancel();
    }

    /// Resolves a second after the connection was cut off as a slow
    /// consumer: time enough for a close frame it can still take.
    pub async fn cut_off(&self) {
        self.slow.cancelled().await;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }

    /// Starts the closing handshake: a close frame goes ahead of waiting
    /// data, nothing follows it, and the connection is dropped once the peer
    /// answers (or does not, shortly after).
    pub fn close(&self, code: CloseCode, reason: &str) {
        let mut cut = reason.len().min(MAX_CLOSE_REASON);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut body = Vec::with_capacity(2 + cut);
        body.extend_from_slice(&code.code().to_be_bytes());
        body.extend_from_slice(&reason.as_bytes()[..cut]);
        self.line.close(body.into(), true);
    }
}

/// What [`Outbox::expiry_due`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    None,
    /// Tell the client: its token expires in this many seconds.
    Warn(u64),
    /// The token has expired: close the connection.
    Expired,
}

type Members = HashMap<ConnId, Arc<Outbox>>;

#[derive(Default)]
pub struct Registry {
    rooms: DashMap<ObjectId, Members>,
    users: DashMap<ObjectId, Members>,
    conns: DashMap<ConnId, Arc<Outbox>>,
    /// Which users watch which rooms with every local connection.
    pub watching: Watching,
    /// Who writes a fan-out: one lane (the caller) unless given more.
    lanes: Lanes,
    /// Which connections recent presence changes were written to.
    presence_seen: Mutex<PresenceSeen>,
    /// Counts the bus's resubscriptions: events published while it was cut
    /// off (a membership ending, say) never arrive, so whatever a session
    /// concluded from their absence must be checked again.
    bus_epoch: AtomicU64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry whose fan-outs are written through `lanes`.
    pub fn with_lanes(lanes: Lanes) -> Self {
        Registry { lanes, ..Self::default() }
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

    /// Calls `f` on every live connection, one shard locked at a time.
    pub fn each_connection(&self, mut f: impl FnMut(&Arc<Outbox>)) {
        for entry in self.conns.iter() {
            f(entry.value());
        }
    }

    /// Closes `user`'s local connections of `session` (every one of theirs
    /// without a session) with `code`; how many.
    pub fn close_user(&self, user: ObjectId, session: Option<ObjectId>, code: CloseCode, reason: &str) -> usize {
        let conns: Vec<Arc<Outbox>> = match self.users.get(&user) {
            Some(conns) => conns.values().filter(|o| session.is_none() || o.session == session).cloned().collect(),
            None => return 0,
        };
        for outbox in &conns {
            outbox.close(code, reason);
        }
        conns.len()
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
    /// connections of an ephemeral event's own user), through the lanes;
    /// connections whose queue is full are cut off as slow consumers.
    /// Returns how many took it (those handed to another lane count).
    pub fn fan_out(&self, room: ObjectId, delivery: &RoomFrame) -> usize {
        let (skip, tally) = match delivery {
            RoomFrame::Message(_) => (None, Tally::Messages),
            RoomFrame::Ephemeral { skip, .. } => (*skip, Tally::Nothing),
        };
        let Some(members) = self.rooms.get(&room) else {
            return 0;
        };
        let d = delivery.clone();
        self.lanes.offer(
            members.len(),
            members.values().filter(|o| skip.is_none() || o.user_id != skip),
            move |o| o.offer_delivery(room, &d),
            tally,
        )
    }

    /// The bus's resubscription count (see `bus_epoch`).
    pub fn bus_epoch(&self) -> u64 {
        self.bus_epoch.load(Ordering::Acquire)
    }

    /// The bus resubscribed after losing its connection.
    pub fn bus_resubscribed(&self) {
        self.bus_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// `user`'s membership of `room` ended: each of their local connections
    /// leaves the room's traffic, forgets it is a member (see
    /// `Outbox::take_revoked`), and receives `frame`. Returns true if the
    /// room has no local subscriber left.
    pub fn revoke(&self, user: ObjectId, room: ObjectId, frame: &Bytes) -> bool {
        let conns: Vec<Arc<Outbox>> = match self.users.get(&user) {
            Some(conns) => conns.values().cloned().collect(),
            None => return false,
        };
        let emptied = self.evict(room, user, &Bytes::new());
        // Through the lanes, like every frame of the user's topic.
        self.revoke_and_tell(room, &conns, frame);
        emptied
    }

    /// Offers presence change `change` of `user`, arriving on `topic`, to
    /// the topic's local connections that have not had it through another
    /// topic (a room they share with the user, or the user's contact list),
    /// except the user's own. Returns how many got it.
    pub fn presence(&self, topic: Topic, change: ObjectId, user: ObjectId, frame: &Bytes) -> usize {
        let listeners: Vec<Arc<Outbox>> = {
            let map = match topic {
                Topic::Room(_) => &self.rooms,
                Topic::User(_) => &self.users,
            };
            let (Topic::Room(id) | Topic::User(id)) = topic;
            match map.get(&id) {
                Some(m) => m.values().filter(|o| o.user_id != Some(user)).cloned().collect(),
                None => return 0,
            }
        };
        let fresh: Vec<Arc<Outbox>> = {
            let mut seen = self.presence_seen.lock().unwrap_or_else(|e| e.into_inner());
            let conns = seen.change(change);
            listeners.into_iter().filter(|o| conns.insert(o.id)).collect()
        };
        let frame = frame.clone();
        self.lanes.offer(fresh.len(), fresh.iter(), move |o| o.offer(Outbound::Text(frame.clone())), Tally::Nothing)
    }

    /// Offers one frame to every local connection of `user`, through the
    /// lanes: a receipt never overtakes the message it is about.
    pub fn send_to_user(&self, user: ObjectId, frame: &Bytes) -> usize {
        let Some(conns) = self.users.get(&user) else {
            return 0;
        };
        let frame = frame.clone();
        self.lanes.offer(conns.len(), conns.values(), move |o| o.offer(Outbound::Text(frame.clone())), Tally::Nothing)
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
        // Written here, not through the lanes: these connections are not in
        // the room, so no frame of it is waiting for them.
        offer_all(conns.iter().filter(|o| !watching(o)), |o| o.offer(Outbound::Text(frame.clone())))
    }

    /// Marks `room` revoked on each of `conns`, then sends them `frame` (if
    /// not empty) through the lanes, so it follows what they were handed.
    fn revoke_and_tell(&self, room: ObjectId, conns: &[Arc<Outbox>], frame: &Bytes) {
        for outbox in conns {
            outbox.revoke(room);
        }
        if !frame.is_empty() {
            let frame = frame.clone();
            self.lanes.offer(
                conns.len(),
                conns.iter(),
                move |o| o.offer(Outbound::Text(frame.clone())),
                Tally::Nothing,
            );
        }
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
        // Through the lanes, after the room's frames handed over before.
        self.revoke_and_tell(room, &evicted, frame);
        emptied.is_some()
    }
}

/// Presence changes this node wrote recently, each with the connections it
/// went to. The topics of one change arrive together, so a window of the
/// last [`PRESENCE_WINDOW`] changes keeps every connection to one copy.
#[derive(Default)]
struct PresenceSeen {
    conns: HashMap<ObjectId, std::collections::HashSet<ConnId>>,
    order: std::collections::VecDeque<ObjectId>,
}

const PRESENCE_WINDOW: usize = 1024;

impl PresenceSeen {
    fn change(&mut self, change: ObjectId) -> &mut std::collections::HashSet<ConnId> {
        if !self.conns.contains_key(&change) {
            if self.order.len() == PRESENCE_WINDOW {
                if let Some(old) = self.order.pop_front() {
                    self.conns.remove(&old);
                }
            }
            self.order.push_back(change);
        }
        self.conns.entry(change).or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The payloads waiting in a connection's line (no socket attached, so
    /// every offered frame waits), as text.
    fn waiting(o: &Outbox) -> Vec<String> {
        o.line.waiting().into_iter().map(|(_, b)| String::from_utf8(b.to_vec()).unwrap()).collect()
    }

    fn outbox(cap: usize) -> Arc<Outbox> {
        Outbox::new(None, cap, CancellationToken::new())
    }

    #[tokio::test]
    async fn held_deliveries_are_released_in_seq_order_without_duplicates() {
        let reg = Registry::new();
        let (room, other) = (ObjectId::new(), ObjectId::new());
        let o = outbox(64);
        o.start_hold(room);
        reg.join(room, &o);
        reg.join(other, &o);
        let d = |seq: i64| RoomFrame::Message(Stored::new(seq, Bytes::from(seq.to_string())));
        for seq in [7, 5, 6, 5] {
            reg.fan_out(room, &d(seq));
        }
        reg.fan_out(other, &d(100)); // another room is not held
        assert_eq!(waiting(&o), ["100"], "held frames wait");
        assert!(o.release_hold(5)); // replay covered up to seq 5
        reg.fan_out(room, &d(8));
        assert_eq!(waiting(&o), ["100", "6", "7", "8"]);
    }

    #[tokio::test]
    async fn ephemeral_events_skip_their_user_and_evictions_remove_only_theirs() {
        let reg = Registry::new();
        let room = ObjectId::new();
        let (alice, bob) = (ObjectId::new(), ObjectId::new());
        let a1 = Outbox::new(Some(alice), 8, CancellationToken::new());
        let a2 = Outbox::new(Some(alice), 8, CancellationToken::new());
        let b = Outbox::new(Some(bob), 8, CancellationToken::new());
        assert!(reg.register(a1.clone()), "alice's first connection");
        assert!(!reg.register(a2.clone()));
        assert!(reg.register(b.clone()));
        for o in [&a1, &a2, &b] {
            reg.join(room, o);
        }
        let typing = RoomFrame::Ephemeral { skip: Some(alice), frame: Bytes::from_static(b"typing") };
        assert_eq!(reg.fan_out(room, &typing), 1, "only bob hears alice typing");
        assert_eq!(waiting(&b), ["typing"]);
        assert!(waiting(&a1).is_empty());

        assert!(!reg.evict(room, alice, &Bytes::from_static(b"removed")), "bob is still here");
        assert_eq!(a1.take_revoked(), [room]);
        assert!(a1.take_revoked().is_empty(), "drained once");
        assert_eq!(waiting(&a2), ["removed"]);
        assert_eq!(
            reg.fan_out(room, &RoomFrame::Message(Stored::new(1, Bytes::from_static(b"m")))),
            1,
            "alice gets no more"
        );
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
        let watching = Outbox::new(Some(alice), 8, CancellationToken::new());
        let elsewhere = Outbox::new(Some(alice), 8, CancellationToken::new());
        reg.register(watching.clone());
        reg.register(elsewhere.clone());
        reg.join(room, &watching);
        reg.join(other, &elsewhere);
        let frame = Bytes::from_static(b"notification");
        assert_eq!(reg.send_to_user_except_room(alice, Some(room), &frame), 1);
        assert!(waiting(&watching).is_empty(), "the connection in the room sees the message itself");
        assert_eq!(waiting(&elsewhere), ["notification"]);
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
        let a = outbox(4);
        let b = outbox(4);
        assert!(reg.join(room, &a));
        assert!(!reg.join(room, &b));
        assert!(!reg.leave(room, a.id));
        assert!(reg.has_local(Topic::Room(room)));
        assert!(reg.leave(room, b.id));
        assert!(!reg.has_local(Topic::Room(room)));
        assert!(!reg.leave(room, b.id), "leaving an empty room is a no-op");
    }

    #[tokio::test]
    async fn fan_out_shares_bytes_and_cuts_off_full_backlogs() {
        let reg = Registry::new();
        let room = ObjectId::new();
        let fast = outbox(8);
        let slow = outbox(1);
        reg.join(room, &fast);
        reg.join(room, &slow);
        let frame = Bytes::from_static(b"{\"type\":\"message\"}");
        let d = RoomFrame::Message(Stored::new(1, frame.clone()));
        assert_eq!(reg.fan_out(room, &d), 2);
        assert_eq!(reg.fan_out(room, &d), 1, "slow backlog is full");
        let got = fast.line.waiting();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.as_ptr(), frame.as_ptr(), "the same bytes, not a copy");
        let slow_waiting = slow.line.waiting();
        assert_eq!(slow_waiting[0].0, 0x8, "the close frame goes ahead of waiting data");
        assert_eq!(&slow_waiting[0].1[..2], &CloseCode::TryAgainLater.code().to_be_bytes());
        assert_eq!(slow_waiting.len(), 2);
        assert_eq!(reg.fan_out(room, &d), 1, "nothing more for a closing connection, and no second cut-off");
    }

    #[test]
    fn close_reasons_are_cut_to_fit_a_close_frame_on_a_char_boundary() {
        let o = outbox(4);
        o.close(CloseCode::PolicyViolation, &"é".repeat(100));
        let (op, body) = o.line.waiting().remove(0);
        assert_eq!(op, 0x8);
        assert!(body.len() <= 125);
        assert!(std::str::from_utf8(&body[2..]).is_ok());
    }

    #[test]
    fn closing_a_users_session_closes_only_that_sessions_connections() {
        let registry = Registry::new();
        let (user, other, session) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let ours = Outbox::of_session(Some(user), Some(session), 4, CancellationToken::new());
        let elsewhere = Outbox::of_session(Some(user), Some(ObjectId::new()), 4, CancellationToken::new());
        let theirs = Outbox::of_session(Some(other), Some(session), 4, CancellationToken::new());
        for o in [&ours, &elsewhere, &theirs] {
            registry.register(o.clone());
        }
        let closed =
            |o: &Outbox| o.line.waiting().iter().any(|(op, body)| *op == 0x8 && body[..2] == 4001u16.to_be_bytes());
        assert_eq!(registry.close_user(user, Some(session), CloseCode::SessionRevoked, "session revoked"), 1);
        assert!(closed(&ours) && !closed(&elsewhere) && !closed(&theirs));
        assert_eq!(registry.close_user(user, None, CloseCode::SessionRevoked, "banned"), 2, "every session of theirs");
        assert!(closed(&elsewhere) && !closed(&theirs));
    }

    #[test]
    fn a_token_is_warned_about_once_then_expires() {
        let o = outbox(4);
        assert_eq!(o.expiry_due(1_000, 60), Expiry::None, "no expiry set");
        o.expires_at(1_100);
        assert_eq!(o.expiry_due(1_000, 60), Expiry::None, "not yet");
        assert_eq!(o.expiry_due(1_050, 60), Expiry::Warn(50));
        assert_eq!(o.expiry_due(1_051, 60), Expiry::None, "warned once");
        o.expires_at(2_000);
        assert_eq!(o.expiry_due(1_060, 60), Expiry::None, "refreshed");
        assert_eq!(o.expiry_due(1_950, 60), Expiry::Warn(50), "the new token is warned about too");
        assert_eq!(o.expiry_due(2_000, 60), Expiry::Expired);
    }
}

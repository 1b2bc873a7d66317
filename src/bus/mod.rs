//! The message bus: how room traffic crosses nodes.
//!
//! A node publishes each event once; every node subscribed to the topic (a
//! room, or a user) receives it, including the publisher, and fans it out
//! to its local sockets.
//! [`redis::RedisBus`] is the real implementation (Redis Pub/Sub). Pub/Sub is
//! at-most-once: what is published while a node is cut off from the bus
//! reaches that node's clients only through history.

pub mod redis;

use async_trait::async_trait;
use bson::oid::ObjectId;
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
#[error("message bus: {0}")]
pub struct BusError(pub String);

/// What an event is addressed to: a room's subscribers, or one user's
/// connections (receipts, presence, notices about their memberships).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Room(ObjectId),
    User(ObjectId),
}

/// Where incoming bus events go: the node's gateway.
pub trait Inbox: Send + Sync + 'static {
    /// Called once per event per node, after de-duplication, from the bus's
    /// reader task; must not block.
    fn deliver(&self, topic: Topic, delivery: Delivery);

    /// The bus lost its subscriptions and has them again: whatever was
    /// published meanwhile never arrived.
    fn resubscribed(&self) {}
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes an already-encoded client frame to every node subscribed to
    /// the topic. A message's id lets receivers drop re-deliveries.
    async fn publish(&self, topic: Topic, event: Event<'_>) -> Result<(), BusError>;
    async fn subscribe(&self, topic: Topic) -> Result<(), BusError>;
    async fn unsubscribe(&self, topic: Topic) -> Result<(), BusError>;
    async fn ping(&self) -> Result<(), BusError>;

    /// Like `publish`, and says how many nodes received the event (0: no
    /// node is subscribed to the topic). Buses that cannot tell say 1.
    async fn publish_counted(&self, topic: Topic, event: Event<'_>) -> Result<usize, BusError> {
        self.publish(topic, event).await.map(|()| 1)
    }

    /// How many nodes are subscribed to each topic, in the order given: for
    /// a user's topic, whether the user has a connection anywhere.
    async fn subscribers(&self, topics: &[Topic]) -> Result<Vec<usize>, BusError>;
}

/// How a receiving node treats an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A stored message: ordered by seq, held back while a join replays.
    Message,
    /// Not stored (typing, presence, edits, receipts): delivered as is, and
    /// not to the connections of `subject`, if given (the user it came from).
    Ephemeral,
    /// On a room's topic, `subject` was removed from the room: its
    /// connections leave the room on every node and receive the frame
    /// instead of further traffic. On a user's topic, the user's membership
    /// of room `subject` ended: every connection of theirs stops assuming it
    /// and receives the frame.
    Evict,
    /// A change of `subject`'s presence, published to each room they are in
    /// and each contact's user topic under one id: a receiving node writes
    /// it once to each connection, however many of those topics reach it,
    /// and not to the user's own connections.
    Presence,
    /// A notification for a user's topic: delivered to that user's
    /// connections that are not subscribed to the room `subject` (to all of
    /// them without one). A store time of 0 means "not stored yet": a node
    /// that delivers it stores it (see `notifications`).
    Notify,
}

/// One event for a topic's subscribers.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub kind: Kind,
    /// The message id, so receivers can drop re-deliveries.
    pub id: Option<ObjectId>,
    /// The user the event skips (ephemeral) or removes (evict).
    pub subject: Option<ObjectId>,
    /// When it was stored, Unix microseconds (0 if not a stored message).
    pub stored_at_us: u64,
    /// The message's seq in its room (0 if not a message).
    pub seq: i64,
    /// The client frame, already encoded.
    pub frame: &'a [u8],
}

impl<'a> Event<'a> {
    /// A stored message.
    pub fn message(id: ObjectId, seq: i64, stored_at_us: u64, frame: &'a [u8]) -> Self {
        Event { kind: Kind::Message, id: Some(id), subject: None, stored_at_us, seq, frame }
    }

    /// A frame that is not stored; `skip` is the user who caused it.
    pub fn ephemeral(skip: Option<ObjectId>, frame: &'a [u8]) -> Self {
        Event { kind: Kind::Ephemeral, id: None, subject: skip, stored_at_us: 0, seq: 0, frame }
    }

    /// Removes `user` from the room's live traffic; they receive `frame`.
    pub fn evict(user: ObjectId, frame: &'a [u8]) -> Self {
        Event { kind: Kind::Evict, id: None, subject: Some(user), stored_at_us: 0, seq: 0, frame }
    }

    /// For a user's topic: their membership of `room` ended; they receive `frame`.
    pub fn membership_ended(room: ObjectId, frame: &'a [u8]) -> Self {
        Event { kind: Kind::Evict, id: None, subject: Some(room), stored_at_us: 0, seq: 0, frame }
    }

    /// Presence change `change` of `user`, the same under every topic.
    pub fn presence(change: ObjectId, user: ObjectId, frame: &'a [u8]) -> Self {
        Event { kind: Kind::Presence, id: Some(change), subject: Some(user), stored_at_us: 0, seq: 0, frame }
    }

    /// Notification `id` for a user's connections outside `room`;
    /// `stored_at_us` is 0 while it is not stored.
    pub fn notify(id: ObjectId, room: Option<ObjectId>, stored_at_us: u64, frame: &'a [u8]) -> Self {
        Event { kind: Kind::Notify, id: Some(id), subject: room, stored_at_us, seq: 0, frame }
    }
}

/// An event as it arrives at a node.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub kind: Kind,
    /// The event's id (a message, a notification, a presence change).
    pub id: Option<ObjectId>,
    pub subject: Option<ObjectId>,
    pub frame: Bytes,
    pub stored_at_us: u64,
    pub seq: i64,
}

impl Delivery {
    /// A stored message's delivery (tests and benchmarks build these).
    pub fn message(frame: Bytes, seq: i64) -> Self {
        Delivery { kind: Kind::Message, id: None, subject: None, frame, stored_at_us: 0, seq }
    }
}

/// Wire form of a bus event: one byte of kind (`M`, `E`, `X`, `N`, `P`), 24 bytes of
/// event id and 24 of subject (hex ObjectIds, or `-` padding), 16 hex digits
/// of store time (Unix µs), 16 hex digits of seq, then the client frame,
/// untouched, so a receiver can hand the frame bytes to sockets without
/// re-encoding.
pub mod wire {
    use super::*;

    const ID: usize = 1 + 24;
    const SUBJECT: usize = ID + 24;
    const AT: usize = SUBJECT + 16;
    pub const HEADER: usize = AT + 16;
    const NONE: &[u8; 24] = b"------------------------";

    fn put_id(out: &mut BytesMut, id: Option<ObjectId>) {
        match id {
            Some(id) => out.put_slice(id.to_hex().as_bytes()),
            None => out.put_slice(NONE),
        }
    }

    fn get_id(raw: &[u8]) -> Option<Option<ObjectId>> {
        if raw == NONE {
            return Some(None);
        }
        Some(Some(ObjectId::parse_str(std::str::from_utf8(raw).ok()?).ok()?))
    }

    pub fn encode(event: Event<'_>) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER + event.frame.len());
        out.put_u8(match event.kind {
            Kind::Message => b'M',
            Kind::Ephemeral => b'E',
            Kind::Evict => b'X',
            Kind::Notify => b'N',
            Kind::Presence => b'P',
        });
        put_id(&mut out, event.id);
        put_id(&mut out, event.subject);
        out.put_slice(format!("{:016x}{:016x}", event.stored_at_us, event.seq.max(0)).as_bytes());
        out.put_slice(event.frame);
        out.freeze()
    }

    /// Splits a payload into its event id and delivery; `None` for a
    /// foreign payload.
    pub fn decode(payload: Bytes) -> Option<(Option<ObjectId>, Delivery)> {
        if payload.len() < HEADER {
            return None;
        }
        let kind = match payload[0] {
            b'M' => Kind::Message,
            b'E' => Kind::Ephemeral,
            b'X' => Kind::Evict,
            b'N' => Kind::Notify,
            b'P' => Kind::Presence,
            _ => return None,
        };
        let id = get_id(&payload[1..ID])?;
        let subject = get_id(&payload[ID..SUBJECT])?;
        let hex =
            |range: std::ops::Range<usize>| u64::from_str_radix(std::str::from_utf8(&payload[range]).ok()?, 16).ok();
        let stored_at_us = hex(SUBJECT..AT)?;
        let seq = i64::try_from(hex(AT..HEADER)?).ok()?;
        Some((id, Delivery { kind, id, subject, frame: payload.slice(HEADER..), stored_at_us, seq }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_every_kind() {
            let (id, user) = (ObjectId::new(), ObjectId::new());
            let (got, d) = decode(encode(Event::message(id, 42, 1_795_554_095_663_123, b"{\"a\":1}"))).unwrap();
            assert_eq!(
                (got, d.kind, d.subject, d.stored_at_us, d.seq, &d.frame[..]),
                (Some(id), Kind::Message, None, 1_795_554_095_663_123, 42, &b"{\"a\":1}"[..])
            );
            let (got, d) = decode(encode(Event::ephemeral(Some(user), b"x"))).unwrap();
            assert_eq!(
                (got, d.kind, d.subject, d.seq, &d.frame[..]),
                (None, Kind::Ephemeral, Some(user), 0, &b"x"[..])
            );
            let (_, d) = decode(encode(Event::evict(user, b"bye"))).unwrap();
            assert_eq!((d.kind, d.subject), (Kind::Evict, Some(user)));
        }

        #[test]
        fn notifications_round_trip_with_and_without_a_room() {
            let (id, room) = (ObjectId::new(), ObjectId::new());
            let (got, d) = decode(encode(Event::notify(id, Some(room), 0, b"{\"n\":1}"))).unwrap();
            assert_eq!(
                (got, d.kind, d.subject, d.stored_at_us, d.seq, &d.frame[..]),
                (Some(id), Kind::Notify, Some(room), 0, 0, &b"{\"n\":1}"[..])
            );
            let (got, d) = decode(encode(Event::notify(id, None, 1_795_554_095_663_123, b"n"))).unwrap();
            assert_eq!((got, d.kind, d.subject, d.stored_at_us), (Some(id), Kind::Notify, None, 1_795_554_095_663_123));
        }

        #[test]
        fn the_older_kinds_keep_their_bytes() {
            // Nodes of the previous release still read these.
            let user = ObjectId::new();
            assert_eq!(encode(Event::message(user, 1, 0, b"")).first(), Some(&b'M'));
            assert_eq!(encode(Event::ephemeral(None, b"")).first(), Some(&b'E'));
            assert_eq!(encode(Event::evict(user, b"")).first(), Some(&b'X'));
            assert_eq!(encode(Event::notify(user, None, 0, b"")).first(), Some(&b'N'));
        }

        #[test]
        fn foreign_payloads_are_refused() {
            assert!(decode(Bytes::from_static(b"short")).is_none());
            let good = encode(Event::ephemeral(None, b"{}"));
            let mut bad = good.to_vec();
            bad[0] = b'Q';
            assert!(decode(Bytes::from(bad)).is_none());
            let mut bad = good.to_vec();
            bad[3] = b'z';
            assert!(decode(Bytes::from(bad)).is_none());
            let mut bad = good.to_vec();
            bad[60] = b'z';
            assert!(decode(Bytes::from(bad)).is_none());
        }
    }
}

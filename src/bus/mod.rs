//! The message bus: how room traffic crosses nodes.
//!
//! A node publishes each event once; every node subscribed to the topic (a
//! room, or a user) receives it, including the publisher, and fans it out
//! to its local sockets. [`Bus`] carries events over Redis Pub/Sub, which
//! is at-most-once: what is published while a node is cut off from the bus
//! reaches that node's clients only through history.

pub mod redis;

pub use redis::Bus;

use bson::oid::ObjectId;
use bytes::{BufMut, Bytes, BytesMut};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("message bus: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("message bus: {0}")]
    Setup(#[from] crate::backend::redis::RedisError),
    /// Redis answered something this node did not ask for.
    #[error("message bus: {0}")]
    Reply(String),
    /// The node is shutting down.
    #[error("message bus: this node is stopping")]
    Stopped,
}

/// What an event is addressed to: a room's subscribers, or one user's
/// connections (receipts, presence, notices about their memberships).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Room(ObjectId),
    User(ObjectId),
}

/// Where incoming bus events go: the node's fan-out. A seam, so that the
/// bus knows nothing above it.
pub trait Inbox: Send + Sync + 'static {
    /// Called once per event per node, after de-duplication, from the bus's
    /// reader task; must not block.
    fn deliver(&self, topic: Topic, delivery: Delivery);

    /// The bus lost its subscriptions and has them again: whatever was
    /// published meanwhile never arrived.
    fn resubscribed(&self) {}
}

/// One event for a topic's subscribers, as its publisher describes it:
/// each kind carries what receiving nodes need to route it, and the client
/// frame, already encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A stored message: ordered by seq, held back while a join replays,
    /// dropped as a re-delivery by its id.
    Message { id: ObjectId, seq: i64, stored_at_us: u64, frame: &'a [u8] },
    /// Not stored (edits, membership news, receipts, typing): relayed as is,
    /// not to the connections of `skip` (the user it came from).
    Ephemeral { skip: Option<ObjectId>, frame: &'a [u8] },
    /// On a room's topic: `user` was removed; their connections leave the
    /// room's traffic on every node before anything later on the channel.
    Evict { user: ObjectId },
    /// On a user's topic: their membership of `room` ended; every connection
    /// of theirs forgets it and gets the frame.
    MembershipEnded { room: ObjectId, frame: &'a [u8] },
    /// `user`'s presence change `change`, published to each room they are in
    /// and each contact's user topic under the same id: a node writes it
    /// once to each connection, and not to `user`'s own.
    Presence { change: ObjectId, user: ObjectId, frame: &'a [u8] },
    /// On a user's topic: notification `id`, for their connections that are
    /// not subscribed to `room` (all of them without one). A store time of
    /// 0 means "not stored yet": a node that shows it stores it.
    Notify { id: ObjectId, room: Option<ObjectId>, stored_at_us: u64, frame: &'a [u8] },
    /// On a user's topic: close their connections of `session` (all of
    /// theirs without one) with close code `code` and `reason`.
    Close { session: Option<ObjectId>, code: u16, reason: &'a [u8] },
}

/// A stored message's delivery: what ordering and latency need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub seq: i64,
    /// When it was stored, Unix microseconds (0 if unknown).
    pub stored_at_us: u64,
    pub frame: Bytes,
}

impl Stored {
    /// A stored message's delivery (tests and benchmarks build these).
    pub fn new(seq: i64, frame: Bytes) -> Self {
        Stored { seq, stored_at_us: 0, frame }
    }
}

/// An event as it arrives at a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Message { id: ObjectId, message: Stored },
    Ephemeral { skip: Option<ObjectId>, frame: Bytes },
    Evict { user: ObjectId },
    MembershipEnded { room: ObjectId, frame: Bytes },
    Presence { change: ObjectId, user: ObjectId, frame: Bytes },
    Notify { id: ObjectId, room: Option<ObjectId>, stored_at_us: u64, frame: Bytes },
    Close { session: Option<ObjectId>, code: u16, reason: Bytes },
}

impl Delivery {
    /// The event's id, for dropping re-deliveries.
    pub fn id(&self) -> Option<ObjectId> {
        match self {
            Delivery::Message { id, .. } | Delivery::Notify { id, .. } => Some(*id),
            Delivery::Presence { change, .. } => Some(*change),
            _ => None,
        }
    }
}

/// Wire form of a bus event: one byte of kind (`M`, `E`, `X`, `N`, `P`, `C`),
/// 24 bytes of event id and 24 of subject (hex ObjectIds, or `-` padding),
/// 16 hex digits of store time (Unix µs), 16 hex digits of seq, then the
/// client frame, untouched, so a receiver can hand the frame bytes to
/// sockets without re-encoding. The subject is the user an ephemeral event
/// skips, the evicted user, the room whose membership ended (`X` on a user
/// topic: an `X` with a room on a room topic never occurs), the presence's
/// user, a notification's room, or the session whose connections close
/// (`C`, whose seq field holds the close code and whose frame is the close
/// reason); which one, the kind and the topic say.
///
/// Traced events: while the publishing node exports traces (and only
/// then), an event published inside a traced span is sent as one byte `T`,
/// the span's W3C `traceparent` (55 bytes, `00-<32 hex>-<16 hex>-<2 hex>`),
/// then the event exactly as above. Without tracing the bytes are those of
/// the previous release. A node of the previous release refuses a `T`
/// event as foreign (counted in `confab_pubsub_malformed_total`), never
/// reads it as another kind: turn traces on once every node runs a release
/// that reads them. A trace context that does not parse is ignored and the
/// event inside delivered; a `T` inside a `T` is refused.
pub mod wire {
    use super::*;
    use crate::telemetry::TraceParent;

    /// The kind byte of a traced event, and the length of its prefix.
    const TRACED: u8 = b'T';
    const TRACED_PREFIX: usize = 1 + TraceParent::LEN;

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

    /// The event as `encode` writes it, after the trace context of the
    /// span that publishes it, if there is one.
    pub fn encode_traced(event: Event<'_>, trace: Option<&TraceParent>) -> Bytes {
        let Some(trace) = trace else {
            return encode(event);
        };
        let inner = encode(event);
        let mut out = BytesMut::with_capacity(TRACED_PREFIX + inner.len());
        out.put_u8(TRACED);
        out.put_slice(&trace.to_header());
        out.put_slice(&inner);
        out.freeze()
    }

    /// Like `decode`, with the trace context the event carried, if any.
    pub fn decode_traced(topic: Topic, payload: Bytes) -> Option<(Delivery, Option<TraceParent>)> {
        if payload.first() != Some(&TRACED) {
            return Some((decode_plain(topic, payload)?, None));
        }
        if payload.len() < TRACED_PREFIX || payload.get(TRACED_PREFIX) == Some(&TRACED) {
            return None;
        }
        let trace = TraceParent::parse(&payload[1..TRACED_PREFIX]);
        Some((decode_plain(topic, payload.slice(TRACED_PREFIX..))?, trace))
    }

    /// The delivery a payload carries on `topic`, traced or not; `None`
    /// for a foreign payload.
    pub fn decode(topic: Topic, payload: Bytes) -> Option<Delivery> {
        decode_traced(topic, payload).map(|(delivery, _)| delivery)
    }

    pub fn encode(event: Event<'_>) -> Bytes {
        let (kind, id, subject, stored_at_us, seq, frame): (u8, _, _, u64, i64, &[u8]) = match event {
            Event::Message { id, seq, stored_at_us, frame } => (b'M', Some(id), None, stored_at_us, seq, frame),
            Event::Ephemeral { skip, frame } => (b'E', None, skip, 0, 0, frame),
            Event::Evict { user } => (b'X', None, Some(user), 0, 0, b""),
            Event::MembershipEnded { room, frame } => (b'X', None, Some(room), 0, 0, frame),
            Event::Presence { change, user, frame } => (b'P', Some(change), Some(user), 0, 0, frame),
            Event::Notify { id, room, stored_at_us, frame } => (b'N', Some(id), room, stored_at_us, 0, frame),
            Event::Close { session, code, reason } => (b'C', None, session, 0, i64::from(code), reason),
        };
        let mut out = BytesMut::with_capacity(HEADER + frame.len());
        out.put_u8(kind);
        put_id(&mut out, id);
        put_id(&mut out, subject);
        out.put_slice(format!("{:016x}{:016x}", stored_at_us, seq.max(0)).as_bytes());
        out.put_slice(frame);
        out.freeze()
    }

    fn decode_plain(topic: Topic, payload: Bytes) -> Option<Delivery> {
        if payload.len() < HEADER {
            return None;
        }
        let id = get_id(&payload[1..ID])?;
        let subject = get_id(&payload[ID..SUBJECT])?;
        let hex =
            |range: std::ops::Range<usize>| u64::from_str_radix(std::str::from_utf8(&payload[range]).ok()?, 16).ok();
        let stored_at_us = hex(SUBJECT..AT)?;
        let seq = i64::try_from(hex(AT..HEADER)?).ok()?;
        let frame = payload.slice(HEADER..);
        Some(match (payload[0], topic) {
            (b'M', _) => Delivery::Message { id: id?, message: Stored { seq, stored_at_us, frame } },
            (b'E', _) => Delivery::Ephemeral { skip: subject, frame },
            (b'X', Topic::Room(_)) => Delivery::Evict { user: subject? },
            (b'X', Topic::User(_)) => Delivery::MembershipEnded { room: subject?, frame },
            (b'P', _) => Delivery::Presence { change: id?, user: subject?, frame },
            (b'N', _) => Delivery::Notify { id: id?, room: subject, stored_at_us, frame },
            (b'C', Topic::User(_)) => {
                Delivery::Close { session: subject, code: u16::try_from(seq).ok()?, reason: frame }
            }
            _ => return None,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_kind_round_trips_on_its_topic() {
            let (id, user, room) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
            let (on_room, on_user) = (Topic::Room(room), Topic::User(user));
            let at = 1_795_554_095_663_123;
            let cases = [
                (
                    on_room,
                    Event::Message { id, seq: 42, stored_at_us: at, frame: b"{\"a\":1}" },
                    Delivery::Message { id, message: Stored { seq: 42, stored_at_us: at, frame: "{\"a\":1}".into() } },
                ),
                (
                    on_room,
                    Event::Ephemeral { skip: Some(user), frame: b"x" },
                    Delivery::Ephemeral { skip: Some(user), frame: "x".into() },
                ),
                (
                    on_room,
                    Event::Ephemeral { skip: None, frame: b"y" },
                    Delivery::Ephemeral { skip: None, frame: "y".into() },
                ),
                (on_room, Event::Evict { user }, Delivery::Evict { user }),
                (
                    on_user,
                    Event::MembershipEnded { room, frame: b"bye" },
                    Delivery::MembershipEnded { room, frame: "bye".into() },
                ),
                (
                    on_room,
                    Event::Presence { change: id, user, frame: b"p" },
                    Delivery::Presence { change: id, user, frame: "p".into() },
                ),
                (
                    on_user,
                    Event::Notify { id, room: Some(room), stored_at_us: 0, frame: b"n" },
                    Delivery::Notify { id, room: Some(room), stored_at_us: 0, frame: "n".into() },
                ),
                (
                    on_user,
                    Event::Notify { id, room: None, stored_at_us: at, frame: b"n" },
                    Delivery::Notify { id, room: None, stored_at_us: at, frame: "n".into() },
                ),
                (
                    on_user,
                    Event::Close { session: Some(id), code: 4001, reason: b"session revoked" },
                    Delivery::Close { session: Some(id), code: 4001, reason: "session revoked".into() },
                ),
                (
                    on_user,
                    Event::Close { session: None, code: 4003, reason: b"" },
                    Delivery::Close { session: None, code: 4003, reason: "".into() },
                ),
            ];
            for (topic, event, delivery) in cases {
                assert_eq!(decode(topic, encode(event)), Some(delivery), "{event:?}");
            }
        }

        #[test]
        fn the_older_kinds_keep_their_bytes() {
            // Nodes of the previous release still read these.
            let user = ObjectId::new();
            assert_eq!(encode(Event::Message { id: user, seq: 1, stored_at_us: 0, frame: b"" }).first(), Some(&b'M'));
            assert_eq!(encode(Event::Ephemeral { skip: None, frame: b"" }).first(), Some(&b'E'));
            assert_eq!(encode(Event::Evict { user }).first(), Some(&b'X'));
            assert_eq!(encode(Event::MembershipEnded { room: user, frame: b"" }).first(), Some(&b'X'));
            assert_eq!(
                encode(Event::Notify { id: user, room: None, stored_at_us: 0, frame: b"" }).first(),
                Some(&b'N')
            );
        }

        const TRACE: TraceParent = TraceParent { trace_id: [0x4b; 16], span_id: [0x0f; 8], flags: 1 };

        #[test]
        fn a_traced_event_is_the_event_after_its_trace_context() {
            let (id, room) = (ObjectId::new(), ObjectId::new());
            let event = Event::Message { id, seq: 7, stored_at_us: 99, frame: b"{\"m\":1}" };
            let plain = encode(event);
            assert_eq!(encode_traced(event, None), plain, "untraced: the bytes of the previous release");
            let traced = encode_traced(event, Some(&TRACE));
            assert_eq!(traced[0], b'T');
            assert_eq!(&traced[1..56], b"00-4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b-0f0f0f0f0f0f0f0f-01");
            assert_eq!(&traced[56..], &plain[..]);
            let expected =
                Delivery::Message { id, message: Stored { seq: 7, stored_at_us: 99, frame: "{\"m\":1}".into() } };
            let on = Topic::Room(room);
            assert_eq!(decode_traced(on, traced.clone()), Some((expected.clone(), Some(TRACE))));
            assert_eq!(decode(on, traced), Some(expected.clone()), "a node that does not trace skips it");
            assert_eq!(decode_traced(on, plain), Some((expected, None)));
            let close = encode_traced(Event::Close { session: None, code: 4001, reason: b"" }, Some(&TRACE));
            assert!(decode_traced(on, close).is_none(), "the event inside is checked as ever");
        }

        #[test]
        fn garbled_trace_context_is_ignored_and_garbled_events_refused() {
            let room = Topic::Room(ObjectId::new());
            let event = Event::Ephemeral { skip: None, frame: b"{}" };
            let traced = encode_traced(event, Some(&TRACE)).to_vec();
            let delivered = Delivery::Ephemeral { skip: None, frame: "{}".into() };
            // Foreign or damaged trace bytes: the event arrives without them.
            for (at, byte) in [(1, b'9'), (3, b'Z'), (30, 0xff), (36, b'0'), (55, b'x')] {
                let mut bad = traced.clone();
                bad[at] = byte;
                assert_eq!(decode_traced(room, Bytes::from(bad)), Some((delivered.clone(), None)), "byte {at}");
            }
            let mut zero = traced.clone();
            zero[3..35].fill(b'0');
            assert_eq!(decode_traced(room, Bytes::from(zero)), Some((delivered.clone(), None)));
            // What the prefix is too short for, or hides, is refused.
            for len in [1, 2, 55, 56, 56 + HEADER - 1] {
                assert!(decode_traced(room, Bytes::from(traced[..len].to_vec())).is_none(), "cut to {len}");
            }
            assert!(decode_traced(room, Bytes::from_static(b"T")).is_none());
            let nested = encode_traced(event, Some(&TRACE));
            let mut twice = traced[..56].to_vec();
            twice.extend_from_slice(&nested);
            assert!(decode_traced(room, Bytes::from(twice)).is_none(), "a T inside a T");
            let mut wrong_kind = traced.clone();
            wrong_kind[56] = b'Q';
            assert!(decode_traced(room, Bytes::from(wrong_kind)).is_none());
        }

        #[test]
        fn foreign_payloads_are_refused() {
            let room = Topic::Room(ObjectId::new());
            assert!(decode(room, Bytes::from_static(b"short")).is_none());
            let good = encode(Event::Ephemeral { skip: None, frame: b"{}" });
            let mut bad = good.to_vec();
            bad[0] = b'Q';
            assert!(decode(room, Bytes::from(bad)).is_none());
            let mut bad = good.to_vec();
            bad[3] = b'z';
            assert!(decode(room, Bytes::from(bad)).is_none());
            let mut bad = good.to_vec();
            bad[60] = b'z';
            assert!(decode(room, Bytes::from(bad)).is_none());
            let no_id = encode(Event::Ephemeral { skip: None, frame: b"" }).to_vec();
            let mut message_without_id = no_id.clone();
            message_without_id[0] = b'M';
            assert!(decode(room, Bytes::from(message_without_id)).is_none(), "a message needs its id");
            let close = encode(Event::Close { session: None, code: 4001, reason: b"" });
            assert!(decode(room, close).is_none(), "closes go to users, not rooms");
        }
    }
}

//! The message bus: how room traffic crosses nodes.
//!
//! A node publishes each event once; every node subscribed to the room's topic
//! (including the publisher) receives it and fans it out to its local sockets.
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

/// Where incoming bus events go: the node's gateway.
pub trait Inbox: Send + Sync + 'static {
    /// Called once per event per node, after de-duplication, from the bus's
    /// reader task; must not block.
    fn deliver(&self, room_id: ObjectId, delivery: Delivery);
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes an already-encoded client frame to every node subscribed to
    /// the room. `event_id` (a message id) lets receivers drop re-deliveries.
    async fn publish(&self, room_id: ObjectId, event: Event<'_>) -> Result<(), BusError>;
    async fn subscribe(&self, room_id: ObjectId) -> Result<(), BusError>;
    async fn unsubscribe(&self, room_id: ObjectId) -> Result<(), BusError>;
    async fn ping(&self) -> Result<(), BusError>;
}

/// One event for a room's subscribers.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The message id, so receivers can drop re-deliveries.
    pub id: Option<ObjectId>,
    /// When it was stored, Unix microseconds (0 if not a stored message).
    pub stored_at_us: u64,
    /// The message's seq in its room (0 if not a message).
    pub seq: i64,
    /// The client frame, already encoded.
    pub frame: &'a [u8],
}

/// An event as it arrives at a node.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub frame: Bytes,
    pub stored_at_us: u64,
    pub seq: i64,
}

/// Wire form of a bus event: 24 bytes of event id (hex ObjectId, or `-`
/// padding when the event has none), 16 hex digits of store time (Unix µs),
/// 16 hex digits of seq, then the client frame, untouched, so a receiver can
/// hand the frame bytes to sockets without re-encoding.
pub mod wire {
    use super::*;

    const ID: usize = 24;
    const AT: usize = ID + 16;
    pub const HEADER: usize = AT + 16;
    const NO_ID: &[u8; ID] = b"------------------------";

    pub fn encode(event: Event<'_>) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER + event.frame.len());
        match event.id {
            Some(id) => out.put_slice(id.to_hex().as_bytes()),
            None => out.put_slice(NO_ID),
        }
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
        let head = &payload[..ID];
        let id = if head == NO_ID { None } else { Some(ObjectId::parse_str(std::str::from_utf8(head).ok()?).ok()?) };
        let hex =
            |range: std::ops::Range<usize>| u64::from_str_radix(std::str::from_utf8(&payload[range]).ok()?, 16).ok();
        let stored_at_us = hex(ID..AT)?;
        let seq = i64::try_from(hex(AT..HEADER)?).ok()?;
        Some((id, Delivery { frame: payload.slice(HEADER..), stored_at_us, seq }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_with_and_without_id() {
            let id = ObjectId::new();
            let event = Event { id: Some(id), stored_at_us: 1_795_554_095_663_123, seq: 42, frame: b"{\"a\":1}" };
            let (got, d) = decode(encode(event)).unwrap();
            assert_eq!(
                (got, d.stored_at_us, d.seq, &d.frame[..]),
                (Some(id), 1_795_554_095_663_123, 42, &b"{\"a\":1}"[..])
            );
            let (got, d) = decode(encode(Event { id: None, stored_at_us: 0, seq: 0, frame: b"x" })).unwrap();
            assert_eq!((got, d.stored_at_us, d.seq, &d.frame[..]), (None, 0, 0, &b"x"[..]));
            assert!(decode(Bytes::from_static(b"short")).is_none());
            let zeros = "0".repeat(32);
            assert!(decode(Bytes::from(format!("zzzzzzzzzzzzzzzzzzzzzzzz{zeros}{{}}"))).is_none());
            assert!(decode(Bytes::from(format!("------------------------zzzzzzzzzzzzzzzz{}{{}}", "0".repeat(16))))
                .is_none());
        }
    }
}

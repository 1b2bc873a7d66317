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
    fn deliver(&self, room_id: ObjectId, frame: Bytes);
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes an already-encoded client frame to every node subscribed to
    /// the room. `event_id` (a message id) lets receivers drop re-deliveries.
    async fn publish(&self, room_id: ObjectId, event_id: Option<ObjectId>, frame: &[u8]) -> Result<(), BusError>;
    async fn subscribe(&self, room_id: ObjectId) -> Result<(), BusError>;
    async fn unsubscribe(&self, room_id: ObjectId) -> Result<(), BusError>;
    async fn ping(&self) -> Result<(), BusError>;
}

/// Wire form of a bus event: 24 bytes of event id (hex ObjectId, or `-`
/// padding when the event has none), then the client frame, untouched, so a
/// receiver can hand the frame bytes to sockets without re-encoding.
pub mod wire {
    use super::*;

    pub const HEADER: usize = 24;
    const NO_ID: &[u8; HEADER] = b"------------------------";

    pub fn encode(event_id: Option<ObjectId>, frame: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER + frame.len());
        match event_id {
            Some(id) => out.put_slice(id.to_hex().as_bytes()),
            None => out.put_slice(NO_ID),
        }
        out.put_slice(frame);
        out.freeze()
    }

    /// Splits a payload into (event id, frame); `None` for a foreign payload.
    pub fn decode(payload: Bytes) -> Option<(Option<ObjectId>, Bytes)> {
        if payload.len() < HEADER {
            return None;
        }
        let head = &payload[..HEADER];
        let id = if head == NO_ID { None } else { Some(ObjectId::parse_str(std::str::from_utf8(head).ok()?).ok()?) };
        Some((id, payload.slice(HEADER..)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_with_and_without_id() {
            let id = ObjectId::new();
            let (got, frame) = decode(encode(Some(id), b"{\"a\":1}")).unwrap();
            assert_eq!((got, &frame[..]), (Some(id), &b"{\"a\":1}"[..]));
            let (got, frame) = decode(encode(None, b"x")).unwrap();
            assert_eq!((got, &frame[..]), (None, &b"x"[..]));
            assert!(decode(Bytes::from_static(b"short")).is_none());
            assert!(decode(Bytes::from_static(b"zzzzzzzzzzzzzzzzzzzzzzzz{}")).is_none());
        }
    }
}

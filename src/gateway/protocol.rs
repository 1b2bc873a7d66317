//! The JSON envelope shared by every WebSocket frame:
//! `{"type", "channel", "data", "timestamp", "user_id", "ref"}`.
//!
//! Server frames are encoded once into `Bytes`; a message frame made on the
//! sending node travels the bus as-is and is written to every receiver's
//! socket without being parsed or re-encoded.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::store::model::MessageView;
use crate::store::Message;

/// A frame from a client. Every field is optional here so that a frame with
/// a missing `type` still yields its `ref` for the error reply.
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(rename = "ref", default)]
    pub reference: Option<Value>,
}

#[derive(Debug, Serialize)]
struct ServerFrame<'a, D: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    data: D,
    timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn encode<D: Serialize>(frame: &ServerFrame<'_, D>) -> Bytes {
    // Serializing plain structs and JSON values into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(frame).unwrap_or_default())
}

/// `{"type":"message"}` delivered to a room's subscribers.
pub fn message(m: &Message) -> Bytes {
    let room = m.room_id.to_hex();
    let sender = m.sender_id.to_hex();
    encode(&ServerFrame {
        kind: "message",
        channel: Some(&room),
        data: MessageView::from(m),
        timestamp: m.timestamp.timestamp_millis(),
        user_id: Some(&sender),
        reference: None,
    })
}

pub fn ack<D: Serialize>(reference: Option<&Value>, channel: Option<&str>, data: D, user_id: &str) -> Bytes {
    encode(&ServerFrame { kind: "ack", channel, data, timestamp: now_ms(), user_id: Some(user_id), reference })
}

pub fn pong(reference: Option<&Value>) -> Bytes {
    encode(&ServerFrame {
        kind: "pong",
        channel: None,
        data: Value::Null,
        timestamp: now_ms(),
        user_id: None,
        reference,
    })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

pub fn error(reference: Option<&Value>, channel: Option<&str>, err: &Error) -> Bytes {
    let data = ErrorBody { code: err.code(), message: err.public_message() };
    encode(&ServerFrame { kind: "error", channel, data, timestamp: now_ms(), user_id: None, reference })
}

/// A frame for an event that is not a stored message (presence, typing):
/// what happened (`kind`), where, and who caused it.
pub fn event<D: Serialize>(kind: &str, channel: Option<&str>, user_id: Option<&str>, data: D) -> Bytes {
    encode(&ServerFrame { kind, channel, data, timestamp: now_ms(), user_id, reference: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_with_missing_fields() {
        let f: ClientFrame = serde_json::from_str(r#"{"ref": 7}"#).unwrap();
        assert!(f.kind.is_none());
        assert_eq!(f.reference, Some(Value::from(7)));
        assert!(serde_json::from_str::<ClientFrame>("{nope").is_err());
    }

    #[test]
    fn error_frames_carry_ref_and_code() {
        let r = Value::from("abc");
        let bytes = error(Some(&r), Some("room"), &Error::Forbidden("no".into()));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["ref"], "abc");
        assert_eq!(v["channel"], "room");
        assert_eq!(v["data"]["code"], "forbidden");
        assert!(v["timestamp"].as_i64().unwrap() > 0);
    }
}

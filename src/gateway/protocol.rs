//! The JSON envelope shared by every WebSocket frame:
//! `{"type", "channel", "data", "timestamp", "user_id", "ref"}`.
//!
//! Server frames are encoded once into `Bytes`; a message frame made on the
//! sending node travels the bus as-is and is written to every receiver's
//! socket without being parsed or re-encoded.

use bson::oid::ObjectId;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::now_ms;
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

/// A server event that is not a stored message (membership changes,
/// receipts, presence, typing): what happened (`kind`), where, and who
/// caused it; built once, sent to many.
pub fn event<D: Serialize>(kind: &str, channel: Option<&str>, user_id: Option<&str>, data: D) -> Bytes {
    encode(&ServerFrame { kind, channel, data, timestamp: now_ms(), user_id, reference: None })
}

/// `{"type":"message_updated"}`: a stored message's new content; `user_id`
/// is the editor.
pub fn message_updated(m: &Message, editor: ObjectId) -> Bytes {
    changed("message_updated", m, editor, m.edited_at)
}

/// `{"type":"message_deleted"}`: the tombstone that takes the message's place;
/// `user_id` is who deleted it (the sender, an owner or a moderator).
pub fn message_deleted(m: &Message, deleter: ObjectId) -> Bytes {
    changed("message_deleted", m, deleter, m.deleted_at)
}

fn changed(kind: &str, m: &Message, actor: ObjectId, at: Option<DateTime<Utc>>) -> Bytes {
    let room = m.room_id.to_hex();
    let actor = actor.to_hex();
    encode(&ServerFrame {
        kind,
        channel: Some(&room),
        data: MessageView::from(m),
        timestamp: at.map_or_else(now_ms, |t| t.timestamp_millis()),
        user_id: Some(&actor),
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
    fn change_frames_name_the_actor_and_hide_deleted_content() {
        let (sender, moderator) = (ObjectId::new(), ObjectId::new());
        let id = ObjectId::new();
        let mut m = Message {
            id,
            room_id: ObjectId::new(),
            seq: 3,
            sender_id: sender,
            content: "fixed".into(),
            client_msg_id: None,
            dedup_key: id.to_hex(),
            timestamp: Utc::now(),
            edited_at: Some(Utc::now()),
            deleted: false,
            deleted_at: None,
        };
        let v: Value = serde_json::from_slice(&message_updated(&m, sender)).unwrap();
        assert_eq!((v["type"].as_str(), v["data"]["content"].as_str()), (Some("message_updated"), Some("fixed")));
        assert_eq!(v["user_id"].as_str(), Some(sender.to_hex().as_str()));
        assert_eq!(v["channel"].as_str(), Some(m.room_id.to_hex().as_str()));
        assert_eq!(v["timestamp"].as_i64(), m.edited_at.map(|t| t.timestamp_millis()));
        m.deleted = true;
        let v: Value = serde_json::from_slice(&message_deleted(&m, moderator)).unwrap();
        assert_eq!((v["type"].as_str(), v["data"]["deleted"].as_bool()), (Some("message_deleted"), Some(true)));
        assert!(v["data"]["content"].is_null());
        assert_eq!(v["data"]["sender_id"].as_str(), Some(sender.to_hex().as_str()));
        assert_eq!(v["user_id"].as_str(), Some(moderator.to_hex().as_str()));
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

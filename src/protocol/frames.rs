//! Server → client frames, in the envelope every frame shares:
//! `{"type", "channel", "data", "timestamp", "user_id", "ref"}`.
//!
//! A [`ServerEvent`] is something that happened, as the domain describes
//! it; [`ServerEvent::encode`] is the only place it becomes bytes. A frame is
//! encoded once, on the node where it happens: it travels the bus as those
//! bytes and is written to every receiver's socket without being parsed or
//! encoded again. Replies to a client's own frame (`ack`, `pong`, `error`)
//! are made by the functions at the bottom.

use bson::oid::ObjectId;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::clock::now_ms;
use crate::error::Error;
use crate::protocol::views::{MemberView, MessageView};
use crate::store::{Cursor, Member, Message};

/// Something that happened, for the clients that should hear of it.
#[derive(Clone, Copy)]
pub enum ServerEvent<'a> {
    /// A new stored message, to its room.
    Message(&'a Message),
    /// A message's new content; `by` edited it.
    MessageUpdated {
        message: &'a Message,
        by: ObjectId,
    },
    /// The tombstone that takes a message's place; `by` deleted it.
    MessageDeleted {
        message: &'a Message,
        by: ObjectId,
    },
    /// To a room: someone joined by invitation, changed role, or left.
    MemberAdded {
        member: &'a Member,
        by: ObjectId,
    },
    MemberUpdated {
        member: &'a Member,
        by: ObjectId,
    },
    MemberRemoved {
        member: &'a Member,
        by: ObjectId,
    },
    /// To a user: they gained or lost a room; `by` did it.
    RoomAdded {
        room: ObjectId,
        by: ObjectId,
    },
    RoomRemoved {
        room: ObjectId,
        by: ObjectId,
    },
    /// To a sender: `reader` moved their cursor past the sender's message.
    Receipt {
        room: ObjectId,
        reader: ObjectId,
        cursor: Cursor,
        message: &'a Message,
    },
    /// To a room: `user` is typing.
    Typing {
        room: ObjectId,
        user: ObjectId,
    },
    /// A user's presence changed; `view` is what clients see of it.
    Presence {
        user: ObjectId,
        view: &'a (dyn erased_serde::Serialize + Sync),
    },
    /// A notification for its user's connections.
    Notification {
        view: &'a (dyn erased_serde::Serialize + Sync),
    },
}

/// Every kind of server frame, as its `type` names it.
pub const KINDS: [&str; 16] = [
    "message",
    "message_updated",
    "message_deleted",
    "member_added",
    "member_updated",
    "member_removed",
    "room_added",
    "room_removed",
    "receipt",
    "user_typing",
    "presence",
    "notification",
    "ack",
    "pong",
    "error",
    "token_expiring",
];

impl ServerEvent<'_> {
    /// The frame's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerEvent::Message(_) => "message",
            ServerEvent::MessageUpdated { .. } => "message_updated",
            ServerEvent::MessageDeleted { .. } => "message_deleted",
            ServerEvent::MemberAdded { .. } => "member_added",
            ServerEvent::MemberUpdated { .. } => "member_updated",
            ServerEvent::MemberRemoved { .. } => "member_removed",
            ServerEvent::RoomAdded { .. } => "room_added",
            ServerEvent::RoomRemoved { .. } => "room_removed",
            ServerEvent::Receipt { .. } => "receipt",
            ServerEvent::Typing { .. } => "user_typing",
            ServerEvent::Presence { .. } => "presence",
            ServerEvent::Notification { .. } => "notification",
        }
    }

    /// The frame, encoded once.
    pub fn encode(&self) -> Bytes {
        let kind = self.kind();
        match *self {
            ServerEvent::Message(m) => {
                let at = m.timestamp.timestamp_millis();
                frame(kind, Some(&m.room_id), MessageView::from(m), at, Some(&m.sender_id), None)
            }
            ServerEvent::MessageUpdated { message, by } => changed(kind, message, by, message.edited_at),
            ServerEvent::MessageDeleted { message, by } => changed(kind, message, by, message.deleted_at),
            ServerEvent::MemberAdded { member, by }
            | ServerEvent::MemberUpdated { member, by }
            | ServerEvent::MemberRemoved { member, by } => {
                let data = WithBy { inner: MemberView::from(member), by: by.to_hex() };
                frame(kind, Some(&member.room_id), data, now_ms(), Some(&by), None)
            }
            ServerEvent::RoomAdded { room, by } | ServerEvent::RoomRemoved { room, by } => {
                let data = RoomChange { room_id: room.to_hex(), by: by.to_hex() };
                frame(kind, Some(&room), data, now_ms(), Some(&by), None)
            }
            ServerEvent::Receipt { room, reader, cursor, message } => {
                let data = ReceiptData {
                    room_id: room.to_hex(),
                    user_id: reader.to_hex(),
                    status: cursor.as_str(),
                    message_id: message.id.to_hex(),
                    seq: message.seq,
                };
                frame(kind, Some(&room), data, now_ms(), Some(&reader), None)
            }
            ServerEvent::Typing { room, user } => {
                frame(kind, Some(&room), TypingData { user_id: user.to_hex() }, now_ms(), Some(&user), None)
            }
            ServerEvent::Presence { user, view } => frame(kind, None, view, now_ms(), Some(&user), None),
            ServerEvent::Notification { view } => frame(kind, None, view, now_ms(), None, None),
        }
    }
}

#[derive(Serialize)]
struct WithBy<T: Serialize> {
    #[serde(flatten)]
    inner: T,
    by: String,
}

#[derive(Serialize)]
struct RoomChange {
    room_id: String,
    by: String,
}

#[derive(Serialize)]
struct ReceiptData {
    room_id: String,
    user_id: String,
    status: &'static str,
    message_id: String,
    seq: i64,
}

#[derive(Serialize)]
struct TypingData {
    user_id: String,
}

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
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

fn frame<D: Serialize>(
    kind: &str,
    channel: Option<&ObjectId>,
    data: D,
    timestamp: i64,
    user: Option<&ObjectId>,
    reference: Option<&Value>,
) -> Bytes {
    let channel = channel.map(|c| c.to_hex());
    let user = user.map(|u| u.to_hex());
    encode(&Envelope { kind, channel: channel.as_deref(), data, timestamp, user_id: user.as_deref(), reference })
}

fn encode<D: Serialize>(envelope: &Envelope<'_, D>) -> Bytes {
    // Serializing plain structs and JSON values into a Vec cannot fail.
    Bytes::from(serde_json::to_vec(envelope).unwrap_or_default())
}

fn changed(kind: &str, m: &Message, by: ObjectId, at: Option<DateTime<Utc>>) -> Bytes {
    let at = at.map_or_else(now_ms, |t| t.timestamp_millis());
    frame(kind, Some(&m.room_id), MessageView::from(m), at, Some(&by), None)
}

/// `ack`: a client frame carrying `ref` succeeded; `data` is its result.
pub fn ack<D: Serialize>(reference: Option<&Value>, channel: Option<&str>, data: D, user_id: &str) -> Bytes {
    encode(&Envelope { kind: "ack", channel, data, timestamp: now_ms(), user_id: Some(user_id), reference })
}

pub fn pong(reference: Option<&Value>) -> Bytes {
    encode(&Envelope { kind: "pong", channel: None, data: Value::Null, timestamp: now_ms(), user_id: None, reference })
}

#[derive(Serialize)]
struct Expiring {
    expires_in: u64,
}

/// `token_expiring`: the connection's access token expires in
/// `expires_in` seconds; answer with `refresh`, or the socket closes (4002).
pub fn token_expiring(expires_in: u64) -> Bytes {
    let data = Expiring { expires_in };
    encode(&Envelope {
        kind: "token_expiring",
        channel: None,
        data,
        timestamp: now_ms(),
        user_id: None,
        reference: None,
    })
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
}

/// `error`: a client frame failed; carries its `ref` and channel.
pub fn error(reference: Option<&Value>, channel: Option<&str>, err: &Error) -> Bytes {
    let data = ErrorBody { code: err.code(), message: err.public_message() };
    encode(&Envelope { kind: "error", channel, data, timestamp: now_ms(), user_id: None, reference })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        let id = ObjectId::new();
        Message {
            id,
            room_id: ObjectId::new(),
            seq: 3,
            sender_id: ObjectId::new(),
            content: "fixed".into(),
            client_msg_id: None,
            dedup_key: id.to_hex(),
            timestamp: Utc::now(),
            edited_at: Some(Utc::now()),
            deleted: false,
            deleted_at: None,
        }
    }

    fn decoded(event: ServerEvent<'_>) -> Value {
        serde_json::from_slice(&event.encode()).unwrap()
    }

    #[test]
    fn change_frames_name_the_actor_and_hide_deleted_content() {
        let (sender, moderator) = (ObjectId::new(), ObjectId::new());
        let mut m = Message { sender_id: sender, ..message() };
        let v = decoded(ServerEvent::MessageUpdated { message: &m, by: sender });
        assert_eq!((v["type"].as_str(), v["data"]["content"].as_str()), (Some("message_updated"), Some("fixed")));
        assert_eq!(v["user_id"].as_str(), Some(sender.to_hex().as_str()));
        assert_eq!(v["channel"].as_str(), Some(m.room_id.to_hex().as_str()));
        assert_eq!(v["timestamp"].as_i64(), m.edited_at.map(|t| t.timestamp_millis()));
        m.deleted = true;
        let v = decoded(ServerEvent::MessageDeleted { message: &m, by: moderator });
        assert_eq!((v["type"].as_str(), v["data"]["deleted"].as_bool()), (Some("message_deleted"), Some(true)));
        assert!(v["data"]["content"].is_null());
        assert_eq!(v["data"]["sender_id"].as_str(), Some(sender.to_hex().as_str()));
        assert_eq!(v["user_id"].as_str(), Some(moderator.to_hex().as_str()));
    }

    #[test]
    fn every_event_names_its_kind_and_says_where() {
        let (m, by) = (message(), ObjectId::new());
        let member = Member::new(m.room_id, ObjectId::new(), crate::store::Role::Member, Utc::now());
        let view = serde_json::json!({"status": "away"});
        let events = [
            ServerEvent::Message(&m),
            ServerEvent::MemberAdded { member: &member, by },
            ServerEvent::RoomRemoved { room: m.room_id, by },
            ServerEvent::Receipt { room: m.room_id, reader: by, cursor: Cursor::Read, message: &m },
            ServerEvent::Typing { room: m.room_id, user: by },
            ServerEvent::Presence { user: by, view: &view },
            ServerEvent::Notification { view: &view },
        ];
        for event in events {
            let v = decoded(event);
            assert_eq!(v["type"], event.kind());
            assert!(KINDS.contains(&event.kind()));
            assert!(v["timestamp"].as_i64().unwrap() > 0);
            let in_room = !matches!(event, ServerEvent::Presence { .. } | ServerEvent::Notification { .. });
            assert_eq!(v["channel"] == m.room_id.to_hex(), in_room, "{v}");
        }
        let v = decoded(ServerEvent::MemberAdded { member: &member, by });
        assert_eq!((&v["data"]["by"], &v["data"]["role"]), (&Value::from(by.to_hex()), &Value::from("member")));
        let v = decoded(ServerEvent::Receipt { room: m.room_id, reader: by, cursor: Cursor::Read, message: &m });
        assert_eq!((&v["data"]["status"], &v["data"]["seq"]), (&Value::from("read"), &Value::from(3)));
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

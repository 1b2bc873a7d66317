//! Client → server frames: read once into a [`Request`], a [`Command`] with
//! its `ref`, then applied by the connection's session. Every check of a
//! frame's shape is here; what a command may do is the domain's.
//!
//! The envelope is `{"type", "channel", "data", "ref"}`. The frame is read as
//! JSON first, so that a frame whose fields have the wrong types still
//! yields its `ref` (and channel) for the error that answers it.

use bson::oid::ObjectId;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::store::Cursor;
use crate::validate;

/// What a client frame asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Ping,
    /// Subscribe to a room (joining it if public), replaying from a point.
    Join {
        room: ObjectId,
        replay: Option<ReplayFrom>,
    },
    Leave {
        room: ObjectId,
    },
    Send {
        room: ObjectId,
        content: String,
        client_msg_id: Option<String>,
    },
    /// Move the caller's delivered or read cursor in a room.
    Acknowledge {
        room: ObjectId,
        cursor: Cursor,
        message_id: ObjectId,
    },
    SetStatus {
        status: String,
    },
    Typing {
        room: ObjectId,
    },
    /// Carry on with a new access token (of the same user).
    Refresh {
        access_token: String,
    },
}

/// Where a join's replay starts: after a seq, or after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    Seq(i64),
    Message(ObjectId),
}

/// A client frame read: its command, and what its answer carries back.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: Command,
    /// The client's `ref`, any JSON value, echoed in the answer.
    pub reference: Option<Value>,
    /// The `channel` as the client wrote it, echoed in the answer.
    pub channel: Option<String>,
}

/// A frame that could not be read: the error that answers it, with what of
/// the frame was readable.
#[derive(Debug)]
pub struct Unreadable {
    pub error: Error,
    pub reference: Option<Value>,
    pub channel: Option<String>,
    /// The frame's type for the frames-in metric (`malformed` when not JSON
    /// or without a type, `unknown` for a type this server does not know).
    pub label: &'static str,
}

/// Every type a client may send, for bounded metric labels.
pub const TYPES: [&str; 9] = [
    "ping",
    "join_channel",
    "leave_channel",
    "send_message",
    "delivered",
    "read",
    "set_status",
    "user_typing",
    "refresh",
];

impl Command {
    /// The frame type, as the client wrote it.
    pub fn label(&self) -> &'static str {
        match self {
            Command::Ping => "ping",
            Command::Join { .. } => "join_channel",
            Command::Leave { .. } => "leave_channel",
            Command::Send { .. } => "send_message",
            Command::Acknowledge { cursor: Cursor::Delivered, .. } => "delivered",
            Command::Acknowledge { cursor: Cursor::Read, .. } => "read",
            Command::SetStatus { .. } => "set_status",
            Command::Typing { .. } => "user_typing",
            Command::Refresh { .. } => "refresh",
        }
    }
}

#[derive(Deserialize)]
struct SendData {
    content: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

#[derive(Deserialize)]
struct AckData {
    message_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinData {
    #[serde(default)]
    after_seq: Option<i64>,
    #[serde(default)]
    after: Option<String>,
}

impl Request {
    /// Reads one text frame.
    pub fn parse(text: &[u8]) -> Result<Request, Box<Unreadable>> {
        let value: Value = serde_json::from_slice(text).map_err(|e| {
            Box::new(Unreadable {
                error: Error::BadRequest(format!("malformed frame: {e}")),
                reference: None,
                channel: None,
                label: "malformed",
            })
        })?;
        let reference = value.get("ref").cloned();
        let channel = value.get("channel").and_then(Value::as_str).map(str::to_owned);
        let unreadable = |error: Error, label: &'static str| {
            Box::new(Unreadable { error, reference: reference.clone(), channel: channel.clone(), label })
        };
        let Value::Object(fields) = &value else {
            return Err(unreadable(Error::BadRequest("malformed frame: not a JSON object".into()), "malformed"));
        };
        let kind = match fields.get("type") {
            None | Some(Value::Null) => {
                return Err(unreadable(Error::BadRequest("missing field `type`".into()), "malformed"));
            }
            Some(Value::String(kind)) => kind.as_str(),
            Some(_) => {
                let error = Error::BadRequest("malformed frame: `type` must be a string".into());
                return Err(unreadable(error, "malformed"));
            }
        };
        let label = TYPES.iter().copied().find(|t| *t == kind).unwrap_or("unknown");
        if !matches!(fields.get("channel"), None | Some(Value::Null | Value::String(_))) {
            let error = Error::BadRequest("malformed frame: `channel` must be a string".into());
            return Err(unreadable(error, label));
        }
        let data = fields.get("data").filter(|d| !d.is_null());
        command(kind, channel.as_deref(), data)
            .map(|command| Request { command, reference: reference.clone(), channel: channel.clone() })
            .map_err(|error| unreadable(error, label))
    }
}

fn command(kind: &str, channel: Option<&str>, data: Option<&Value>) -> Result<Command> {
    let room = || -> Result<ObjectId> {
        let channel = channel.ok_or_else(|| Error::BadRequest("missing field `channel`".into()))?;
        validate::object_id("channel", channel)
    };
    Ok(match kind {
        "ping" => Command::Ping,
        "join_channel" => {
            let room = room()?;
            Command::Join { room, replay: replay_from(data)? }
        }
        "leave_channel" => Command::Leave { room: room()? },
        "send_message" => {
            let room = room()?;
            let d: SendData = read_data(data)?;
            Command::Send { room, content: d.content, client_msg_id: d.client_msg_id }
        }
        "delivered" | "read" => {
            let room = room()?;
            let d: AckData = read_data(data)?;
            let message_id = validate::object_id("message_id", &d.message_id)?;
            let cursor = if kind == "read" { Cursor::Read } else { Cursor::Delivered };
            Command::Acknowledge { room, cursor, message_id }
        }
        "set_status" => {
            let status = data.and_then(|d| d.get("status")).and_then(Value::as_str);
            let status = status.ok_or_else(|| Error::invalid("status", "is required: online, away or busy"))?;
            Command::SetStatus { status: status.to_string() }
        }
        "user_typing" => Command::Typing { room: room()? },
        "refresh" => {
            let token = data.and_then(|d| d.get("access_token")).and_then(Value::as_str);
            let token = token.ok_or_else(|| Error::invalid("access_token", "is required"))?;
            Command::Refresh { access_token: token.to_string() }
        }
        other => return Err(Error::UnknownType(validate::quoted(other))),
    })
}

fn read_data<T: for<'de> Deserialize<'de>>(data: Option<&Value>) -> Result<T> {
    T::deserialize(data.unwrap_or(&Value::Null)).map_err(|e| Error::BadRequest(format!("data: {e}")))
}

fn replay_from(data: Option<&Value>) -> Result<Option<ReplayFrom>> {
    let Some(data) = data else { return Ok(None) };
    let d: JoinData = read_data(Some(data))?;
    match (d.after_seq, d.after) {
        (Some(_), Some(_)) => Err(Error::invalid("data", "give after_seq or after, not both")),
        (Some(seq), None) if seq < 0 => Err(Error::invalid("after_seq", "must not be negative")),
        (Some(seq), None) => Ok(Some(ReplayFrom::Seq(seq))),
        (None, Some(id)) => Ok(Some(ReplayFrom::Message(validate::object_id("after", &id)?))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<Request, Box<Unreadable>> {
        Request::parse(v.to_string().as_bytes())
    }

    #[test]
    fn each_type_reads_into_its_command() {
        let room = ObjectId::new();
        let r = parse(
            serde_json::json!({"type": "join_channel", "channel": room.to_hex(), "data": {"after_seq": 4}, "ref": 7}),
        )
        .unwrap();
        assert_eq!(r.command, Command::Join { room, replay: Some(ReplayFrom::Seq(4)) });
        assert_eq!((r.reference, r.channel), (Some(Value::from(7)), Some(room.to_hex())));
        let r = parse(serde_json::json!({"type": "send_message", "channel": room.to_hex(), "data": {"content": "hi"}}))
            .unwrap();
        assert_eq!(r.command, Command::Send { room, content: "hi".into(), client_msg_id: None });
        let m = ObjectId::new();
        let r =
            parse(serde_json::json!({"type": "read", "channel": room.to_hex(), "data": {"message_id": m.to_hex()}}))
                .unwrap();
        assert_eq!(r.command, Command::Acknowledge { room, cursor: Cursor::Read, message_id: m });
        assert_eq!(r.command.label(), "read");
        let r = parse(serde_json::json!({"type": "refresh", "data": {"access_token": "abc"}, "ref": 1})).unwrap();
        assert_eq!(r.command, Command::Refresh { access_token: "abc".into() });
        let e = parse(serde_json::json!({"type": "refresh", "data": {}, "ref": 2})).unwrap_err();
        assert_eq!((e.error.code(), e.reference), ("validation_failed", Some(Value::from(2))));
        for t in TYPES {
            let data = if t == "join_channel" {
                Value::Null
            } else {
                serde_json::json!({"content": "x", "message_id": m.to_hex(), "status": "away", "access_token": "t"})
            };
            let frame = serde_json::json!({"type": t, "channel": room.to_hex(), "data": data});
            assert_eq!(parse(frame).unwrap().command.label(), t, "labels match the wire names");
        }
    }

    #[test]
    fn unreadable_frames_keep_their_ref_and_say_why() {
        let cases = [
            (
                serde_json::json!({"type": "join_channel", "channel": {"$ne": null}, "ref": "a"}),
                "bad_request",
                "join_channel",
            ),
            (serde_json::json!({"type": 5, "ref": "b"}), "bad_request", "malformed"),
            (serde_json::json!({"ref": "c"}), "bad_request", "malformed"),
            (serde_json::json!({"type": "dance", "ref": "d"}), "unknown_type", "unknown"),
            (serde_json::json!({"type": "send_message", "channel": "nope", "ref": "e"}), "bad_request", "send_message"),
            (serde_json::json!({"type": "set_status", "ref": "f"}), "validation_failed", "set_status"),
            (
                serde_json::json!({"type": "join_channel", "channel": ObjectId::new().to_hex(), "data": {"after_seq": -1}, "ref": "g"}),
                "validation_failed",
                "join_channel",
            ),
        ];
        for (frame, code, label) in cases {
            let e = parse(frame.clone()).unwrap_err();
            assert_eq!((e.error.code(), e.label), (code, label), "{frame}");
            assert_eq!(e.reference, frame.get("ref").cloned(), "{frame}");
        }
        let e = Request::parse(b"{nope").unwrap_err();
        assert_eq!((e.error.code(), e.label, e.reference), ("bad_request", "malformed", None));
    }
}

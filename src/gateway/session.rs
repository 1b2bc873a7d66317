//! A chat connection: turns client frames into room joins, leaves and sends,
//! and answers each with an `ack` or an `error` frame. Bad input never closes
//! the connection; only transport-level violations do (see `socket`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bson::oid::ObjectId;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::assembler::DataMessage;
use super::protocol::{self, ClientFrame};
use super::registry::{Outbound, Outbox};
use super::socket::Handler;
use crate::auth::Caller;
use crate::bus::Topic;
use crate::error::{Error, Result};
use crate::messages::{self, Draft, Membership};
use crate::node::App;
use crate::ratelimit::{self, Admit, FrameLimiter};
use crate::store::model::MessageView;
use crate::store::{Cursor, HistoryQuery};
use crate::{presence, receipts, rooms, seq, typing, validate};

/// Rooms one connection may be subscribed to at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 1000;

pub struct ChatSession {
    app: Arc<App>,
    caller: Caller,
    user_hex: String,
    outbox: Arc<Outbox>,
    /// Rooms this connection is subscribed to.
    rooms: HashSet<ObjectId>,
    /// Rooms this connection has seen the user to be a member of, and
    /// when, so that repeated sends skip the membership lookup. Trusted only
    /// while an ended membership cannot go unnoticed (see `is_known_member`).
    member_of: HashMap<ObjectId, Instant>,
    /// The registry's bus epoch when `member_of` was last trusted.
    bus_epoch: u64,
    frames: FrameLimiter,
}

#[derive(Deserialize)]
struct AckData {
    message_id: String,
}

#[derive(Deserialize)]
struct SendData {
    content: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

impl ChatSession {
    pub fn new(app: Arc<App>, caller: Caller, outbox: Arc<Outbox>) -> Self {
        let user_hex = caller.user_id.to_hex();
        let frames = FrameLimiter::new(&app.config.rate_limits);
        let bus_epoch = app.gateway.registry.bus_epoch();
        ChatSession {
            app,
            caller,
            user_hex,
            outbox,
            rooms: HashSet::new(),
            member_of: HashMap::new(),
            bus_epoch,
            frames,
        }
    }

    /// `send`, for the socket handler: a closed queue ends the connection.
    async fn reply(&self, frame: Bytes) -> Result<(), (u16, String)> {
        self.send(frame).await.map_err(|_| (1011, "connection closing".into()))
    }

    async fn handle(&mut self, frame: &ClientFrame) -> Result<Option<Bytes>> {
        self.forget_revoked();
        let kind = frame.kind.as_deref().ok_or_else(|| Error::BadRequest("missing field `type`".into()))?;
        let r = frame.reference.as_ref();
        metrics::counter!("confab_ws_frames_in_total", "type" => frame_label(kind)).increment(1);
        match kind {
            "ping" => Ok(Some(protocol::pong(r))),
            "join_channel" => {
                let (room, channel) = channel_of(frame)?;
                let from = replay_from(frame.data.as_ref())?;
                let replay_after = self.join(room, from).await?;
                let ack =
                    r.map(|r| protocol::ack(Some(r), Some(channel), json!({ "room_id": channel }), &self.user_hex));
                let Some(after) = replay_after else { return Ok(ack) };
                // Ack first: everything after it is the room's traffic, in seq order.
                if let Some(ack) = ack {
                    self.send(ack).await?;
                }
                self.replay(room, after).await?;
                Ok(None)
            }
            "leave_channel" => {
                let (room, channel) = channel_of(frame)?;
                self.leave(room);
                Ok(r.map(|r| protocol::ack(Some(r), Some(channel), json!({ "room_id": channel }), &self.user_hex)))
            }
            "send_message" => {
                let (room, channel) = channel_of(frame)?;
                let data = SendData::deserialize(frame.data.as_ref().unwrap_or(&Value::Null))
                    .map_err(|e| Error::BadRequest(format!("data: {e}")))?;
                let draft = Draft { content: data.content, client_msg_id: data.client_msg_id };
                let membership = if self.is_known_member(room) { Membership::Remembered } else { Membership::Lookup };
                let sent = messages::send(&self.app, &self.caller, room, draft, membership).await?;
                self.note_member(room);
                Ok(r.map(|r| protocol::ack(Some(r), Some(channel), MessageView::from(&sent.message), &self.user_hex)))
            }
            "delivered" | "read" => {
                let (room, channel) = channel_of(frame)?;
                let data = AckData::deserialize(frame.data.as_ref().unwrap_or(&Value::Null))
                    .map_err(|e| Error::BadRequest(format!("data: {e}")))?;
                let message_id = validate::object_id("message_id", &data.message_id)?;
                let cursor = if kind == "read" { Cursor::Read } else { Cursor::Delivered };
                let cursors = receipts::acknowledge(&self.app, &self.caller, room, cursor, message_id).await?;
                Ok(r.map(|r| protocol::ack(Some(r), Some(channel), cursors, &self.user_hex)))
            }
            "set_status" => {
                let status = frame.data.as_ref().and_then(|d| d.get("status")).and_then(Value::as_str);
                let status = status.ok_or_else(|| Error::invalid("status", "is required: online, away or busy"))?;
                let view = presence::set_status(&self.app, self.caller.user_id, status).await?;
                Ok(r.map(|r| protocol::ack(Some(r), None, view, &self.user_hex)))
            }
            "user_typing" => {
                let (room, channel) = channel_of(frame)?;
                if !self.rooms.contains(&room) {
                    return Err(Error::Forbidden("join the room before typing in it".into()));
                }
                let relayed = typing::typing(&self.app, self.caller.user_id, room).await;
                let data = json!({ "room_id": channel, "relayed": relayed });
                Ok(r.map(|r| protocol::ack(Some(r), Some(channel), data, &self.user_hex)))
            }
            other => Err(Error::UnknownType(validate::quoted(other))),
        }
    }

    /// Forgets rooms the user was removed from (on any node) since the last
    /// frame: the registry already stopped their traffic; the session must
    /// stop assuming membership.
    fn forget_revoked(&mut self) {
        for room in self.outbox.take_revoked() {
            self.rooms.remove(&room);
            self.member_of.remove(&room);
        }
        let epoch = self.app.gateway.registry.bus_epoch();
        if epoch != self.bus_epoch {
            // The bus was cut off: a membership may have ended unannounced.
            self.member_of.clear();
            self.bus_epoch = epoch;
        }
    }

    /// Whether a send may skip the membership lookup. A membership that
    /// ends is announced on the user's topic, which revokes it on every
    /// connection of theirs (`forget_revoked`); so the lookup is skipped
    /// only while this node is known to receive that topic, and for at most
    /// [`MEMBERSHIP_TRUST`], which bounds what a lost announcement can cost.
    fn is_known_member(&self, room: ObjectId) -> bool {
        self.outbox.user_topic_subscribed()
            && self.member_of.get(&room).is_some_and(|seen| seen.elapsed() < seq::MEMBERSHIP_TRUST)
    }

    fn note_member(&mut self, room: ObjectId) {
        self.member_of.insert(room, Instant::now());
    }

    /// Subscribes this connection to `room` (joining it if public). With a
    /// replay point, live deliveries of the room are held from before the
    /// subscription on, and the seq to replay after is returned.
    async fn join(&mut self, room: ObjectId, from: Option<ReplayFrom>) -> Result<Option<i64>> {
        if self.rooms.contains(&room) {
            if from.is_none() {
                return Ok(None);
            }
            self.leave(room); // and re-subscribe below, replaying
        }
        if self.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            return Err(Error::invalid(
                "channel",
                format!("a connection may join at most {MAX_ROOMS_PER_CONNECTION} rooms"),
            ));
        }
        rooms::join(&self.app, &self.caller, room).await?;
        self.note_member(room);
        let after = match from {
            None => None,
            Some(ReplayFrom::Seq(seq)) => Some(seq),
            Some(ReplayFrom::Message(id)) => match self.app.store.message(id).await? {
                Some(m) if m.room_id == room => Some(m.seq),
                _ => return Err(Error::NotFound("after: no such message in this room".into())),
            },
        };
        if after.is_some() {
            self.outbox.start_hold(room);
        }
        let gateway = &self.app.gateway;
        gateway.registry.join(room, &self.outbox);
        self.rooms.insert(room);
        if let Err(e) = gateway.subscriptions.ensure(Topic::Room(room)).await {
            self.outbox.release_hold(i64::MAX);
            self.leave(room);
            tracing::warn!(error = %e, "join failed: bus subscription");
            return Err(Error::Unavailable("real-time delivery is unavailable, try again".into()));
        }
        Ok(after)
    }

    /// Sends the room's stored messages with seq above `after`, then releases
    /// the live deliveries held meanwhile, skipping what the replay covered:
    /// no gap, no duplicate, seq order.
    async fn replay(&mut self, room: ObjectId, after: i64) -> Result<()> {
        let mut last = after;
        let mut sent = 0;
        loop {
            let query =
                HistoryQuery { room_id: room, after_seq: Some(last), forward: true, limit: 200, ..Default::default() };
            let (page, more) = match self.app.store.history(&query).await {
                Ok(p) => p,
                Err(e) => {
                    self.outbox.release_hold(i64::MAX);
                    self.leave(room);
                    return Err(e.into());
                }
            };
            for m in &page {
                self.send(protocol::message(m)).await?;
                last = m.seq;
            }
            sent += page.len();
            if !more {
                break;
            }
            if sent >= MAX_REPLAY {
                self.outbox.release_hold(i64::MAX);
                self.leave(room);
                return Err(Error::Conflict {
                    code: "too_far_behind",
                    message: format!(
                        "more than {MAX_REPLAY} messages to replay: page them with GET /messages?after_seq={last}, then join again"
                    ),
                });
            }
        }
        metrics::counter!("confab_replayed_messages_total").increment(sent as u64);
        if !self.outbox.release_hold(last) {
            self.outbox.cut_off_slow();
        }
        Ok(())
    }

    async fn send(&self, frame: Bytes) -> Result<()> {
        if self.outbox.send(Outbound::Text(frame)).await {
            Ok(())
        } else {
            Err(Error::Unavailable("connection closing".into()))
        }
    }

    fn leave(&mut self, room: ObjectId) {
        if self.rooms.remove(&room) && self.app.gateway.registry.leave(room, self.outbox.id) {
            self.app.gateway.subscriptions.release(Topic::Room(room));
        }
    }
}

impl ChatSession {
    /// Answers a frame over the rate limit with `rate_limited`, carrying its
    /// `ref` when it has one so the client knows which request was dropped.
    async fn refuse(&self, text: &[u8], retry_after: std::time::Duration) -> Result<(), (u16, String)> {
        let value = serde_json::from_slice::<Value>(text).unwrap_or_default();
        let channel = value.get("channel").and_then(Value::as_str);
        self.reply(protocol::error(value.get("ref"), channel, &ratelimit::rejection("socket", retry_after))).await
    }
}

/// Most messages one join replays; beyond, the client pages over REST.
pub const MAX_REPLAY: usize = 10_000;

/// Where a join's replay starts: after a seq, or after a message.
enum ReplayFrom {
    Seq(i64),
    Message(ObjectId),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinData {
    #[serde(default)]
    after_seq: Option<i64>,
    #[serde(default)]
    after: Option<String>,
}

fn replay_from(data: Option<&Value>) -> Result<Option<ReplayFrom>> {
    let Some(data) = data.filter(|d| !d.is_null()) else { return Ok(None) };
    let d = JoinData::deserialize(data).map_err(|e| Error::BadRequest(format!("data: {e}")))?;
    match (d.after_seq, d.after) {
        (Some(_), Some(_)) => Err(Error::invalid("data", "give after_seq or after, not both")),
        (Some(seq), None) if seq < 0 => Err(Error::invalid("after_seq", "must not be negative")),
        (Some(seq), None) => Ok(Some(ReplayFrom::Seq(seq))),
        (None, Some(id)) => Ok(Some(ReplayFrom::Message(validate::object_id("after", &id)?))),
        (None, None) => Ok(None),
    }
}

/// The room a frame addresses: `channel` must be a room id.
fn channel_of(frame: &ClientFrame) -> Result<(ObjectId, &str)> {
    let channel = frame.channel.as_deref().ok_or_else(|| Error::BadRequest("missing field `channel`".into()))?;
    Ok((validate::object_id("channel", channel)?, channel))
}

/// Bounded label values for the frames-in metric.
fn frame_label(kind: &str) -> &'static str {
    match kind {
        "ping" => "ping",
        "join_channel" => "join_channel",
        "leave_channel" => "leave_channel",
        "send_message" => "send_message",
        "delivered" => "delivered",
        "read" => "read",
        "set_status" => "set_status",
        "user_typing" => "user_typing",
        _ => "unknown",
    }
}

#[async_trait]
impl Handler for ChatSession {
    async fn on_message(&mut self, message: DataMessage) -> Result<(), (u16, String)> {
        let text = match message {
            DataMessage::Text(t) => t,
            DataMessage::Binary(_) => return Err((1003, "binary frames are not supported".into())),
        };
        match self.frames.admit() {
            Admit::Yes => {}
            Admit::Refuse(retry_after) => return self.refuse(&text, retry_after).await,
            Admit::Close => {
                ratelimit::count_rejection("socket");
                tracing::info!(user = %self.user_hex, "closing a connection that keeps exceeding its frame rate");
                return Err((1008, "rate limit exceeded".into()));
            }
        }
        // JSON first, then the envelope: a frame whose fields have the wrong
        // types still has its `ref` read, so the error reaches its waiter.
        let parsed = serde_json::from_slice::<Value>(&text).map_err(|e| (None, e)).and_then(|value| {
            let reference = value.get("ref").cloned();
            ClientFrame::deserialize(value).map_err(|e| (reference, e))
        });
        let frame = match parsed {
            Ok(f) => f,
            Err((reference, e)) => {
                metrics::counter!("confab_ws_frames_in_total", "type" => "malformed").increment(1);
                let err = Error::BadRequest(format!("malformed frame: {e}"));
                return self.reply(protocol::error(reference.as_ref(), None, &err)).await;
            }
        };
        match self.handle(&frame).await {
            Ok(Some(reply)) => self.reply(reply).await,
            Ok(None) => Ok(()),
            Err(e) => self.reply(protocol::error(frame.reference.as_ref(), frame.channel.as_deref(), &e)).await,
        }
    }

    async fn on_close(&mut self) {
        let gateway = &self.app.gateway;
        for room in std::mem::take(&mut self.rooms) {
            if gateway.registry.leave(room, self.outbox.id) {
                gateway.subscriptions.release(Topic::Room(room));
            }
        }
        if gateway.registry.unregister(self.outbox.id) {
            gateway.subscriptions.release(Topic::User(self.caller.user_id));
        }
        presence::disconnected(&self.app, self.caller.user_id, self.outbox.id);
    }
}

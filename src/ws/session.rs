//! A chat connection: turns client frames into room joins, leaves and sends,
//! and answers each with an `ack` or an `error` frame. Bad input never closes
//! the connection; only transport-level violations do (see `socket`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bson::oid::ObjectId;
use bytes::Bytes;
use serde_json::{json, Value};
use tracing::Instrument;

use super::assembler::DataMessage;
use super::socket::Handler;
use super::Sockets;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::fanout::registry::{Outbound, Outbox};
use crate::messages::{Draft, Membership, Messages};
use crate::protocol::views::MessageView;
use crate::protocol::{self, Close, CloseCode, Command, ReplayFrom, Request, ServerEvent};
use crate::ratelimit::{self, Admit, FrameLimiter};
use crate::seq;

/// Rooms one connection may be subscribed to at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 1000;

pub struct ChatSession {
    sockets: Arc<Sockets>,
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

impl ChatSession {
    pub fn new(sockets: Arc<Sockets>, caller: Caller, outbox: Arc<Outbox>) -> Self {
        let user_hex = caller.user_id.to_hex();
        let frames = FrameLimiter::new(&sockets.settings.rate_limits);
        let bus_epoch = sockets.fanout.registry.bus_epoch();
        ChatSession {
            sockets,
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
    async fn reply(&self, frame: Bytes) -> Result<(), Close> {
        self.send(frame).await.map_err(|_| Close::new(CloseCode::InternalError, "connection closing"))
    }

    /// Applies one command; the reply, if it has one to send.
    async fn handle(&mut self, request: &Request) -> Result<Option<Bytes>> {
        self.forget_revoked();
        let r = request.reference.as_ref();
        let channel = request.channel.as_deref();
        let user = self.user_hex.clone();
        let ack = |data: &dyn erased_serde::Serialize| r.map(|r| protocol::ack(Some(r), channel, data, &user));
        match &request.command {
            Command::Ping => Ok(Some(protocol::pong(r))),
            Command::Join { room, replay } => {
                let replay_after = self.join(*room, *replay).await?;
                let ack = ack(&json!({ "room_id": channel }));
                let Some(after) = replay_after else { return Ok(ack) };
                // Ack first: everything after it is the room's traffic, in seq order.
                if let Some(ack) = ack {
                    self.send(ack).await?;
                }
                self.replay(*room, after).await?;
                Ok(None)
            }
            Command::Leave { room } => {
                self.leave(*room);
                Ok(ack(&json!({ "room_id": channel })))
            }
            Command::Send { room, content, client_msg_id } => {
                let draft = Draft { content: content.clone(), client_msg_id: client_msg_id.clone() };
                let membership = if self.is_known_member(*room) { Membership::Remembered } else { Membership::Lookup };
                let span = Messages::send_span("socket");
                let sent = self.sockets.messages.send(&self.caller, *room, draft, membership).instrument(span).await?;
                self.note_member(*room);
                Ok(ack(&MessageView::from(&sent.message)))
            }
            Command::Acknowledge { room, cursor, message_id } => {
                let cursors = self.sockets.receipts.acknowledge(&self.caller, *room, *cursor, *message_id).await?;
                Ok(ack(&cursors))
            }
            Command::SetStatus { status } => {
                let view = self.sockets.presence.set_status(self.caller.user_id, status).await?;
                Ok(r.map(|r| protocol::ack(Some(r), None, view, &self.user_hex)))
            }
            Command::Typing { room } => {
                if !self.rooms.contains(room) {
                    return Err(Error::Forbidden("join the room before typing in it".into()));
                }
                let relayed = self.sockets.typing.relay(self.caller.user_id, *room).await;
                Ok(ack(&json!({ "room_id": channel, "relayed": relayed })))
            }
            Command::Refresh { access_token } => {
                let fresh = self.sockets.sessions.authenticate(access_token).await?;
                if fresh.user_id != self.caller.user_id || fresh.session != self.caller.session {
                    return Err(Error::Forbidden(
                        "the token is not of this connection's session: reconnect with it instead".into(),
                    ));
                }
                self.outbox.expires_at(fresh.expires_at);
                self.caller.expires_at = fresh.expires_at;
                let left = fresh.expires_at.saturating_sub(jsonwebtoken::get_current_timestamp());
                Ok(ack(&json!({ "expires_in": left })))
            }
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
        let epoch = self.sockets.fanout.registry.bus_epoch();
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
        self.sockets.rooms.join(&self.caller, room).await?;
        self.note_member(room);
        let after = match from {
            None => None,
            Some(ReplayFrom::Seq(seq)) => Some(seq),
            Some(ReplayFrom::Message(id)) => Some(self.sockets.messages.seq_in(room, id).await?),
        };
        if after.is_some() {
            self.outbox.start_hold(room);
        }
        let fanout = &self.sockets.fanout;
        fanout.registry.join(room, &self.outbox);
        self.rooms.insert(room);
        if let Err(e) = fanout.listen_room(room).await {
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
            let (page, more) = match self.sockets.messages.replay_page(room, last, 200).await {
                Ok(p) => p,
                Err(e) => {
                    self.outbox.release_hold(i64::MAX);
                    self.leave(room);
                    return Err(e);
                }
            };
            for m in &page {
                self.send(ServerEvent::Message(m).encode()).await?;
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
        if self.rooms.remove(&room) && self.sockets.fanout.registry.leave(room, self.outbox.id) {
            self.sockets.fanout.release_room(room);
        }
    }
}

impl ChatSession {
    /// Answers a frame over the rate limit with `rate_limited`, carrying its
    /// `ref` when it has one so the client knows which request was dropped.
    async fn refuse(&self, text: &[u8], retry_after: std::time::Duration) -> Result<(), Close> {
        let value = serde_json::from_slice::<Value>(text).unwrap_or_default();
        let channel = value.get("channel").and_then(Value::as_str);
        self.reply(protocol::error(value.get("ref"), channel, &ratelimit::rejection("socket", retry_after))).await
    }
}

/// Most messages one join replays; beyond, the client pages over REST.
pub const MAX_REPLAY: usize = 10_000;

#[async_trait]
impl Handler for ChatSession {
    async fn on_message(&mut self, message: DataMessage) -> Result<(), Close> {
        let text = match message {
            DataMessage::Text(t) => t,
            DataMessage::Binary(_) => {
                return Err(Close::new(CloseCode::Unsupported, "binary frames are not supported"))
            }
        };
        match self.frames.admit() {
            Admit::Yes => {}
            Admit::Refuse(retry_after) => return self.refuse(&text, retry_after).await,
            Admit::Close => {
                ratelimit::count_rejection("socket");
                tracing::info!(user = %self.user_hex, "closing a connection that keeps exceeding its frame rate");
                return Err(Close::new(CloseCode::PolicyViolation, "rate limit exceeded"));
            }
        }
        let request = match Request::parse(&text) {
            Ok(request) => request,
            Err(unreadable) => {
                metrics::counter!("confab_ws_frames_in_total", "type" => unreadable.label).increment(1);
                let reply =
                    protocol::error(unreadable.reference.as_ref(), unreadable.channel.as_deref(), &unreadable.error);
                return self.reply(reply).await;
            }
        };
        metrics::counter!("confab_ws_frames_in_total", "type" => request.command.label()).increment(1);
        match self.handle(&request).await {
            Ok(Some(reply)) => self.reply(reply).await,
            Ok(None) => Ok(()),
            Err(e) => {
                e.log(&format!("{} failed", request.command.label()));
                self.reply(protocol::error(request.reference.as_ref(), request.channel.as_deref(), &e)).await
            }
        }
    }

    async fn on_close(&mut self) {
        let fanout = &self.sockets.fanout;
        for room in std::mem::take(&mut self.rooms) {
            if fanout.registry.leave(room, self.outbox.id) {
                fanout.release_room(room);
            }
        }
        if fanout.registry.unregister(self.outbox.id) {
            fanout.release_user(self.caller.user_id);
        }
        self.sockets.presence.disconnected(self.caller.user_id, self.outbox.id);
    }
}

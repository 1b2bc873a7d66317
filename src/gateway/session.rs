//! A chat connection: turns client frames into room joins, leaves and sends,
//! and answers each with an `ack` or an `error` frame. Bad input never closes
//! the connection; only transport-level violations do (see `socket`).

use std::collections::HashSet;
use std::sync::Arc;

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
use crate::error::{Error, Result};
use crate::messages::{self, Draft};
use crate::node::App;
use crate::store::model::MessageView;
use crate::{rooms, validate};

/// Rooms one connection may be subscribed to at once.
pub const MAX_ROOMS_PER_CONNECTION: usize = 1000;

pub struct ChatSession {
    app: Arc<App>,
    caller: Caller,
    user_hex: String,
    outbox: Arc<Outbox>,
    /// Rooms this connection is subscribed to.
    rooms: HashSet<ObjectId>,
    /// Rooms this connection has seen the user to be a member of, so that
    /// repeated sends skip the membership lookup.
    member_of: HashSet<ObjectId>,
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
        ChatSession { app, caller, user_hex, outbox, rooms: HashSet::new(), member_of: HashSet::new() }
    }

    async fn reply(&self, frame: Bytes) -> Result<(), (u16, String)> {
        if self.outbox.send(Outbound::Text(frame)).await {
            Ok(())
        } else {
            Err((1011, "connection closing".into()))
        }
    }

    async fn handle(&mut self, frame: &ClientFrame) -> Result<Option<Bytes>> {
        let kind = frame.kind.as_deref().ok_or_else(|| Error::BadRequest("missing field `type`".into()))?;
        let r = frame.reference.as_ref();
        metrics::counter!("confab_ws_frames_in_total", "type" => frame_label(kind)).increment(1);
        match kind {
            "ping" => Ok(Some(protocol::pong(r))),
            "join_channel" => {
                let (room, channel) = channel_of(frame)?;
                self.join(room).await?;
                Ok(r.map(|r| protocol::ack(Some(r), Some(channel), json!({ "room_id": channel }), &self.user_hex)))
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
                let known = self.member_of.contains(&room);
                let sent = messages::send(&self.app, &self.caller, room, draft, known).await?;
                self.member_of.insert(room);
                Ok(r.map(|r| protocol::ack(Some(r), Some(channel), MessageView::from(&sent.message), &self.user_hex)))
            }
            other => Err(Error::UnknownType(other.chars().take(40).collect())),
        }
    }

    async fn join(&mut self, room: ObjectId) -> Result<()> {
        if self.rooms.contains(&room) {
            return Ok(());
        }
        if self.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            return Err(Error::invalid(
                "channel",
                format!("a connection may join at most {MAX_ROOMS_PER_CONNECTION} rooms"),
            ));
        }
        rooms::join(&self.app, &self.caller, room).await?;
        self.member_of.insert(room);
        let gateway = &self.app.gateway;
        gateway.registry.join(room, &self.outbox);
        self.rooms.insert(room);
        if let Err(e) = gateway.subscriptions.ensure(room).await {
            self.leave(room);
            tracing::warn!(error = %e, "join failed: bus subscription");
            return Err(Error::Unavailable("real-time delivery is unavailable, try again".into()));
        }
        Ok(())
    }

    fn leave(&mut self, room: ObjectId) {
        if self.rooms.remove(&room) && self.app.gateway.registry.leave(room, self.outbox.id) {
            self.app.gateway.subscriptions.release(room);
        }
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
        let frame: ClientFrame = match serde_json::from_slice(&text) {
            Ok(f) => f,
            Err(e) => {
                metrics::counter!("confab_ws_frames_in_total", "type" => "malformed").increment(1);
                let err = Error::BadRequest(format!("malformed frame: {e}"));
                return self.reply(protocol::error(None, None, &err)).await;
            }
        };
        match self.handle(&frame).await {
            Ok(Some(reply)) => self.reply(reply).await,
            Ok(None) => Ok(()),
            Err(e) => self.reply(protocol::error(frame.reference.as_ref(), frame.channel.as_deref(), &e)).await,
        }
    }

    async fn on_close(&mut self) {
        for room in std::mem::take(&mut self.rooms) {
            if self.app.gateway.registry.leave(room, self.outbox.id) {
                self.app.gateway.subscriptions.release(room);
            }
        }
        self.app.gateway.registry.unregister(self.outbox.id);
    }
}

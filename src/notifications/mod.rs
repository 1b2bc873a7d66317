//! Notifications: telling users about what they are not watching.
//!
//! - `preferences`: what each user wants (on/off, muted rooms, mentions
//!   only, do not disturb), stored in MongoDB and cached in Redis.
//! - `audience`: who may hear of a room's message (its members, with their
//!   usernames for @mentions), cached per node.
//! - `online`: whether a user has a connection on any node.
//! - `server`: notifications a backend sends through the server API.
//!
//! A message becomes notifications off the send path: `messages::send`
//! hands it to [`Notifier::message_sent`], which only queues it (a full
//! queue drops it, counted); tasks here then work out the recipients and
//! [`dispatch`] them. Every notification goes one of two ways:
//!
//! - **live**, for a user with a connection somewhere: published on the
//!   user's bus topic, which only the nodes holding their connections
//!   subscribe to. Each such node offers it to the user's connections that
//!   are not subscribed to the message's room — a connection watching the
//!   room sees the message itself — and stores it once it has shown it
//!   somewhere (`delivered_live`; the id makes a second node's store a
//!   no-op). A user whose every connection watches the room gets nothing
//!   stored: they saw the message. Server API notifications have no room:
//!   they are stored for everyone first, then shown on every connection.
//!   A user whose connections are all on the dispatching node is served
//!   there directly, without the bus.
//! - **external**, for a user with no connection (or whose last one closed
//!   between the check and the publish): stored with `external: "pending"`
//!   and its id pushed onto the Redis list [`EXTERNAL_QUEUE`] for whatever
//!   delivers push or email (docs/api.md, "The external queue").

pub mod audience;
pub mod online;
pub mod preferences;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use fred::prelude::*;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use crate::bus::{Delivery, Event, Topic};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::gateway::protocol;
use crate::gateway::watching::Change;
use crate::node::App;
use crate::store::model::rfc3339;
use crate::store::{Message, Notification, RoomKind, Store};

/// The Redis list of notification ids waiting for external delivery
/// (`LPUSH` here; a consumer takes the oldest with `RPOP`/`BRPOP`).
pub const EXTERNAL_QUEUE: &str = "confab:notify:external";

/// Messages waiting to become notifications, per node; beyond, they are
/// dropped (and counted) rather than slow the send path or grow memory.
const QUEUE: usize = 10_000;
/// Messages turned into notifications at once, per node.
const WORKERS: usize = 8;
/// Live notifications published at once by one dispatch.
const PUBLISHING: usize = 64;
/// Longest preview of a message in its notification, in characters.
pub const PREVIEW_CHARS: usize = 140;

/// What a notification says, before it has a recipient.
#[derive(Debug, Clone)]
pub struct Content {
    pub kind: String,
    pub title: String,
    pub message: String,
    pub data: bson::Document,
}

impl Content {
    fn notification(&self, user_id: ObjectId, id: ObjectId, at: DateTime<Utc>) -> Notification {
        Notification {
            id,
            user_id,
            kind: self.kind.clone(),
            title: self.title.clone(),
            message: self.message.clone(),
            data: self.data.clone(),
            created_at: at,
            read: false,
            read_at: None,
            delivered_realtime: false,
            external: None,
        }
    }
}

/// Where live notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// About a message in this room: to connections not watching it, stored
    /// by the node that shows it.
    OutsideRoom(ObjectId),
    /// From a backend: to every connection, stored before it goes out.
    Everywhere,
}

/// What a dispatch did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Outcome {
    pub notified: usize,
    pub delivered_realtime: usize,
    pub queued_external: usize,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, o: Outcome) {
        self.notified += o.notified;
        self.delivered_realtime += o.delivered_realtime;
        self.queued_external += o.queued_external;
    }
}

fn count(channel: &'static str, n: usize) {
    metrics::counter!("confab_notifications_total", "channel" => channel).increment(n as u64);
}

/// Notifies each of `users` with `content`; see the module doc.
pub async fn dispatch(app: &App, users: &[ObjectId], content: &Content, route: Route) -> Result<Outcome> {
    let holders = holders(app, users).await;
    deliver(app, users.iter().copied().zip(holders).collect(), content, route).await
}

/// How many nodes hold each user's connections; on failure none (the
/// notifications then go to the external queue).
async fn holders(app: &App, users: &[ObjectId]) -> Vec<usize> {
    if users.is_empty() {
        return Vec::new();
    }
    online::nodes(app, users).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "presence check failed; notifications go to the external queue");
        vec![0; users.len()]
    })
}

/// Notifies users, each with the number of nodes holding them. A user held
/// by this node alone is served here without the bus round trip.
async fn deliver(app: &App, users: Vec<(ObjectId, usize)>, content: &Content, route: Route) -> Result<Outcome> {
    if users.is_empty() {
        return Ok(Outcome::default());
    }
    let now = Utc::now();
    let frame = LiveFrame::new(content, now);
    let store_first = route == Route::Everywhere;
    let mut outcome = Outcome { notified: users.len(), ..Default::default() };
    let (mut to_store, mut external, mut remote) = (Vec::new(), Vec::new(), Vec::new());
    for (user, nodes) in users {
        let id = ObjectId::new();
        let n = || content.notification(user, id, now);
        match (route, nodes) {
            (_, 0) => {
                to_store.push(Notification { external: Some("pending".into()), ..n() });
                external.push(id);
            }
            (Route::OutsideRoom(room), 1) if app.gateway.registry.user_topic_held(user) => {
                // The one node holding the user is this one.
                if app.gateway.registry.send_to_user_except_room(user, Some(room), &frame.with_id(id)) > 0 {
                    count("realtime", 1);
                    outcome.delivered_realtime += 1;
                    to_store.push(Notification { delivered_realtime: true, ..n() });
                }
            }
            _ => {
                if store_first {
                    to_store.push(Notification { delivered_realtime: true, ..n() });
                }
                remote.push((user, id));
            }
        }
    }
    app.store.insert_notifications(&to_store).await?;
    count("stored", to_store.len());

    let stored_at_us = if store_first { now.timestamp_micros().max(1) as u64 } else { 0 };
    let published: Vec<(ObjectId, ObjectId, bool)> = futures::stream::iter(remote)
        .map(|(user, id)| {
            let frame = frame.with_id(id);
            async move {
                let room = match route {
                    Route::OutsideRoom(room) => Some(room),
                    Route::Everywhere => None,
                };
                (user, id, publish(app, user, Event::notify(id, room, stored_at_us, &frame)).await)
            }
        })
        .buffer_unordered(PUBLISHING)
        .collect()
        .await;
    for (user, id, reached) in published {
        if reached {
            outcome.delivered_realtime += 1;
            continue;
        }
        // Their last connection closed after the check: deliver externally.
        let saved = if store_first {
            app.store.set_notification_delivery(id, false, Some("pending")).await
        } else {
            let n = Notification { external: Some("pending".into()), ..content.notification(user, id, now) };
            app.store.insert_notification_once(&n).await.inspect(|_| count("stored", 1))
        };
        match saved {
            Ok(_) => external.push(id),
            Err(e) => tracing::warn!(error = %e, "notification for a user who just went offline is lost"),
        }
    }
    outcome.queued_external = external.len();
    enqueue(app, &external).await;
    Ok(outcome)
}

/// How long a watching hint lives unless refreshed by another notification
/// shown to nobody (see `gateway::watching`).
const WATCHING_TTL_MS: i64 = 3000;

fn watching_key(room: ObjectId, user: ObjectId) -> String {
    format!("confab:nw:{}:{}", room.to_hex(), user.to_hex())
}

/// Leaves out the users (held by one other node) that node says watch
/// `room` on every connection: one `MGET`; without Redis, nobody is left out.
async fn not_watching<T>(app: &App, room: ObjectId, users: Vec<T>, user_of: impl Fn(&T) -> ObjectId) -> Vec<T> {
    let Some(redis) = app.notifier.redis().filter(|_| !users.is_empty()) else { return users };
    let keys: Vec<String> = users.iter().map(|u| watching_key(room, user_of(u))).collect();
    let hints: Vec<Option<String>> = if keys.len() == 1 {
        redis.get::<Option<String>, _>(&keys[0]).await.map(|v| vec![v]).unwrap_or_default()
    } else {
        redis.mget(keys).await.unwrap_or_default()
    };
    if hints.len() != users.len() {
        return users;
    }
    let before = users.len();
    let left: Vec<T> = users.into_iter().zip(hints).filter(|(_, hint)| hint.is_none()).map(|(u, _)| u).collect();
    metrics::counter!("confab_notifications_suppressed_total", "reason" => "watching")
        .increment((before - left.len()) as u64);
    left
}

/// Writes this node's watching notes to Redis, in the order they were made.
async fn write_watching(app: Arc<App>, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(first) = changes.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match changes.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // Without Redis a note is lost (fine) or a withdrawal is (it expires).
        let Some(redis) = app.notifier.redis() else { continue };
        let pipeline = redis.pipeline();
        for change in batch {
            let _: FredResult<()> = match change {
                Change::Watching { user, room } => {
                    let expiry = Some(Expiration::PX(WATCHING_TTL_MS));
                    pipeline.set(watching_key(room, user), "1", expiry, None, false).await
                }
                Change::Ended { user, room } => pipeline.del(watching_key(room, user)).await,
            };
        }
        if let Err(e) = pipeline.all::<fred::types::Value>().await {
            tracing::debug!(error = %e, "watching hints not written");
        }
    }
}

/// A dispatch's live frame, encoded once: each recipient's copy differs
/// only in the notification id, written over a placeholder.
struct LiveFrame {
    view: LiveView,
    bytes: Bytes,
    /// Where the id's 24 hex digits start, if the encoding put it first.
    id_at: Option<usize>,
}

/// How every live frame starts: the id is the first field of `data`.
const FRAME_START: &[u8] = br#"{"type":"notification","data":{"id":""#;

impl LiveFrame {
    fn new(content: &Content, at: DateTime<Utc>) -> Self {
        let view = LiveView {
            id: ObjectId::from_bytes([0; 12]).to_hex(),
            kind: content.kind.clone(),
            title: content.title.clone(),
            message: content.message.clone(),
            data: json_of(&content.data),
            timestamp: rfc3339(&at),
        };
        let bytes = protocol::event("notification", None, None, &view);
        let id_at = bytes.starts_with(FRAME_START).then_some(FRAME_START.len());
        LiveFrame { view, bytes, id_at }
    }

    fn with_id(&self, id: ObjectId) -> Bytes {
        match self.id_at {
            Some(at) => {
                let mut out = BytesMut::from(&self.bytes[..]);
                out[at..at + 24].copy_from_slice(id.to_hex().as_bytes());
                out.freeze()
            }
            None => {
                let view = LiveView { id: id.to_hex(), ..self.view.clone() };
                protocol::event("notification", None, None, &view)
            }
        }
    }
}

/// Publishes one live notification on its user's topic; whether any node
/// holding a connection of theirs received it.
async fn publish(app: &App, user: ObjectId, event: Event<'_>) -> bool {
    match app.bus.publish_counted(Topic::User(user), event).await {
        Ok(nodes) => nodes > 0,
        Err(e) => {
            metrics::counter!("confab_bus_publish_failures_total").increment(1);
            tracing::warn!(error = %e, "live notification not published");
            false
        }
    }
}

/// A node showed a live notification to at least one connection of `user`:
/// counts it, and stores it if nobody has yet (from the bus reader: the
/// write runs in its own task).
pub fn delivered_live(store: &Arc<dyn Store>, user: ObjectId, delivery: &Delivery) {
    count("realtime", 1);
    if delivery.stored_at_us != 0 {
        return;
    }
    let Some(n) = from_frame(user, &delivery.frame) else {
        tracing::warn!("a live notification frame could not be read back; not stored");
        return;
    };
    let store = store.clone();
    tokio::spawn(async move {
        match store.insert_notification_once(&n).await {
            Ok(true) => count("stored", 1),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "notification shown live but not stored"),
        }
    });
}

/// The notification a live frame carries, as its user's stored record.
fn from_frame(user: ObjectId, frame: &[u8]) -> Option<Notification> {
    #[derive(Deserialize)]
    struct Envelope {
        data: LiveView,
    }
    let live = serde_json::from_slice::<Envelope>(frame).ok()?.data;
    let Value::Object(data) = live.data else { return None };
    Some(Notification {
        id: ObjectId::parse_str(&live.id).ok()?,
        user_id: user,
        kind: live.kind,
        title: live.title,
        message: live.message,
        data: bson::Document::try_from(data).ok()?,
        created_at: DateTime::parse_from_rfc3339(&live.timestamp).ok()?.with_timezone(&Utc),
        read: false,
        read_at: None,
        delivered_realtime: true,
        external: None,
    })
}

/// Queues one notification for external delivery.
pub async fn enqueue_external(app: &App, notification: &Notification) -> bool {
    enqueue(app, &[notification.id]).await
}

/// Queues notifications for external delivery.
pub async fn enqueue_external_all(app: &App, notifications: &[Notification]) -> bool {
    let ids: Vec<ObjectId> = notifications.iter().map(|n| n.id).collect();
    enqueue(app, &ids).await
}

/// Pushes ids onto [`EXTERNAL_QUEUE`] in one command. If Redis refuses,
/// the notifications stay `pending` in MongoDB for a sweep to find.
async fn enqueue(app: &App, ids: &[ObjectId]) -> bool {
    if ids.is_empty() {
        return true;
    }
    let hex: Vec<String> = ids.iter().map(|id| id.to_hex()).collect();
    let pushed: Result<i64, _> = match app.notifier.redis() {
        Some(redis) => redis.lpush(EXTERNAL_QUEUE, hex).await,
        None => Err(fred::error::Error::new(fred::error::ErrorKind::IO, "not connected")),
    };
    match pushed {
        Ok(_) => {
            count("external", ids.len());
            true
        }
        Err(e) => {
            metrics::counter!("confab_notifications_external_failures_total").increment(ids.len() as u64);
            tracing::warn!(error = %e, "notifications not queued for external delivery; they stay pending");
            false
        }
    }
}

/// A notification as its live frame carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    pub data: Value,
    pub timestamp: String,
}

impl From<&Notification> for LiveView {
    fn from(n: &Notification) -> Self {
        LiveView {
            id: n.id.to_hex(),
            kind: n.kind.clone(),
            title: n.title.clone(),
            message: n.message.clone(),
            data: json_of(&n.data),
            timestamp: rfc3339(&n.created_at),
        }
    }
}

/// A notification as history shows it.
#[derive(Debug, Serialize)]
pub struct NotificationView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    pub data: Value,
    pub timestamp: String,
    pub read: bool,
    pub read_at: Option<String>,
    pub delivered_realtime: bool,
    pub external: Option<String>,
}

impl From<&Notification> for NotificationView {
    fn from(n: &Notification) -> Self {
        NotificationView {
            id: n.id.to_hex(),
            kind: n.kind.clone(),
            title: n.title.clone(),
            message: n.message.clone(),
            data: json_of(&n.data),
            timestamp: rfc3339(&n.created_at),
            read: n.read,
            read_at: n.read_at.as_ref().map(rfc3339),
            delivered_realtime: n.delivered_realtime,
            external: n.external.clone(),
        }
    }
}

fn json_of(data: &bson::Document) -> Value {
    bson::Bson::Document(data.clone()).into_relaxed_extjson()
}

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;
/// Unread notifications are counted up to this (show "999+").
pub const UNREAD_CAP: i64 = 1000;
/// Most ids one `read` call may name.
pub const MAX_READ_IDS: usize = 1000;

/// One page of a user's notifications, newest first: `{"notifications", "has_more"}`.
pub async fn history(app: &App, user: ObjectId, before: Option<ObjectId>, limit: i64) -> Result<Value> {
    let (page, has_more) = app.store.notifications(user, before, limit).await?;
    let views: Vec<NotificationView> = page.iter().map(NotificationView::from).collect();
    Ok(serde_json::json!({ "notifications": views, "has_more": has_more }))
}

/// Marks the user's notifications read: those named, or all. Ids of other
/// users' notifications change nothing. Returns how many changed.
pub async fn mark_read(app: &App, user: ObjectId, ids: Option<Vec<ObjectId>>) -> Result<u64> {
    if ids.as_ref().is_some_and(|ids| ids.len() > MAX_READ_IDS) {
        return Err(Error::invalid("ids", format!("at most {MAX_READ_IDS} per call")));
    }
    if ids.as_ref().is_some_and(Vec::is_empty) {
        return Ok(0);
    }
    Ok(app.store.mark_notifications_read(user, ids.as_deref(), Utc::now()).await?)
}

pub async fn unread_count(app: &App, user: ObjectId) -> Result<i64> {
    Ok(app.store.count_unread_notifications(user, UNREAD_CAP).await?)
}

/// A message on its way to becoming notifications.
struct MessageJob {
    message: Message,
    sender_name: String,
}

/// The node's notification machinery: the queue the send path feeds, the
/// member lists it keeps, and its own Redis connection (preferences cache,
/// external queue).
pub struct Notifier {
    redis: Client,
    jobs: mpsc::Sender<MessageJob>,
    pub audiences: audience::Audiences,
}

/// The receiving end of the notifier's queue, for [`run`].
pub struct Jobs(mpsc::Receiver<MessageJob>);

impl Notifier {
    /// Starts the notifier's Redis connection (without waiting for it).
    pub fn connect(config: &Config) -> std::result::Result<(Notifier, Jobs), String> {
        let mut builder = crate::bus::redis::builder(&config.redis_url, 16).map_err(|e| e.to_string())?;
        builder.with_performance_config(|p| p.default_command_timeout = Duration::from_secs(1));
        let redis = builder.build().map_err(|e| e.to_string())?;
        redis.connect();
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok((Notifier { redis, jobs: tx, audiences: audience::Audiences::default() }, Jobs(rx)))
    }

    /// The Redis client, unless it is known to be disconnected.
    pub(crate) fn redis(&self) -> Option<&Client> {
        self.redis.is_connected().then_some(&self.redis)
    }

    /// Queues a just-published message for notifications; never waits.
    pub fn message_sent(&self, message: &Message, sender_name: &str) {
        let job = MessageJob { message: message.clone(), sender_name: sender_name.to_string() };
        if self.jobs.try_send(job).is_err() {
            metrics::counter!("confab_notifications_dropped_total").increment(1);
        }
    }
}

/// Turns queued messages into notifications, a few at a time, until the
/// node stops.
pub async fn run(app: Arc<App>, jobs: Jobs) {
    let mut jobs = jobs.0;
    if let Some(changes) = app.gateway.registry.watching.changes() {
        tokio::spawn(write_watching(app.clone(), changes));
    }
    let permits = Arc::new(Semaphore::new(WORKERS));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let room = job.message.room_id;
            if let Err(e) = for_message(&app, job).await {
                tracing::warn!(error = %e, room = %room, "message notifications failed");
            }
        });
    }
}

/// Notifies the members of a message's room (see `audience` for which).
async fn for_message(app: &App, job: MessageJob) -> Result<Outcome> {
    let m = &job.message;
    let audience = app.notifier.audiences.of(app, m.room_id).await?;
    let mentions = audience::mentions(&m.content);
    let candidates = audience.candidates(app, m.room_id, m.sender_id, &mentions).await?;
    let ids: Vec<ObjectId> = candidates.iter().map(|(id, _)| *id).collect();
    let holders = holders(app, &ids).await;
    // Leave out first, before any preferences are read, whoever would be
    // shown nothing: every connection watches the room (busy rooms are
    // mostly watched).
    let registry = &app.gateway.registry;
    let (mut kept, mut elsewhere, mut watching) = (Vec::new(), Vec::new(), 0);
    for ((user, addressed), nodes) in candidates.into_iter().zip(holders) {
        match nodes {
            1 if registry.user_topic_held(user) && registry.watches_here(user, m.room_id) => watching += 1,
            1 if !registry.user_topic_held(user) => elsewhere.push((user, addressed, nodes)),
            _ => kept.push((user, addressed, nodes)),
        }
    }
    metrics::counter!("confab_notifications_suppressed_total", "reason" => "watching").increment(watching);
    kept.extend(not_watching(app, m.room_id, elsewhere, |(user, _, _)| *user).await);
    let ids: Vec<ObjectId> = kept.iter().map(|(id, _, _)| *id).collect();
    let prefs = preferences::load_many(app, &ids).await?;
    let now = Utc::now();
    let mut recipients = Vec::with_capacity(kept.len());
    let mut suppressed: HashMap<&'static str, u64> = HashMap::new();
    for (user, addressed, nodes) in kept {
        let wants = prefs.get(&user).map_or(Ok(()), |p| preferences::check(p, m.room_id, addressed, now));
        match wants {
            Ok(()) => recipients.push((user, nodes)),
            Err(why) => *suppressed.entry(why.label()).or_default() += 1,
        }
    }
    for (reason, n) in suppressed {
        metrics::counter!("confab_notifications_suppressed_total", "reason" => reason).increment(n);
    }
    let content = message_content(m, &job.sender_name, &audience);
    deliver(app, recipients, &content, Route::OutsideRoom(m.room_id)).await
}

fn message_content(m: &Message, sender_name: &str, audience: &audience::Audience) -> Content {
    let title = match audience.kind {
        RoomKind::Direct => sender_name.to_string(),
        _ => format!("New message from {sender_name} in #{}", audience.room_name),
    };
    Content {
        kind: "new_message".into(),
        title,
        message: preview(&m.content),
        data: bson::doc! {
            "room_id": m.room_id.to_hex(),
            "message_id": m.id.to_hex(),
            "sender_id": m.sender_id.to_hex(),
        },
    }
}

/// The first [`PREVIEW_CHARS`] characters, with an ellipsis if cut.
pub fn preview(content: &str) -> String {
    match content.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", content[..cut].trim_end()),
        None => content.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_cut_long_messages_at_a_character_boundary() {
        assert_eq!(preview("hello"), "hello");
        let exact = "é".repeat(PREVIEW_CHARS);
        assert_eq!(preview(&exact), exact);
        let long = format!("{} tail", "é".repeat(PREVIEW_CHARS));
        assert_eq!(preview(&long), format!("{exact}…"));
    }

    #[test]
    fn live_frames_read_back_into_the_same_notification() {
        let content = Content {
            kind: "new_message".into(),
            title: "New message from alice in #general".into(),
            message: "hi @bob".into(),
            data: bson::doc! {"room_id": "r", "n": 3, "nested": {"ok": true}},
        };
        let user = ObjectId::new();
        let n = content.notification(user, ObjectId::new(), Utc::now());
        let frame = LiveFrame::new(&content, n.created_at).with_id(n.id);
        assert_eq!(frame, protocol::event("notification", None, None, LiveView::from(&n)), "patched = encoded");
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["type"], "notification");
        assert_eq!(v["data"]["type"], "new_message");
        assert_eq!(v["data"]["data"]["nested"]["ok"], true);
        let back = from_frame(user, &frame).unwrap();
        assert_eq!((back.id, back.user_id, &back.title, &back.data), (n.id, user, &n.title, &n.data));
        assert_eq!(back.created_at.timestamp_millis(), n.created_at.timestamp_millis());
        assert!(back.delivered_realtime && back.external.is_none() && !back.read);
        assert!(from_frame(user, b"{\"data\":{}}").is_none());
    }
}

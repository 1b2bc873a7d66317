//! Notifications: telling users about what they are not watching.
//!
//! - `messages`: from a sent message to its recipients — the room's
//!   `audience` (members, with usernames for @mentions, kept per node),
//!   minus those who would be shown nothing, filtered by `preferences`
//!   (stored in MongoDB, cached in Redis).
//! - `delivery`: storing notifications and showing them live, through the
//!   bus or straight from the local registry.
//! - `external`: the queue of notifications for users with no connection.
//! - `watching`: hints that a user watches a room on every connection.
//! - `online`: whether a user has a connection on any node.
//! - `reach`: where a room's members can be reached (nodes holding them,
//!   hints), kept per room on the dispatching node.
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
//!   somewhere (`Notifier::store_shown`; the id makes a second node's store a
//!   no-op). A user whose every connection watches the room gets nothing
//!   stored: they saw the message. Server API notifications have no room:
//!   they are stored for everyone first, then shown on every connection.
//!   A user whose connections are all on the dispatching node is served
//!   there directly, without the bus; users who watch the room on every
//!   connection are left out before their preferences are even read. Which
//!   users those are comes from the room's `reach`, which the dispatching
//!   node keeps until a change is announced.
//! - **external**, for a user with no connection (or whose last one closed
//!   between the check and the publish): stored with `external: "pending"`
//!   and its id pushed onto the Redis list `Keyspace::external_notifications` for whatever
//!   delivers push or email (docs/api.md, "The external queue").

pub mod audience;
pub mod delivery;
pub mod external;
mod messages;
pub mod online;
pub mod preferences;
pub mod reach;
pub mod server;
mod watching;

pub use messages::{preview, PREVIEW_CHARS};

use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use fred::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError};
use crate::cache::Cache;
use crate::clock::rfc3339;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fanout::{Registry, Shown};
use crate::keyspace::Keyspace;
use crate::store::{Message, Notification, Store};
use crate::tasks::Tasks;

/// Messages waiting to become notifications, per node; beyond, they are
/// dropped (and counted) rather than slow the send path or grow memory.
const QUEUE: usize = 10_000;
/// Messages turned into notifications at once, per node.
const WORKERS: usize = 8;

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
#[derive(Debug, Default, Clone, Copy, Serialize, utoipa::ToSchema)]
#[schema(as = NotifyCounts)]
pub struct Outcome {
    /// Users notified (each once).
    pub notified: usize,
    /// Of those, the ones shown the notification on a connection.
    pub delivered_realtime: usize,
    /// Of those, the ones without a connection: queued for external delivery.
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

/// A notification as its live frame carries it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = LiveNotification)]
pub struct LiveView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    #[schema(value_type = Object)]
    pub data: Value,
    #[schema(format = DateTime)]
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

/// A notification as history shows it: the live frame's fields and its state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Notification)]
pub struct NotificationView {
    #[serde(flatten)]
    pub live: LiveView,
    pub read: bool,
    #[schema(format = DateTime)]
    pub read_at: Option<String>,
    /// Shown on a connection (or, from a backend, the user had one when it was sent).
    pub delivered_realtime: bool,
    /// `pending` while queued for external delivery, then what its consumer
    /// records; null when not needed.
    pub external: Option<String>,
}

/// One page of a user's notifications, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationPage {
    pub notifications: Vec<NotificationView>,
    /// Older notifications exist: pass the last id as `before`.
    pub has_more: bool,
}

impl From<&Notification> for NotificationView {
    fn from(n: &Notification) -> Self {
        NotificationView {
            live: LiveView::from(n),
            read: n.read,
            read_at: n.read_at.as_ref().map(rfc3339),
            delivered_realtime: n.delivered_realtime,
            external: n.external.clone(),
        }
    }
}

/// Makes room for `room` in a per-room map bounded to `cap` rooms: when
/// the map is full and `room` is not in it, takes out another room's entry
/// and returns it.
fn make_room<V>(map: &dashmap::DashMap<ObjectId, V>, cap: usize, room: ObjectId) -> Option<(ObjectId, V)> {
    if map.len() < cap || map.contains_key(&room) {
        return None;
    }
    let any = map.iter().next().map(|e| *e.key())?;
    map.remove(&any)
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

impl Notifier {
    /// One page of a user's notifications, newest first: `{"notifications", "has_more"}`.
    pub async fn history(&self, user: ObjectId, before: Option<ObjectId>, limit: i64) -> Result<Value> {
        let (page, has_more) = self.store.notifications(user, before, limit).await?;
        let notifications = page.iter().map(NotificationView::from).collect();
        Ok(serde_json::json!(NotificationPage { notifications, has_more }))
    }

    /// Marks the user's notifications read: those named, or all. Ids of other
    /// users' notifications change nothing. Returns how many changed.
    pub async fn mark_read(&self, user: ObjectId, ids: Option<Vec<ObjectId>>) -> Result<u64> {
        if ids.as_ref().is_some_and(|ids| ids.len() > MAX_READ_IDS) {
            return Err(Error::invalid("ids", format!("at most {MAX_READ_IDS} per call")));
        }
        if ids.as_ref().is_some_and(Vec::is_empty) {
            return Ok(0);
        }
        Ok(self.store.mark_notifications_read(user, ids.as_deref(), Utc::now()).await?)
    }

    pub async fn unread_count(&self, user: ObjectId) -> Result<i64> {
        Ok(self.store.count_unread_notifications(user, UNREAD_CAP).await?)
    }
}

/// A message on its way to becoming notifications.
struct MessageJob {
    message: Message,
    sender_name: String,
}

/// The node's notification machinery: the queue the send path feeds, the
/// member lists and reach it keeps, and its own Redis connections
/// (preferences cache, external queue; reach changes).
pub struct Notifier {
    redis: Client,
    jobs: mpsc::Sender<MessageJob>,
    pub audiences: audience::Audiences,
    pub reach: reach::Reach,
    store: Arc<Store>,
    bus: Arc<Bus>,
    cache: Cache,
    /// Who is connected here, and the watching hints this node makes.
    registry: Arc<Registry>,
    keys: Keyspace,
    stop: CancellationToken,
    tasks: Tasks,
}

/// The receiving end of the notifier's queue, for [`run`].
pub struct Jobs(mpsc::Receiver<MessageJob>);

impl Notifier {
    /// Starts the notifier's Redis connection (without waiting for it).
    pub fn connect(
        config: &Config,
        store: Arc<Store>,
        bus: Arc<Bus>,
        cache: Cache,
        registry: Arc<Registry>,
        stop: CancellationToken,
    ) -> std::result::Result<(Notifier, Jobs), BusError> {
        let mut builder = config.redis.builder(16)?;
        builder.with_performance_config(|p| p.default_command_timeout = Duration::from_secs(1));
        let redis = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        redis.connect();
        subscriber.connect();
        let (tx, rx) = mpsc::channel(QUEUE);
        let reach = reach::Reach::new(subscriber);
        let notifier = Notifier {
            redis,
            jobs: tx,
            audiences: audience::Audiences::default(),
            reach,
            store,
            bus,
            cache,
            registry,
            keys: config.keys.clone(),
            stop,
            tasks: Tasks::new(),
        };
        Ok((notifier, Jobs(rx)))
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

impl Notifier {
    /// Starts the notifier's tasks: the dispatchers that turn queued
    /// messages into notifications, the writer of this node's watching
    /// hints, the listener for reach changes, and the keeper of what the
    /// fan-out showed here (`shown`). They run until [`shutdown`](Self::shutdown).
    pub fn start(self: &Arc<Self>, jobs: Jobs, shown: mpsc::UnboundedReceiver<Shown>) {
        if let Some(changes) = self.registry.watching.changes() {
            self.tasks.spawn(self.clone().write_watching(changes));
        }
        self.tasks.spawn(self.clone().listen_reach());
        self.tasks.spawn(self.clone().dispatch_jobs(jobs));
        self.tasks.spawn(self.clone().store_shown(shown));
    }

    /// Turns queued messages into notifications, a few at a time.
    async fn dispatch_jobs(self: Arc<Self>, jobs: Jobs) {
        let mut jobs = jobs.0;
        let permits = Arc::new(Semaphore::new(WORKERS));
        loop {
            let job = tokio::select! {
                _ = self.stop.cancelled() => return,
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => return,
                },
            };
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let notifier = self.clone();
            self.tasks.spawn(async move {
                let _permit = permit;
                let room = job.message.room_id;
                if let Err(e) = notifier.for_message(job).await {
                    tracing::warn!(error = %e, room = %room, "message notifications failed");
                }
            });
        }
    }

    /// Stops every task, letting dispatches in flight finish (briefly).
    pub async fn shutdown(&self) {
        self.stop.cancel();
        if !self.tasks.stop(std::time::Duration::from_secs(2)).await {
            tracing::warn!("notification tasks cut off at shutdown");
        }
        let _ = tokio::join!(self.redis.quit(), self.reach.shutdown());
    }
}

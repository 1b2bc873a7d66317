//! Presence: whether a user is online, away, busy or offline, when they were
//! last seen, and telling the people who care when that changes.
//!
//! A user is online while any of their connections on any node is open. The
//! [`Tracker`] (Redis, see [`redis`]) counts connections per user across the
//! cluster; only the first connection and the last disconnection change
//! anything, so a node needs no knowledge of the others. A closed
//! connection stays counted for a grace period, so a client that reconnects
//! at once (a network blip, a node restart behind the load balancer) never
//! flickers offline. An explicit status (away, busy) outlives connections;
//! the effective status is offline without a connection, else the explicit
//! one, else online.
//!
//! A node that dies cannot take its connections out; its heartbeat stops,
//! and the other nodes sweep them (see [`heartbeat`]). A node that loses
//! Redis for a while repairs its entries when Redis is back.
//!
//! Changes are announced as `presence` frames to the user's contacts (their
//! user topics) and to the subscribers of every room the user is a member of
//! (skipping the user's own connections). Announcing reads the audience from
//! the store, so it runs off the connect path, in batches (see [`announcer`]).

pub mod announcer;
mod heartbeat;
pub mod redis;

pub use redis::Tracker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::oid::ObjectId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::fanout::ConnId;
use crate::store::Store;
use crate::tasks::Tasks;

/// Most ids one bulk lookup may ask about.
pub const MAX_LOOKUP: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = PresenceStatus)]
pub enum Status {
    Online,
    Away,
    Busy,
    Offline,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
            Status::Busy => "busy",
            Status::Offline => "offline",
        }
    }

    /// A status a user may choose (`set_status`): offline is not one of
    /// them, it follows from having no connection.
    pub fn settable(raw: &str) -> Result<Status> {
        match raw {
            "online" => Ok(Status::Online),
            "away" => Ok(Status::Away),
            "busy" => Ok(Status::Busy),
            _ => Err(Error::invalid("status", "must be \"online\", \"away\" or \"busy\"")),
        }
    }

    /// An explicit status as stored; anything else means none.
    pub fn explicit(raw: &str) -> Option<Status> {
        match raw {
            "away" => Some(Status::Away),
            "busy" => Some(Status::Busy),
            _ => None,
        }
    }
}

/// What the tracker knows about one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// Whether any connection of the user is counted (open, or in its grace period).
    pub connected: bool,
    /// Away or busy, if the user chose it.
    pub explicit: Option<Status>,
    /// When the user last connected or went offline, Unix ms.
    pub last_seen_ms: Option<i64>,
}

impl State {
    pub fn status(&self) -> Status {
        match (self.connected, self.explicit) {
            (false, _) => Status::Offline,
            (true, Some(s)) => s,
            (true, None) => Status::Online,
        }
    }
}

/// A user's presence as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Presence)]
pub struct PresenceView {
    pub user_id: String,
    pub status: Status,
    /// When the user last connected or went offline; null if never.
    #[schema(format = DateTime)]
    pub last_seen: Option<String>,
}

impl PresenceView {
    pub fn new(user: ObjectId, state: &State) -> Self {
        let last_seen =
            state.last_seen_ms.and_then(chrono::DateTime::from_timestamp_millis).map(|t| crate::clock::rfc3339(&t));
        PresenceView { user_id: user.to_hex(), status: state.status(), last_seen }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    #[error("presence: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("presence: {0}")]
    Setup(#[from] crate::backend::redis::RedisError),
    /// Redis answered something this node did not ask for.
    #[error("presence: {0}")]
    Reply(String),
}

/// What the announcement gate says of a change of status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// It is the status last announced: nothing to tell anyone.
    Unchanged,
    /// Announce it now.
    Now,
    /// The user's last announcement was less than the interval ago: ask
    /// again after this long, with the status they have then.
    After(Duration),
}

/// The least time between two announcements of one user's presence.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// One connection as the tracker counts it.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    pub node: &'a str,
    pub conn: ConnId,
    pub user: ObjectId,
}

/// The node's presence keeper, one per node.
pub struct Presence {
    tracker: Arc<Tracker>,
    node: String,
    grace: Duration,
    heartbeat: Duration,
    ttl: Duration,
    /// This node's counted connections (open, or in their grace period):
    /// what a repair writes back after Redis lost them or missed a change.
    local: Mutex<HashMap<ConnId, ObjectId>>,
    /// Set when a tracker call failed; the next heartbeat repairs. Starts
    /// set, so that the first heartbeat clears what an earlier run under
    /// the same node id left behind.
    dirty: AtomicBool,
    /// Cancelled at shutdown: ends the heartbeat and every grace period.
    stop: CancellationToken,
    /// The heartbeat, the second looks and the grace timers.
    tasks: Tasks,
    /// Connects and disconnects wait here to be announced, in batches.
    announcer: announcer::Announcer,
    bus: Arc<Bus>,
    /// Where announcements read their audience (contacts and rooms).
    store: Arc<Store>,
}

impl Presence {
    pub fn new(
        tracker: Arc<Tracker>,
        bus: Arc<Bus>,
        store: Arc<Store>,
        config: &crate::config::Config,
        stop: CancellationToken,
    ) -> Self {
        Presence {
            tracker,
            node: config.node_id.clone(),
            grace: config.presence_grace,
            heartbeat: config.node_heartbeat,
            ttl: config.node_ttl,
            local: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(true),
            stop,
            tasks: Tasks::new(),
            announcer: announcer::Announcer::default(),
            bus,
            store,
        }
    }

    fn connection(&self, conn: ConnId, user: ObjectId) -> Connection<'_> {
        Connection { node: &self.node, conn, user }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, ObjectId>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes a failed tracker call; the connect or disconnect goes on.
    fn failed(&self, what: &'static str, e: &TrackerError) {
        metrics::counter!("confab_presence_errors_total", "op" => what).increment(1);
        tracing::warn!(error = %e, op = what, "presence not updated; repaired once Redis answers");
        self.dirty.store(true, Ordering::Relaxed);
    }
}

impl Presence {
    /// Starts the node's heartbeat and sweeper, and the announcer's second
    /// looks; they run until [`shutdown`](Self::shutdown).
    pub fn start(self: &Arc<Self>) {
        self.tasks.spawn(self.clone().heartbeat());
        self.tasks.spawn(self.clone().run_later());
    }

    /// A chat connection opened. Never fails: without Redis the user's
    /// presence is repaired later.
    pub async fn connected(self: &Arc<Self>, user: ObjectId, conn: ConnId) {
        self.local().insert(conn, user);
        match self.tracker.connect(self.connection(conn, user), now_ms()).await {
            Ok(Some(state)) => self.push(user, state),
            Ok(None) => {}
            Err(e) => self.failed("connect", &e),
        }
    }

    /// A chat connection closed: after the grace period, it stops counting.
    pub fn disconnected(self: &Arc<Self>, user: ObjectId, conn: ConnId) {
        let presence = self.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                // Shutting down: `shutdown` retires all of the node's connections.
                _ = presence.stop.cancelled() => return,
                _ = tokio::time::sleep(presence.grace) => {}
            }
            presence.local().remove(&conn);
            match presence.tracker.disconnect(presence.connection(conn, user), now_ms()).await {
                Ok(Some(state)) => presence.push(user, state),
                Ok(None) => {}
                Err(e) => presence.failed("disconnect", &e),
            }
        });
    }

    /// `set_status` from one of the user's connections. Announced before it
    /// returns, so that the acknowledgement follows the announcement.
    pub async fn set_status(&self, user: ObjectId, raw: &str) -> Result<PresenceView> {
        let status = Status::settable(raw)?;
        let explicit = (status != Status::Online).then_some(status);
        let (before, after) = self.tracker.set_status(user, explicit).await.map_err(unavailable)?;
        if before.status() != after.status() {
            self.announce(vec![(user, after)]).await;
        }
        Ok(PresenceView::new(user, &after))
    }

    /// Whether `user` may open another socket under a cap of `max` (0: no
    /// cap). Without Redis, yes: the cap is a guard, not worth an outage.
    pub async fn may_connect(&self, user: ObjectId, max: u32) -> Result<()> {
        if max == 0 {
            return Ok(());
        }
        match self.tracker.connection_count(user).await {
            Ok(n) if n >= max as usize => Err(Error::TooMany {
                code: "too_many_connections",
                message: format!("at most {max} simultaneous connections per user; close one first"),
            }),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "connection cap not checked");
                Ok(())
            }
        }
    }

    /// The presence of each of `users`, in order. Unknown users are offline
    /// and were never seen.
    pub async fn lookup(&self, users: &[ObjectId]) -> Result<Vec<PresenceView>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let states = self.tracker.states(users).await.map_err(unavailable)?;
        Ok(users.iter().zip(&states).map(|(u, s)| PresenceView::new(*u, s)).collect())
    }

    /// Stops the heartbeat, the grace timers and the second looks, then
    /// takes all of the node's connections out at once and announces who
    /// went offline: a node that stops cleanly does not wait to be swept.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        // Not waited out for long: with Redis slow the heartbeat could be
        // mid-way through a repair, and is then cut off. Its commands already
        // sent run before ours (one client, in order), so no heartbeat
        // follows the retirement.
        if !self.tasks.stop(Duration::from_secs(2)).await {
            tracing::warn!("presence tasks cut off at shutdown");
        }
        self.local().clear();
        match tokio::time::timeout(Duration::from_secs(5), self.tracker.retire(&self.node, now_ms())).await {
            Ok(Ok(users)) => self.announce_offline(users).await,
            Ok(Err(e)) => tracing::warn!(error = %e, "presence not retired; the other nodes will sweep it"),
            Err(_) => tracing::warn!("presence retirement timed out; the other nodes will sweep it"),
        }
    }

    /// Announces that each of `users` went offline (after a sweep).
    async fn announce_offline(&self, users: Vec<ObjectId>) {
        if users.is_empty() {
            return;
        }
        let states = match self.tracker.states(&users).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "swept users' presence not announced");
                return;
            }
        };
        self.announce(users.into_iter().zip(states).collect()).await;
    }
}

fn unavailable(e: TrackerError) -> Error {
    tracing::warn!(error = %e, "presence unavailable");
    Error::Unavailable("presence is unavailable, try again".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_status() {
        let mut s = State::default();
        assert_eq!(s.status(), Status::Offline);
        s.explicit = Some(Status::Away);
        assert_eq!(s.status(), Status::Offline, "away without a connection is offline");
        s.connected = true;
        assert_eq!(s.status(), Status::Away);
        s.explicit = None;
        assert_eq!(s.status(), Status::Online);
    }

    #[test]
    fn only_online_away_and_busy_are_settable() {
        assert_eq!(Status::settable("busy").unwrap(), Status::Busy);
        for bad in ["offline", "Online", "", "dnd"] {
            let e = Status::settable(bad).unwrap_err();
            assert_eq!((e.status().as_u16(), e.public_message().starts_with("status:")), (422, true), "{bad}");
        }
    }

    #[test]
    fn views_carry_rfc3339_last_seen() {
        let user = ObjectId::new();
        let v =
            PresenceView::new(user, &State { connected: true, explicit: None, last_seen_ms: Some(1_795_554_095_663) });
        assert_eq!(v.last_seen.as_deref(), Some("2026-11-24T21:01:35.663Z"));
        assert_eq!(serde_json::to_value(&v).unwrap()["status"], "online");
        assert!(PresenceView::new(user, &State::default()).last_seen.is_none());
    }
}

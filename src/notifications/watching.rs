//! Watching hints in Redis (see `gateway::watching` for how nodes make and
//! withdraw them): read by dispatchers to skip users who watch a room on
//! every connection, written by each node for its own users.

use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;
use tokio::sync::mpsc;

use crate::gateway::watching::Change;
use crate::node::App;

/// How long a watching hint lives unless refreshed: the longest a lost
/// withdrawal can silence a user's notifications about one room.
const WATCHING_TTL_MS: i64 = 10_000;

/// How often a node refreshes its standing hints (in one pipeline): well
/// within their expiry, so a busy room's watchers cost no notification
/// publishes at all.
const REFRESH: Duration = Duration::from_secs(3);

fn watching_key(room: ObjectId, user: ObjectId) -> String {
    format!("confab:nw:{}:{}", room.to_hex(), user.to_hex())
}

/// Leaves out the users (held by one other node) that node says watch
/// `room` on every connection: one `MGET`; without Redis, nobody is left out.
pub(super) async fn not_watching<T>(
    app: &App,
    room: ObjectId,
    users: Vec<T>,
    user_of: impl Fn(&T) -> ObjectId,
) -> Vec<T> {
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
pub(super) async fn write_watching(app: Arc<App>, mut changes: mpsc::UnboundedReceiver<Change>) {
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            change = changes.recv() => match change {
                Some(c) => c,
                None => return,
            },
            _ = refresh.tick() => {
                // Queued behind the changes already made, in order.
                app.gateway.registry.watching.refresh();
                continue;
            }
        };
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

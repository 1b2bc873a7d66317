//! Watching hints in Redis (see `gateway::watching` for how nodes make and
//! withdraw them): read by dispatchers to skip users who watch a room on
//! every connection, written by each node for its own users.
//!
//! A room's hints are one sorted set, `confab:nw:<room>`: a member per
//! user, scored with the moment (Unix ms) the hint lapses unless renewed.
//! A node renews all its hints for a room with one `ZADD`, and a dispatcher
//! reads a message's audience with one `ZMSCORE`; a hint whose node died
//! lapses by its score and is swept out by the next write to the room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;
use tokio::sync::mpsc;

use crate::clock::now_ms;
use crate::gateway::watching::Change;
use crate::node::App;

/// How long a watching hint lives unless refreshed: the longest a lost
/// withdrawal can silence a user's notifications about one room.
const WATCHING_TTL_MS: i64 = 10_000;

/// How often a node refreshes its standing hints (in one pipeline): well
/// within their expiry, so a busy room's watchers cost no notification
/// publishes at all.
const REFRESH: Duration = Duration::from_secs(3);

/// Changes written at once; and most users named by one command.
const BATCH: usize = 4096;
const PER_COMMAND: usize = 1024;

fn watching_key(room: ObjectId) -> String {
    format!("confab:nw:{}", room.to_hex())
}

/// Leaves out the users (held by one other node) that node says watch
/// `room` on every connection: one `ZMSCORE`; without Redis, nobody is left
/// out.
pub(super) async fn not_watching<T>(
    app: &App,
    room: ObjectId,
    users: Vec<T>,
    user_of: impl Fn(&T) -> ObjectId,
) -> Vec<T> {
    let Some(redis) = app.notifier.redis().filter(|_| !users.is_empty()) else { return users };
    let members: Vec<String> = users.iter().map(|u| user_of(u).to_hex()).collect();
    let lapses: Vec<Option<f64>> = redis.zmscore(watching_key(room), members).await.unwrap_or_default();
    if lapses.len() != users.len() {
        return users;
    }
    let now = now_ms() as f64;
    let before = users.len();
    let left: Vec<T> =
        users.into_iter().zip(lapses).filter(|(_, lapse)| lapse.is_none_or(|at| at <= now)).map(|(u, _)| u).collect();
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
        while batch.len() < BATCH {
            match changes.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // Without Redis a note is lost (fine) or a withdrawal is (it lapses).
        let Some(redis) = app.notifier.redis() else { continue };
        let pipeline = redis.pipeline();
        let now = now_ms();
        let lapse = (now + WATCHING_TTL_MS) as f64;
        for (room, users) in by_room(batch) {
            let key = watching_key(room);
            let (noted, ended): (Vec<_>, Vec<_>) = users.into_iter().partition(|(_, watching)| *watching);
            for chunk in noted.chunks(PER_COMMAND) {
                let values: Vec<(f64, String)> = chunk.iter().map(|(u, _)| (lapse, u.to_hex())).collect();
                let _: FredResult<()> = pipeline.zadd(&key, None, None, false, false, values).await;
            }
            for chunk in ended.chunks(PER_COMMAND) {
                let users: Vec<String> = chunk.iter().map(|(u, _)| u.to_hex()).collect();
                let _: FredResult<()> = pipeline.zrem(&key, users).await;
            }
            // Sweep out hints of nodes that stopped renewing them; the key
            // lives as long as some node keeps writing to it.
            let _: FredResult<()> = pipeline.zremrangebyscore(&key, "-inf", now as f64).await;
            let _: FredResult<()> = pipeline.pexpire(&key, WATCHING_TTL_MS, None).await;
        }
        if let Err(e) = pipeline.all::<fred::types::Value>().await {
            tracing::debug!(error = %e, "watching hints not written");
        }
    }
}

/// The net effect of a batch of changes per room: for each user, whether
/// their last change noted (true) or withdrew (false) the hint.
fn by_room(batch: Vec<Change>) -> HashMap<ObjectId, Vec<(ObjectId, bool)>> {
    let mut last: HashMap<ObjectId, HashMap<ObjectId, bool>> = HashMap::new();
    for change in batch {
        let (room, user, watching) = match change {
            Change::Watching { user, room } => (room, user, true),
            Change::Ended { user, room } => (room, user, false),
        };
        last.entry(room).or_default().insert(user, watching);
    }
    last.into_iter().map(|(room, users)| (room, users.into_iter().collect())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_each_users_last_change_per_room() {
        let (r1, r2, u1, u2) = (ObjectId::new(), ObjectId::new(), ObjectId::new(), ObjectId::new());
        let batch = vec![
            Change::Watching { user: u1, room: r1 },
            Change::Watching { user: u2, room: r1 },
            Change::Ended { user: u1, room: r1 },
            Change::Ended { user: u2, room: r2 },
            Change::Watching { user: u2, room: r2 },
            Change::Watching { user: u1, room: r2 },
        ];
        let mut got: Vec<(ObjectId, ObjectId, bool)> =
            by_room(batch).into_iter().flat_map(|(r, users)| users.into_iter().map(move |(u, w)| (r, u, w))).collect();
        got.sort();
        let mut want = vec![(r1, u1, false), (r1, u2, true), (r2, u2, true), (r2, u1, true)];
        want.sort();
        assert_eq!(got, want);
    }
}

//! Watching hints in Redis (see `fanout::watching` for how nodes make and
//! withdraw them): read by dispatchers to skip users who watch a room on
//! every connection, written by each node for its own users.
//!
//! A room's hints are one sorted set, `confab:nw:<room>`: a member per
//! user, scored with the moment (Unix ms) the hint lapses unless renewed.
//! A node renews all its hints for a room with one `ZADD`, and a dispatcher
//! reads a room's with one `ZMSCORE` when it learns the room's `reach`; a
//! hint whose node died lapses by its score and is swept out by the next
//! write to the room. The writer also announces, after writing them, the
//! users whose reach changed: a hint made or withdrawn, or their topic
//! taken up or dropped by this node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;
use tokio::sync::mpsc;

use super::reach;
use super::Notifier;
use crate::clock::now_ms;
use crate::fanout::watching::Change;

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

impl Notifier {
    /// When each user's hint in `room` lapses (Unix ms; `None`: no hint), in
    /// one `ZMSCORE`; `None` without an answer from Redis.
    pub(super) async fn lapses(&self, room: ObjectId, users: &[ObjectId]) -> Option<Vec<Option<i64>>> {
        let redis = self.redis()?;
        let members: Vec<String> = users.iter().map(|u| u.to_hex()).collect();
        let lapses: Vec<Option<f64>> = redis.zmscore(self.keys.watching(room), members).await.ok()?;
        (lapses.len() == users.len()).then(|| lapses.into_iter().map(|l| l.map(|at| at as i64)).collect())
    }
}

impl Notifier {
    /// Writes this node's watching notes to Redis, in the order they were
    /// made, until the node stops.
    pub(super) async fn write_watching(self: Arc<Self>, mut changes: mpsc::UnboundedReceiver<Change>) {
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                _ = self.stop.cancelled() => return,
                change = changes.recv() => match change {
                    Some(c) => c,
                    None => return,
                },
                _ = refresh.tick() => {
                    // Queued behind the changes already made, in order.
                    self.registry.watching.refresh();
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
            // Without Redis a note is lost (fine) or a withdrawal is (it
            // lapses), and so is the announcement (dispatchers lose their
            // subscription too, and forget).
            let Some(redis) = self.redis() else { continue };
            let pipeline = redis.pipeline();
            let now = now_ms();
            let lapse = (now + WATCHING_TTL_MS) as f64;
            let changed = reach_changed(&batch);
            for (room, users) in by_room(batch) {
                let key = self.keys.watching(room);
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
            // After the changes themselves, so a dispatcher that hears of them
            // reads them.
            if !changed.is_empty() {
                let _: FredResult<()> = pipeline.publish(self.keys.reach_channel(), reach::payload(&changed)).await;
            }
            if let Err(e) = pipeline.all::<fred::types::Value>().await {
                tracing::debug!(error = %e, "watching hints not written");
            }
        }
    }
}

/// The users whose reach a batch changes (renewals change nothing), once each.
fn reach_changed(batch: &[Change]) -> Vec<ObjectId> {
    let mut users: Vec<ObjectId> = batch
        .iter()
        .filter_map(|c| match *c {
            Change::Watching { user, .. } | Change::Ended { user, .. } | Change::Holders { user } => Some(user),
            Change::Renewed { .. } => None,
        })
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// The net effect of a batch of changes per room: for each user, whether
/// their last change noted (true) or withdrew (false) the hint.
fn by_room(batch: Vec<Change>) -> HashMap<ObjectId, Vec<(ObjectId, bool)>> {
    let mut last: HashMap<ObjectId, HashMap<ObjectId, bool>> = HashMap::new();
    for change in batch {
        let (room, user, watching) = match change {
            Change::Watching { user, room } | Change::Renewed { user, room } => (room, user, true),
            Change::Ended { user, room } => (room, user, false),
            Change::Holders { .. } => continue,
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
            Change::Holders { user: u2 },
            Change::Renewed { user: u1, room: r2 },
        ];
        let mut changed = vec![u1, u2];
        changed.sort();
        assert_eq!(reach_changed(&batch), changed);
        assert_eq!(reach_changed(&[Change::Renewed { user: u1, room: r1 }]), [], "a renewal changes no reach");
        let mut got: Vec<(ObjectId, ObjectId, bool)> =
            by_room(batch).into_iter().flat_map(|(r, users)| users.into_iter().map(move |(u, w)| (r, u, w))).collect();
        got.sort();
        let mut want = vec![(r1, u1, false), (r1, u2, true), (r2, u2, true), (r2, u1, true)];
        want.sort();
        assert_eq!(got, want);
    }
}

//! Read-through cache in Redis for what clients read most: a user's room list
//! (with unread counts) and the newest page of each room's history.
//!
//! Freshness comes from versions, not from deleting entries. Every write that
//! changes what an entry shows bumps a version counter in Redis (`INCR`)
//! after the MongoDB write and before the write is acknowledged:
//! - `room` versions: new, edited or deleted messages in the room;
//! - `user` versions: the user's memberships and cursors;
//! - `members` versions: who is in a room (notifications keep member lists);
//! - the `public` version: the set of public rooms.
//!
//! A reader reads the versions *before* it reads MongoDB and stores the entry
//! tagged with them; an entry is served only while every tag is still
//! current. So an entry computed from data older than a write can never be
//! served after that write's bump, however the reader and the writer
//! interleave, on whichever nodes. A bump costs one round trip, however many
//! users see the room.
//!
//! Redis trouble never fails a request: reads fall back to MongoDB. A bump
//! that fails is retried in the background until Redis answers, and until
//! then this node serves nothing from the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use bson::oid::ObjectId;
use fred::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::keyspace::Keyspace;

/// A version counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    Room(ObjectId),
    User(ObjectId),
    PublicRooms,
    /// Who is in the room.
    Members(ObjectId),
}

impl Version {
    fn key(self, keys: &Keyspace) -> String {
        match self {
            Version::Room(id) => keys.version_room(id),
            Version::User(id) => keys.version_user(id),
            Version::PublicRooms => keys.version_public_rooms(),
            Version::Members(id) => keys.version_members(id),
        }
    }
}

/// Which cached value.
#[derive(Debug, Clone, Copy)]
pub enum Entry {
    /// A user's room list.
    Rooms(ObjectId),
    /// The newest page of a room's history.
    History(ObjectId),
}

/// Hits and lookups per kind of entry, for the hit-ratio gauge.
static HIT_COUNTS: [[AtomicU64; 2]; 2] =
    [[AtomicU64::new(0), AtomicU64::new(0)], [AtomicU64::new(0), AtomicU64::new(0)]];

impl From<Entry> for usize {
    fn from(e: Entry) -> usize {
        match e {
            Entry::Rooms(_) => 0,
            Entry::History(_) => 1,
        }
    }
}

impl Entry {
    fn key(self, keys: &Keyspace) -> String {
        match self {
            Entry::Rooms(id) => keys.cached_rooms(id),
            Entry::History(id) => keys.cached_history(id),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Entry::Rooms(_) => "rooms",
            Entry::History(_) => "history",
        }
    }
}

/// Changes of a room's members kept in its log, at most.
const MEMBERS_LOG_LEN: i64 = 64;
/// How long a log outlives its last change.
const MEMBERS_LOG_TTL_MS: i64 = 3_600_000;

/// Bumps a members version and appends `<version>|<change>` to the room's
/// log, trimmed to its newest entries.
const MEMBERS_BUMP: &str = r#"
local v = redis.call('INCR', KEYS[1])
redis.call('RPUSH', KEYS[2], v .. '|' .. ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return v
"#;

/// One user joining (true) or leaving (false) a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberChange {
    pub user: ObjectId,
    pub joined: bool,
}

impl MemberChange {
    /// `+<hex>` for each user who joined, `-<hex>` for each who left, comma-separated.
    fn encode(joined: &[ObjectId], left: &[ObjectId]) -> String {
        let signed =
            joined.iter().map(|u| format!("+{}", u.to_hex())).chain(left.iter().map(|u| format!("-{}", u.to_hex())));
        signed.collect::<Vec<_>>().join(",")
    }

    /// The changes that took a room's members from version `from` to `to`,
    /// in order; `None` unless the log holds every version in between.
    pub fn between(log: &[String], from: i64, to: i64) -> Option<Vec<MemberChange>> {
        let mut entries: Vec<(i64, &str)> = log
            .iter()
            .filter_map(|e| {
                let (v, change) = e.split_once('|')?;
                Some((v.parse().ok()?, change))
            })
            .filter(|(v, _)| *v > from && *v <= to)
            .collect();
        entries.sort_by_key(|(v, _)| *v);
        entries.dedup_by_key(|(v, _)| *v);
        if from >= to || entries.len() as i64 != to - from {
            return None;
        }
        let mut out = Vec::new();
        for (_, change) in entries {
            for signed in change.split(',').filter(|s| !s.is_empty()) {
                let (joined, hex) = match signed.split_at(1) {
                    ("+", hex) => (true, hex),
                    ("-", hex) => (false, hex),
                    _ => return None,
                };
                out.push(MemberChange { user: ObjectId::parse_str(hex).ok()?, joined });
            }
        }
        Some(out)
    }
}

#[derive(Serialize, Deserialize)]
struct Stored<T> {
    /// The versions the value was computed at, in the order they were read.
    versions: Vec<(String, i64)>,
    value: T,
}

/// Versions read before computing a value; pass them back to `put`.
pub struct Snapshot(Vec<(String, i64)>);

impl Snapshot {
    /// Both snapshots' versions (for values read in stages).
    pub fn and(mut self, other: Snapshot) -> Snapshot {
        self.0.extend(other.0);
        self
    }
}

#[derive(Clone)]
pub struct Cache {
    redis: Option<Client>,
    keys: Keyspace,
    ttl: i64,
    /// Version keys whose bump failed, with a count of failures: retried
    /// until Redis takes a bump made after the last failure.
    pending: Arc<Mutex<HashMap<String, u64>>>,
    /// The retry of pending bumps, while there are any; ends at `shutdown`.
    retries: TaskTracker,
    stop: CancellationToken,
}

impl Cache {
    /// A cache over `redis`; `None` (or a zero TTL) turns caching off.
    pub fn new(redis: Option<Client>, keys: Keyspace, ttl: Duration) -> Self {
        let redis = redis.filter(|_| !ttl.is_zero());
        Cache {
            redis,
            keys,
            ttl: ttl.as_secs().max(1) as i64,
            pending: Default::default(),
            retries: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Stops retrying bumps (what is pending expires with the TTL) and
    /// closes the connection.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.retries.close();
        self.retries.wait().await;
        if let Some(redis) = &self.redis {
            let _ = redis.quit().await;
        }
    }

    pub async fn room_changed(&self, room: ObjectId) {
        self.bump(Version::Room(room)).await;
    }

    pub async fn user_changed(&self, user: ObjectId) {
        self.bump(Version::User(user)).await;
    }

    pub async fn public_rooms_changed(&self) {
        self.bump(Version::PublicRooms).await;
    }

    /// Who is in `room` changed: bumps its members version and logs, in
    /// the same script, who joined and who left, so that a node keeping the
    /// member list can apply the change instead of reading the list again
    /// (`notifications::audience`). Without the log entry (the script
    /// failed) the version still moves and readers read the list afresh.
    pub async fn members_changed(&self, room: ObjectId, joined: &[ObjectId], left: &[ObjectId]) {
        let Some(redis) = self.redis.as_ref().filter(|r| r.is_connected()) else {
            return self.bump(Version::Members(room)).await;
        };
        let keys = vec![Version::Members(room).key(&self.keys), self.keys.members_log(room)];
        let args =
            vec![MemberChange::encode(joined, left), MEMBERS_LOG_LEN.to_string(), MEMBERS_LOG_TTL_MS.to_string()];
        let logged: Result<i64, _> = redis.eval(MEMBERS_BUMP, keys, args).await;
        if logged.is_err() {
            self.bump(Version::Members(room)).await;
        }
    }

    /// The logged changes of `room`'s members, oldest first, unless the
    /// cache is not usable.
    pub async fn members_log(&self, room: ObjectId) -> Option<Vec<String>> {
        self.usable()?.lrange(self.keys.members_log(room), 0, -1).await.ok()
    }

    /// One version's current value, for a cache kept elsewhere (in process);
    /// `None` whenever `get` would not serve from the cache either.
    pub async fn version(&self, version: Version) -> Option<i64> {
        let redis = self.usable()?;
        current(redis, &[version.key(&self.keys)]).await?.pop()
    }

    async fn bump(&self, version: Version) {
        let Some(redis) = &self.redis else { return };
        let key = version.key(&self.keys);
        let out: Result<i64, _> = if redis.is_connected() {
            redis.incr(&key).await
        } else {
            Err(fred::error::Error::new(fred::error::ErrorKind::IO, "not connected"))
        };
        if let Err(e) = out {
            metrics::counter!("confab_cache_invalidation_failures_total").increment(1);
            tracing::warn!(error = %e, key, "cache version bump failed; cache reads are off until it succeeds");
            let first = {
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                let first = pending.is_empty();
                *pending.entry(key).or_default() += 1;
                first
            };
            if first {
                self.retries.spawn(retry_pending(redis.clone(), self.pending.clone(), self.stop.clone()));
            }
        }
    }

    /// The client, unless it is known to be disconnected (then a request
    /// goes straight to MongoDB instead of waiting for a timeout) or a bump
    /// is pending.
    fn usable(&self) -> Option<&Client> {
        let redis = self.redis.as_ref().filter(|r| r.is_connected())?;
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).is_empty().then_some(redis)
    }

    /// Reads the versions a value is about to be computed from.
    pub async fn snapshot(&self, versions: &[Version]) -> Option<Snapshot> {
        let redis = self.usable()?;
        let keys: Vec<String> = versions.iter().map(|v| v.key(&self.keys)).collect();
        let values = current(redis, &keys).await?;
        Some(Snapshot(keys.into_iter().zip(values).collect()))
    }

    /// The cached value, if every version it was computed at is current.
    /// Counts a hit or a miss, and keeps the hit-ratio gauge current.
    pub async fn get<T: DeserializeOwned>(&self, entry: Entry) -> Option<T> {
        let found = self.lookup(entry).await;
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("confab_cache_requests_total", "cache" => entry.label(), "result" => result).increment(1);
        let [hits, total] = &HIT_COUNTS[usize::from(entry)];
        let h = hits.fetch_add(found.is_some() as u64, Ordering::Relaxed) + found.is_some() as u64;
        let t = total.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("confab_cache_hit_ratio", "cache" => entry.label()).set(h as f64 / t as f64);
        found
    }

    async fn lookup<T: DeserializeOwned>(&self, entry: Entry) -> Option<T> {
        let redis = self.usable()?;
        let raw: Option<String> = redis.get(entry.key(&self.keys)).await.ok()?;
        let stored: Stored<T> = serde_json::from_str(&raw?).ok()?;
        let keys: Vec<String> = stored.versions.iter().map(|(k, _)| k.clone()).collect();
        let now = current(redis, &keys).await?;
        let fresh = stored.versions.iter().zip(&now).all(|((_, then), now)| then == now);
        fresh.then_some(stored.value)
    }

    /// Stores a value computed after `snapshot` was taken.
    pub async fn put<T: Serialize>(&self, entry: Entry, snapshot: Snapshot, value: &T) {
        let Some(redis) = self.usable() else { return };
        let Ok(json) = serde_json::to_string(&Stored { versions: snapshot.0, value }) else { return };
        let out: Result<(), _> =
            redis.set(entry.key(&self.keys), json, Some(Expiration::EX(self.ttl)), None, false).await;
        if let Err(e) = out {
            tracing::debug!(error = %e, "cache write failed");
        }
    }
}

/// Current values of version keys (a missing key is version 0).
async fn current(redis: &Client, keys: &[String]) -> Option<Vec<i64>> {
    if keys.is_empty() {
        return Some(Vec::new());
    }
    let values: Vec<Option<i64>> = if keys.len() == 1 {
        vec![redis.get(&keys[0]).await.ok()?]
    } else {
        crate::backend::redis::get_many(redis, keys.to_vec()).await.ok()?
    };
    Some(values.into_iter().map(Option::unwrap_or_default).collect())
}

/// Bumps the failed versions until Redis takes them all. A key is done only
/// if no bump of it failed again while its retry was under way.
async fn retry_pending(redis: Client, pending: Arc<Mutex<HashMap<String, u64>>>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let keys: Vec<(String, u64)> =
            pending.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, n)| (k.clone(), *n)).collect();
        if keys.is_empty() {
            return;
        }
        for (key, failures) in keys {
            let out: Result<i64, _> = redis.incr(&key).await;
            if out.is_ok() {
                let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
                if pending.get(&key) == Some(&failures) {
                    pending.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_changes_are_read_back_only_when_the_log_covers_every_version() {
        let (a, b, c) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let log = vec![
            format!("4|{}", MemberChange::encode(&[a], &[])),
            format!("5|{}", MemberChange::encode(&[b, c], &[])),
            format!("6|{}", MemberChange::encode(&[], &[a])),
        ];
        let joined = |user| MemberChange { user, joined: true };
        assert_eq!(
            MemberChange::between(&log, 4, 6).unwrap(),
            [joined(b), joined(c), MemberChange { user: a, joined: false }]
        );
        assert_eq!(MemberChange::between(&log, 3, 4).unwrap(), [joined(a)]);
        assert!(MemberChange::between(&log, 2, 6).is_none(), "version 3 fell out of the log");
        assert!(MemberChange::between(&log, 4, 7).is_none(), "version 7 was bumped without an entry");
        assert!(MemberChange::between(&log, 6, 6).is_none());
        let torn = vec!["5|+nothex".to_string()];
        assert!(MemberChange::between(&torn, 4, 5).is_none());
    }
}

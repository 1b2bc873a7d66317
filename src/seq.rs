//! Per-room message seqs (ADR 11).
//!
//! A counter in Redis hands them out: one script call on the send path
//! instead of a write to the room document. The store stays the judge of
//! uniqueness: the unique `(room_id, seq)` index turns a seq that is
//! already taken into a retry, never into two messages with one seq.
//!
//! - A missing counter (a new room, a Redis restart without persistence, a
//!   key idle for a week) starts from the highest seq the store knows for
//!   the room: its document's counter, its newest live or archived message.
//! - After a collision the counter is raised to that highest seq again, so
//!   a counter restored from an old snapshot catches up on its first clash.
//! - While Redis cannot answer, the room document's counter takes over
//!   (`$inc`), raised to the highest stored seq after a collision: sends
//!   go on being stored and acknowledged during a Redis outage.
//! - The counter also tells a node that subscribes to a room where the
//!   room's order begins (`fanout::sequencer`); a new room's counter is
//!   started at 0 for this.
//! - A connection that has seen its user post to a room may skip the
//!   membership lookup for a while ([`MEMBERSHIP_TRUST`]). Ending a
//!   membership leaves a marker beside the counter for twice that long, and
//!   the script that hands out the seq refuses such a remembered sender
//!   while it stands ([`Taken::Recheck`]): the store must confirm them
//!   first. So no message is stored from a member once their removal was
//!   acknowledged, on whichever node they send.

use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;

use crate::backend::redis::{RedisConfig, RedisError};
use crate::error::{Error, Result};
use crate::keyspace::Keyspace;
use crate::store::Store;

/// How long a room's counter outlives its last message; then it is seeded
/// from the store again.
pub const COUNTER_TTL_MS: u64 = 7 * 24 * 3_600_000;

/// How long a counter call may take before the store's counter is used.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a connection may trust that its user is a member of a room it
/// has seen them post to, without asking the store again.
pub const MEMBERSHIP_TRUST: Duration = Duration::from_secs(30);

/// `ARGV[1]` empty: the next seq, or -1 if the counter is missing.
/// `ARGV[1]` a number: raise the counter to it first (never lower it).
/// `KEYS[2]`, if given, is the sender's ended-membership marker: -2 while
/// it stands, and no seq is taken.
const NEXT: &str = r#"
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if not cur then return -1 end
elseif not cur or tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"#;

/// Whose message a seq is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The store confirmed the sender's membership for this send.
    Confirmed,
    /// A connection remembers the user as a member (`MEMBERSHIP_TRUST`).
    Remembered(ObjectId),
}

/// What [`Seqs::next`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Seq(i64),
    /// The remembered sender's membership ended recently, or cannot be
    /// checked without Redis: confirm it in the store, then ask again.
    Recheck,
}

/// Hands out seqs; clones share the connection.
#[derive(Clone)]
pub struct Seqs {
    redis: Client,
    store: Arc<Store>,
    keys: Keyspace,
}

/// Where a seq came from, for `confab_seq_handed_out_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The Redis counter as it was.
    Redis,
    /// The Redis counter, after raising it to the store's highest seq.
    Seeded,
    /// The room document, Redis being unreachable.
    Store,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::Seeded => "seeded",
            Source::Store => "store",
        }
    }
}

impl Seqs {
    /// Counters named in `keys`, in `redis` (connected in the background,
    /// like the bus).
    pub fn connect(redis: &RedisConfig, keys: Keyspace, store: Arc<Store>) -> std::result::Result<Seqs, RedisError> {
        let redis = redis.client(REDIS_TIMEOUT)?;
        Ok(Seqs { redis, store, keys })
    }

    /// Closes the counters' connection.
    pub async fn shutdown(&self) {
        let _ = self.redis.quit().await;
    }

    fn key(&self, room: ObjectId) -> String {
        self.keys.room_seq(room)
    }

    /// The room's next seq. `after_collision`: the last one handed out was
    /// already stored, so the counter is first raised past what the store
    /// holds. `NotFound` if the room does not exist.
    pub async fn next(&self, room: ObjectId, sender: Sender, after_collision: bool) -> Result<Taken> {
        let remembered = match sender {
            Sender::Confirmed => None,
            Sender::Remembered(user) => Some(self.keys.membership_ended(room, user)),
        };
        let Some((seq, source)) = self.take(room, remembered, after_collision).await? else {
            return Ok(Taken::Recheck);
        };
        metrics::counter!("confab_seq_handed_out_total", "source" => source.label()).increment(1);
        Ok(Taken::Seq(seq))
    }

    /// The seq and where it came from; `None` when a remembered sender's
    /// membership must be confirmed by the store first.
    async fn take(
        &self,
        room: ObjectId,
        marker: Option<String>,
        after_collision: bool,
    ) -> Result<Option<(i64, Source)>> {
        if self.redis.is_connected() {
            if !after_collision {
                match self.call(room, None, marker.as_deref()).await {
                    Ok(-2) => return Ok(None),
                    Ok(seq) if seq > 0 => return Ok(Some((seq, Source::Redis))),
                    Ok(_) => {} // missing: seed it below
                    Err(e) if marker.is_some() => return self.unconfirmed(room, &e),
                    Err(e) => return self.take_from_store(room, false, &e).await.map(Some),
                }
            }
            let floor = self.highest(room).await?;
            match self.call(room, Some(floor), marker.as_deref()).await {
                Ok(-2) => return Ok(None),
                Ok(seq) => return Ok(Some((seq, Source::Seeded))),
                Err(e) if marker.is_some() => return self.unconfirmed(room, &e),
                Err(e) => return self.take_from_store(room, after_collision, &e).await.map(Some),
            }
        }
        if marker.is_some() {
            return self.unconfirmed(room, &"not connected");
        }
        self.take_from_store(room, after_collision, &"not connected").await.map(Some)
    }

    /// Without Redis, no marker can be read: a remembered sender is confirmed
    /// by the store before the room document hands out a seq.
    fn unconfirmed(&self, room: ObjectId, why: &(dyn std::fmt::Display + Sync)) -> Result<Option<(i64, Source)>> {
        tracing::debug!(error = %why, %room, "membership not checked against its marker: Redis did not answer");
        Ok(None)
    }

    /// `user`'s membership of `room` ended: for twice [`MEMBERSHIP_TRUST`],
    /// a connection that remembers them as a member is refused a seq until
    /// the store confirms them. Best effort: without Redis, connections
    /// still stop trusting their memory within [`MEMBERSHIP_TRUST`].
    pub async fn membership_ended(&self, room: ObjectId, user: ObjectId) {
        let expire = Some(Expiration::PX(2 * MEMBERSHIP_TRUST.as_millis() as i64));
        let set: std::result::Result<(), _> =
            self.redis.set(self.keys.membership_ended(room, user), 1, expire, None, false).await;
        if let Err(e) = set {
            tracing::warn!(error = %e, %room, %user, "ended membership not marked for the seq counter");
        }
    }

    /// `user` became a member of `room` (again): a marker left by an earlier
    /// membership no longer applies.
    pub async fn membership_started(&self, room: ObjectId, user: ObjectId) {
        let removed: std::result::Result<i64, _> = self.redis.del(self.keys.membership_ended(room, user)).await;
        if let Err(e) = removed {
            tracing::debug!(error = %e, %room, %user, "ended-membership marker not removed; it lapses");
        }
    }

    /// Starts a new room's counter at 0, so that a node subscribing before
    /// the first message knows where the room's order begins (`sequencer`).
    /// Best effort: without it, the first message to arrive sets the order.
    pub async fn started(&self, room: ObjectId) {
        let expire = Some(Expiration::PX(COUNTER_TTL_MS as i64));
        let set: std::result::Result<Option<String>, _> =
            self.redis.set(self.key(room), 0, expire, Some(SetOptions::NX), false).await;
        if let Err(e) = set {
            tracing::debug!(error = %e, %room, "new room's seq counter not started");
        }
    }

    /// The last seq the room's counter handed out; `None` when the counter
    /// is missing or Redis does not answer. Every seq above it is handed
    /// out later.
    pub async fn current(&self, room: ObjectId) -> Option<i64> {
        let value: Option<i64> = self.redis.get(self.key(room)).await.ok()?;
        value.filter(|seq| *seq >= 0)
    }

    /// The last seq each room's counter handed out, in order; `None` for a
    /// room whose counter is missing, and for all when Redis does not answer.
    pub async fn current_many(&self, rooms: &[ObjectId]) -> Vec<Option<i64>> {
        if rooms.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = rooms.iter().map(|r| self.key(*r)).collect();
        let values: Vec<Option<i64>> =
            crate::backend::redis::get_many(&self.redis, keys).await.unwrap_or_else(|_| vec![None; rooms.len()]);
        if values.len() != rooms.len() {
            return vec![None; rooms.len()];
        }
        values.into_iter().map(|v| v.filter(|seq| *seq >= 0)).collect()
    }

    async fn call(
        &self,
        room: ObjectId,
        floor: Option<i64>,
        marker: Option<&str>,
    ) -> std::result::Result<i64, fred::error::Error> {
        let floor = floor.map(|f| f.to_string()).unwrap_or_default();
        let mut keys = vec![self.key(room)];
        keys.extend(marker.map(str::to_owned));
        self.redis.eval(NEXT, keys, vec![floor, COUNTER_TTL_MS.to_string()]).await
    }

    async fn highest(&self, room: ObjectId) -> Result<i64> {
        self.store.highest_seq(room).await?.ok_or_else(|| Error::NotFound("room not found".into()))
    }

    async fn take_from_store(
        &self,
        room: ObjectId,
        after_collision: bool,
        why: &(dyn std::fmt::Display + Sync),
    ) -> Result<(i64, Source)> {
        tracing::debug!(error = %why, %room, "seq from the room document: Redis did not answer");
        if after_collision {
            let floor = self.highest(room).await?;
            self.store.raise_seq(room, floor).await?;
        }
        let seq = self.store.next_seq(room).await?.ok_or_else(|| Error::NotFound("room not found".into()))?;
        Ok((seq, Source::Store))
    }
}

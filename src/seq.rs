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
//!   room's order begins (`gateway::sequencer`); a new room's counter is
//!   started at 0 for this.

use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;

use crate::error::{Error, Result};
use crate::keyspace::Keyspace;
use crate::store::Store;

/// How long a room's counter outlives its last message; then it is seeded
/// from the store again.
const COUNTER_TTL_MS: u64 = 7 * 24 * 3_600_000;

/// How long a counter call may take before the store's counter is used.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// `ARGV[1]` empty: the next seq, or -1 if the counter is missing.
/// `ARGV[1]` a number: raise the counter to it first (never lower it).
const NEXT: &str = r#"
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

/// Hands out seqs; clones share the connection.
#[derive(Clone)]
pub struct Seqs {
    redis: Client,
    store: Arc<dyn Store>,
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
    /// Counters named in `keys`, in the Redis at `redis_url` (connected in
    /// the background, like the bus).
    pub fn connect(redis_url: &str, keys: Keyspace, store: Arc<dyn Store>) -> Result<Seqs> {
        let redis = crate::bus::redis::client(redis_url, REDIS_TIMEOUT).map_err(|e| Error::Internal(e.0))?;
        Ok(Seqs { redis, store, keys })
    }

    fn key(&self, room: ObjectId) -> String {
        self.keys.room_seq(room)
    }

    /// The room's next seq. `after_collision`: the last one handed out was
    /// already stored, so the counter is first raised past what the store
    /// holds. `NotFound` if the room does not exist.
    pub async fn next(&self, room: ObjectId, after_collision: bool) -> Result<i64> {
        let (seq, source) = self.take(room, after_collision).await?;
        metrics::counter!("confab_seq_handed_out_total", "source" => source.label()).increment(1);
        Ok(seq)
    }

    async fn take(&self, room: ObjectId, after_collision: bool) -> Result<(i64, Source)> {
        if self.redis.is_connected() {
            if !after_collision {
                match self.call(room, None).await {
                    Ok(seq) if seq > 0 => return Ok((seq, Source::Redis)),
                    Ok(_) => {} // missing: seed it below
                    Err(e) => return self.take_from_store(room, false, &e).await,
                }
            }
            let floor = self.highest(room).await?;
            match self.call(room, Some(floor)).await {
                Ok(seq) => return Ok((seq, Source::Seeded)),
                Err(e) => return self.take_from_store(room, after_collision, &e).await,
            }
        }
        self.take_from_store(room, after_collision, &"not connected").await
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

    async fn call(&self, room: ObjectId, floor: Option<i64>) -> std::result::Result<i64, fred::error::Error> {
        let floor = floor.map(|f| f.to_string()).unwrap_or_default();
        self.redis.eval(NEXT, vec![self.key(room)], vec![floor, COUNTER_TTL_MS.to_string()]).await
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

//! The Redis [`Tracker`]. Keys, under `confab:<database>:presence:` so that
//! clusters sharing a Redis but not a database never sweep each other:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `conns:<user>` | hash | the user's counted connections: `<node>:<conn>` → connected at (ms) |
//! | `user:<user>` | hash | `status` (away, busy; absent: none), `last_seen` (ms) |
//! | `node:<node>:conns` | set | the node's counted connections, `<user>:<conn>` |
//! | `node:<node>:alive` | string | the node's heartbeat, expiring after `node_ttl` |
//! | `nodes` | set | every node that has beaten and not been swept or retired |
//!
//! Every change that decides a transition (first connection, last one) runs
//! as one Lua script on the user's two keys, so two nodes can never both
//! see themselves as first or last. Scripts go by EVAL: they are short, and
//! Redis caches their compilation. No script touches keys of two users or
//! of a user and a node, so every script is legal on Redis Cluster, where
//! a user's keys share the user's hash tag. A node's own set is kept beside
//! the scripts: added to before a connection is counted and removed from
//! after it is not, so the set always holds at least what is counted (a
//! repair after a Redis failure counts every local connection again, so
//! one left in the set but not counted is counted then).

use std::time::Duration;

use bson::oid::ObjectId;
use fred::prelude::*;

use super::{Connection, Gate, State, Status, TrackerError};
use crate::backend::redis::RedisConfig;
use crate::fanout::ConnId;
use crate::keyspace::Keyspace;

/// Connections one sweep script removes, so a node with very many
/// connections never blocks Redis for long.
const SWEEP_BATCH: usize = 500;

/// Counts a connection; returns `{1, status, last_seen}` if it is the
/// user's first, else `{0}`.
const CONNECT: &str = r#"
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], 'last_seen', ARGV[2])
if added == 1 and redis.call('HLEN', KEYS[1]) == 1 then
  return {1, redis.call('HGET', KEYS[2], 'status') or '', ARGV[2]}
end
return {0}
"#;

/// Stops counting a connection; returns `{1, status, last_seen}` if it was
/// the user's last, else `{0}`.
const DISCONNECT: &str = r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[2], 'last_seen', ARGV[2])
  return {1, redis.call('HGET', KEYS[2], 'status') or '', ARGV[2]}
end
return {0}
"#;

/// Sets or clears the explicit status; returns `{connections, status
/// before, last_seen}`.
const SET_STATUS: &str = r#"
local before = redis.call('HGET', KEYS[2], 'status') or ''
if ARGV[1] == '' then
  redis.call('HDEL', KEYS[2], 'status')
else
  redis.call('HSET', KEYS[2], 'status', ARGV[1])
end
return {redis.call('HLEN', KEYS[1]), before, redis.call('HGET', KEYS[2], 'last_seen') or ''}
"#;

/// The announcement gate of one user: `ARGV[1]` the status to announce,
/// `ARGV[2]` now (ms), `ARGV[3]` the least time between two announcements.
/// Returns `{0}` if that status is the one last announced, `{1, wait_ms}`
/// if one was announced less than the interval ago, `{2}` if this one may
/// go out now (and is recorded as the last announced).
const GATE: &str = r#"
local last = redis.call('HGET', KEYS[1], 'status')
if last == ARGV[1] then return {0} end
local now = tonumber(ARGV[2])
local open_at = tonumber(redis.call('HGET', KEYS[1], 'open_at') or '0')
if now < open_at then return {1, open_at - now} end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'open_at', now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], 86400000)
return {2}
"#;

/// A connection's field in its user's hash: `<node>:<conn>`.
fn field(c: Connection<'_>) -> String {
    format!("{}:{}", c.node, c.conn)
}

/// A connection's member of its node's set: `<user>:<conn>`.
fn member(c: Connection<'_>) -> String {
    format!("{}:{}", c.user.to_hex(), c.conn)
}

/// The transition a CONNECT or DISCONNECT reply reports, if any.
fn transition(reply: &[Value], connected: bool) -> Option<State> {
    if reply.first().and_then(Value::as_i64) != Some(1) {
        return None;
    }
    Some(State {
        connected,
        explicit: reply.get(1).and_then(Value::as_string).as_deref().and_then(Status::explicit),
        last_seen_ms: reply.get(2).and_then(Value::as_i64),
    })
}

/// Cluster-wide connection counts, explicit statuses and node liveness, in
/// Redis.
pub struct Tracker {
    client: Client,
    keys: Keyspace,
}

/// A Redis client for presence and typing, apart from the bus's
/// connections so that sweeps never queue behind fan-out traffic. Not
/// awaited: without Redis the node starts anyway, and presence repairs
/// itself once Redis answers.
pub fn client(redis: &RedisConfig) -> Result<Client, TrackerError> {
    let client = redis.builder(64)?.build()?;
    client.connect();
    Ok(client)
}

impl Tracker {
    pub fn new(client: Client, keys: Keyspace) -> Self {
        Tracker { client, keys }
    }

    fn conns_key(&self, user: ObjectId) -> String {
        self.keys.presence_connections(user)
    }

    fn user_key(&self, user: ObjectId) -> String {
        self.keys.presence_user(user)
    }

    fn node_key(&self, node: &str, what: &str) -> String {
        self.keys.presence_node(node, what)
    }

    fn nodes_key(&self) -> String {
        self.keys.presence_nodes()
    }

    async fn eval(&self, script: &'static str, keys: Vec<String>, args: Vec<String>) -> Result<Value, TrackerError> {
        self.client.eval(script, keys, args).await.map_err(Into::into)
    }

    /// Runs CONNECT or DISCONNECT on `user`'s keys for the connection
    /// `field` (`<node>:<conn>`).
    async fn change(
        &self,
        script: &'static str,
        user: ObjectId,
        field: String,
        now_ms: i64,
    ) -> Result<Option<State>, TrackerError> {
        let keys = vec![self.conns_key(user), self.user_key(user)];
        let out = self.eval(script, keys, vec![field, now_ms.to_string()]).await?.into_array();
        Ok(transition(&out, script == CONNECT))
    }
}

impl Tracker {
    /// Counts a connection (idempotent); the user's state if it was their
    /// first anywhere, i.e. they came online.
    pub async fn connect(&self, c: Connection<'_>, now_ms: i64) -> Result<Option<State>, TrackerError> {
        // The node's set first: it must never miss a counted connection,
        // or a sweep after the node's death could not uncount it.
        let _: i64 = self.client.sadd(self.node_key(c.node, "conns"), member(c)).await?;
        self.change(CONNECT, c.user, field(c), now_ms).await
    }

    /// Stops counting a connection (idempotent); the user's state if it was
    /// their last anywhere, i.e. they went offline.
    pub async fn disconnect(&self, c: Connection<'_>, now_ms: i64) -> Result<Option<State>, TrackerError> {
        // The node's set last, once the connection is no longer counted.
        let state = self.change(DISCONNECT, c.user, field(c), now_ms).await?;
        let _: i64 = self.client.srem(self.node_key(c.node, "conns"), member(c)).await?;
        Ok(state)
    }

    /// Sets the explicit status (`None` clears it); the state before and after.
    pub async fn set_status(&self, user: ObjectId, status: Option<Status>) -> Result<(State, State), TrackerError> {
        let keys = vec![self.conns_key(user), self.user_key(user)];
        let arg = status.map(Status::as_str).unwrap_or_default().to_string();
        let out = self.eval(SET_STATUS, keys, vec![arg]).await?.into_array();
        let connected = out.first().and_then(Value::as_i64).unwrap_or(0) > 0;
        let last_seen_ms = out.get(2).and_then(Value::as_i64);
        let before = out.get(1).and_then(Value::as_string).as_deref().and_then(Status::explicit);
        Ok((State { connected, explicit: before, last_seen_ms }, State { connected, explicit: status, last_seen_ms }))
    }

    /// How many connections of `user` are counted, cluster-wide (those in
    /// their grace period too).
    pub async fn connection_count(&self, user: ObjectId) -> Result<usize, TrackerError> {
        self.client.hlen(self.conns_key(user)).await.map_err(Into::into)
    }

    /// The states of many users, in one round trip.
    pub async fn states(&self, users: &[ObjectId]) -> Result<Vec<State>, TrackerError> {
        let pipeline = self.client.pipeline();
        for user in users {
            let _: () = pipeline.hlen(self.conns_key(*user)).await?;
            let _: () = pipeline.hmget(self.user_key(*user), vec!["status", "last_seen"]).await?;
        }
        let replies: Vec<Value> = pipeline.all().await?;
        if replies.len() != 2 * users.len() {
            return Err(TrackerError::Reply(format!("{} replies to {} commands", replies.len(), 2 * users.len())));
        }
        Ok(replies
            .chunks(2)
            .map(|pair| {
                let fields = pair[1].clone().into_array();
                State {
                    connected: pair[0].as_i64().unwrap_or(0) > 0,
                    explicit: fields.first().and_then(Value::as_string).as_deref().and_then(Status::explicit),
                    last_seen_ms: fields.get(1).and_then(Value::as_i64),
                }
            })
            .collect())
    }

    /// Whether each user's new status may be announced now (see [`Gate`]),
    /// at most one announcement per user per `every`, cluster-wide.
    pub async fn gate(
        &self,
        changes: &[(ObjectId, Status)],
        now_ms: i64,
        every: Duration,
    ) -> Result<Vec<Gate>, TrackerError> {
        // Sent together: fred writes concurrent commands in one go.
        let replies = futures::future::try_join_all(changes.iter().map(|(user, status)| {
            let keys = vec![self.keys.presence_announced(*user)];
            let args = vec![status.as_str().to_string(), now_ms.to_string(), every.as_millis().to_string()];
            self.eval(GATE, keys, args)
        }))
        .await?;
        Ok(replies
            .into_iter()
            .map(|reply| {
                let reply = reply.into_array();
                match reply.first().and_then(Value::as_i64) {
                    Some(0) => Gate::Unchanged,
                    Some(1) => Gate::After(Duration::from_millis(reply.get(1).and_then(Value::as_u64).unwrap_or(1))),
                    _ => Gate::Now,
                }
            })
            .collect())
    }

    /// Registers the node and refreshes its heartbeat for `ttl`; false if
    /// the heartbeat had expired (or never existed).
    pub async fn heartbeat(&self, node: &str, ttl: Duration) -> Result<bool, TrackerError> {
        let expiry = Some(Expiration::PX(ttl.as_millis() as i64));
        let was: Option<String> = self.client.set(self.node_key(node, "alive"), "1", expiry, None, true).await?;
        let _: i64 = self.client.sadd(self.nodes_key(), node).await?;
        Ok(was.is_some())
    }

    /// Registered nodes whose heartbeat has expired.
    pub async fn dead_nodes(&self) -> Result<Vec<String>, TrackerError> {
        let nodes: Vec<String> = self.client.smembers(self.nodes_key()).await?;
        if nodes.is_empty() {
            return Ok(nodes);
        }
        let pipeline = self.client.pipeline();
        for node in &nodes {
            let _: () = pipeline.exists(self.node_key(node, "alive")).await?;
        }
        let alive: Vec<i64> = pipeline.all().await?;
        if alive.len() != nodes.len() {
            return Err(TrackerError::Reply(format!("{} replies to {} commands", alive.len(), nodes.len())));
        }
        Ok(nodes.into_iter().zip(alive).filter(|(_, alive)| *alive == 0).map(|(node, _)| node).collect())
    }

    /// Stops counting every connection of a dead node and forgets the node,
    /// unless its heartbeat is back; the users that went offline. Works in
    /// batches of [`SWEEP_BATCH`], checking the heartbeat before each.
    pub async fn sweep(&self, node: &str, now_ms: i64) -> Result<Vec<ObjectId>, TrackerError> {
        let (set, alive) = (self.node_key(node, "conns"), self.node_key(node, "alive"));
        let mut offline = Vec::new();
        loop {
            if self.client.exists::<i64, _>(&alive).await? == 1 {
                return Ok(offline);
            }
            let members: Vec<String> = self.client.spop(&set, Some(SWEEP_BATCH)).await?;
            let swept: Vec<(ObjectId, String)> = members
                .iter()
                .filter_map(|m| {
                    let (user, conn) = m.split_once(':')?;
                    Some((ObjectId::parse_str(user).ok()?, format!("{node}:{conn}")))
                })
                .collect();
            let ended = futures::future::try_join_all(swept.into_iter().map(|(user, field)| async move {
                Ok::<_, TrackerError>(self.change(DISCONNECT, user, field, now_ms).await?.map(|_| user))
            }))
            .await?;
            offline.extend(ended.into_iter().flatten());
            if members.len() < SWEEP_BATCH && self.client.scard::<i64, _>(&set).await? == 0 {
                let _: i64 = self.client.srem(self.nodes_key(), node).await?;
                return Ok(offline);
            }
        }
    }

    /// Ends `node`'s heartbeat, then sweeps it: a clean shutdown.
    pub async fn retire(&self, node: &str, now_ms: i64) -> Result<Vec<ObjectId>, TrackerError> {
        let _: i64 = self.client.del(self.node_key(node, "alive")).await?;
        self.sweep(node, now_ms).await
    }

    /// The connections counted for `node`.
    pub async fn connections(&self, node: &str) -> Result<Vec<(ObjectId, ConnId)>, TrackerError> {
        let members: Vec<String> = self.client.smembers(self.node_key(node, "conns")).await?;
        Ok(members
            .iter()
            .filter_map(|m| {
                let (user, conn) = m.split_once(':')?;
                Some((ObjectId::parse_str(user).ok()?, conn.parse().ok()?))
            })
            .collect())
    }
}

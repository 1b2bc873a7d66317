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
//! as one Lua script, so two nodes can never both see themselves as first
//! or last. Scripts go by EVAL: they are short, and Redis caches their
//! compilation. The sweep script derives keys from set members, which a
//! single Redis (or a replicated one) allows and Redis Cluster would not.

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
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[2], 'last_seen', ARGV[3])
if added == 1 and redis.call('HLEN', KEYS[1]) == 1 then
  return {1, redis.call('HGET', KEYS[2], 'status') or '', ARGV[3]}
end
return {0}
"#;

/// Stops counting a connection; returns `{1, status, last_seen}` if it was
/// the user's last, else `{0}`.
const DISCONNECT: &str = r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
if removed == 1 and redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[2], 'last_seen', ARGV[3])
  return {1, redis.call('HGET', KEYS[2], 'status') or '', ARGV[3]}
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

/// Refreshes the heartbeat; returns 1 if it had not expired.
const HEARTBEAT: &str = r#"
local was = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return was
"#;

/// The registered nodes without a heartbeat.
const DEAD_NODES: &str = r#"
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node .. ':alive') == 0 then
    dead[#dead + 1] = node
  end
end
return dead
"#;

/// Removes a batch of a dead node's connections; returns `{'done' | 'more',
/// users who went offline...}`. Stops at once if the node beats again.
const SWEEP: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return {'done'} end
local out = {'more'}
for _, m in ipairs(redis.call('SPOP', KEYS[1], ARGV[4])) do
  local sep = string.find(m, ':', 1, true)
  if sep then
    local user = string.sub(m, 1, sep - 1)
    local conns = ARGV[1] .. 'conns:' .. user
    if redis.call('HDEL', conns, ARGV[2] .. ':' .. string.sub(m, sep + 1)) == 1
        and redis.call('HLEN', conns) == 0 then
      redis.call('HSET', ARGV[1] .. 'user:' .. user, 'last_seen', ARGV[3])
      out[#out + 1] = user
    end
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[2])
  out[1] = 'done'
end
return out
"#;

/// Cluster-wide connection counts, explicit statuses and node liveness, in
/// Redis.
pub struct Tracker {
    client: Client,
    keys: Keyspace,
    /// What the scripts put in front of the names they build.
    prefix: String,
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
        Tracker { client, prefix: keys.presence_prefix(), keys }
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

    /// Runs CONNECT or DISCONNECT for one connection.
    async fn change(
        &self,
        script: &'static str,
        c: Connection<'_>,
        now_ms: i64,
        connected: bool,
    ) -> Result<Option<State>, TrackerError> {
        let keys = vec![self.conns_key(c.user), self.user_key(c.user), self.node_key(c.node, "conns")];
        let args =
            vec![format!("{}:{}", c.node, c.conn), format!("{}:{}", c.user.to_hex(), c.conn), now_ms.to_string()];
        let out = self.eval(script, keys, args).await?.into_array();
        if out.first().and_then(Value::as_i64) != Some(1) {
            return Ok(None);
        }
        Ok(Some(State {
            connected,
            explicit: out.get(1).and_then(Value::as_string).as_deref().and_then(Status::explicit),
            last_seen_ms: out.get(2).and_then(Value::as_i64),
        }))
    }
}

impl Tracker {
    /// Counts a connection (idempotent); the user's state if it was their
    /// first anywhere, i.e. they came online.
    pub async fn connect(&self, c: Connection<'_>, now_ms: i64) -> Result<Option<State>, TrackerError> {
        self.change(CONNECT, c, now_ms, true).await
    }

    /// Stops counting a connection (idempotent); the user's state if it was
    /// their last anywhere, i.e. they went offline.
    pub async fn disconnect(&self, c: Connection<'_>, now_ms: i64) -> Result<Option<State>, TrackerError> {
        self.change(DISCONNECT, c, now_ms, false).await
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
        let keys = vec![self.node_key(node, "alive"), self.nodes_key()];
        let args = vec![ttl.as_millis().to_string(), node.to_string()];
        Ok(self.eval(HEARTBEAT, keys, args).await?.as_i64() == Some(1))
    }

    /// Registered nodes whose heartbeat has expired.
    pub async fn dead_nodes(&self) -> Result<Vec<String>, TrackerError> {
        let out = self.eval(DEAD_NODES, vec![self.nodes_key()], vec![self.prefix.clone()]).await?;
        Ok(out.into_array().iter().filter_map(Value::as_string).collect())
    }

    /// Stops counting every connection of a dead node and forgets the node,
    /// unless its heartbeat is back; the users that went offline.
    pub async fn sweep(&self, node: &str, now_ms: i64) -> Result<Vec<ObjectId>, TrackerError> {
        let keys = vec![self.node_key(node, "conns"), self.node_key(node, "alive"), self.nodes_key()];
        let args = vec![self.prefix.clone(), node.to_string(), now_ms.to_string(), SWEEP_BATCH.to_string()];
        let mut offline = Vec::new();
        loop {
            let out = self.eval(SWEEP, keys.clone(), args.clone()).await?.into_array();
            let done = out.first().and_then(Value::as_string).as_deref() != Some("more");
            offline.extend(out.iter().skip(1).filter_map(|v| ObjectId::parse_str(v.as_string()?).ok()));
            if done {
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

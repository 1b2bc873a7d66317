//! Login sessions, kept in Redis: what a refresh token renews, what logout,
//! a password change or a ban revokes, on every node at once.
//!
//! A login opens a session and hands out a pair: a short access token (a
//! JWT naming the session in `sid`) and an opaque refresh token,
//! `<user>.<session>.<secret>` with a 256-bit random secret (hex) of which Redis
//! keeps only the SHA-256. Refreshing spends the refresh token and hands out
//! a new pair; the spent token's hash is kept, so presenting it again (a
//! stolen copy, or the thief's) is recognised: the whole session is revoked.
//!
//! Every node checks an access token's session in Redis, remembering a
//! live answer for [`ALIVE_FOR`], so a revoked session's tokens are refused
//! everywhere within that. Revoking also publishes a close on the user's
//! topic: every node closes the session's sockets (4001).
//!
//! Keys (see `keyspace`): `session:<user>:<id>` (hash: `username`,
//! `created`, `last_used` (ms), `ua`, `ip`, `refresh`), its `:spent` set,
//! and `sessions:<user>` (the user's session ids), each expiring
//! `refresh_ttl` after the session was last used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use dashmap::DashMap;
use fred::prelude::*;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::audit::{self, Actor, Audit, Source};
use crate::auth::{Caller, Tokens};
use crate::bus::{Bus, Event, Topic};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::keyspace::Keyspace;
use crate::protocol::CloseCode;
use crate::store::{Store, User};

/// How long a node trusts that a session it checked is still live.
pub const ALIVE_FOR: Duration = Duration::from_millis(500);

/// While Redis cannot answer, a session checked live this recently is
/// still accepted (a Redis outage does not log everyone out).
pub const STALE_IF_ERROR: Duration = Duration::from_secs(300);

/// Opens a session: `KEYS` session, user's sessions; `ARGV` ttl (ms),
/// session id, username, now (ms), user agent, address, refresh hash.
const OPEN: &str = r#"
redis.call('HSET', KEYS[1], 'username', ARGV[3], 'created', ARGV[4], 'last_used', ARGV[4],
  'ua', ARGV[5], 'ip', ARGV[6], 'refresh', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"#;

/// Spends a refresh token: `KEYS` session, spent, user's sessions; `ARGV`
/// presented hash, new hash, now (ms), ttl (ms), user agent, address.
/// Returns `{1, username}` when rotated, `{-1}` for a spent token, `{0}`
/// when there is no such session or token.
const REFRESH: &str = r#"
local current = redis.call('HGET', KEYS[1], 'refresh')
if not current then return {0} end
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'refresh', ARGV[2], 'last_used', ARGV[3], 'ua', ARGV[5], 'ip', ARGV[6])
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
  return {1, redis.call('HGET', KEYS[1], 'username')}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {-1} end
return {0}
"#;

/// Ends a session: `KEYS` session, spent, user's sessions; `ARGV` its id.
/// Returns 1 if it was live.
const REVOKE: &str = r#"
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
return redis.call('DEL', KEYS[1])
"#;

/// What a login or a refresh hands out.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Grant {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    #[schema(value_type = String, example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds the access token is valid for.
    pub expires_in: u64,
    pub refresh_token: String,
    /// Seconds the session lasts unless refreshed.
    pub refresh_expires_in: u64,
    pub session_id: String,
}

/// One of a user's sessions, as `GET /sessions` lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Session)]
pub struct SessionView {
    pub id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_used_at: String,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
    /// The session of the token the list was asked with.
    pub current: bool,
}

/// Why sessions end: the close code and reason their sockets get, and the
/// audit action recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Logout,
    Revoked,
    Reused,
    PasswordChanged,
    Banned,
}

impl Ending {
    fn reason(self) -> &'static str {
        match self {
            Ending::Logout => "logged out",
            Ending::Revoked => "session revoked",
            Ending::Reused => "refresh token reused",
            Ending::PasswordChanged => "password changed",
            Ending::Banned => "banned",
        }
    }
}

/// Session settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a session lasts without a refresh.
    pub refresh_ttl: Duration,
    /// Tokens without a session are accepted (load tests).
    pub sessionless: bool,
}

pub struct Sessions {
    redis: Client,
    keys: Keyspace,
    tokens: Tokens,
    bus: Arc<Bus>,
    store: Arc<Store>,
    audit: Arc<Audit>,
    settings: Settings,
    /// Sessions found live, and when.
    alive: DashMap<ObjectId, Instant>,
}

fn redis_error(e: fred::error::Error) -> Error {
    Error::Backend { what: "the session store", source: e.into() }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn invalid_refresh() -> Error {
    Error::Unauthenticated { code: "invalid_refresh_token", message: "invalid or expired refresh token".into() }
}

/// A refresh token's parts: user, session, secret.
fn parse_refresh(token: &str) -> Option<(ObjectId, ObjectId, &str)> {
    let mut parts = token.splitn(3, '.');
    let user = ObjectId::parse_str(parts.next()?).ok()?;
    let session = ObjectId::parse_str(parts.next()?).ok()?;
    let secret = parts.next().filter(|s| s.len() == 64)?;
    Some((user, session, secret))
}

fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| crate::clock::rfc3339(&t)).unwrap_or_default()
}

impl Sessions {
    pub fn new(
        redis: Client,
        keys: Keyspace,
        tokens: Tokens,
        bus: Arc<Bus>,
        store: Arc<Store>,
        audit: Arc<Audit>,
        settings: Settings,
    ) -> Self {
        Sessions { redis, keys, tokens, bus, store, audit, settings, alive: DashMap::new() }
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    fn ttl_ms(&self) -> String {
        self.settings.refresh_ttl.as_millis().to_string()
    }

    /// A fresh refresh token of `session`, and the hash Redis keeps.
    fn refresh_token(user: ObjectId, session: ObjectId) -> (String, String) {
        let secret = hex::encode(rand::random::<[u8; 32]>());
        (format!("{}.{}.{secret}", user.to_hex(), session.to_hex()), hash(&secret))
    }

    fn grant(&self, user: ObjectId, username: &str, session: ObjectId, refresh_token: String) -> Result<Grant> {
        Ok(Grant {
            access_token: self.tokens.issue(user, username, Some(session))?,
            token_type: "Bearer",
            expires_in: self.tokens.ttl().as_secs(),
            refresh_token,
            refresh_expires_in: self.settings.refresh_ttl.as_secs(),
            session_id: session.to_hex(),
        })
    }

    /// Opens a session for `user`, who has just proven who they are.
    pub async fn open(&self, user: &User, from: &Source) -> Result<Grant> {
        let session = ObjectId::new();
        let (refresh_token, refresh_hash) = Self::refresh_token(user.id, session);
        let keys = vec![self.keys.session(user.id, session), self.keys.user_sessions(user.id)];
        let args = vec![
            self.ttl_ms(),
            session.to_hex(),
            user.username.clone(),
            now_ms().to_string(),
            from.user_agent.clone().unwrap_or_default(),
            from.ip.clone().unwrap_or_default(),
            refresh_hash,
        ];
        let _: i64 = self.redis.eval(OPEN, keys, args).await.map_err(redis_error)?;
        self.alive.insert(session, Instant::now());
        self.grant(user.id, &user.username, session, refresh_token)
    }

    /// Spends a refresh token for a new pair. A token spent before revokes
    /// its session (401 `refresh_reused`); a banned user's fails.
    pub async fn refresh(&self, token: &str, from: &Source) -> Result<Grant> {
        let (user, session, secret) = parse_refresh(token).ok_or_else(invalid_refresh)?;
        let (new_token, new_hash) = Self::refresh_token(user, session);
        let keys = self.session_keys(user, session);
        let args = vec![
            hash(secret),
            new_hash,
            now_ms().to_string(),
            self.ttl_ms(),
            from.user_agent.clone().unwrap_or_default(),
            from.ip.clone().unwrap_or_default(),
        ];
        let out: Vec<Value> = self.redis.eval(REFRESH, keys, args).await.map_err(redis_error)?;
        let target = format!("session:{}", session.to_hex());
        match out.first().and_then(Value::as_i64) {
            Some(1) => {}
            Some(-1) => {
                self.end(user, session, Ending::Reused).await?;
                let event =
                    audit::Event::new(Actor::user(user), "token.reuse_detected").target(target).outcome("revoked");
                self.audit.record(event, from).await;
                return Err(Error::Unauthenticated {
                    code: "refresh_reused",
                    message: "this refresh token was already used: the session is revoked, log in again".into(),
                });
            }
            _ => return Err(invalid_refresh()),
        }
        let username = out.get(1).and_then(Value::as_string).unwrap_or_default();
        match self.store.user(user).await? {
            Some(u) if u.banned.is_none() => {}
            Some(_) => {
                self.end(user, session, Ending::Banned).await?;
                return Err(banned());
            }
            None => {
                self.end(user, session, Ending::Revoked).await?;
                return Err(invalid_refresh());
            }
        }
        self.alive.insert(session, Instant::now());
        self.audit.record(audit::Event::new(Actor::user(user), "token.refresh").target(target), from).await;
        self.grant(user, &username, session, new_token)
    }

    /// The caller behind an access token whose session is live: 401 for
    /// a bad token, `session_revoked` for an ended session.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        let caller = self.tokens.verify(token)?;
        match caller.session {
            Some(session) => self.check_alive(caller.user_id, session).await?,
            None if self.settings.sessionless => {}
            None => return Err(Error::Unauthorized("this token belongs to no session: log in".into())),
        }
        Ok(caller)
    }

    async fn check_alive(&self, user: ObjectId, session: ObjectId) -> Result<()> {
        let checked = self.alive.get(&session).map(|at| *at);
        if checked.is_some_and(|at| at.elapsed() < ALIVE_FOR) {
            return Ok(());
        }
        match self.is_live(user, session).await {
            Ok(true) => {
                self.alive.insert(session, Instant::now());
                Ok(())
            }
            Ok(false) => Err(revoked()),
            Err(e) if checked.is_some_and(|at| at.elapsed() < STALE_IF_ERROR) => {
                tracing::debug!(error = %e, "session check failed; accepting a recently live session");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether a session is live now, asking Redis (no cache).
    pub async fn is_live(&self, user: ObjectId, session: ObjectId) -> Result<bool> {
        let live: i64 = self.redis.exists(self.keys.session(user, session)).await.map_err(redis_error)?;
        if live == 0 {
            self.alive.remove(&session);
        }
        Ok(live == 1)
    }

    /// Ends one session: its tokens are refused and its sockets closed,
    /// on every node. False if it was not live.
    async fn end(&self, user: ObjectId, session: ObjectId, why: Ending) -> Result<bool> {
        let ended = self.forget(user, session).await?;
        self.close_sockets(user, Some(session), CloseCode::SessionRevoked, why.reason()).await;
        Ok(ended)
    }

    /// A session's keys, as the scripts take them: the record, its spent
    /// refresh hashes, and the user's set of sessions.
    fn session_keys(&self, user: ObjectId, session: ObjectId) -> Vec<String> {
        vec![self.keys.session(user, session), self.keys.session_spent(user, session), self.keys.user_sessions(user)]
    }

    /// Deletes a session from Redis and this node's cache; true if it was
    /// live. Its sockets are the caller's to close.
    async fn forget(&self, user: ObjectId, session: ObjectId) -> Result<bool> {
        let keys = self.session_keys(user, session);
        let ended: i64 = self.redis.eval(REVOKE, keys, vec![session.to_hex()]).await.map_err(redis_error)?;
        self.alive.remove(&session);
        Ok(ended == 1)
    }

    /// Closes `user`'s sockets (of one session, or all) on every node.
    pub async fn close_sockets(&self, user: ObjectId, session: Option<ObjectId>, code: CloseCode, reason: &str) {
        let event = Event::Close { session, code: code.code(), reason: reason.as_bytes() };
        self.bus.publish_live(Topic::User(user), event).await;
    }

    /// Ends `user`'s session `session` because `actor` asked; 404 if the
    /// user has no such session.
    pub async fn revoke(
        &self,
        user: ObjectId,
        session: ObjectId,
        why: Ending,
        actor: Actor,
        from: &Source,
    ) -> Result<()> {
        if !self.end(user, session, why).await? {
            return Err(Error::NotFound("no such session".into()));
        }
        let action = if why == Ending::Logout { "logout" } else { "session.revoked" };
        let event = audit::Event::new(actor, action).target(format!("session:{}", session.to_hex()));
        self.audit.record(event.details(bson::doc! {"user": user.to_hex(), "reason": why.reason()}), from).await;
        Ok(())
    }

    /// Ends every session of `user` but `keep`; how many ended.
    pub async fn revoke_all(&self, user: ObjectId, keep: Option<ObjectId>, why: Ending) -> Result<usize> {
        let ids: Vec<String> = self.redis.smembers(self.keys.user_sessions(user)).await.map_err(redis_error)?;
        let ids: Vec<ObjectId> =
            ids.iter().filter_map(|id| ObjectId::parse_str(id).ok()).filter(|id| Some(*id) != keep).collect();
        let mut ended = 0;
        for &id in &ids {
            ended += usize::from(self.forget(user, id).await?);
        }
        match keep {
            // One close for all their sockets, including any opened with a
            // session just ended by another node.
            None => self.close_sockets(user, None, CloseCode::SessionRevoked, why.reason()).await,
            Some(_) => {
                for &id in &ids {
                    self.close_sockets(user, Some(id), CloseCode::SessionRevoked, why.reason()).await;
                }
            }
        }
        Ok(ended)
    }

    /// `user`'s live sessions, most recently used first; `current` marks
    /// the caller's.
    pub async fn list(&self, user: ObjectId, current: Option<ObjectId>) -> Result<Vec<SessionView>> {
        let ids: Vec<String> = self.redis.smembers(self.keys.user_sessions(user)).await.map_err(redis_error)?;
        let mut found = Vec::new();
        for id in ids.iter().filter_map(|id| ObjectId::parse_str(id).ok()) {
            let fields: std::collections::HashMap<String, String> =
                self.redis.hgetall(self.keys.session(user, id)).await.map_err(redis_error)?;
            if fields.is_empty() {
                // Expired: forget it.
                let _: std::result::Result<i64, _> = self.redis.srem(self.keys.user_sessions(user), id.to_hex()).await;
                continue;
            }
            let ms = |f: &str| fields.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            let text = |f: &str| fields.get(f).filter(|v| !v.is_empty()).cloned();
            found.push((
                ms("last_used"),
                SessionView {
                    id: id.to_hex(),
                    created_at: rfc3339_ms(ms("created")),
                    last_used_at: rfc3339_ms(ms("last_used")),
                    user_agent: text("ua"),
                    ip: text("ip"),
                    current: Some(id) == current,
                },
            ));
        }
        found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.id.cmp(&a.1.id)));
        Ok(found.into_iter().map(|(_, view)| view).collect())
    }
}

/// 403 `banned`.
pub fn banned() -> Error {
    Error::Refused { code: "banned", message: "this account is banned".into() }
}

/// 401 `session_revoked`.
fn revoked() -> Error {
    Error::Unauthenticated { code: "session_revoked", message: "this session has ended: log in again".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_session_and_keep_a_long_secret() {
        let (user, session) = (ObjectId::new(), ObjectId::new());
        let (token, hashed) = Sessions::refresh_token(user, session);
        let (u, s, secret) = parse_refresh(&token).unwrap();
        assert_eq!((u, s), (user, session));
        assert_eq!(hash(secret), hashed);
        assert_eq!(hex::decode(secret).unwrap().len(), 32, "256 bits");
        assert_ne!(Sessions::refresh_token(user, session).0, token, "random each time");
        for bad in
            ["", "x", &format!("{}.{}", user.to_hex(), session.to_hex()), &format!("{}.nope.{secret}", user.to_hex())]
        {
            assert!(parse_refresh(bad).is_none(), "{bad:?}");
        }
        assert!(parse_refresh(&format!("{}.{}.short", user.to_hex(), session.to_hex())).is_none());
    }
}

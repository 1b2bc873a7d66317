//! What each user wants to be notified of: notifications on or off, muted
//! rooms, mentions only, do not disturb until an instant.
//!
//! Stored in MongoDB (`notification_preferences`, `_id` = the user id) and
//! read on every message for every member, so they are cached in Redis:
//! one `MGET` answers for a whole room. The cache is written through: a
//! change is written to MongoDB, then `SET` in Redis; a reader that missed
//! fills the key with `SET NX`, so a fill made from data read before a
//! change can never overwrite the change. Entries expire after
//! [`CACHE_TTL`]; if Redis refused the write-through of a change, that is
//! how long a stale entry may live. Users without a document get the
//! defaults, cached the same way.

use std::collections::{HashMap, HashSet};

use bson::oid::ObjectId;
use chrono::{DateTime, TimeZone, Utc};
use fred::prelude::*;
use serde::{Deserialize, Serialize};

use super::Notifier;
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::store::{NotificationPreferences, PreferencesChange};

/// Most rooms one user may mute.
pub const MAX_MUTED_ROOMS: usize = 1000;
/// Seconds a cached entry lives.
pub const CACHE_TTL: i64 = 600;

/// Why a notification was not sent (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    Disabled,
    Muted,
    DoNotDisturb,
    NotMentioned,
}

impl Suppressed {
    pub fn label(self) -> &'static str {
        match self {
            Suppressed::Disabled => "disabled",
            Suppressed::Muted => "muted",
            Suppressed::DoNotDisturb => "dnd",
            Suppressed::NotMentioned => "mentions_only",
        }
    }
}

/// Whether `p` lets a message in `room` through at `now`; `addressed`:
/// it mentions the user (or is a direct message to them).
pub fn check(
    p: &NotificationPreferences,
    room: ObjectId,
    addressed: bool,
    now: DateTime<Utc>,
) -> Result<(), Suppressed> {
    if !p.enabled {
        return Err(Suppressed::Disabled);
    }
    if p.muted_rooms.contains(&room) {
        return Err(Suppressed::Muted);
    }
    if p.dnd_until.is_some_and(|until| until > now) {
        return Err(Suppressed::DoNotDisturb);
    }
    if p.mentions_only && !addressed {
        return Err(Suppressed::NotMentioned);
    }
    Ok(())
}

/// Preferences as clients see them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = NotificationPreferences)]
pub struct PreferencesView {
    /// Off: no notifications about messages at all.
    pub enabled: bool,
    /// Rooms whose messages notify no one.
    pub muted_rooms: Vec<String>,
    /// Only messages that mention the user, and direct messages.
    pub mentions_only: bool,
    /// No notifications until then.
    #[schema(format = DateTime)]
    pub dnd_until: Option<String>,
}

impl From<&NotificationPreferences> for PreferencesView {
    fn from(p: &NotificationPreferences) -> Self {
        PreferencesView {
            enabled: p.enabled,
            muted_rooms: p.muted_rooms.iter().map(|r| r.to_hex()).collect(),
            mentions_only: p.mentions_only,
            dnd_until: p.dnd_until.as_ref().map(rfc3339),
        }
    }
}

impl Notifier {
    /// A user's preferences, as stored (the defaults if none are).
    pub async fn get(&self, user: ObjectId) -> Result<NotificationPreferences> {
        let found = self.store.notification_preferences(&[user]).await?.pop();
        Ok(found.unwrap_or_else(|| NotificationPreferences::defaults(user)))
    }

    /// Replaces the fields given. Rooms newly muted must exist (404) and have
    /// the user as a member (403); rooms muted before stay mutable even after
    /// the user left them, so a client can send back what it read.
    pub async fn update(&self, user: ObjectId, mut change: PreferencesChange) -> Result<NotificationPreferences> {
        change.mute = None;
        if let Some(rooms) = change.muted_rooms.as_mut() {
            let mut seen = HashSet::new();
            rooms.retain(|r| seen.insert(*r));
            if rooms.len() > MAX_MUTED_ROOMS {
                return Err(Error::invalid("muted_rooms", format!("at most {MAX_MUTED_ROOMS} rooms")));
            }
            let before: HashSet<ObjectId> = self.get(user).await?.muted_rooms.into_iter().collect();
            let added: Vec<ObjectId> = rooms.iter().copied().filter(|r| !before.contains(r)).collect();
            if !added.is_empty() {
                let member_of: HashSet<ObjectId> =
                    self.store.memberships(user).await?.into_iter().map(|m| m.room_id).collect();
                // The first room that is not yours: unknown (404) or not joined (403).
                if let Some(room) = added.into_iter().find(|r| !member_of.contains(r)) {
                    self.store.room(room).await?.ok_or_else(|| Error::NotFound("room not found".into()))?;
                    return Err(not_a_member(room));
                }
            }
        }
        self.save(user, &change).await
    }

    /// Mutes or unmutes one room for the user. The room must exist (404);
    /// muting needs membership (403).
    pub async fn set_muted(&self, user: ObjectId, room: ObjectId, muted: bool) -> Result<NotificationPreferences> {
        self.store.room(room).await?.ok_or_else(|| Error::NotFound("room not found".into()))?;
        if muted {
            if self.store.member(room, user).await?.is_none() {
                return Err(not_a_member(room));
            }
            let current = self.get(user).await?;
            if current.muted_rooms.contains(&room) {
                return Ok(current);
            }
            if current.muted_rooms.len() >= MAX_MUTED_ROOMS {
                return Err(Error::invalid("muted", format!("at most {MAX_MUTED_ROOMS} rooms may be muted")));
            }
        }
        self.save(user, &PreferencesChange { mute: Some((room, muted)), ..Default::default() }).await
    }

    /// Writes a change to MongoDB, then through to the cache.
    async fn save(&self, user: ObjectId, change: &PreferencesChange) -> Result<NotificationPreferences> {
        let saved = self.store.change_notification_preferences(user, change).await?;
        let written: Result<(), fred::error::Error> = match self.redis() {
            Some(redis) => {
                redis
                    .set(
                        self.keys.notification_preferences(user),
                        Cached::from(&saved).encode(),
                        Some(Expiration::EX(CACHE_TTL)),
                        None,
                        false,
                    )
                    .await
            }
            None => Err(fred::error::Error::new(fred::error::ErrorKind::IO, "not connected")),
        };
        if let Err(e) = written {
            metrics::counter!("confab_notification_preferences_cache_failures_total").increment(1);
            tracing::warn!(error = %e, "preferences saved but not cached; old ones may apply for up to {CACHE_TTL} s");
        }
        Ok(saved)
    }

    /// The preferences of many users at once: from the cache, the rest from
    /// MongoDB (then cached). Users without any get the defaults.
    pub async fn load_many(&self, users: &[ObjectId]) -> Result<HashMap<ObjectId, NotificationPreferences>> {
        let mut found = HashMap::with_capacity(users.len());
        if users.is_empty() {
            return Ok(found);
        }
        let redis = self.redis();
        if let Some(redis) = redis {
            let keys: Vec<String> = users.iter().map(|u| self.keys.notification_preferences(*u)).collect();
            let cached: Vec<Option<String>> = if keys.len() == 1 {
                redis.get::<Option<String>, _>(&keys[0]).await.map(|v| vec![v]).unwrap_or_default()
            } else {
                crate::backend::redis::get_many(redis, keys).await.unwrap_or_default()
            };
            for (user, raw) in users.iter().zip(cached) {
                if let Some(p) = raw.and_then(|r| Cached::decode(&r)) {
                    found.insert(*user, p.into_preferences(*user));
                }
            }
        }
        let missing: Vec<ObjectId> = users.iter().copied().filter(|u| !found.contains_key(u)).collect();
        if missing.is_empty() {
            return Ok(found);
        }
        let mut loaded: HashMap<ObjectId, NotificationPreferences> =
            self.store.notification_preferences(&missing).await?.into_iter().map(|p| (p.user_id, p)).collect();
        let fills: Vec<NotificationPreferences> =
            missing.iter().map(|u| loaded.remove(u).unwrap_or_else(|| NotificationPreferences::defaults(*u))).collect();
        if let Some(redis) = redis {
            let pipeline = redis.pipeline();
            for p in &fills {
                let value = Cached::from(p).encode();
                let _: FredResult<()> = pipeline
                    .set(
                        self.keys.notification_preferences(p.user_id),
                        value,
                        Some(Expiration::EX(CACHE_TTL)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await;
            }
            if let Err(e) = pipeline.all::<Value>().await {
                tracing::debug!(error = %e, "preferences cache fill failed");
            }
        }
        found.extend(fills.into_iter().map(|p| (p.user_id, p)));
        Ok(found)
    }
}

fn not_a_member(room: ObjectId) -> Error {
    Error::Forbidden(format!("muted_rooms: you are not a member of room {}", room.to_hex()))
}

/// The cached form: short keys, hex ids, Unix milliseconds.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cached {
    e: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    m: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    o: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    d: Option<i64>,
}

impl From<&NotificationPreferences> for Cached {
    fn from(p: &NotificationPreferences) -> Self {
        Cached {
            e: p.enabled,
            m: p.muted_rooms.iter().map(|r| r.to_hex()).collect(),
            o: p.mentions_only,
            d: p.dnd_until.map(|t| t.timestamp_millis()),
        }
    }
}

impl Cached {
    fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    fn decode(raw: &str) -> Option<Cached> {
        serde_json::from_str(raw).ok()
    }

    fn into_preferences(self, user_id: ObjectId) -> NotificationPreferences {
        NotificationPreferences {
            user_id,
            enabled: self.e,
            muted_rooms: self.m.iter().filter_map(|r| ObjectId::parse_str(r).ok()).collect(),
            mentions_only: self.o,
            dnd_until: self.d.and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_preference_can_stop_a_notification() {
        let (user, room, other) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let now = Utc::now();
        let p = NotificationPreferences::defaults(user);
        assert_eq!(check(&p, room, false, now), Ok(()));
        let off = NotificationPreferences { enabled: false, ..p.clone() };
        assert_eq!(check(&off, room, true, now), Err(Suppressed::Disabled));
        let muted = NotificationPreferences { muted_rooms: vec![room], ..p.clone() };
        assert_eq!(check(&muted, room, true, now), Err(Suppressed::Muted));
        assert_eq!(check(&muted, other, false, now), Ok(()));
        let dnd = NotificationPreferences { dnd_until: Some(now + chrono::Duration::minutes(5)), ..p.clone() };
        assert_eq!(check(&dnd, room, true, now), Err(Suppressed::DoNotDisturb));
        let over = NotificationPreferences { dnd_until: Some(now - chrono::Duration::seconds(1)), ..p.clone() };
        assert_eq!(check(&over, room, false, now), Ok(()), "do not disturb is over");
        let mentions = NotificationPreferences { mentions_only: true, ..p };
        assert_eq!(check(&mentions, room, false, now), Err(Suppressed::NotMentioned));
        assert_eq!(check(&mentions, room, true, now), Ok(()));
    }

    #[test]
    fn cached_form_round_trips_and_defaults_are_small() {
        let user = ObjectId::new();
        let defaults = NotificationPreferences::defaults(user);
        assert_eq!(Cached::from(&defaults).encode(), r#"{"e":true}"#);
        let p = NotificationPreferences {
            user_id: user,
            enabled: false,
            muted_rooms: vec![ObjectId::new(), ObjectId::new()],
            mentions_only: true,
            dnd_until: Some(Utc.timestamp_millis_opt(1_795_554_095_663).unwrap()),
        };
        let back = Cached::decode(&Cached::from(&p).encode()).unwrap().into_preferences(user);
        assert_eq!(back, p);
        assert!(Cached::decode("not json").is_none());
    }
}

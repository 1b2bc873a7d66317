//! Every Redis key and Pub/Sub channel Confab uses, named in one place.
//!
//! Nodes, workers and operator commands of one deployment build their names
//! from the same [`Keyspace`], so they always meet on the same keys: each
//! name starts with the deployment's prefix (`key_prefix`, default
//! `confab`), and two deployments sharing one Redis stay apart by giving
//! each its own prefix.
//!
//! Names are grouped by what owns them: the bus (room and user channels),
//! seqs, presence, typing, rate limits, the cache, notifications and the
//! worker's jobs. A key that belongs to one room or one user is built by a
//! method that takes that id, so that a room's keys can later share a hash
//! tag (Redis Cluster) by changing this file alone.

use std::sync::Arc;

use bson::oid::ObjectId;

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "confab";

/// Checks a prefix: 1-64 of `[A-Za-z0-9_.-]`, so that it can never contain
/// the `:` that separates a name's parts, nor a hash tag's braces.
pub fn valid_prefix(prefix: &str) -> bool {
    (1..=64).contains(&prefix.len()) && prefix.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// A channel's meaning, for the bus reader that receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Room(ObjectId),
    User(ObjectId),
}

/// The names of one deployment. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: Arc<str>,
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace::new(DEFAULT_PREFIX)
    }
}

impl Keyspace {
    /// A keyspace under `prefix` (validated by the configuration).
    pub fn new(prefix: &str) -> Self {
        Keyspace { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn name(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}:{parts}", self.prefix)
    }

    // --- The bus -----------------------------------------------------------

    /// The channel a room's events travel on.
    pub fn room_channel(&self, room: ObjectId) -> String {
        self.name(format_args!("room:{}", room.to_hex()))
    }

    /// The channel a user's events travel on (receipts, presence, notices).
    pub fn user_channel(&self, user: ObjectId) -> String {
        self.name(format_args!("user:{}", user.to_hex()))
    }

    /// The channel a bus sends its delivery probes to itself on (`id` is
    /// the bus's own random id); not a [`Channel`].
    pub fn probe_channel(&self, id: &str) -> String {
        self.name(format_args!("probe:{id}"))
    }

    /// What a channel of this keyspace carries; `None` for a foreign one.
    pub fn channel(&self, name: &str) -> Option<Channel> {
        let rest = name.strip_prefix(&*self.prefix)?.strip_prefix(':')?;
        if let Some(hex) = rest.strip_prefix("room:") {
            return ObjectId::parse_str(hex).ok().map(Channel::Room);
        }
        ObjectId::parse_str(rest.strip_prefix("user:")?).ok().map(Channel::User)
    }

    /// The channel on which nodes announce changes of notification reach.
    pub fn reach_channel(&self) -> String {
        self.name(format_args!("reach"))
    }

    // --- Seqs --------------------------------------------------------------

    /// A room's seq counter.
    pub fn room_seq(&self, room: ObjectId) -> String {
        self.name(format_args!("seq:{}", room.to_hex()))
    }

    /// Marks, for a while, that `user`'s membership of `room` ended: the
    /// seq script refuses them a seq unless the store confirms them again.
    pub fn membership_ended(&self, room: ObjectId, user: ObjectId) -> String {
        self.name(format_args!("gone:{}:{}", room.to_hex(), user.to_hex()))
    }

    // --- Presence ----------------------------------------------------------

    /// What the presence scripts put in front of the names they build
    /// themselves (`conns:<user>`, `user:<user>`, `node:<node>:<what>`).
    pub fn presence_prefix(&self) -> String {
        self.name(format_args!("presence:"))
    }

    /// A user's counted connections, cluster-wide (a hash).
    pub fn presence_connections(&self, user: ObjectId) -> String {
        self.name(format_args!("presence:conns:{}", user.to_hex()))
    }

    /// A user's explicit status and last-seen time (a hash).
    pub fn presence_user(&self, user: ObjectId) -> String {
        self.name(format_args!("presence:user:{}", user.to_hex()))
    }

    /// A node's connection set (`what` = `conns`) or heartbeat (`alive`).
    pub fn presence_node(&self, node: &str, what: &str) -> String {
        self.name(format_args!("presence:node:{node}:{what}"))
    }

    /// The set of nodes that ever registered a heartbeat.
    pub fn presence_nodes(&self) -> String {
        self.name(format_args!("presence:nodes"))
    }

    /// The last status announced for a user, and its one-per-second gate.
    pub fn presence_announced(&self, user: ObjectId) -> String {
        self.name(format_args!("presence:announced:{}", user.to_hex()))
    }

    // --- Typing ------------------------------------------------------------

    /// The throttle of one user's typing notices in one room.
    pub fn typing(&self, room: ObjectId, user: ObjectId) -> String {
        self.name(format_args!("typing:{}:{}", room.to_hex(), user.to_hex()))
    }

    // --- Sessions ----------------------------------------------------------

    /// A login session: its user, times, client and current refresh token's
    /// hash.
    pub fn session(&self, user: ObjectId, session: ObjectId) -> String {
        self.name(format_args!("session:{}:{}", user.to_hex(), session.to_hex()))
    }

    /// The hashes of a session's spent refresh tokens (reuse detection).
    pub fn session_spent(&self, user: ObjectId, session: ObjectId) -> String {
        self.name(format_args!("session:{}:{}:spent", user.to_hex(), session.to_hex()))
    }

    /// The ids of a user's sessions.
    pub fn user_sessions(&self, user: ObjectId) -> String {
        self.name(format_args!("sessions:{}", user.to_hex()))
    }

    // --- Rate limits -------------------------------------------------------

    /// A user's REST request limit.
    pub fn rate_user(&self, user: ObjectId) -> String {
        self.name(format_args!("rl:user:{}", user.to_hex()))
    }

    /// A server API key's request limit.
    pub fn rate_api_key(&self, key: ObjectId) -> String {
        self.name(format_args!("rl:key:{}", key.to_hex()))
    }

    /// Failed logins of one account (its lowercased username).
    pub fn rate_login(&self, username: &str) -> String {
        self.name(format_args!("rl:login:{username}"))
    }

    /// Registrations and logins from one client address.
    pub fn rate_address(&self, address: &str) -> String {
        self.name(format_args!("rl:addr:{address}"))
    }

    // --- Cache -------------------------------------------------------------

    /// A room's version: its messages.
    pub fn version_room(&self, room: ObjectId) -> String {
        self.name(format_args!("v:room:{}", room.to_hex()))
    }

    /// A user's version: their memberships and cursors.
    pub fn version_user(&self, user: ObjectId) -> String {
        self.name(format_args!("v:user:{}", user.to_hex()))
    }

    /// The version of the set of public rooms.
    pub fn version_public_rooms(&self) -> String {
        self.name(format_args!("v:public"))
    }

    /// A room's members version.
    pub fn version_members(&self, room: ObjectId) -> String {
        self.name(format_args!("v:members:{}", room.to_hex()))
    }

    /// The log of a room's recent member changes.
    pub fn members_log(&self, room: ObjectId) -> String {
        self.name(format_args!("ml:{}", room.to_hex()))
    }

    /// A user's cached room list.
    pub fn cached_rooms(&self, user: ObjectId) -> String {
        self.name(format_args!("c:rooms:{}", user.to_hex()))
    }

    /// A room's cached newest history page.
    pub fn cached_history(&self, room: ObjectId) -> String {
        self.name(format_args!("c:history:{}", room.to_hex()))
    }

    // --- Notifications -----------------------------------------------------

    /// A user's cached notification preferences.
    pub fn notification_preferences(&self, user: ObjectId) -> String {
        self.name(format_args!("np:{}", user.to_hex()))
    }

    /// A room's watching hints.
    pub fn watching(&self, room: ObjectId) -> String {
        self.name(format_args!("nw:{}", room.to_hex()))
    }

    /// The list of notification ids waiting for external delivery: nodes
    /// push onto it, workers take from it.
    pub fn external_notifications(&self) -> String {
        self.name(format_args!("notify:external"))
    }

    /// Where a worker keeps the ids it has taken until they are queued.
    pub fn external_notifications_moving(&self) -> String {
        self.name(format_args!("notify:external:moving"))
    }

    // --- Jobs --------------------------------------------------------------

    /// A job queue's apalis namespace.
    pub fn job_queue(&self, name: &str) -> String {
        self.name(format_args!("jobs:q:{name}"))
    }

    /// Deliveries that used up their attempts.
    pub fn dead_letters(&self) -> String {
        self.name(format_args!("jobs:dead"))
    }

    /// A scheduled job's last run.
    pub fn job_status(&self, job: &str) -> String {
        self.name(format_args!("jobs:status:{job}"))
    }

    /// A scheduled job's recent runs.
    pub fn job_history(&self, job: &str) -> String {
        self.name(format_args!("jobs:history:{job}"))
    }

    /// The lock that elects one worker to queue a scheduled tick.
    pub fn job_tick(&self, job: &str, tick: u64) -> String {
        self.name(format_args!("jobs:tick:{job}:{tick}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_start_with_the_prefix_and_channels_round_trip() {
        let keys = Keyspace::new("staging");
        let id = ObjectId::new();
        assert_eq!(keys.room_channel(id), format!("staging:room:{}", id.to_hex()));
        assert_eq!(keys.external_notifications(), "staging:notify:external");
        assert_eq!(keys.channel(&keys.room_channel(id)), Some(Channel::Room(id)));
        assert_eq!(keys.channel(&keys.user_channel(id)), Some(Channel::User(id)));
        assert_eq!(keys.channel(&Keyspace::default().room_channel(id)), None, "another deployment's channel");
        assert_eq!(keys.channel("staging:room:nope"), None);
        assert_eq!(keys.channel("staging"), None);
        assert_eq!(keys.channel(&keys.probe_channel("ab12")), None, "a probe is no room or user");
    }

    #[test]
    fn the_default_keeps_the_names_running_clusters_use() {
        let keys = Keyspace::default();
        let id = ObjectId::new();
        assert_eq!(keys.room_channel(id), format!("confab:room:{}", id.to_hex()));
        assert_eq!(keys.user_channel(id), format!("confab:user:{}", id.to_hex()));
        assert_eq!(keys.version_public_rooms(), "confab:v:public");
        assert_eq!(keys.job_queue("delivery"), "confab:jobs:q:delivery");
        assert_eq!(keys.session(id, id), format!("confab:session:{0}:{0}", id.to_hex()));
        assert_eq!(keys.session_spent(id, id), format!("confab:session:{0}:{0}:spent", id.to_hex()));
        assert_eq!(keys.user_sessions(id), format!("confab:sessions:{}", id.to_hex()));
    }

    #[test]
    fn prefixes_exclude_separators_and_braces() {
        assert!(valid_prefix("confab") && valid_prefix("a.b-c_9"));
        for bad in ["", "a:b", "{x}", "a b", &"x".repeat(65)] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}

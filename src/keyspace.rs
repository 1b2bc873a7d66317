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

/// The name apalis keeps its list of queues under, whatever the queue.
pub const APALIS_QUEUES: &str = "core:apalis:queues:list";

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
///
/// On Redis Cluster ([`Keyspace::hash_tagged`]), the id that a key belongs
/// to is written as a hash tag (`seq:{<room>}`), so that every key of one
/// room, one user or one job queue lands in one slot and the scripts and
/// transactions that touch several of them stay legal. Elsewhere names
/// keep their plain form, the one deployments running today use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    prefix: Arc<str>,
    tagged: bool,
}

/// An id as a name shows it: plain, or as a hash tag.
struct Part<'a> {
    text: &'a str,
    tagged: bool,
}

impl std::fmt::Display for Part<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tagged {
            write!(f, "{{{}}}", self.text)
        } else {
            f.write_str(self.text)
        }
    }
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace::new(DEFAULT_PREFIX)
    }
}

impl Keyspace {
    /// A keyspace under `prefix` (validated by the configuration).
    pub fn new(prefix: &str) -> Self {
        Keyspace { prefix: prefix.into(), tagged: false }
    }

    /// The same names, with hash tags when `on` (for Redis Cluster).
    pub fn hash_tagged(mut self, on: bool) -> Self {
        self.tagged = on;
        self
    }

    /// Whether names carry hash tags.
    pub fn is_hash_tagged(&self) -> bool {
        self.tagged
    }

    /// The part of a name that decides its slot on Redis Cluster.
    fn tag<'a>(&self, text: &'a str) -> Part<'a> {
        Part { text, tagged: self.tagged }
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
        self.name(format_args!("room:{}", self.tag(&room.to_hex())))
    }

    /// The channel a user's events travel on (receipts, presence, notices).
    pub fn user_channel(&self, user: ObjectId) -> String {
        self.name(format_args!("user:{}", self.tag(&user.to_hex())))
    }

    /// The channel a bus sends its delivery probes to itself on (`id` is
    /// the bus's own random id); not a [`Channel`].
    pub fn probe_channel(&self, id: &str) -> String {
        self.name(format_args!("probe:{id}"))
    }

    /// What a channel of this keyspace carries; `None` for a foreign one.
    pub fn channel(&self, name: &str) -> Option<Channel> {
        let rest = name.strip_prefix(&*self.prefix)?.strip_prefix(':')?;
        let id = |hex: &str| {
            let hex = if self.tagged { hex.strip_prefix('{')?.strip_suffix('}')? } else { hex };
            ObjectId::parse_str(hex).ok()
        };
        if let Some(hex) = rest.strip_prefix("room:") {
            return id(hex).map(Channel::Room);
        }
        id(rest.strip_prefix("user:")?).map(Channel::User)
    }

    /// The channel on which nodes announce changes of notification reach.
    pub fn reach_channel(&self) -> String {
        self.name(format_args!("reach"))
    }

    // --- Seqs --------------------------------------------------------------

    /// A room's seq counter.
    pub fn room_seq(&self, room: ObjectId) -> String {
        self.name(format_args!("seq:{}", self.tag(&room.to_hex())))
    }

    /// Marks, for a while, that `user`'s membership of `room` ended: the
    /// seq script refuses them a seq unless the store confirms them again.
    pub fn membership_ended(&self, room: ObjectId, user: ObjectId) -> String {
        self.name(format_args!("gone:{}:{}", self.tag(&room.to_hex()), user.to_hex()))
    }

    // --- Presence ----------------------------------------------------------

    /// A user's counted connections, cluster-wide (a hash).
    pub fn presence_connections(&self, user: ObjectId) -> String {
        self.name(format_args!("presence:conns:{}", self.tag(&user.to_hex())))
    }

    /// A user's explicit status and last-seen time (a hash).
    pub fn presence_user(&self, user: ObjectId) -> String {
        self.name(format_args!("presence:user:{}", self.tag(&user.to_hex())))
    }

    /// A node's connection set (`what` = `conns`) or heartbeat (`alive`).
    pub fn presence_node(&self, node: &str, what: &str) -> String {
        self.name(format_args!("presence:node:{}:{what}", self.tag(node)))
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
        self.name(format_args!("session:{}:{}", self.tag(&user.to_hex()), session.to_hex()))
    }

    /// The hashes of a session's spent refresh tokens (reuse detection).
    pub fn session_spent(&self, user: ObjectId, session: ObjectId) -> String {
        self.name(format_args!("session:{}:{}:spent", self.tag(&user.to_hex()), session.to_hex()))
    }

    /// The ids of a user's sessions.
    pub fn user_sessions(&self, user: ObjectId) -> String {
        self.name(format_args!("sessions:{}", self.tag(&user.to_hex())))
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
        self.name(format_args!("v:room:{}", self.tag(&room.to_hex())))
    }

    /// A user's version: their memberships and cursors.
    pub fn version_user(&self, user: ObjectId) -> String {
        self.name(format_args!("v:user:{}", self.tag(&user.to_hex())))
    }

    /// The version of the set of public rooms.
    pub fn version_public_rooms(&self) -> String {
        self.name(format_args!("v:public"))
    }

    /// A room's members version.
    pub fn version_members(&self, room: ObjectId) -> String {
        self.name(format_args!("v:members:{}", self.tag(&room.to_hex())))
    }

    /// The log of a room's recent member changes.
    pub fn members_log(&self, room: ObjectId) -> String {
        self.name(format_args!("ml:{}", self.tag(&room.to_hex())))
    }

    /// A user's cached room list.
    pub fn cached_rooms(&self, user: ObjectId) -> String {
        self.name(format_args!("c:rooms:{}", self.tag(&user.to_hex())))
    }

    /// A room's cached newest history page.
    pub fn cached_history(&self, room: ObjectId) -> String {
        self.name(format_args!("c:history:{}", self.tag(&room.to_hex())))
    }

    // --- Notifications -----------------------------------------------------

    /// A user's cached notification preferences.
    pub fn notification_preferences(&self, user: ObjectId) -> String {
        self.name(format_args!("np:{}", self.tag(&user.to_hex())))
    }

    /// A room's watching hints.
    pub fn watching(&self, room: ObjectId) -> String {
        self.name(format_args!("nw:{}", self.tag(&room.to_hex())))
    }

    /// The list of notification ids waiting for external delivery: nodes
    /// push onto it, workers take from it.
    pub fn external_notifications(&self) -> String {
        self.name(format_args!("notify:{}", self.tag("external")))
    }

    /// Where a worker keeps the ids it has taken until they are queued.
    pub fn external_notifications_moving(&self) -> String {
        self.name(format_args!("notify:{}:moving", self.tag("external")))
    }

    // --- Jobs --------------------------------------------------------------

    /// A job queue's apalis namespace. Tagged, every queue shares the slot
    /// of [`APALIS_QUEUES`]: apalis's worker registration script also writes
    /// that fixed name, and a script on Redis Cluster may only touch keys
    /// its own master serves.
    pub fn job_queue(&self, name: &str) -> String {
        if self.tagged {
            return self.name(format_args!("jobs:q:{{{APALIS_QUEUES}}}:{name}"));
        }
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
    fn tagged_names_keep_what_one_script_touches_in_one_slot() {
        let keys = Keyspace::new("confab").hash_tagged(true);
        let (room, user, session) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let slot = |name: String| fred::util::redis_keyslot(name.as_bytes());
        assert_eq!(keys.room_seq(room), format!("confab:seq:{{{}}}", room.to_hex()));
        assert_eq!(slot(keys.room_seq(room)), slot(keys.membership_ended(room, user)));
        assert_eq!(slot(keys.version_members(room)), slot(keys.members_log(room)));
        assert_eq!(slot(keys.session(user, session)), slot(keys.session_spent(user, session)));
        assert_eq!(slot(keys.session(user, session)), slot(keys.user_sessions(user)));
        assert_eq!(slot(keys.presence_connections(user)), slot(keys.presence_user(user)));
        assert_eq!(slot(keys.external_notifications()), slot(keys.external_notifications_moving()));
        let queue = keys.job_queue("delivery");
        assert_eq!(slot(format!("{queue}:active")), slot(format!("{queue}:inflight:worker-1")));
        assert_eq!(slot(format!("{queue}:active")), slot(APALIS_QUEUES.to_string()));
        assert_ne!(slot(keys.room_seq(room)), slot(keys.room_seq(ObjectId::new())), "rooms spread over slots");
        for topic in [keys.room_channel(room), keys.user_channel(user)] {
            assert!(topic.contains('{'), "{topic}");
        }
        assert_eq!(keys.channel(&keys.room_channel(room)), Some(Channel::Room(room)));
        assert_eq!(keys.channel(&keys.user_channel(user)), Some(Channel::User(user)));
        assert_eq!(keys.channel(&Keyspace::new("confab").room_channel(room)), None, "an untagged name");
    }

    #[test]
    fn prefixes_exclude_separators_and_braces() {
        assert!(valid_prefix("confab") && valid_prefix("a.b-c_9"));
        for bad in ["", "a:b", "{x}", "a b", &"x".repeat(65)] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }
}

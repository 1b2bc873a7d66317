//! Documents as stored, and their JSON views as clients see them.

use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub username: String,
    /// Lower-cased username: uniqueness and login ignore case.
    pub username_key: String,
    /// Stored lower-cased.
    pub email: String,
    pub password_hash: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    /// The name shown to others; absent until the user sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Lower-cased display name: search matches prefixes ignoring case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// `user` unless promoted (`confab user promote`); absent on accounts
    /// made before roles, which are users.
    #[serde(default)]
    pub role: UserRole,
    /// Set while an administrator bars the user from logging in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned: Option<Ban>,
}

/// Why and since when a user is banned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ban {
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub at: DateTime<Utc>,
    /// The administrator who banned them.
    pub by: ObjectId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a user may do beyond their own account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    #[default]
    User,
    /// May use the `/admin` API.
    Admin,
}

impl UserRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UserRole::User => "user",
            UserRole::Admin => "admin",
        }
    }
}

/// Who did something recorded in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActorKind {
    User,
    Apikey,
    /// An operator's command (`confab user`, `confab apikey`) or the node itself.
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Apikey => "apikey",
            ActorKind::System => "system",
        }
    }
}

/// One security-relevant event. Never holds a password, token or secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<ObjectId>,
    pub actor_kind: ActorKind,
    /// e.g. `login.ok`, `member.removed` (docs/api.md lists them).
    pub action: String,
    /// What was acted on, e.g. `user:<id>`, `room:<id>/member:<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `ok`, or why it failed (e.g. `bad_password`).
    pub outcome: String,
    #[serde(default)]
    pub details: bson::Document,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = RoomType)]
pub enum RoomKind {
    Public,
    Private,
    /// A conversation of exactly two users, made by the first direct message.
    Direct,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Room {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub name: String,
    /// The name lowercased: names are unique ignoring case.
    #[serde(default)]
    pub name_key: String,
    #[serde(rename = "type")]
    pub kind: RoomKind,
    pub created_by: ObjectId,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    /// The last seq handed out in this room.
    #[serde(default)]
    pub last_seq: i64,
    /// A direct room's two users, lower id first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<ObjectId>,
}

impl Room {
    /// A new room (its seq counter at 0).
    pub fn new(name: String, kind: RoomKind, created_by: ObjectId, peers: Vec<ObjectId>) -> Room {
        Room {
            id: ObjectId::new(),
            name_key: Room::key_of(&name),
            name,
            kind,
            created_by,
            created_at: Utc::now(),
            last_seq: 0,
            peers,
        }
    }

    /// What a name is unique as.
    pub fn key_of(name: &str) -> String {
        name.to_lowercase()
    }

    /// The unique name of the direct room of two users: the unique index on
    /// names makes "create once" safe under concurrent first messages.
    pub fn direct_name(a: ObjectId, b: ObjectId) -> String {
        let (lo, hi) = if a.bytes() <= b.bytes() { (a, b) } else { (b, a) };
        format!("{DIRECT_PREFIX}{}:{}", lo.to_hex(), hi.to_hex())
    }

    /// The other user of a direct room.
    pub fn peer_of(&self, user: ObjectId) -> Option<ObjectId> {
        self.peers.iter().copied().find(|p| *p != user)
    }
}

/// Names starting with this are reserved for direct rooms.
pub const DIRECT_PREFIX: &str = "dm:";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = RoomRole)]
pub enum Role {
    Owner,
    Moderator,
    Member,
}

impl Role {
    /// The role as the API and the audit log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Moderator => "moderator",
            Role::Member => "member",
        }
    }

    /// Owners and moderators manage members and delete others' messages.
    pub fn manages(self) -> bool {
        matches!(self, Role::Owner | Role::Moderator)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// `<room id>:<user id>`: one membership per pair, found by primary key
    /// (the cheapest lookup on every MongoDB-compatible server).
    #[serde(rename = "_id")]
    pub key: String,
    pub room_id: ObjectId,
    pub user_id: ObjectId,
    pub role: Role,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub joined_at: DateTime<Utc>,
    /// Delivery cursor: every message up to this seq reached the member.
    #[serde(default)]
    pub delivered_seq: i64,
    #[serde(default)]
    pub delivered_up_to: Option<ObjectId>,
    /// Read cursor: every message up to this seq was read (implies delivered).
    #[serde(default)]
    pub read_seq: i64,
    #[serde(default)]
    pub read_up_to: Option<ObjectId>,
}

/// Which of a member's two cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    Delivered,
    Read,
}

impl Cursor {
    pub fn as_str(self) -> &'static str {
        match self {
            Cursor::Delivered => "delivered",
            Cursor::Read => "read",
        }
    }
}

impl Member {
    pub fn key(room_id: ObjectId, user_id: ObjectId) -> String {
        format!("{}:{}", room_id.to_hex(), user_id.to_hex())
    }

    pub fn new(room_id: ObjectId, user_id: ObjectId, role: Role, joined_at: DateTime<Utc>) -> Self {
        Member {
            key: Member::key(room_id, user_id),
            room_id,
            user_id,
            role,
            joined_at,
            delivered_seq: 0,
            delivered_up_to: None,
            read_seq: 0,
            read_up_to: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub room_id: ObjectId,
    pub seq: i64,
    pub sender_id: ObjectId,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// `client_msg_id`, or the message's own id when the client gave none:
    /// the unique (sender_id, dedup_key) index makes retries idempotent
    /// without partial indexes, which not every compatible server has.
    pub dedup_key: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub timestamp: DateTime<Utc>,
    /// When the sender last replaced the content; `None` if never.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub edited_at: Option<DateTime<Utc>>,
    /// A tombstone: the content is gone from the store, the message keeps
    /// its place (id, seq) so history and replays have no holes.
    #[serde(default)]
    pub deleted: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The sender of system messages, which a backend posts through the server
/// API: all zeros, an id no user can have.
pub const SYSTEM_SENDER: ObjectId = ObjectId::from_bytes([0; 12]);

/// The sender of a void: the stand-in for a seq that was handed out and
/// never stored, written so that it never can be (`Store::history_after`).
/// All ones, an id no user can have.
pub const VOID_SENDER: ObjectId = ObjectId::from_bytes([0xff; 12]);

impl Message {
    /// A void, not a message: never shown, never counted (it is also a
    /// tombstone, so whatever skips tombstones skips it).
    pub fn is_void(&self) -> bool {
        self.sender_id == VOID_SENDER
    }

    /// The void for `seq` of `room_id`; `at` is when the later message that
    /// showed the hole was stored, so the void sorts with its neighbours.
    pub fn void(room_id: ObjectId, seq: i64, at: DateTime<Utc>) -> Message {
        Message {
            id: ObjectId::new(),
            room_id,
            seq,
            sender_id: VOID_SENDER,
            content: String::new(),
            client_msg_id: None,
            dedup_key: format!("{room_id}:{seq}"),
            timestamp: at,
            edited_at: None,
            deleted: true,
            deleted_at: Some(Utc::now()),
        }
    }
}

/// A user's notification preferences; `_id` is the user id, so reading them
/// is a primary-key lookup. A user without a document has the defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationPreferences {
    #[serde(rename = "_id")]
    pub user_id: ObjectId,
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    #[serde(default)]
    pub muted_rooms: Vec<ObjectId>,
    #[serde(default)]
    pub mentions_only: bool,
    /// Do not disturb until this instant.
    #[serde(default, with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional")]
    pub dnd_until: Option<DateTime<Utc>>,
}

fn enabled_by_default() -> bool {
    true
}

impl NotificationPreferences {
    /// Enabled, nothing muted, every message, no do-not-disturb.
    pub fn defaults(user_id: ObjectId) -> Self {
        NotificationPreferences {
            user_id,
            enabled: true,
            muted_rooms: Vec::new(),
            mentions_only: false,
            dnd_until: None,
        }
    }
}

/// One notification for one user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub user_id: ObjectId,
    /// What it is about, e.g. `new_message`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub message: String,
    /// Free-form details for the client (for a message: room, message and sender ids).
    #[serde(default)]
    pub data: bson::Document,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub read: bool,
    #[serde(default, with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional")]
    pub read_at: Option<DateTime<Utc>>,
    /// Sent to a node holding a connection of the user when it was made.
    #[serde(default)]
    pub delivered_realtime: bool,
    /// External delivery (push, email) for a user who was not connected:
    /// `pending` when queued; the consumer of the queue sets its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
}

/// A key that lets a backend call the server API. Only a hash of its secret
/// is stored; the key itself is shown once, when it is made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKey {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub name: String,
    /// SHA-256 of the secret, hex.
    pub hash: String,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "bson::serde_helpers::chrono_datetime_as_bson_datetime_optional"
    )]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One entry of a user's contact list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Contact {
    /// `<owner id>:<contact id>`: one entry per pair, found by primary key.
    #[serde(rename = "_id")]
    pub key: String,
    pub owner_id: ObjectId,
    pub contact_id: ObjectId,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub added_at: DateTime<Utc>,
}

impl Contact {
    pub fn key(owner_id: ObjectId, contact_id: ObjectId) -> String {
        format!("{}:{}", owner_id.to_hex(), contact_id.to_hex())
    }

    pub fn new(owner_id: ObjectId, contact_id: ObjectId, added_at: DateTime<Utc>) -> Self {
        Contact { key: Contact::key(owner_id, contact_id), owner_id, contact_id, added_at }
    }
}

#[cfg(test)]
impl Message {
    /// A stored message for unit tests: seq 7, "hello", never edited.
    pub(crate) fn sample() -> Message {
        let id = ObjectId::new();
        Message {
            id,
            room_id: ObjectId::new(),
            seq: 7,
            sender_id: ObjectId::new(),
            content: "hello".into(),
            client_msg_id: None,
            dedup_key: id.to_hex(),
            timestamp: Utc::now(),
            edited_at: None,
            deleted: false,
            deleted_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Message {
        Message::sample()
    }

    #[test]
    fn messages_stored_before_edits_existed_still_load() {
        let mut doc = bson::to_document(&stored()).unwrap();
        assert!(!doc.contains_key("edited_at") && !doc.contains_key("deleted_at"));
        doc.remove("deleted");
        let m: Message = bson::from_document(doc).unwrap();
        assert!(!m.deleted && m.edited_at.is_none() && m.deleted_at.is_none());
    }

    #[test]
    fn edit_times_round_trip_as_bson_dates() {
        let mut m = stored();
        m.edited_at = Some(Utc::now());
        let doc = bson::to_document(&m).unwrap();
        assert!(matches!(doc.get("edited_at"), Some(bson::Bson::DateTime(_))));
        let back: Message = bson::from_document(doc).unwrap();
        assert_eq!(back.edited_at.map(|t| t.timestamp_millis()), m.edited_at.map(|t| t.timestamp_millis()));
    }

    #[test]
    fn missing_preferences_fields_mean_enabled_and_nothing_muted() {
        let user = ObjectId::new();
        let p: NotificationPreferences = bson::from_document(bson::doc! {"_id": user, "mentions_only": true}).unwrap();
        assert!(p.enabled && p.muted_rooms.is_empty() && p.mentions_only);
        let p: NotificationPreferences = bson::from_document(bson::doc! {"_id": user, "enabled": false}).unwrap();
        assert!(!p.enabled);
    }
}

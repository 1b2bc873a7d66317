//! Documents as stored, and their JSON views as clients see them.

use bson::oid::ObjectId;
use chrono::{DateTime, SecondsFormat, Utc};
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Public,
    Private,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Room {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RoomKind,
    pub created_by: ObjectId,
    #[serde(with = "bson::serde_helpers::chrono_datetime_as_bson_datetime")]
    pub created_at: DateTime<Utc>,
    /// The last seq handed out in this room.
    #[serde(default)]
    pub last_seq: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
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
}

impl Member {
    pub fn key(room_id: ObjectId, user_id: ObjectId) -> String {
        format!("{}:{}", room_id.to_hex(), user_id.to_hex())
    }

    pub fn new(room_id: ObjectId, user_id: ObjectId, role: Role, joined_at: DateTime<Utc>) -> Self {
        Member { key: Member::key(room_id, user_id), room_id, user_id, role, joined_at }
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
}

/// RFC 3339, UTC, millisecond precision (what BSON dates hold).
pub fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub created_at: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            id: u.id.to_hex(),
            username: u.username.clone(),
            email: u.email.clone(),
            created_at: rfc3339(&u.created_at),
            display_name: u.display_name.clone(),
            avatar_url: u.avatar_url.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RoomView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RoomKind,
    pub created_by: String,
    pub created_at: String,
}

impl From<&Room> for RoomView {
    fn from(r: &Room) -> Self {
        RoomView {
            id: r.id.to_hex(),
            name: r.name.clone(),
            kind: r.kind,
            created_by: r.created_by.to_hex(),
            created_at: rfc3339(&r.created_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub room_id: String,
    pub user_id: String,
    pub role: Role,
    pub joined_at: String,
}

impl From<&Member> for MemberView {
    fn from(m: &Member) -> Self {
        MemberView {
            room_id: m.room_id.to_hex(),
            user_id: m.user_id.to_hex(),
            role: m.role,
            joined_at: rfc3339(&m.joined_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    pub id: String,
    pub room_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub content: &'a str,
    pub client_msg_id: Option<&'a str>,
    pub timestamp: String,
}

impl<'a> From<&'a Message> for MessageView<'a> {
    fn from(m: &'a Message) -> Self {
        MessageView {
            id: m.id.to_hex(),
            room_id: m.room_id.to_hex(),
            seq: m.seq,
            sender_id: m.sender_id.to_hex(),
            content: &m.content,
            client_msg_id: m.client_msg_id.as_deref(),
            timestamp: rfc3339(&m.timestamp),
        }
    }
}

/// A user as other users see them: no email.
#[derive(Debug, Serialize)]
pub struct ProfileView {
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    pub created_at: String,
}

impl From<&User> for ProfileView {
    fn from(u: &User) -> Self {
        ProfileView {
            id: u.id.to_hex(),
            username: u.username.clone(),
            display_name: u.display_name.clone(),
            avatar_url: u.avatar_url.clone(),
            created_at: rfc3339(&u.created_at),
        }
    }
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

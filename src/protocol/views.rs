//! What clients see of stored things: the JSON shapes REST answers and
//! socket frames carry (docs/api.md), built from the store's documents.

use crate::clock::rfc3339;
use crate::store::model::SYSTEM_SENDER;
use crate::store::{Member, Message, Role, Room, RoomKind, User, UserRole};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An account as its owner (and administrators) see it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Account)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    /// `user` or `admin`.
    #[schema(value_type = UserRole)]
    pub role: &'static str,
    /// Present while the user is banned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned: Option<BanView>,
}

/// A ban, as administrators see it on a user.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Ban)]
pub struct BanView {
    #[schema(format = DateTime)]
    pub at: String,
    /// The administrator who banned the user.
    pub by: String,
    pub reason: Option<String>,
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
            role: u.role.as_str(),
            banned: u.banned.as_ref().map(|b| BanView {
                at: rfc3339(&b.at),
                by: b.by.to_hex(),
                reason: b.reason.clone(),
            }),
        }
    }
}

/// A room.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = Room)]
pub struct RoomView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RoomKind,
    pub created_by: String,
    #[schema(format = DateTime)]
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

/// A membership: a user in a room, with their read status.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Membership)]
pub struct MemberView {
    pub room_id: String,
    pub user_id: String,
    pub role: Role,
    #[schema(format = DateTime)]
    pub joined_at: String,
    pub delivered_up_to: Option<String>,
    pub read_up_to: Option<String>,
}

impl From<&Member> for MemberView {
    fn from(m: &Member) -> Self {
        MemberView {
            room_id: m.room_id.to_hex(),
            user_id: m.user_id.to_hex(),
            role: m.role,
            joined_at: rfc3339(&m.joined_at),
            delivered_up_to: m.delivered_up_to.map(|id| id.to_hex()),
            read_up_to: m.read_up_to.map(|id| id.to_hex()),
        }
    }
}

/// A stored message, or the tombstone of a deleted one.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Message)]
pub struct MessageView<'a> {
    pub id: String,
    pub room_id: String,
    /// The room's storage order: only grows, never reused, may skip.
    pub seq: i64,
    pub sender_id: String,
    /// Null for a tombstone.
    pub content: Option<&'a str>,
    pub client_msg_id: Option<&'a str>,
    #[schema(format = DateTime)]
    pub timestamp: String,
    #[schema(format = DateTime)]
    pub edited_at: Option<String>,
    pub deleted: bool,
    /// Posted by a backend through the server API; then `sender_id` is the
    /// all-zero id (`SYSTEM_SENDER`), which no user has. Absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub system: bool,
}

impl<'a> From<&'a Message> for MessageView<'a> {
    fn from(m: &'a Message) -> Self {
        MessageView {
            id: m.id.to_hex(),
            room_id: m.room_id.to_hex(),
            seq: m.seq,
            sender_id: m.sender_id.to_hex(),
            content: (!m.deleted).then_some(m.content.as_str()),
            client_msg_id: m.client_msg_id.as_deref(),
            timestamp: rfc3339(&m.timestamp),
            edited_at: m.edited_at.as_ref().map(rfc3339),
            deleted: m.deleted,
            system: m.sender_id == SYSTEM_SENDER,
        }
    }
}

/// A user as other users see them: no email.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Profile)]
pub struct ProfileView {
    pub id: String,
    pub username: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    #[schema(format = DateTime)]
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Message {
        Message::sample()
    }

    #[test]
    fn a_tombstone_shows_no_content() {
        let mut m = stored();
        let v = serde_json::to_value(MessageView::from(&m)).unwrap();
        assert_eq!(
            (v["content"].as_str(), v["deleted"].as_bool(), v["edited_at"].is_null()),
            (Some("hello"), Some(false), true)
        );
        m.deleted = true;
        let v = serde_json::to_value(MessageView::from(&m)).unwrap();
        assert!(v["content"].is_null());
        assert_eq!((v["deleted"].as_bool(), v["seq"].as_i64()), (Some(true), Some(7)));
    }
}

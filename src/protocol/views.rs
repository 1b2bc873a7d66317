//! What clients see of stored things: the JSON shapes REST answers and
//! socket frames carry (docs/api.md), built from the store's documents.

use crate::clock::rfc3339;
use crate::store::model::SYSTEM_SENDER;
use crate::store::{Member, Message, Role, Room, RoomKind, User};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: String,
    pub created_at: String,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
    /// `user` or `admin`.
    pub role: &'static str,
    /// Present while the user is banned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub banned: Option<BanView>,
}

/// A ban, as administrators see it on a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BanView {
    pub at: String,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    pub id: String,
    pub room_id: String,
    pub seq: i64,
    pub sender_id: String,
    /// `None` for a tombstone.
    pub content: Option<&'a str>,
    pub client_msg_id: Option<&'a str>,
    pub timestamp: String,
    pub edited_at: Option<String>,
    pub deleted: bool,
    /// Posted by a backend through the server API (`sender_id` is [`SYSTEM_SENDER`]).
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

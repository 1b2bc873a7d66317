//! A user's room list: every room they can see, with their role, unread
//! count, the last message, and for direct rooms the other user. Served from
//! the Redis cache while fresh (see `crate::cache`), computed from MongoDB
//! otherwise.

use std::collections::HashMap;

use bson::oid::ObjectId;
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::Caller;
use crate::cache::{Entry, Version};
use crate::error::Result;
use crate::node::App;
use crate::store::model::{rfc3339, MessageView};
use crate::store::{HistoryQuery, Member, Role, Room, RoomKind};

/// Unread counts stop at this (clients show "999+").
pub const UNREAD_CAP: i64 = 1000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomSummary {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: RoomKind,
    pub created_by: String,
    pub created_at: String,
    /// The caller's role; null in a public room they have not joined.
    pub role: Option<Role>,
    /// Messages from others after the caller's read cursor (members only).
    pub unread_count: Option<i64>,
    pub last_message: Option<Value>,
    /// The other user of a direct room.
    pub peer: Option<Peer>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    pub id: String,
    pub username: Option<String>,
}

/// The caller's rooms, most recently active first.
pub async fn list(app: &App, caller: &Caller) -> Result<Vec<RoomSummary>> {
    let user = caller.user_id;
    if let Some(rooms) = app.cache.get::<Vec<RoomSummary>>(Entry::Rooms(user)).await {
        return Ok(rooms);
    }
    // Versions first, then the data they cover (see `crate::cache`).
    let outer = app.cache.snapshot(&[Version::User(user), Version::PublicRooms]).await;
    let memberships: HashMap<ObjectId, Member> =
        app.store.memberships(user).await?.into_iter().map(|m| (m.room_id, m)).collect();
    let rooms = app.store.rooms_visible_to(user).await?;
    let versions: Vec<Version> = rooms.iter().map(|r| Version::Room(r.id)).collect();
    let inner = app.cache.snapshot(&versions).await;
    let peers = peer_names(app, &rooms, user).await?;
    // Concurrent, bounded by the store's connection pool.
    let mut summaries =
        try_join_all(rooms.iter().map(|room| summarize(app, room, memberships.get(&room.id), user, &peers))).await?;
    summaries.sort_by(|a, b| activity(b).cmp(activity(a)));
    if let (Some(outer), Some(inner)) = (outer, inner) {
        app.cache.put(Entry::Rooms(user), outer.and(inner), &summaries).await;
    }
    Ok(summaries)
}

/// When a room was last active: its last message, or its creation.
fn activity(r: &RoomSummary) -> &str {
    r.last_message.as_ref().and_then(|m| m["timestamp"].as_str()).unwrap_or(&r.created_at)
}

async fn peer_names(app: &App, rooms: &[Room], user: ObjectId) -> Result<HashMap<ObjectId, String>> {
    let ids: Vec<ObjectId> = rooms.iter().filter_map(|r| r.peer_of(user)).collect();
    Ok(app.store.users(&ids).await?.into_iter().map(|u| (u.id, u.username)).collect())
}

async fn summarize(
    app: &App,
    room: &Room,
    member: Option<&Member>,
    user: ObjectId,
    peers: &HashMap<ObjectId, String>,
) -> Result<RoomSummary> {
    let newest = HistoryQuery { room_id: room.id, limit: 1, ..Default::default() };
    let (last, _) = app.store.history(&newest).await?;
    let unread_count = match member {
        Some(m) => Some(app.store.count_unread(room.id, user, m.read_seq, UNREAD_CAP).await?),
        None => None,
    };
    Ok(RoomSummary {
        id: room.id.to_hex(),
        name: room.name.clone(),
        kind: room.kind,
        created_by: room.created_by.to_hex(),
        created_at: rfc3339(&room.created_at),
        role: member.map(|m| m.role),
        unread_count,
        last_message: last.first().map(|m| serde_json::json!(MessageView::from(m))),
        peer: room.peer_of(user).map(|p| Peer { id: p.to_hex(), username: peers.get(&p).cloned() }),
    })
}

//! A user's room list: every room they can see, with their role, unread
//! count, the last message, and for direct rooms the other user; most
//! recently active first, in pages.
//!
//! The cost of a list does not grow with one query per room: the rooms and
//! memberships are one read each, every room's last seq comes from its
//! counter in Redis (one `MGET`), and the last messages are one read of
//! those (room, seq) pairs. Only a room whose counter is gone, or whose
//! newest seq is not stored, is read on its own. Unread counts are counted
//! for the rooms of the page asked for. The first page is served from the
//! Redis cache while fresh (see `crate::cache`).

use std::collections::HashMap;

use bson::oid::ObjectId;
use futures::future::try_join_all;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Rooms;
use crate::auth::Caller;
use crate::cache::{Entry, Version};
use crate::error::{Error, Result};
use crate::protocol::views::{MessageView, RoomView};
use crate::store::{HistoryQuery, Member, Message, Role, Room};

/// Unread counts stop at this (clients show "999+").
pub const UNREAD_CAP: i64 = 1000;

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

/// A room in the caller's list: the room, the caller's place in it, and its
/// latest message.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomSummary {
    /// The room as every answer shows it.
    #[serde(flatten)]
    pub room: RoomView,
    /// The caller's role; null in a public room they have not joined.
    pub role: Option<Role>,
    /// Messages from others after the caller's read cursor (members only).
    pub unread_count: Option<i64>,
    #[schema(value_type = Option<MessageView>)]
    pub last_message: Option<Value>,
    /// The other user of a direct room.
    pub peer: Option<Peer>,
}

/// The other user of a direct room.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Peer {
    pub id: String,
    pub username: Option<String>,
}

/// One page of the list, and where the next one starts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoomPage {
    pub rooms: Vec<RoomSummary>,
    /// Give it as `cursor` for the next page; null on the last one.
    pub next_cursor: Option<String>,
}

/// Where a page starts: after the room with this activity and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListCursor {
    activity_ms: i64,
    room: ObjectId,
}

impl ListCursor {
    /// Parses a cursor a previous page gave.
    pub fn parse(raw: &str) -> Result<ListCursor> {
        let bad = || Error::invalid("cursor", "is not a cursor this endpoint gave");
        let (ms, hex) = raw.split_once('-').ok_or_else(bad)?;
        Ok(ListCursor {
            activity_ms: ms.parse().map_err(|_| bad())?,
            room: ObjectId::parse_str(hex).map_err(|_| bad())?,
        })
    }

    fn encode(&self) -> String {
        format!("{}-{}", self.activity_ms, self.room.to_hex())
    }

    fn of(summary: &Listed) -> ListCursor {
        ListCursor { activity_ms: summary.activity_ms, room: summary.room }
    }
}

/// A summary with what the list is ordered by.
struct Listed {
    activity_ms: i64,
    room: ObjectId,
    member: Option<Member>,
    summary: RoomSummary,
}

impl Rooms {
    /// A page of the caller's rooms, most recently active first (ties: newer id
    /// first). `cursor` continues after a previous page.
    pub async fn list(&self, caller: &Caller, limit: i64, cursor: Option<ListCursor>) -> Result<RoomPage> {
        let user = caller.user_id;
        let cacheable = cursor.is_none() && limit == DEFAULT_PAGE;
        if cacheable {
            if let Some(page) = self.cache.get::<RoomPage>(Entry::Rooms(user)).await {
                return Ok(page);
            }
        }
        // Versions first, then the data they cover (see `crate::cache`).
        let outer = self.cache.snapshot(&[Version::User(user), Version::PublicRooms]).await;
        let memberships: HashMap<ObjectId, Member> =
            self.store.memberships(user).await?.into_iter().map(|m| (m.room_id, m)).collect();
        let member_rooms: Vec<ObjectId> = memberships.keys().copied().collect();
        let rooms = self.store.rooms_listed(&member_rooms).await?;
        let versions: Vec<Version> = rooms.iter().map(|r| Version::Room(r.id)).collect();
        let inner = self.cache.snapshot(&versions).await;
        let (last, peers) = tokio::try_join!(self.last_messages(&rooms), self.peer_names(&rooms, user))?;
        let mut listed: Vec<Listed> = rooms
            .iter()
            .map(|room| {
                let last = last.get(&room.id);
                let at = last.map_or(room.created_at, |m| m.timestamp);
                Listed {
                    activity_ms: at.timestamp_millis(),
                    room: room.id,
                    member: memberships.get(&room.id).cloned(),
                    summary: summarize(room, memberships.get(&room.id), last, user, &peers),
                }
            })
            .collect();
        listed.sort_by_key(|l| std::cmp::Reverse((l.activity_ms, l.room)));
        let start = match cursor {
            Some(c) => listed.partition_point(|l| (l.activity_ms, l.room) >= (c.activity_ms, c.room)),
            None => 0,
        };
        let end = (start + limit.clamp(1, MAX_PAGE) as usize).min(listed.len());
        let next_cursor = (end < listed.len() && end > start).then(|| ListCursor::of(&listed[end - 1]).encode());
        let mut page: Vec<Listed> = listed.drain(start..end).collect();
        // Unread counts for the rooms shown: concurrent, bounded by the store's pool.
        let counts = try_join_all(page.iter().map(|l| async move {
            match &l.member {
                Some(m) => self.store.count_unread(l.room, user, m.read_seq, UNREAD_CAP).await.map(Some),
                None => Ok(None),
            }
        }))
        .await?;
        for (l, count) in page.iter_mut().zip(counts) {
            l.summary.unread_count = count;
        }
        let page = RoomPage { rooms: page.into_iter().map(|l| l.summary).collect(), next_cursor };
        if let (true, Some(outer), Some(inner)) = (cacheable, outer, inner) {
            self.cache.put(Entry::Rooms(user), outer.and(inner), &page).await;
        }
        Ok(page)
    }

    /// Each room's newest stored message: its seq from the room's counter (or
    /// from the room document, whose counter takes over while Redis is out),
    /// all of them in one read; a room without a counter, or whose newest seq
    /// is not stored (a send in flight, or one that failed), on its own.
    async fn last_messages(&self, rooms: &[Room]) -> Result<HashMap<ObjectId, Message>> {
        let ids: Vec<ObjectId> = rooms.iter().map(|r| r.id).collect();
        let counters = self.seqs.current_many(&ids).await;
        let seqs: Vec<Option<i64>> =
            counters.iter().zip(rooms).map(|(counter, room)| counter.map(|c| c.max(room.last_seq))).collect();
        let at: Vec<(ObjectId, i64)> =
            ids.iter().zip(&seqs).filter_map(|(id, seq)| seq.filter(|s| *s > 0).map(|s| (*id, s))).collect();
        let mut found: HashMap<ObjectId, Message> =
            self.store.messages_at(&at).await?.into_iter().map(|m| (m.room_id, m)).collect();
        // Rooms with a counter at 0 have no message yet; the rest not found are read one by one.
        let unknown: Vec<ObjectId> = ids
            .iter()
            .zip(&seqs)
            .filter(|(id, seq)| **seq != Some(0) && !found.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        let newest = try_join_all(unknown.iter().map(|room| async move {
            let query = HistoryQuery { room_id: *room, limit: 1, ..Default::default() };
            self.store.history(&query).await.map(|(page, _)| page.into_iter().next())
        }))
        .await?;
        found.extend(newest.into_iter().flatten().map(|m| (m.room_id, m)));
        Ok(found)
    }

    async fn peer_names(&self, rooms: &[Room], user: ObjectId) -> Result<HashMap<ObjectId, String>> {
        let ids: Vec<ObjectId> = rooms.iter().filter_map(|r| r.peer_of(user)).collect();
        Ok(self.store.users(&ids).await?.into_iter().map(|u| (u.id, u.username)).collect())
    }
}

fn summarize(
    room: &Room,
    member: Option<&Member>,
    last: Option<&Message>,
    user: ObjectId,
    peers: &HashMap<ObjectId, String>,
) -> RoomSummary {
    RoomSummary {
        room: RoomView::from(room),
        role: member.map(|m| m.role),
        unread_count: None,
        last_message: last.map(|m| serde_json::json!(MessageView::from(m))),
        peer: room.peer_of(user).map(|p| Peer { id: p.to_hex(), username: peers.get(&p).cloned() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        let c = ListCursor { activity_ms: 1_795_554_095_663, room: ObjectId::new() };
        assert_eq!(ListCursor::parse(&c.encode()).unwrap(), c);
        for bad in ["", "x", "12-nope", "-", "abc-507f1f77bcf86cd799439011"] {
            assert_eq!(ListCursor::parse(bad).unwrap_err().status().as_u16(), 422, "{bad:?}");
        }
    }
}

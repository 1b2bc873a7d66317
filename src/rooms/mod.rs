//! Rooms and membership rules: who may see, join and read a room.
//!
//! - `direct`: the one room of a pair of users, made by their first message.
//! - `members`: invitations, roles, removal (and its effect on live sockets).
//! - `list`: a user's rooms with unread counts and last messages, cached.

pub mod direct;
pub mod list;
pub mod members;

use std::sync::Arc;

use bson::oid::ObjectId;
use chrono::Utc;
use serde::Deserialize;

use crate::audit::Audit;
use crate::auth::Caller;
use crate::bus::Bus;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::seq::Seqs;
use crate::store::Store;
use crate::store::{Member, Role, Room, RoomKind, StoreError};
use crate::validate;

/// A room as `POST /rooms` takes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewRoom {
    /// 1–64 characters, no leading or trailing spaces, no control,
    /// direction-override or zero-width characters; unique ignoring case;
    /// `dm:` starts only direct rooms' names.
    #[schema(min_length = 1, max_length = 64)]
    pub name: String,
    /// `public` or `private` (direct rooms are made by direct messages).
    #[serde(rename = "type")]
    #[schema(pattern = "^(public|private)$")]
    pub kind: String,
}

/// Rooms and who is in them. Holds what it touches: the store, the rooms'
/// seq counters (a new room's starts at 0; an ended membership is marked
/// beside them), the bus (membership news), the cache (versions to bump).
pub struct Rooms {
    store: Arc<Store>,
    seqs: Seqs,
    bus: Arc<Bus>,
    cache: Cache,
    audit: Arc<Audit>,
}

impl Rooms {
    pub fn new(store: Arc<Store>, seqs: Seqs, bus: Arc<Bus>, cache: Cache, audit: Arc<Audit>) -> Self {
        Rooms { store, seqs, bus, cache, audit }
    }

    pub async fn create(&self, caller: &Caller, r: NewRoom) -> Result<Room> {
        validate::room_name(&r.name)?;
        let kind = match r.kind.as_str() {
            "public" => RoomKind::Public,
            "private" => RoomKind::Private,
            _ => return Err(Error::invalid("type", "must be \"public\" or \"private\"")),
        };
        if self.store.room_name_taken(&r.name).await? {
            return Err(name_taken());
        }
        let room = Room::new(r.name, kind, caller.user_id, Vec::new());
        match self.store.insert_room(&room).await {
            Ok(()) => {}
            Err(StoreError::Duplicate) => return Err(name_taken()),
            Err(e) => return Err(e.into()),
        }
        self.seqs.started(room.id).await;
        let owner = Member::new(room.id, caller.user_id, Role::Owner, room.created_at);
        self.store.add_member(&owner).await?;
        if kind == RoomKind::Public {
            self.cache.public_rooms_changed().await;
        } else {
            self.cache.user_changed(caller.user_id).await;
        }
        Ok(room)
    }

    pub(crate) async fn existing(&self, room_id: ObjectId) -> Result<Room> {
        self.store.room(room_id).await?.ok_or_else(|| Error::NotFound("room not found".into()))
    }

    /// Joins a public room (idempotent); a private room only confirms an
    /// existing membership.
    pub async fn join(&self, caller: &Caller, room_id: ObjectId) -> Result<Member> {
        let room = self.existing(room_id).await?;
        if let Some(member) = self.store.member(room_id, caller.user_id).await? {
            return Ok(member);
        }
        match room.kind {
            RoomKind::Public => {}
            RoomKind::Private => {
                return Err(Error::Forbidden("this room is private: members join by invitation".into()));
            }
            RoomKind::Direct => return Err(Error::Forbidden("a direct conversation has only its two users".into())),
        }
        let member = Member::new(room_id, caller.user_id, Role::Member, Utc::now());
        let member = self.store.add_member(&member).await?;
        self.seqs.membership_started(room_id, caller.user_id).await;
        self.cache.user_changed(caller.user_id).await;
        self.cache.members_changed(room_id, &[caller.user_id], &[]).await;
        Ok(member)
    }

    /// The room, if the caller may read its history: public rooms to anyone
    /// signed in, private and direct rooms to members.
    pub async fn readable(&self, caller: &Caller, room_id: ObjectId) -> Result<Room> {
        let room = self.existing(room_id).await?;
        if room.kind != RoomKind::Public && self.store.member(room_id, caller.user_id).await?.is_none() {
            return Err(Error::Forbidden("you are not a member of this room".into()));
        }
        Ok(room)
    }

    /// The caller's membership; fails unless the caller is a member (only
    /// members may post, and acknowledge messages).
    pub async fn require_member(&self, caller: &Caller, room_id: ObjectId) -> Result<Member> {
        if let Some(member) = self.store.member(room_id, caller.user_id).await? {
            return Ok(member);
        }
        self.existing(room_id).await?;
        Err(Error::Forbidden("you are not a member of this room".into()))
    }
}

fn name_taken() -> Error {
    Error::Conflict { code: "room_name_taken", message: "a room with this name already exists".into() }
}

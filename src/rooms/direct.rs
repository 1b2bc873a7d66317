//! Direct conversations: exactly one room per pair of users, created by the
//! first message either sends. The room's name is derived from the pair and
//! names are unique, so two first messages racing on two nodes still make
//! one room. Direct rooms are visible only to their two members and cannot
//! be joined by anyone else.

use bson::oid::ObjectId;

use super::Rooms;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::store::{Member, Role, Room, RoomKind, StoreError};

impl Rooms {
    async fn peer_exists(&self, caller: &Caller, peer: ObjectId, field: &'static str) -> Result<()> {
        if peer == caller.user_id {
            return Err(Error::invalid(field, "a direct conversation needs another user"));
        }
        self.store.user(peer).await?.ok_or_else(|| Error::NotFound("user not found".into()))?;
        Ok(())
    }

    /// The direct room of the caller and `peer`, created on first use, with the
    /// caller's membership in place.
    pub async fn open(&self, caller: &Caller, peer: ObjectId) -> Result<Room> {
        let name = Room::direct_name(caller.user_id, peer);
        if let Some(room) = self.store.room_by_name(&name).await? {
            // Both memberships are written after the room: heal a crash between.
            if self.store.member(room.id, caller.user_id).await?.is_none() {
                self.add_both(&room).await?;
            }
            return Ok(room);
        }
        self.peer_exists(caller, peer, "to_user_id").await?;
        let mut peers = vec![caller.user_id, peer];
        peers.sort_by_key(|id| id.bytes());
        let room = Room::new(name.clone(), RoomKind::Direct, caller.user_id, peers);
        let room = match self.store.insert_room(&room).await {
            Ok(()) => {
                self.seqs.started(room.id).await;
                room
            }
            Err(StoreError::Duplicate) => self
                .store
                .room_by_name(&name)
                .await?
                .ok_or_else(|| Error::Internal("direct room vanished after a duplicate insert".into()))?,
            Err(e) => return Err(e.into()),
        };
        self.add_both(&room).await?;
        Ok(room)
    }

    async fn add_both(&self, room: &Room) -> Result<()> {
        for user in &room.peers {
            self.store.add_member(&Member::new(room.id, *user, Role::Member, room.created_at)).await?;
            self.cache.user_changed(*user).await;
        }
        self.cache.members_changed(room.id, &room.peers, &[]).await;
        Ok(())
    }

    /// The direct room of the caller and `peer`, if they have talked.
    pub async fn find(&self, caller: &Caller, peer: ObjectId) -> Result<Option<Room>> {
        let found = self.store.room_by_name(&Room::direct_name(caller.user_id, peer)).await?;
        if found.is_none() {
            self.peer_exists(caller, peer, "peer").await?;
        }
        Ok(found)
    }
}

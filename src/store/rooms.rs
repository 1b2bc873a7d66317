//! Rooms, their members, and members' read and delivery cursors.

use std::future::IntoFuture;

use bson::{doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;

use super::mongo::{id_pairs, split_reads, timed};
use super::{Cursor, Member, Role, Room, Store, StoreError, StoreResult};

impl Store {
    pub async fn insert_room(&self, room: &Room) -> StoreResult<()> {
        timed("insert_room", self.rooms.insert_one(room)).await.map(|_| ())
    }

    pub async fn room(&self, id: ObjectId) -> StoreResult<Option<Room>> {
        timed("find_room", self.rooms.find_one(doc! {"_id": id})).await
    }

    pub async fn room_name_taken(&self, name: &str) -> StoreResult<bool> {
        let found = self.rooms.find_one(doc! {"name_key": Room::key_of(name)});
        Ok(timed("find_room", found).await?.is_some())
    }

    /// Public rooms and the private rooms `user_id` belongs to, oldest first.
    pub async fn rooms_visible_to(&self, user_id: ObjectId) -> StoreResult<Vec<Room>> {
        let memberships: Vec<Member> =
            timed("find_members", async { self.members.find(doc! {"user_id": user_id}).await?.try_collect().await })
                .await?;
        let ids: Vec<ObjectId> = memberships.iter().map(|m| m.room_id).collect();
        self.rooms_listed(&ids).await
    }

    /// Public rooms and the rooms `ids` (a user's memberships), in one read
    /// (on FerretDB the public rooms, then one read by id for each other
    /// room, timed as one operation: see [`Store::equality_only`]).
    pub async fn rooms_listed(&self, ids: &[ObjectId]) -> StoreResult<Vec<Room>> {
        if self.equality_only().await {
            let rooms = timed("find_rooms", async {
                let public: Vec<Room> = self.rooms.find(doc! {"type": "public"}).await?.try_collect().await?;
                let known: std::collections::HashSet<ObjectId> = public.iter().map(|r| r.id).collect();
                let each: Vec<_> = ids
                    .iter()
                    .filter(|id| !known.contains(id))
                    .map(|id| self.rooms.find_one(doc! {"_id": id}).into_future())
                    .collect();
                let found: Vec<Option<Room>> = split_reads(each).await?;
                Ok(public.into_iter().chain(found.into_iter().flatten()).collect::<Vec<Room>>())
            });
            let mut rooms = rooms.await?;
            rooms.sort_by_key(|r| (r.created_at, r.id.bytes()));
            rooms.dedup_by_key(|r| r.id);
            return Ok(rooms);
        }
        let filter = doc! {"$or": [{"type": "public"}, {"_id": {"$in": ids}}]};
        timed("find_rooms", async {
            self.rooms.find(filter).sort(doc! {"created_at": 1, "_id": 1}).await?.try_collect().await
        })
        .await
    }

    pub async fn room_by_name(&self, name: &str) -> StoreResult<Option<Room>> {
        timed("find_room", self.rooms.find_one(doc! {"name": name})).await
    }

    /// Adds a member unless already there; returns the membership as stored.
    pub async fn add_member(&self, member: &Member) -> StoreResult<Member> {
        match timed("insert_member", self.members.insert_one(member)).await {
            Ok(_) => Ok(member.clone()),
            Err(StoreError::Duplicate) => self
                .member(member.room_id, member.user_id)
                .await?
                .ok_or_else(|| StoreError::Other("membership vanished after a duplicate insert".into())),
            Err(e) => Err(e),
        }
    }

    pub async fn member(&self, room_id: ObjectId, user_id: ObjectId) -> StoreResult<Option<Member>> {
        timed("find_member", self.members.find_one(doc! {"_id": Member::key(room_id, user_id)})).await
    }

    /// Whether there was a membership to remove.
    pub async fn remove_member(&self, room_id: ObjectId, user_id: ObjectId) -> StoreResult<bool> {
        let out = timed("delete_member", self.members.delete_one(doc! {"_id": Member::key(room_id, user_id)})).await?;
        Ok(out.deleted_count > 0)
    }

    /// Whether the member exists (and now has `role`).
    pub async fn set_role(&self, room_id: ObjectId, user_id: ObjectId, role: Role) -> StoreResult<bool> {
        let role = bson::to_bson(&role).map_err(|e| StoreError::Other(Box::new(e)))?;
        let filter = doc! {"_id": Member::key(room_id, user_id)};
        let out = timed("update_member", self.members.update_one(filter, doc! {"$set": {"role": role}})).await?;
        Ok(out.matched_count > 0)
    }

    /// A room's members, oldest first, at most `limit`.
    pub async fn room_members(&self, room_id: ObjectId, limit: i64) -> StoreResult<Vec<Member>> {
        timed("find_members", async {
            self.members
                .find(doc! {"room_id": room_id})
                .sort(doc! {"joined_at": 1, "_id": 1})
                .limit(limit)
                .await?
                .try_collect()
                .await
        })
        .await
    }

    /// Every membership of one user.
    pub async fn memberships(&self, user_id: ObjectId) -> StoreResult<Vec<Member>> {
        timed("find_members", async { self.members.find(doc! {"user_id": user_id}).await?.try_collect().await }).await
    }

    /// The rooms each of `users` is a member of, as (user, room) pairs: one
    /// read for a whole batch of presence changes.
    pub async fn rooms_of(&self, users: &[ObjectId]) -> StoreResult<Vec<(ObjectId, ObjectId)>> {
        id_pairs(&self.members, "find_members", "user_id", users, "room_id").await
    }

    /// Moves a member's cursor forward to `seq` (never back); returns the
    /// cursor's previous seq if it moved.
    pub async fn advance_cursor(
        &self,
        room_id: ObjectId,
        user_id: ObjectId,
        cursor: Cursor,
        seq: i64,
        message_id: ObjectId,
    ) -> StoreResult<Option<i64>> {
        let (seq_field, id_field) = match cursor {
            Cursor::Delivered => ("delivered_seq", "delivered_up_to"),
            Cursor::Read => ("read_seq", "read_up_to"),
        };
        // The filter makes it forward-only and atomic: of two racing updates
        // the older cursor simply matches nothing.
        let filter = doc! {"_id": Member::key(room_id, user_id), "$or": [
            {seq_field: {"$lt": seq}},
            {seq_field: {"$exists": false}},
        ]};
        let before = timed(
            "advance_cursor",
            self.members
                .find_one_and_update(filter, doc! {"$set": {seq_field: seq, id_field: message_id}})
                .return_document(ReturnDocument::Before),
        )
        .await?;
        Ok(before.map(|m| match cursor {
            Cursor::Delivered => m.delivered_seq,
            Cursor::Read => m.read_seq,
        }))
    }

    /// Messages after `after_seq` in the room that others sent, up to `cap`.
    pub async fn count_unread(
        &self,
        room_id: ObjectId,
        user_id: ObjectId,
        after_seq: i64,
        cap: i64,
    ) -> StoreResult<i64> {
        let filter = doc! {
            "room_id": room_id,
            "seq": {"$gt": after_seq},
            "sender_id": {"$ne": user_id},
            "deleted": {"$ne": true},
        };
        let n = timed("count_unread", self.messages.count_documents(filter).limit(cap as u64)).await?;
        Ok(n as i64)
    }

    /// Up to `limit` of a room's members in user-id order, after `after`
    /// (a user id): paging through a room of any size.
    pub async fn room_members_page(
        &self,
        room_id: ObjectId,
        after: Option<ObjectId>,
        limit: i64,
    ) -> StoreResult<Vec<Member>> {
        let mut filter = doc! {"room_id": room_id};
        if let Some(after) = after {
            filter.insert("user_id", doc! {"$gt": after});
        }
        timed("find_members", async {
            self.members.find(filter).sort(doc! {"user_id": 1}).limit(limit).await?.try_collect().await
        })
        .await
    }
}

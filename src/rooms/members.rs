//! Membership management: owners and moderators invite and remove members,
//! owners appoint moderators, members leave.
//!
//! Every change is one MongoDB write followed by the live effects: cache
//! versions bumped, the room's subscribers told (`member_added`,
//! `member_updated`, `member_removed`), the affected user told on their own
//! topic (`room_added`, `room_removed`), and a removed user's sockets taken
//! out of the room on every node by an evict event, so they stop receiving
//! its traffic at once.

use bson::oid::ObjectId;
use chrono::Utc;
use serde::Serialize;

use super::Rooms;
use crate::audit::{self, Actor, Source};
use crate::auth::Caller;
use crate::bus::{Event, Topic};
use crate::error::{Error, Result};
use crate::protocol::views::MemberView;
use crate::protocol::ServerEvent;
use crate::store::{Member, Role, Room, RoomKind, User};

/// Most members `GET /rooms/{id}/members` lists.
pub const MAX_LISTED: i64 = 1000;

/// Whether a member with role `actor` may give someone `role` (invite or
/// change): owners appoint moderators and members; moderators invite members.
pub fn may_assign(actor: Role, role: Role) -> bool {
    match actor {
        Role::Owner => role != Role::Owner,
        Role::Moderator => role == Role::Member,
        Role::Member => false,
    }
}

/// Whether `actor` may remove a member with role `target` (not themselves).
pub fn may_remove(actor: Role, target: Role) -> bool {
    match actor {
        Role::Owner => target != Role::Owner,
        Role::Moderator => target == Role::Member,
        Role::Member => false,
    }
}

pub fn parse_role(raw: &str) -> Result<Role> {
    match raw {
        "member" => Ok(Role::Member),
        "moderator" => Ok(Role::Moderator),
        _ => Err(Error::invalid("role", "must be \"member\" or \"moderator\"")),
    }
}

impl Rooms {
    /// The room and the caller's membership, for a change of its members.
    async fn managed(&self, caller: &Caller, room_id: ObjectId) -> Result<(Room, Member)> {
        let room = self.existing(room_id).await?;
        if room.kind == RoomKind::Direct {
            return Err(Error::Forbidden("a direct conversation's members cannot change".into()));
        }
        let member = self.require_member(caller, room_id).await?;
        Ok((room, member))
    }

    async fn existing_user(&self, user_id: ObjectId) -> Result<User> {
        self.store.user(user_id).await?.ok_or_else(|| Error::NotFound("user not found".into()))
    }

    /// Adds `user_id` to the room with `role`; returns the membership and
    /// whether it is new (an existing member is returned unchanged).
    pub async fn add(
        &self,
        caller: &Caller,
        room_id: ObjectId,
        user_id: ObjectId,
        role: Role,
    ) -> Result<(Member, bool)> {
        let (_, actor) = self.managed(caller, room_id).await?;
        if !may_assign(actor.role, role) {
            return Err(Error::Forbidden(match actor.role {
                Role::Member => "only the room's owner and moderators add members".into(),
                _ => "only the room's owner appoints moderators".into(),
            }));
        }
        self.existing_user(user_id).await?;
        if let Some(member) = self.store.member(room_id, user_id).await? {
            return Ok((member, false));
        }
        let member = self.store.add_member(&Member::new(room_id, user_id, role, Utc::now())).await?;
        self.seqs.membership_started(room_id, user_id).await;
        self.cache.user_changed(user_id).await;
        self.cache.members_changed(room_id, &[user_id], &[]).await;
        let by = caller.user_id;
        self.announce(room_id, ServerEvent::MemberAdded { member: &member, by }).await;
        let frame = ServerEvent::RoomAdded { room: room_id, by }.encode();
        self.publish(Topic::User(user_id), Event::Ephemeral { skip: None, frame: &frame }).await;
        Ok((member, true))
    }

    /// Changes a member's role (owner only; the owner's own role is fixed).
    pub async fn set_role(
        &self,
        caller: &Caller,
        room_id: ObjectId,
        user_id: ObjectId,
        role: Role,
        from: &Source,
    ) -> Result<Member> {
        let (_, actor) = self.managed(caller, room_id).await?;
        if actor.role != Role::Owner {
            return Err(Error::Forbidden("only the room's owner changes roles".into()));
        }
        let mut target = self.store.member(room_id, user_id).await?.ok_or_else(not_a_member)?;
        if target.role == Role::Owner {
            return Err(Error::Forbidden("the owner's role cannot change".into()));
        }
        if target.role != role {
            if !self.store.set_role(room_id, user_id, role).await? {
                return Err(not_a_member());
            }
            let was = std::mem::replace(&mut target.role, role);
            let event = audit::Event::new(Actor::user(caller.user_id), "member.role_changed")
                .target(format!("room:{}/user:{}", room_id.to_hex(), user_id.to_hex()))
                .details(bson::doc! {"from": was.as_str(), "to": role.as_str()});
            self.audit.record(event, from).await;
            self.cache.user_changed(user_id).await;
            self.announce(room_id, ServerEvent::MemberUpdated { member: &target, by: caller.user_id }).await;
        }
        Ok(target)
    }

    /// Removes a member; a member removing themselves leaves the room.
    pub async fn remove(&self, caller: &Caller, room_id: ObjectId, user_id: ObjectId, from: &Source) -> Result<()> {
        let (_, actor) = self.managed(caller, room_id).await?;
        let target = if user_id == caller.user_id {
            if actor.role == Role::Owner {
                return Err(Error::Conflict {
                    code: "owner_cannot_leave",
                    message: "the owner cannot leave the room they own".into(),
                });
            }
            actor
        } else {
            let target = self.store.member(room_id, user_id).await?.ok_or_else(not_a_member)?;
            if !may_remove(actor.role, target.role) {
                return Err(Error::Forbidden(match actor.role {
                    Role::Member => "only the room's owner and moderators remove members".into(),
                    _ => "moderators remove members, not moderators or the owner".into(),
                }));
            }
            target
        };
        if !self.store.remove_member(room_id, user_id).await? {
            return Err(not_a_member());
        }
        // Before anything is acknowledged: from here on, no node stores a
        // message of theirs in the room (`seq`).
        self.seqs.membership_ended(room_id, user_id).await;
        let event = audit::Event::new(Actor::user(caller.user_id), "member.removed")
            .target(format!("room:{}/user:{}", room_id.to_hex(), user_id.to_hex()))
            .details(bson::doc! {"left": user_id == caller.user_id});
        self.audit.record(event, from).await;
        self.cache.user_changed(user_id).await;
        self.cache.members_changed(room_id, &[], &[user_id]).await;
        // Out of the room's live traffic on every node first, then the news.
        // The user's own topic carries the end of the membership to every
        // connection of theirs, joined to the room or not: none of them may
        // post there any more.
        self.publish(Topic::Room(room_id), Event::Evict { user: user_id }).await;
        self.announce(room_id, ServerEvent::MemberRemoved { member: &target, by: caller.user_id }).await;
        let frame = ServerEvent::RoomRemoved { room: room_id, by: caller.user_id }.encode();
        self.publish(Topic::User(user_id), Event::MembershipEnded { room: room_id, frame: &frame }).await;
        Ok(())
    }

    /// A room's members (up to [`MAX_LISTED`]) with their usernames.
    pub async fn members(&self, caller: &Caller, room_id: ObjectId) -> Result<Vec<MemberEntry>> {
        self.readable(caller, room_id).await?;
        let members = self.store.room_members(room_id, MAX_LISTED).await?;
        let ids: Vec<ObjectId> = members.iter().map(|m| m.user_id).collect();
        let users = self.store.users(&ids).await?;
        Ok(members
            .iter()
            .map(|m| MemberEntry {
                username: users.iter().find(|u| u.id == m.user_id).map(|u| u.username.clone()),
                member: MemberView::from(m),
            })
            .collect())
    }

    /// Tells the room's subscribers about a membership change.
    async fn announce(&self, room_id: ObjectId, event: ServerEvent<'_>) {
        self.publish(Topic::Room(room_id), Event::Ephemeral { skip: None, frame: &event.encode() }).await;
    }

    /// Publishes a live effect of a stored change; a failure is logged, not an
    /// error: the change itself is stored, and clients catch up on reconnect.
    pub(crate) async fn publish(&self, topic: Topic, event: Event<'_>) {
        self.bus.publish_live(topic, event).await;
    }
}

/// A membership in a room's member list, with the member's username.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MemberEntry {
    #[serde(flatten)]
    pub member: MemberView,
    pub username: Option<String>,
}

fn not_a_member() -> Error {
    Error::NotFound("that user is not a member of this room".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_appoint_moderators_invite_members() {
        assert!(may_assign(Role::Owner, Role::Moderator));
        assert!(may_assign(Role::Owner, Role::Member));
        assert!(!may_assign(Role::Owner, Role::Owner));
        assert!(may_assign(Role::Moderator, Role::Member));
        assert!(!may_assign(Role::Moderator, Role::Moderator));
        assert!(!may_assign(Role::Member, Role::Member));
    }

    #[test]
    fn moderators_remove_members_only() {
        assert!(may_remove(Role::Owner, Role::Moderator));
        assert!(may_remove(Role::Owner, Role::Member));
        assert!(!may_remove(Role::Owner, Role::Owner));
        assert!(may_remove(Role::Moderator, Role::Member));
        assert!(!may_remove(Role::Moderator, Role::Moderator));
        assert!(!may_remove(Role::Moderator, Role::Owner));
        assert!(!may_remove(Role::Member, Role::Member));
    }

    #[test]
    fn only_member_and_moderator_are_assignable() {
        assert_eq!(parse_role("moderator").unwrap(), Role::Moderator);
        assert_eq!(parse_role("member").unwrap(), Role::Member);
        assert!(parse_role("owner").is_err());
        assert!(parse_role("Member").is_err());
    }
}

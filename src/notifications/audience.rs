//! Who hears of a room's message: the room's members but the sender, with
//! their usernames so that `mentions_only` can be honoured.
//!
//! The work per message is bounded. A room of more than [`MAX_AUDIENCE`]
//! members notifies only the members its message mentions by `@username`
//! (at most [`MAX_MENTIONS`] names are read from one message): storing and
//! publishing a notification for each of many thousands of members on every
//! message would cost more than the message itself, many times over.
//!
//! Member lists are read from MongoDB once and kept on the node, tagged with
//! the room's members version (`cache::Version::Members`, bumped on every
//! join, invitation and removal); a message costs one Redis `GET` to check
//! the tag. When the version moved, the node applies the changes logged
//! with each bump (who joined, who left) to its copy, reading only the
//! newcomers' names; it reads the whole list again only when the log does
//! not cover every version since its copy. Without the cache (or while
//! Redis is away) lists are read fresh.
//!
//! One room's list is brought up to date by one message at a time: the
//! others that need it meanwhile wait and take the result. A burst of
//! messages to a room whose list this node does not hold (after a start,
//! or a join) would otherwise read the whole list once per message, and on
//! a store without the index that read is a scan of every membership.

use std::collections::HashMap;
use std::sync::Arc;

use bson::oid::ObjectId;
use dashmap::DashMap;

use super::Notifier;
use crate::cache::{MemberChange, Version};
use crate::error::{Error, Result};
use crate::store::RoomKind;

/// Rooms with more members notify only those mentioned.
pub const MAX_AUDIENCE: usize = 1000;
/// Distinct `@names` read from one message.
pub const MAX_MENTIONS: usize = 20;
/// Member lists kept per node.
const KEPT_ROOMS: usize = 4096;

/// A room as its notifications need it.
#[derive(Debug)]
pub struct Audience {
    pub room_name: String,
    pub kind: RoomKind,
    /// Members with lower-cased usernames; `None` for a room too large to
    /// notify everyone.
    members: Option<Vec<(ObjectId, String)>>,
}

/// The member lists this node keeps, with the version each was read at.
#[derive(Default)]
pub struct Audiences {
    kept: DashMap<ObjectId, (i64, Arc<Audience>)>,
    /// One per room whose list is being brought up to date.
    updating: DashMap<ObjectId, Arc<tokio::sync::Mutex<()>>>,
}

impl Audiences {
    /// The room's audience, from this node's copy while its version is
    /// current, brought up to date from the members log when it can be.
    pub async fn of(&self, notifier: &Notifier, room: ObjectId) -> Result<Arc<Audience>> {
        // The version is read before the members, as the cache does: a
        // change after this read moves the version past the copy.
        let Some(version) = notifier.cache.version(Version::Members(room)).await else {
            count("store");
            return Ok(Arc::new(notifier.load(room).await?));
        };
        if let Some(kept) = self.kept_at(room, version) {
            count("kept");
            return Ok(kept);
        }
        let gate = self.updating.entry(room).or_default().clone();
        let turn = gate.lock().await;
        let audience = self.bring_up_to_date(notifier, room, version).await;
        drop(turn);
        // The last one through lets the room's gate go.
        self.updating.remove_if(&room, |_, g| Arc::strong_count(g) == 2);
        audience
    }

    /// The kept list, if it was read at `version`.
    fn kept_at(&self, room: ObjectId, version: i64) -> Option<Arc<Audience>> {
        self.kept.get(&room).filter(|k| k.0 == version).map(|k| k.1.clone())
    }

    /// The room's list at `version`, for the one caller holding the room's
    /// gate: kept by a caller that held it before, updated from the members
    /// log, or read whole.
    async fn bring_up_to_date(&self, notifier: &Notifier, room: ObjectId, version: i64) -> Result<Arc<Audience>> {
        if let Some(kept) = self.kept_at(room, version) {
            count("kept");
            return Ok(kept);
        }
        let kept = self.kept.get(&room).map(|k| (k.0, k.1.clone()));
        if let Some((kept_at, kept)) = kept {
            if let Some(updated) = notifier.updated(room, &kept, kept_at, version).await {
                count("updated");
                let updated = Arc::new(updated);
                self.keep(room, version, updated.clone());
                return Ok(updated);
            }
        }
        count("store");
        let audience = Arc::new(notifier.load(room).await?);
        self.keep(room, version, audience.clone());
        Ok(audience)
    }

    fn keep(&self, room: ObjectId, version: i64, audience: Arc<Audience>) {
        super::make_room(&self.kept, KEPT_ROOMS, room);
        self.kept.insert(room, (version, audience));
    }
}

fn count(source: &'static str) {
    metrics::counter!("confab_notification_audience_total", "source" => source).increment(1);
}

impl Notifier {
    /// `kept` (read at version `from`) with the logged changes up to version
    /// `to` applied; `None` when the log does not cover them all, or the room
    /// outgrew a member list.
    async fn updated(&self, room: ObjectId, kept: &Audience, from: i64, to: i64) -> Option<Audience> {
        let mut members = kept.members.clone()?;
        let log = self.cache.members_log(room).await?;
        let mut joined = Vec::new();
        for change in MemberChange::between(&log, from, to)? {
            members.retain(|(id, _)| *id != change.user);
            joined.retain(|id| *id != change.user);
            if change.joined {
                joined.push(change.user);
            }
        }
        members.extend(self.named(joined).await.ok()?);
        (members.len() <= MAX_AUDIENCE).then(|| Audience {
            room_name: kept.room_name.clone(),
            kind: kept.kind,
            members: Some(members),
        })
    }

    async fn load(&self, room: ObjectId) -> Result<Audience> {
        let found = self.store.room(room).await?.ok_or_else(|| Error::NotFound("room not found".into()))?;
        let members = self.store.room_members(room, MAX_AUDIENCE as i64 + 1).await?;
        let members = if members.len() > MAX_AUDIENCE {
            None
        } else {
            Some(self.named(members.iter().map(|m| m.user_id).collect()).await?)
        };
        Ok(Audience { room_name: found.name, kind: found.kind, members })
    }

    /// Users with their lower-cased usernames, in one store read.
    async fn named(&self, ids: Vec<ObjectId>) -> Result<Vec<(ObjectId, String)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: HashMap<ObjectId, String> =
            self.store.users(&ids).await?.into_iter().map(|u| (u.id, u.username_key)).collect();
        Ok(ids.into_iter().map(|id| (id, names.get(&id).cloned().unwrap_or_default())).collect())
    }
}

/// A member to consider for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub user: ObjectId,
    /// The message is addressed to them (mentioned, or a direct message).
    pub addressed: bool,
    /// Their place in the audience's member list; `None` in a room too
    /// large to notify everyone.
    pub member: Option<usize>,
}

impl Audience {
    /// The members, in a fixed order, unless the room is too large to
    /// notify everyone.
    pub fn member_ids(&self) -> Option<impl Iterator<Item = ObjectId> + '_> {
        self.members.as_ref().map(|m| m.iter().map(|(id, _)| *id))
    }

    /// Whom to consider for a message from `sender` mentioning `mentions`.
    pub async fn candidates(
        &self,
        notifier: &Notifier,
        room: ObjectId,
        sender: ObjectId,
        mentions: &[String],
    ) -> Result<Vec<Candidate>> {
        let direct = self.kind == RoomKind::Direct;
        if let Some(members) = &self.members {
            return Ok(members
                .iter()
                .enumerate()
                .filter(|(_, (id, _))| *id != sender)
                .map(|(at, (id, name))| Candidate {
                    user: *id,
                    addressed: direct || mentions.contains(name),
                    member: Some(at),
                })
                .collect());
        }
        if mentions.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for user in notifier.store.users_by_username_keys(mentions).await?.into_iter().filter(|u| u.id != sender) {
            if notifier.store.member(room, user.id).await?.is_some() {
                out.push(Candidate { user: user.id, addressed: true, member: None });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
impl Audience {
    /// A public room of these members.
    pub(crate) fn of_members(members: &[ObjectId]) -> Audience {
        let members = Some(members.iter().map(|id| (*id, format!("user{id}"))).collect());
        Audience { room_name: "room".into(), kind: RoomKind::Public, members }
    }
}

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The lower-cased usernames a message mentions as `@name`: an `@` that
/// does not follow a name character (so `bob@example.com` mentions nobody),
/// then name characters. A name ending in `.` or `-` (end of a sentence)
/// counts with and without them. At most [`MAX_MENTIONS`] distinct names.
pub fn mentions(content: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut after_name = false;
    for (i, c) in content.char_indices() {
        if c == '@' && !after_name {
            let start = i + 1;
            let end = content[start..].find(|c: char| !name_char(c)).map_or(content.len(), |n| start + n);
            let run = &content[start..end];
            for name in [run, run.trim_end_matches(['.', '-'])] {
                let key = name.to_ascii_lowercase();
                if (3..=32).contains(&key.len()) && !out.contains(&key) {
                    if out.len() == MAX_MENTIONS {
                        return out;
                    }
                    out.push(key);
                }
            }
        }
        after_name = name_char(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_are_names_after_an_at_sign() {
        assert_eq!(mentions("hi @Bob, and @carol_9!"), ["bob", "carol_9"]);
        assert_eq!(mentions("@alice"), ["alice"]);
        assert!(mentions("mail bob@example.com").is_empty(), "an address mentions nobody");
        assert!(mentions("@ bob, @@, @ab").is_empty(), "no name, or too short for a username");
        assert_eq!(mentions("@@dave"), ["dave"]);
        assert_eq!(mentions("thanks @erin."), ["erin.", "erin"]);
        assert_eq!(mentions("@bob @BOB @bob"), ["bob"]);
        assert_eq!(mentions("héllo @zoé"), Vec::<String>::new(), "usernames are ASCII: `zo` is too short");
    }

    #[test]
    fn mentions_are_capped() {
        let many: String = (0..50).map(|i| format!("@user{i:02} ")).collect();
        let found = mentions(&many);
        assert_eq!(found.len(), MAX_MENTIONS);
        assert_eq!(found[0], "user00");
    }
}

//! The send path and history.
//!
//! Send: validate → store (seq from the room's counter, then the message) →
//! publish the encoded frame on the bus → acknowledge with the stored
//! message. Nothing is published that is not stored; a failed publish does
//! not un-store the message, whose readers then find it in history.
//!
//! Edit and delete: check who may → one single-document update → publish a
//! `message_updated` / `message_deleted` frame to the room. A deleted message
//! stays as a tombstone in its place, so history and replays keep its seq.

use std::sync::Arc;

use bson::oid::ObjectId;
use chrono::{DateTime, Utc};

use serde_json::{json, Value};
use tracing::Instrument;

use crate::audit::{self, Actor, Audit, Source};
use crate::auth::Caller;
use crate::bus::{Bus, Event, Topic};
use crate::cache::{Cache, Entry, Version};
use crate::error::{Error, Result};
use crate::notifications::Notifier;
use crate::protocol::views::MessageView;
use crate::protocol::ServerEvent;
use crate::rooms::Rooms;
use crate::seq::{Sender, Seqs, Taken};
use crate::store::{HistoryQuery, Message, Role, Store, StoreError};
use crate::validate;

#[derive(Debug, Clone)]
pub struct Draft {
    pub content: String,
    pub client_msg_id: Option<String>,
}

/// The outcome of a send: the stored message, and whether this call stored it
/// (false when a retry with the same `client_msg_id` found the original).
pub struct Sent {
    pub message: Message,
    pub created: bool,
}

/// How a send knows that the caller may post to the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// It does not yet: the store is asked.
    Lookup,
    /// This request already confirmed it (a direct room it opened, the
    /// server API's system sender).
    Confirmed,
    /// The caller's connection remembers it (`seq::MEMBERSHIP_TRUST`); the
    /// seq counter refuses the send if it ended meanwhile, and the store
    /// is asked then.
    Remembered,
}

/// The send path, history, edits and deletes.
pub struct Messages {
    store: Arc<Store>,
    seqs: Seqs,
    bus: Arc<Bus>,
    cache: Cache,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    audit: Arc<Audit>,
    /// How long catch-up reads wait for a missing seq (`Store::history_after`).
    void_after: std::time::Duration,
}

impl Messages {
    /// `void_after`: how long catch-up reads wait for a missing seq before
    /// voiding it (`--seq-void-after-ms`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<Store>,
        seqs: Seqs,
        bus: Arc<Bus>,
        cache: Cache,
        rooms: Arc<Rooms>,
        notifier: Arc<Notifier>,
        audit: Arc<Audit>,
        void_after: std::time::Duration,
    ) -> Self {
        Messages { store, seqs, bus, cache, rooms, notifier, audit, void_after }
    }

    /// The span of one message's send, from `via` (`rest`, `socket`,
    /// `server_api`): the root of the message's trace when traces are on
    /// (`crate::telemetry`), which the edges run `send` in.
    pub fn send_span(via: &'static str) -> tracing::Span {
        tracing::trace_span!(
            target: crate::telemetry::TARGET,
            "message.send",
            otel.kind = "server",
            confab.via = via,
            confab.room_id = tracing::field::Empty,
            confab.message_id = tracing::field::Empty,
            confab.seq = tracing::field::Empty,
        )
    }

    /// Stores and publishes a message.
    pub async fn send(&self, caller: &Caller, room_id: ObjectId, draft: Draft, membership: Membership) -> Result<Sent> {
        validate::content(&draft.content)?;
        if let Some(id) = &draft.client_msg_id {
            validate::client_msg_id(id)?;
        }
        if membership == Membership::Lookup {
            self.rooms.require_member(caller, room_id).await?;
        }
        if let Some(id) = &draft.client_msg_id {
            if let Some(original) = self.store.message_by_client_id(caller.user_id, id).await? {
                return replay(original, room_id);
            }
        }
        let sender = match membership {
            Membership::Remembered => Sender::Remembered(caller.user_id),
            Membership::Lookup | Membership::Confirmed => Sender::Confirmed,
        };
        let message = match self.store_new(caller, room_id, draft, sender).await? {
            Stored::New(m) => m,
            Stored::Existing(original) => return replay(original, room_id),
        };
        metrics::counter!("confab_messages_sent_total").increment(1);
        let frame = ServerEvent::Message(&message).encode();
        let event =
            Event::Message { id: message.id, seq: message.seq, stored_at_us: crate::clock::now_us(), frame: &frame };
        let publish = self.bus.publish_live(Topic::Room(room_id), event);
        // The cache bump and the publish are independent: one round trip's wait.
        if crate::telemetry::enabled() {
            let send = tracing::Span::current();
            send.record("confab.room_id", tracing::field::display(room_id));
            send.record("confab.message_id", tracing::field::display(message.id));
            send.record("confab.seq", message.seq);
            let span = tracing::trace_span!(
                target: crate::telemetry::TARGET,
                "bus.publish",
                otel.kind = "producer",
                messaging.system = "redis",
                confab.room_id = %room_id,
                confab.message_id = %message.id,
                confab.seq = message.seq,
            );
            tokio::join!(publish.instrument(span), self.cache.room_changed(room_id));
        } else {
            tokio::join!(publish, self.cache.room_changed(room_id));
        }
        // Queued, not awaited: notifications never hold up the ack.
        self.notifier.message_sent(&message, &caller.username);
        Ok(Sent { message, created: true })
    }

    /// Sends a direct message to `peer`, in the pair's room (made on first use).
    pub async fn send_direct(&self, caller: &Caller, peer: ObjectId, draft: Draft) -> Result<Sent> {
        validate::content(&draft.content)?;
        let room = self.rooms.open(caller, peer).await?;
        self.send(caller, room.id, draft, Membership::Confirmed).await
    }

    async fn store_new(&self, caller: &Caller, room_id: ObjectId, draft: Draft, mut sender: Sender) -> Result<Stored> {
        let id = ObjectId::new();
        let mut message = Message {
            id,
            room_id,
            seq: 0,
            sender_id: caller.user_id,
            content: draft.content,
            dedup_key: draft.client_msg_id.clone().unwrap_or_else(|| id.to_hex()),
            client_msg_id: draft.client_msg_id,
            timestamp: Utc::now(),
            edited_at: None,
            deleted: false,
            deleted_at: None,
        };
        for attempt in 0..SEQ_ATTEMPTS {
            let seq = seq_span(room_id);
            message.seq = loop {
                match self.seqs.next(room_id, sender, attempt > 0).instrument(seq.clone()).await? {
                    Taken::Seq(seq) => break seq,
                    Taken::Recheck => {
                        self.rooms.require_member(caller, room_id).await?;
                        sender = Sender::Confirmed;
                    }
                }
            };
            message.timestamp = Utc::now();
            let insert = store_span(&message);
            match self.store.insert_message(&message).instrument(insert).await {
                Ok(()) => return Ok(Stored::New(message)),
                Err(StoreError::Duplicate) => {
                    if let Some(original) = self.store.message_by_client_id(caller.user_id, &message.dedup_key).await? {
                        return Ok(Stored::Existing(original));
                    }
                    metrics::counter!("confab_seq_collisions_total").increment(1);
                    // Concurrent senders that collided once tend to collide again
                    // in lockstep: a little jitter breaks the tie.
                    let jitter = rand::random::<u64>() % (attempt + 2);
                    tokio::time::sleep(std::time::Duration::from_millis(jitter)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable("could not allocate a sequence number, try again".into()))
    }

    /// One page of history as clients see it: `{"messages": [...], "has_more"}`.
    /// The newest page of a room (no cursor, default size) is served from the
    /// cache while fresh; access is always checked first.
    pub async fn history_page(&self, caller: &Caller, page: Page) -> Result<Value> {
        let newest = page.before.is_none()
            && page.after.is_none()
            && page.after_seq.is_none()
            && page.since.is_none()
            && page.until.is_none()
            && !page.include_archived
            && page.limit == DEFAULT_PAGE;
        if !newest {
            let (messages, has_more) = self.history(caller, page).await?;
            return Ok(render(&messages, has_more));
        }
        self.rooms.readable(caller, page.room_id).await?;
        let entry = Entry::History(page.room_id);
        if let Some(cached) = self.cache.get::<Value>(entry).await {
            return Ok(cached);
        }
        let snapshot = self.cache.snapshot(&[Version::Room(page.room_id)]).await;
        let query = HistoryQuery { room_id: page.room_id, limit: page.limit, ..Default::default() };
        let (messages, has_more) = self.store.history(&query).await?;
        let body = render(&messages, has_more);
        if let Some(snapshot) = snapshot {
            self.cache.put(entry, snapshot, &body).await;
        }
        Ok(body)
    }

    /// One page of a room's history in chronological order, and whether more
    /// lies beyond it. Reads back from the newest match, or forward from the
    /// oldest when `after` (or `since` without `before`) is given.
    pub async fn history(&self, caller: &Caller, page: Page) -> Result<(Vec<Message>, bool)> {
        self.rooms.readable(caller, page.room_id).await?;
        let archived = page.include_archived;
        let before_seq = match page.before {
            Some(id) => Some(self.cursor_seq(page.room_id, id, "before", archived).await?),
            None => None,
        };
        let after_seq = match page.after {
            Some(id) => Some(self.cursor_seq(page.room_id, id, "after", archived).await?),
            None => page.after_seq,
        };
        let forward = after_seq.is_some() || (page.since.is_some() && page.before.is_none());
        let query = HistoryQuery {
            room_id: page.room_id,
            before_seq,
            after_seq,
            since: page.since,
            until: page.until,
            forward,
            limit: page.limit,
        };
        if !archived {
            if query.after_seq.is_some() && query.since.is_none() && query.until.is_none() {
                // Catch-up: no hole in the page may fill later. (A time
                // bound leaves out messages that are there: not holes.)
                return Ok(self.store.history_after(&query, self.void_after).await?);
            }
            return Ok(self.store.history(&query).await?);
        }
        let (live, archive) = tokio::try_join!(self.store.history(&query), self.store.archived_history(&query))?;
        Ok(merge_pages(live, archive, forward, query.limit))
    }

    /// The seq of a cursor message, which must belong to the room; with
    /// `archived`, an archived message will do too.
    async fn cursor_seq(&self, room_id: ObjectId, id: ObjectId, field: &str, archived: bool) -> Result<i64> {
        let mut found = self.store.message(id).await?;
        if found.is_none() && archived {
            found = self.store.archived_message(id).await?;
        }
        match found {
            Some(m) if m.room_id == room_id => Ok(m.seq),
            _ => Err(Error::NotFound(format!("{field}: no such message in this room"))),
        }
    }

    /// The seq of a message in `room`, for a replay to start after; 404 if
    /// the room has no such message.
    pub async fn seq_in(&self, room_id: ObjectId, id: ObjectId) -> Result<i64> {
        match self.store.message(id).await? {
            Some(m) if m.room_id == room_id => Ok(m.seq),
            _ => Err(Error::NotFound("after: no such message in this room".into())),
        }
    }

    /// A page of what a socket replays after joining: the room's stored
    /// messages with seq above `after_seq`, oldest first, and whether more
    /// follow. The caller has joined the room.
    pub async fn replay_page(&self, room_id: ObjectId, after_seq: i64, limit: i64) -> Result<(Vec<Message>, bool)> {
        let query = HistoryQuery { room_id, after_seq: Some(after_seq), forward: true, limit, ..Default::default() };
        Ok(self.store.history_after(&query, self.void_after).await?)
    }

    async fn existing(&self, id: ObjectId) -> Result<Message> {
        self.store.message(id).await?.ok_or_else(|| Error::NotFound("message not found".into()))
    }

    /// Replaces the content of the caller's own message and tells the room.
    /// Only the sender may edit, only while they can still read the room, and
    /// not once the message is deleted.
    pub async fn edit(&self, caller: &Caller, id: ObjectId, content: String) -> Result<Message> {
        validate::content(&content)?;
        let original = self.existing(id).await?;
        if original.sender_id != caller.user_id {
            return Err(Error::Forbidden("only the sender may edit a message".into()));
        }
        self.rooms.readable(caller, original.room_id).await?;
        if original.deleted {
            return Err(already_deleted());
        }
        // The update itself refuses a tombstone, so a delete racing this edit
        // cannot be undone by it.
        let edited = self.store.edit_message(id, &content, Utc::now()).await?.ok_or_else(already_deleted)?;
        metrics::counter!("confab_messages_edited_total").increment(1);
        self.announce(&edited, ServerEvent::MessageUpdated { message: &edited, by: caller.user_id }.encode()).await;
        Ok(edited)
    }

    /// Turns a message into a tombstone and tells the room. Idempotent: deleting
    /// a tombstone again returns it without a second frame. Senders may delete
    /// their own messages even after leaving the room: their words, their call.
    pub async fn delete(&self, caller: &Caller, id: ObjectId) -> Result<Message> {
        let message = self.existing(id).await?;
        let role = if message.sender_id == caller.user_id {
            None
        } else {
            self.store.member(message.room_id, caller.user_id).await?.map(|m| m.role)
        };
        if !may_delete(caller.user_id, message.sender_id, role) {
            return Err(Error::Forbidden("only the sender or a room owner or moderator may delete a message".into()));
        }
        self.erase(caller, message).await.map(|(tombstone, _)| tombstone)
    }

    /// Deletes any message, for an administrator (the caller must be one):
    /// the same tombstone and frame as the sender's delete, and an audit
    /// entry (`message.moderated`) when this call erased it.
    pub async fn moderate(
        &self,
        admin: &Caller,
        id: ObjectId,
        reason: Option<String>,
        from: &Source,
    ) -> Result<Message> {
        if let Some(reason) = &reason {
            validate::reason(reason)?;
        }
        let message = self.existing(id).await?;
        let (tombstone, erased) = self.erase(admin, message).await?;
        if erased {
            let mut details = bson::doc! {
                "room_id": tombstone.room_id.to_hex(),
                "sender_id": tombstone.sender_id.to_hex(),
            };
            if let Some(reason) = reason {
                details.insert("reason", reason);
            }
            let event = audit::Event::new(Actor::user(admin.user_id), "message.moderated")
                .target(format!("message:{}", id.to_hex()))
                .details(details);
            self.audit.record(event, from).await;
        }
        Ok(tombstone)
    }

    /// Replaces a message with its tombstone and tells the room; the
    /// tombstone, and whether this call made it (false: it already was one).
    async fn erase(&self, by: &Caller, message: Message) -> Result<(Message, bool)> {
        if message.deleted {
            return Ok((message, false));
        }
        match self.store.delete_message(message.id, Utc::now()).await? {
            Some(tombstone) => {
                metrics::counter!("confab_messages_deleted_total").increment(1);
                let frame = ServerEvent::MessageDeleted { message: &tombstone, by: by.user_id }.encode();
                self.announce(&tombstone, frame).await;
                Ok((tombstone, true))
            }
            // Someone deleted it in between; they told the room.
            None => Ok((self.existing(message.id).await?, false)),
        }
    }

    /// Publishes a change to a stored message to the room's live subscribers.
    /// The store already holds the change, so a failed publish is logged, not an
    /// error: readers find the change in history.
    async fn announce(&self, message: &Message, frame: bytes::Bytes) {
        // The room's cached pages and lists show this message: bump with the publish.
        tokio::join!(
            self.bus.publish_live(Topic::Room(message.room_id), Event::Ephemeral { skip: None, frame: &frame }),
            self.cache.room_changed(message.room_id)
        );
    }

    /// Posts a system message into a room for a backend (server API): the send
    /// path above with the system sender, so the message takes the room's next
    /// seq, reaches subscribers live and notifies members like any other.
    pub async fn send_system(&self, room_id: ObjectId, draft: Draft) -> Result<Sent> {
        self.rooms.existing(room_id).await?;
        let system = Caller::system(crate::store::model::SYSTEM_SENDER, "System");
        self.send(&system, room_id, draft, Membership::Confirmed).await
    }
}

/// The span of a message's seq assignment (`crate::telemetry`); with traces
/// off, a disabled span that costs a level check.
fn seq_span(room_id: ObjectId) -> tracing::Span {
    tracing::trace_span!(target: crate::telemetry::TARGET, "message.seq", confab.room_id = %room_id)
}

/// The span of a message's insert into the store.
fn store_span(message: &Message) -> tracing::Span {
    tracing::trace_span!(
        target: crate::telemetry::TARGET,
        "message.store",
        db.system = "mongodb",
        db.operation = "insert",
        confab.room_id = %message.room_id,
        confab.message_id = %message.id,
        confab.seq = message.seq,
    )
}

enum Stored {
    New(Message),
    /// A concurrent retry with the same client_msg_id stored it first.
    Existing(Message),
}

/// Most attempts at a fresh seq when the room's counter handed out one
/// already taken: a counter behind the store (`crate::seq`), or, while
/// Redis is out, a compatible server that loses concurrent increments of
/// the room document. The unique (room_id, seq) index turns either into a
/// retry instead of a duplicate.
const SEQ_ATTEMPTS: u64 = 16;

fn replay(original: Message, room_id: ObjectId) -> Result<Sent> {
    if original.room_id != room_id {
        return Err(Error::Conflict {
            code: "client_msg_id_reused",
            message: "client_msg_id was already used for a message in another room".into(),
        });
    }
    Ok(Sent { message: original, created: false })
}

pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

#[derive(Debug, Clone)]
pub struct Page {
    pub room_id: ObjectId,
    pub limit: i64,
    pub before: Option<ObjectId>,
    pub after: Option<ObjectId>,
    /// Like `after`, by seq: what a reconnecting client knows.
    pub after_seq: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Page across the archive too (messages the archive job moved away).
    pub include_archived: bool,
}

/// A page of messages, as history and search answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct MessagePage<'a> {
    pub messages: Vec<MessageView<'a>>,
    /// More messages lie beyond the page, in the direction it was read.
    pub has_more: bool,
}

fn render(messages: &[Message], has_more: bool) -> Value {
    let messages = messages.iter().map(MessageView::from).collect();
    json!(MessagePage { messages, has_more })
}

/// One page from a page of live history and a page of the archive, each
/// cut by the same query. The archive job moves whole messages by age, so
/// the two may interleave by seq in any way; the page is the `limit`
/// messages nearest the cursor of both, and more lie beyond it if either
/// source had more or the two together overflow the page. A message found
/// in both (the archive job stopped between its copy and its delete)
/// counts once, as the live copy.
pub fn merge_pages(
    (live, live_more): (Vec<Message>, bool),
    (archive, archive_more): (Vec<Message>, bool),
    forward: bool,
    limit: i64,
) -> (Vec<Message>, bool) {
    let mut all: Vec<Message> = live;
    let live_seqs: std::collections::HashSet<i64> = all.iter().map(|m| m.seq).collect();
    all.extend(archive.into_iter().filter(|m| !live_seqs.contains(&m.seq)));
    all.sort_by_key(|m| m.seq);
    let limit = limit.max(0) as usize;
    let has_more = live_more || archive_more || all.len() > limit;
    if all.len() > limit {
        if forward {
            all.truncate(limit);
        } else {
            all.drain(..all.len() - limit);
        }
    }
    (all, has_more)
}

fn already_deleted() -> Error {
    Error::Conflict { code: "message_deleted", message: "this message was deleted and cannot be edited".into() }
}

/// Who may delete a message: its sender, or an owner or moderator of its room.
pub fn may_delete(caller: ObjectId, sender: ObjectId, role: Option<Role>) -> bool {
    caller == sender || role.is_some_and(Role::manages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: i64) -> Message {
        let id = ObjectId::new();
        Message {
            id,
            room_id: ObjectId::new(),
            seq,
            sender_id: ObjectId::new(),
            content: format!("m{seq}"),
            client_msg_id: None,
            dedup_key: id.to_hex(),
            timestamp: Utc::now(),
            edited_at: None,
            deleted: false,
            deleted_at: None,
        }
    }

    fn seqs(page: &(Vec<Message>, bool)) -> (Vec<i64>, bool) {
        (page.0.iter().map(|m| m.seq).collect(), page.1)
    }

    #[test]
    fn pages_merge_live_and_archived_history_by_seq() {
        let page = |s: &[i64], more| (s.iter().copied().map(at).collect::<Vec<_>>(), more);
        // Back from the newest: archived 1-3, live 4-6; a page of 4 straddles.
        let merged = merge_pages(page(&[3, 4, 5, 6], true), page(&[1, 2, 3], false), false, 4);
        assert_eq!(seqs(&merged), (vec![3, 4, 5, 6], true));
        // Forward from the start.
        let merged = merge_pages(page(&[4, 5], false), page(&[1, 2, 3], false), true, 4);
        assert_eq!(seqs(&merged), (vec![1, 2, 3, 4], true));
        // Everything fits: no more.
        let merged = merge_pages(page(&[4, 5], false), page(&[1, 2], false), true, 4);
        assert_eq!(seqs(&merged), (vec![1, 2, 4, 5], false));
        // Interleaved, and one message in both collections: counted once.
        let merged = merge_pages(page(&[2, 5, 7], false), page(&[1, 2, 6], false), false, 10);
        assert_eq!(seqs(&merged), (vec![1, 2, 5, 6, 7], false));
    }

    #[test]
    fn senders_owners_and_moderators_may_delete() {
        let (sender, other) = (ObjectId::new(), ObjectId::new());
        assert!(may_delete(sender, sender, None));
        assert!(may_delete(sender, sender, Some(Role::Member)));
        assert!(may_delete(other, sender, Some(Role::Owner)));
        assert!(may_delete(other, sender, Some(Role::Moderator)));
        assert!(!may_delete(other, sender, Some(Role::Member)));
        assert!(!may_delete(other, sender, None));
    }
}

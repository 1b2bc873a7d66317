//! Delivery and read status.
//!
//! Each membership keeps two cursors, `delivered_up_to` and `read_up_to`
//! (message ids, with their seqs): one small document per member and room,
//! never one per message and recipient. Clients move them forward by
//! acknowledging a message; reading implies delivery; cursors never move
//! back. When a cursor passes messages, their senders get a `receipt` frame
//! on their own topic, whichever node they are on.

use std::collections::HashMap;

use std::sync::Arc;

use bson::oid::ObjectId;
use serde::Serialize;

use crate::auth::Caller;
use crate::bus::Bus;
use crate::bus::{Event, Topic};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::protocol::ServerEvent;
use crate::rooms::Rooms;
use crate::store::Store;
use crate::store::{Cursor, HistoryQuery, Member, Message};

/// Above this many recipients, `status` gives counts instead of lists.
pub const LISTED_RECIPIENTS: usize = 50;

/// Messages looked at when a cursor jumps, to find whom to tell: the newest
/// of them, so every sender hears of their latest message.
const RECEIPT_SCAN: i64 = 500;

/// A member's delivery and read cursors in a room (message ids).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cursors {
    pub room_id: String,
    pub delivered_up_to: Option<String>,
    pub read_up_to: Option<String>,
}

/// Delivery and read cursors, and the receipts they send.
pub struct Receipts {
    store: Arc<Store>,
    bus: Arc<Bus>,
    cache: Cache,
    rooms: Arc<Rooms>,
}

impl Receipts {
    pub fn new(store: Arc<Store>, bus: Arc<Bus>, cache: Cache, rooms: Arc<Rooms>) -> Self {
        Receipts { store, bus, cache, rooms }
    }

    /// Moves the caller's cursor in `room_id` to `message_id` (and the delivery
    /// cursor too when reading). Moving back is a no-op, not an error.
    pub async fn acknowledge(
        &self,
        caller: &Caller,
        room_id: ObjectId,
        cursor: Cursor,
        message_id: ObjectId,
    ) -> Result<Cursors> {
        let mut member = self.rooms.require_member(caller, room_id).await?;
        let message = match self.store.message(message_id).await? {
            Some(m) if m.room_id == room_id => m,
            _ => return Err(Error::NotFound("message_id: no such message in this room".into())),
        };
        let cursors: &[Cursor] = match cursor {
            Cursor::Delivered => &[Cursor::Delivered],
            Cursor::Read => &[Cursor::Delivered, Cursor::Read],
        };
        let mut moved = Vec::new();
        for &c in cursors {
            if let Some(previous) =
                self.store.advance_cursor(room_id, caller.user_id, c, message.seq, message.id).await?
            {
                moved.push((c, previous));
                match c {
                    Cursor::Delivered => {
                        (member.delivered_seq, member.delivered_up_to) = (message.seq, Some(message.id))
                    }
                    Cursor::Read => (member.read_seq, member.read_up_to) = (message.seq, Some(message.id)),
                }
            }
        }
        if !moved.is_empty() {
            self.cache.user_changed(caller.user_id).await;
            for (c, previous) in moved {
                self.tell_senders(caller.user_id, &message, c, previous).await;
            }
        }
        Ok(Cursors {
            room_id: room_id.to_hex(),
            delivered_up_to: member.delivered_up_to.map(|id| id.to_hex()),
            read_up_to: member.read_up_to.map(|id| id.to_hex()),
        })
    }

    /// Sends one `receipt` to each other sender of the messages the cursor
    /// passed (seq in `previous`..=`up_to.seq`), naming their newest one.
    async fn tell_senders(&self, reader: ObjectId, up_to: &Message, cursor: Cursor, previous: i64) {
        let query = HistoryQuery {
            room_id: up_to.room_id,
            after_seq: Some(previous),
            before_seq: Some(up_to.seq + 1),
            limit: RECEIPT_SCAN,
            ..Default::default()
        };
        let passed = match self.store.history(&query).await {
            Ok((page, _)) => page,
            Err(e) => {
                tracing::warn!(error = %e, "receipts not sent: could not read the passed messages");
                return;
            }
        };
        for (sender, newest) in newest_by_sender(&passed, reader) {
            let frame = ServerEvent::Receipt { room: up_to.room_id, reader, cursor, message: newest }.encode();
            self.bus.publish_live(Topic::User(sender), Event::Ephemeral { skip: None, frame: &frame }).await;
        }
    }

    /// A message's delivery and read status among the room's other members.
    pub async fn status(&self, caller: &Caller, message_id: ObjectId) -> Result<Status> {
        let message =
            self.store.message(message_id).await?.ok_or_else(|| Error::NotFound("message not found".into()))?;
        self.rooms.readable(caller, message.room_id).await?;
        let members = self.store.room_members(message.room_id, 100_000).await?;
        Ok(status_among(&message, &members))
    }
}

/// Each sender's newest message, leaving out the reader's own.
fn newest_by_sender(messages: &[Message], reader: ObjectId) -> HashMap<ObjectId, &Message> {
    let mut newest: HashMap<ObjectId, &Message> = HashMap::new();
    for m in messages.iter().filter(|m| m.sender_id != reader) {
        let entry = newest.entry(m.sender_id).or_insert(m);
        if m.seq > entry.seq {
            *entry = m;
        }
    }
    newest
}

/// How far a message has reached its room's other members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = MessageStatus)]
pub struct Status {
    pub message_id: String,
    pub room_id: String,
    /// `read` once every recipient read it, `delivered` once every recipient
    /// has it, else `sent`.
    #[schema(value_type = String, pattern = "^(sent|delivered|read)$")]
    pub status: &'static str,
    pub recipients: usize,
    pub delivered_count: usize,
    pub read_count: usize,
    /// Who has it (rooms of up to 50 recipients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_to: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_by: Option<Vec<String>>,
}

fn status_among(message: &Message, members: &[Member]) -> Status {
    let recipients: Vec<&Member> = members.iter().filter(|m| m.user_id != message.sender_id).collect();
    let delivered: Vec<String> =
        recipients.iter().filter(|m| m.delivered_seq >= message.seq).map(|m| m.user_id.to_hex()).collect();
    let read: Vec<String> =
        recipients.iter().filter(|m| m.read_seq >= message.seq).map(|m| m.user_id.to_hex()).collect();
    let n = recipients.len();
    let status = match (read.len(), delivered.len()) {
        (r, _) if n > 0 && r == n => "read",
        (_, d) if n > 0 && d == n => "delivered",
        _ => "sent",
    };
    let listed = n <= LISTED_RECIPIENTS;
    Status {
        message_id: message.id.to_hex(),
        room_id: message.room_id.to_hex(),
        status,
        recipients: n,
        delivered_count: delivered.len(),
        read_count: read.len(),
        delivered_to: listed.then_some(delivered),
        read_by: listed.then_some(read),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;
    use chrono::Utc;

    fn message(sender: ObjectId, seq: i64) -> Message {
        Message {
            id: ObjectId::new(),
            room_id: ObjectId::new(),
            seq,
            sender_id: sender,
            content: "hi".into(),
            client_msg_id: None,
            dedup_key: String::new(),
            timestamp: Utc::now(),
            edited_at: None,
            deleted: false,
            deleted_at: None,
        }
    }

    fn member(user: ObjectId, delivered: i64, read: i64) -> Member {
        let mut m = Member::new(ObjectId::new(), user, Role::Member, Utc::now());
        (m.delivered_seq, m.read_seq) = (delivered, read);
        m
    }

    #[test]
    fn status_is_the_slowest_recipients_and_lists_small_rooms() {
        let (alice, bob, carol) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let m = message(alice, 5);
        let s = status_among(&m, &[member(alice, 0, 0), member(bob, 5, 5), member(carol, 7, 4)]);
        assert_eq!((s.status, s.recipients, s.delivered_count, s.read_count), ("delivered", 2, 2, 1));
        assert_eq!(s.read_by.unwrap(), [bob.to_hex()]);
        let s = status_among(&m, &[member(bob, 5, 5), member(carol, 5, 5)]);
        assert_eq!(s.status, "read");
        let s = status_among(&m, &[member(bob, 4, 0)]);
        assert_eq!(s.status, "sent");
        assert_eq!(status_among(&m, &[member(alice, 9, 9)]).status, "sent", "nobody else to deliver to");
    }

    #[test]
    fn large_rooms_get_counts_only() {
        let m = message(ObjectId::new(), 1);
        let many: Vec<Member> = (0..60).map(|_| member(ObjectId::new(), 1, 0)).collect();
        let s = status_among(&m, &many);
        assert_eq!((s.recipients, s.delivered_count, s.read_count), (60, 60, 0));
        assert!(s.delivered_to.is_none() && s.read_by.is_none());
    }

    #[test]
    fn each_sender_hears_of_their_newest_passed_message() {
        let (reader, a, b) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let msgs = [message(a, 1), message(b, 2), message(a, 3), message(reader, 4)];
        let newest = newest_by_sender(&msgs, reader);
        assert_eq!(newest.len(), 2);
        assert_eq!(newest[&a].seq, 3);
        assert_eq!(newest[&b].seq, 2);
    }
}

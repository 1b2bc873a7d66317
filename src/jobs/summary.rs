//! Daily summaries: for each user, what happened in their rooms since their
//! last summary, stored as a `daily_summary` notification and queued for
//! delivery.
//!
//! - The window is (last summary, now]; a user's first window is the day
//!   before now. `summary_state` keeps `last_summary_at` per user (`_id` =
//!   user id); it moves to `now` for every user the run looks at.
//! - New messages: others' messages in the user's rooms inside the window,
//!   not deleted, and not from before the user joined. Unread: others'
//!   messages past the member's read cursor (`read_seq`), not deleted.
//! - Preferences (`notification_preferences`, `_id` = user id; missing =
//!   enabled, nothing muted): a disabled user gets nothing and keeps their
//!   marker; muted rooms are left out of both counts.
//! - Users with nothing new get nothing.
//!
//! Re-running the same run (a worker died mid-way) doubles nothing: `now` is
//! fixed by the run, the notification's id is derived from (user, now), so
//! the insert finds it there, and the delivery queue drops the second push.

use std::collections::HashMap;

use bson::oid::ObjectId;
use bson::{doc, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sha2::Digest;

use super::queue::Queues;
use super::status::RunReport;
use super::JobError;
use crate::clock::rfc3339;
use crate::store::{Member, Notification, NotificationPreferences, RoomKind, Store};

pub const KIND: &str = "daily_summary";

/// Unread counts stop at this many per room.
const UNREAD_CAP: u64 = 10_000;

/// One room's line in a summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCounts {
    pub room_id: ObjectId,
    pub new_messages: u64,
    pub unread: u64,
}

/// Makes the summaries due at `now`; `items` counts summaries stored,
/// `failures` users whose summary could not be made (tried again next run).
pub async fn run(store: &Store, queues: &Queues, now: DateTime<Utc>) -> Result<RunReport, JobError> {
    let mut cursor = store.memberships_by_user().await?;
    let mut report = RunReport::default();
    let mut current: Vec<Member> = Vec::new();
    loop {
        let next = cursor.try_next().await?;
        let boundary = match (&next, current.first()) {
            (Some(m), Some(first)) => m.user_id != first.user_id,
            (None, Some(_)) => true,
            (_, None) => false,
        };
        if boundary {
            let memberships = std::mem::take(&mut current);
            let user = memberships[0].user_id;
            match summarize(store, queues, user, &memberships, now).await {
                Ok(true) => report.items += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(user = %user, error = %e, "summary failed; the next run covers this window");
                    report.failures += 1;
                }
            }
        }
        match next {
            Some(m) => current.push(m),
            None => return Ok(report),
        }
    }
}

/// One user's summary; whether one was stored.
async fn summarize(
    store: &Store,
    queues: &Queues,
    user: ObjectId,
    memberships: &[Member],
    now: DateTime<Utc>,
) -> Result<bool, JobError> {
    let prefs = store.notification_preferences(&[user]).await?.pop();
    let prefs = prefs.unwrap_or_else(|| NotificationPreferences::defaults(user));
    if !prefs.enabled {
        return Ok(false);
    }
    let since = store.last_summary_at(user).await?.unwrap_or(now - chrono::Duration::days(1));
    if since >= now {
        return Ok(false);
    }
    let mut rooms = Vec::new();
    for m in memberships.iter().filter(|m| !prefs.muted_rooms.contains(&m.room_id)) {
        let (new_messages, unread) = store.summary_counts(m, since.max(m.joined_at), now, UNREAD_CAP).await?;
        rooms.push(RoomCounts { room_id: m.room_id, new_messages, unread });
    }
    let stored = if rooms.iter().any(|r| r.new_messages > 0) {
        let n = summary(store, user, since, now, &rooms).await?;
        // Already there: a re-run of the run that made it.
        store.insert_notification_once(&n).await?;
        super::enqueue_delivery(queues, n.id).await?;
        true
    } else {
        false
    };
    store.set_last_summary_at(user, now).await?;
    Ok(stored)
}

/// The summary notification. Its id is a function of (user, now): the
/// timestamp part is `now`, so ids still sort by time.
async fn summary(
    store: &Store,
    user: ObjectId,
    since: DateTime<Utc>,
    now: DateTime<Utc>,
    rooms: &[RoomCounts],
) -> Result<Notification, JobError> {
    let total_new: u64 = rooms.iter().map(|r| r.new_messages).sum();
    let total_unread: u64 = rooms.iter().map(|r| r.unread).sum();
    let mut active: Vec<&RoomCounts> = rooms.iter().filter(|r| r.new_messages > 0).collect();
    active.sort_by(|a, b| b.new_messages.cmp(&a.new_messages).then(a.room_id.cmp(&b.room_id)));
    let names = room_names(store, user, active.iter().map(|r| r.room_id).collect()).await?;
    let lines: Vec<Document> = active
        .iter()
        .map(|r| {
            doc! {
                "room_id": r.room_id.to_hex(),
                "name": names.get(&r.room_id).cloned().unwrap_or_default(),
                "new_messages": r.new_messages as i64,
                "unread": r.unread as i64,
            }
        })
        .collect();
    let plural = |n: u64, one: &str, many: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {many}") };
    Ok(Notification {
        id: summary_id(user, now),
        user_id: user,
        kind: KIND.into(),
        title: "Your daily summary".into(),
        message: format!(
            "{} in {} since {}; {} unread",
            plural(total_new, "new message", "new messages"),
            plural(active.len() as u64, "room", "rooms"),
            since.format("%Y-%m-%d %H:%M UTC"),
            total_unread,
        ),
        data: doc! {
            "since": rfc3339(&since),
            "until": rfc3339(&now),
            "total_new": total_new as i64,
            "total_unread": total_unread as i64,
            "rooms": lines,
        },
        created_at: now,
        read: false,
        read_at: None,
        delivered_realtime: false,
        external: None,
    })
}

/// Room names for a summary; a direct room is named after the other user.
async fn room_names(store: &Store, user: ObjectId, ids: Vec<ObjectId>) -> Result<HashMap<ObjectId, String>, JobError> {
    let found = store.rooms_by_id(&ids).await?;
    let peers: Vec<ObjectId> =
        found.iter().filter(|r| r.kind == RoomKind::Direct).filter_map(|r| r.peer_of(user)).collect();
    let usernames: HashMap<ObjectId, String> =
        store.users(&peers).await?.into_iter().map(|u| (u.id, u.username)).collect();
    Ok(found
        .into_iter()
        .map(|r| {
            let name = match r.kind {
                RoomKind::Direct => r.peer_of(user).and_then(|p| usernames.get(&p).cloned()).unwrap_or(r.name),
                _ => r.name,
            };
            (r.id, name)
        })
        .collect())
}

/// 4 bytes of `now` (seconds), then 8 bytes of SHA-256(user id, now in ms).
pub fn summary_id(user: ObjectId, now: DateTime<Utc>) -> ObjectId {
    let mut hash = sha2::Sha256::new();
    hash.update(user.bytes());
    hash.update(now.timestamp_millis().to_be_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&(now.timestamp() as u32).to_be_bytes());
    bytes[4..].copy_from_slice(&digest[..8]);
    ObjectId::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_ids_are_stable_per_user_and_instant_and_sort_by_time() {
        let (a, b) = (ObjectId::new(), ObjectId::new());
        let t = DateTime::parse_from_rfc3339("2026-03-01T07:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(summary_id(a, t), summary_id(a, t));
        assert_ne!(summary_id(a, t), summary_id(b, t));
        assert_ne!(summary_id(a, t), summary_id(a, t + chrono::Duration::milliseconds(1)));
        assert_eq!(summary_id(a, t).timestamp().timestamp_millis(), t.timestamp_millis());
        assert!(summary_id(a, t) < summary_id(b, t + chrono::Duration::days(1)));
    }
}

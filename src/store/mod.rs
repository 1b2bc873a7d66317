//! Durable state: users, rooms, members and messages.
//!
//! [`Store`] owns every collection; nothing else names one. It asks for
//! nothing a MongoDB-compatible server without multi-document transactions
//! cannot do: every write is a single-document operation, and uniqueness
//! comes from unique indexes. Its queries are split by aggregate: `users`
//! (with contacts and API keys), `rooms` (with members and cursors),
//! `messages`, `notifications`, and `jobs` for the worker's batch work.

mod audit;
mod batch;
mod jobs;
mod messages;
pub mod model;
mod mongo;
mod notifications;
mod rooms;
mod users;

pub use mongo::{collections, Store};

use bson::oid::ObjectId;
use chrono::{DateTime, Utc};

pub use audit::AuditQuery;
pub use model::{ActorKind, ApiKey, AuditEntry, Ban, Notification, NotificationPreferences, UserRole};
pub use model::{Contact, Cursor, Member, Message, Role, Room, RoomKind, User};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] mongodb::error::Error),
    /// A unique index refused the write.
    #[error("duplicate key")]
    Duplicate,
    #[error("store error: {0}")]
    Other(#[source] crate::error::BoxError),
}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        use crate::error::Error;
        match e {
            StoreError::Unavailable(_) => Error::Backend { what: "the message store", source: e.into() },
            StoreError::Duplicate => Error::Conflict { code: "conflict", message: "already exists".into() },
            StoreError::Other(_) => Error::Internal(e.into()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which slice of a room's history to read. Pages are cut on `seq`, which is
/// the room's storage order; ObjectIds made on different nodes are not.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    pub room_id: ObjectId,
    /// Only messages with a smaller seq.
    pub before_seq: Option<i64>,
    /// Only messages with a larger seq.
    pub after_seq: Option<i64>,
    /// Only messages stored at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only messages stored at or before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Read from the oldest matching message forward (else from the newest back).
    pub forward: bool,
    pub limit: i64,
}

/// A profile edit: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub display_name: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
}

/// A search over some rooms' messages. Tombstones never match.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    /// The rooms to search; the caller decides which they may read.
    pub rooms: Vec<ObjectId>,
    /// Each must appear in the content, ignoring case, as a plain substring
    /// (not a pattern).
    pub words: Vec<String>,
    /// Only messages older than this one, given as its (timestamp, id):
    /// newest-first keyset pagination.
    pub before: Option<(DateTime<Utc>, ObjectId)>,
    pub limit: i64,
}

/// A change to notification preferences: `None` leaves a field alone.
#[derive(Debug, Clone, Default)]
pub struct PreferencesChange {
    pub enabled: Option<bool>,
    pub muted_rooms: Option<Vec<ObjectId>>,
    pub mentions_only: Option<bool>,
    /// `Some(None)` ends do-not-disturb.
    pub dnd_until: Option<Option<DateTime<Utc>>>,
    /// Mutes (`true`) or unmutes one room, leaving the other rooms alone.
    pub mute: Option<(ObjectId, bool)>,
}

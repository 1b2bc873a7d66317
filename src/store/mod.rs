//! Durable state: users, rooms, members and messages.
//!
//! Domain services see only the [`Store`] trait; [`mongo::MongoStore`] is the
//! real implementation. The trait asks for nothing a MongoDB-compatible server
//! without multi-document transactions cannot do: every write is a single
//! document operation, and uniqueness comes from unique indexes.

pub mod model;
pub mod mongo;

use async_trait::async_trait;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};

pub use model::{ApiKey, Notification, NotificationPreferences};
pub use model::{Contact, Cursor, Member, Message, Role, Room, RoomKind, User};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The server could not be reached or did not answer in time.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A unique index refused the write.
    #[error("duplicate key")]
    Duplicate,
    #[error("store error: {0}")]
    Other(String),
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

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates the indexes the queries rely on; safe to run on every start.
    async fn ensure_indexes(&self) -> StoreResult<()>;
    async fn ping(&self) -> StoreResult<()>;

    async fn insert_user(&self, user: &User) -> StoreResult<()>;
    /// Which of username (case-insensitively) or email is already taken, if any.
    async fn taken_user_field(&self, username_key: &str, email: &str) -> StoreResult<Option<&'static str>>;
    /// A user by lower-cased username or email.
    async fn user_by_login(&self, login_key: &str) -> StoreResult<Option<User>>;

    async fn insert_room(&self, room: &Room) -> StoreResult<()>;
    async fn room(&self, id: ObjectId) -> StoreResult<Option<Room>>;
    async fn room_name_taken(&self, name: &str) -> StoreResult<bool>;
    /// Public rooms and the private rooms `user_id` belongs to, oldest first.
    async fn rooms_visible_to(&self, user_id: ObjectId) -> StoreResult<Vec<Room>>;
    /// Public rooms and the rooms `ids` (a user's memberships), in one read.
    async fn rooms_listed(&self, ids: &[ObjectId]) -> StoreResult<Vec<Room>>;

    async fn room_by_name(&self, name: &str) -> StoreResult<Option<Room>>;
    async fn user(&self, id: ObjectId) -> StoreResult<Option<User>>;
    /// Users by id, in no particular order; unknown ids are left out.
    async fn users(&self, ids: &[ObjectId]) -> StoreResult<Vec<User>>;

    /// Adds a member unless already there; returns the membership as stored.
    async fn add_member(&self, member: &Member) -> StoreResult<Member>;
    async fn member(&self, room_id: ObjectId, user_id: ObjectId) -> StoreResult<Option<Member>>;
    /// Whether there was a membership to remove.
    async fn remove_member(&self, room_id: ObjectId, user_id: ObjectId) -> StoreResult<bool>;
    /// Whether the member exists (and now has `role`).
    async fn set_role(&self, room_id: ObjectId, user_id: ObjectId, role: Role) -> StoreResult<bool>;
    /// A room's members, oldest first, at most `limit`.
    async fn room_members(&self, room_id: ObjectId, limit: i64) -> StoreResult<Vec<Member>>;
    /// Every membership of one user.
    async fn memberships(&self, user_id: ObjectId) -> StoreResult<Vec<Member>>;
    /// The rooms each of `users` is a member of, as (user, room) pairs: one
    /// read for a whole batch of presence changes.
    async fn rooms_of(&self, users: &[ObjectId]) -> StoreResult<Vec<(ObjectId, ObjectId)>>;
    /// Moves a member's cursor forward to `seq` (never back); returns the
    /// cursor's previous seq if it moved.
    async fn advance_cursor(
        &self,
        room_id: ObjectId,
        user_id: ObjectId,
        cursor: Cursor,
        seq: i64,
        message_id: ObjectId,
    ) -> StoreResult<Option<i64>>;
    /// Messages after `after_seq` in the room that others sent, up to `cap`.
    async fn count_unread(&self, room_id: ObjectId, user_id: ObjectId, after_seq: i64, cap: i64) -> StoreResult<i64>;

    /// Hands out the room's next seq from the room document's counter: the
    /// fallback while Redis cannot (`crate::seq`, ADR 11). `None` if the
    /// room does not exist.
    async fn next_seq(&self, room_id: ObjectId) -> StoreResult<Option<i64>>;
    /// The highest seq the room has used as far as the store knows: its
    /// document's counter and its newest message, live or archived. What
    /// a seq counter starts from; `None` if the room does not exist.
    async fn highest_seq(&self, room_id: ObjectId) -> StoreResult<Option<i64>>;
    /// The stored messages with these (room, seq) pairs, in no order; pairs
    /// with no stored message are left out. One read however many pairs.
    async fn messages_at(&self, at: &[(ObjectId, i64)]) -> StoreResult<Vec<Message>>;
    /// Raises the room document's counter to at least `seq` (never lowers it).
    async fn raise_seq(&self, room_id: ObjectId, seq: i64) -> StoreResult<()>;
    async fn insert_message(&self, message: &Message) -> StoreResult<()>;
    async fn message(&self, id: ObjectId) -> StoreResult<Option<Message>>;
    async fn message_by_client_id(&self, sender_id: ObjectId, client_msg_id: &str) -> StoreResult<Option<Message>>;
    /// Up to `limit` messages in chronological order, and whether more match
    /// beyond the page (older when reading back, newer when reading forward).
    async fn history(&self, query: &HistoryQuery) -> StoreResult<(Vec<Message>, bool)>;
    /// `history` over the archive: messages the archive job moved out of
    /// the live collection (`confab worker`, docs/architecture.md).
    async fn archived_history(&self, query: &HistoryQuery) -> StoreResult<(Vec<Message>, bool)>;
    /// An archived message by id.
    async fn archived_message(&self, id: ObjectId) -> StoreResult<Option<Message>>;

    /// Replaces a message's content and sets `edited_at`; returns the message
    /// as stored, or `None` if there is no such message that is not deleted.
    async fn edit_message(&self, id: ObjectId, content: &str, at: DateTime<Utc>) -> StoreResult<Option<Message>>;
    /// Turns a message into a tombstone: content cleared (it must not linger
    /// in the store), `deleted` and `deleted_at` set. Returns the tombstone,
    /// or `None` if there is no such message that is not already deleted.
    async fn delete_message(&self, id: ObjectId, at: DateTime<Utc>) -> StoreResult<Option<Message>>;
    /// Up to `limit` messages matching the search, newest first, and whether
    /// more match beyond the page.
    async fn search_messages(&self, query: &SearchQuery) -> StoreResult<(Vec<Message>, bool)>;

    /// Applies a profile edit; the user as stored afterwards, `None` if unknown.
    async fn update_profile(&self, id: ObjectId, change: &ProfileChange) -> StoreResult<Option<User>>;
    /// Up to `limit` users whose username key or display-name key starts
    /// with `prefix` (lower-cased), ordered by username key, beginning after
    /// the username key `after`.
    async fn search_users(&self, prefix: &str, after: Option<&str>, limit: i64) -> StoreResult<Vec<User>>;

    /// Adds a contact unless already there; the entry as stored, and whether
    /// this call created it.
    async fn add_contact(&self, contact: &Contact) -> StoreResult<(Contact, bool)>;
    /// False if it was not a contact.
    async fn remove_contact(&self, owner_id: ObjectId, contact_id: ObjectId) -> StoreResult<bool>;
    /// `owner_id`'s contacts, oldest first.
    async fn contacts(&self, owner_id: ObjectId) -> StoreResult<Vec<Contact>>;
    /// Who has each of `users` among their contacts, as (user, owner)
    /// pairs: one read for a whole batch of presence changes.
    async fn contact_owners_of(&self, users: &[ObjectId]) -> StoreResult<Vec<(ObjectId, ObjectId)>>;

    /// Up to `limit` of a room's members in user-id order, after `after`
    /// (a user id): paging through a room of any size.
    async fn room_members_page(
        &self,
        room_id: ObjectId,
        after: Option<ObjectId>,
        limit: i64,
    ) -> StoreResult<Vec<Member>>;
    /// Users by lower-cased username, in no particular order.
    async fn users_by_username_keys(&self, keys: &[String]) -> StoreResult<Vec<User>>;

    /// Stored preferences of these users (users without any are left out).
    async fn notification_preferences(&self, users: &[ObjectId]) -> StoreResult<Vec<NotificationPreferences>>;
    /// Applies a change to a user's preferences (made from the defaults if
    /// they have none) in one update; returns them as stored afterwards.
    async fn change_notification_preferences(
        &self,
        user: ObjectId,
        change: &PreferencesChange,
    ) -> StoreResult<NotificationPreferences>;
    async fn insert_notifications(&self, notifications: &[Notification]) -> StoreResult<()>;
    /// Stores one notification unless one with its id is stored already;
    /// whether this call stored it.
    async fn insert_notification_once(&self, notification: &Notification) -> StoreResult<bool>;
    async fn notification(&self, id: ObjectId) -> StoreResult<Option<Notification>>;
    /// A user's notifications, newest first, older than `before` (an id),
    /// at most `limit`, and whether more are older.
    async fn notifications(
        &self,
        user: ObjectId,
        before: Option<ObjectId>,
        limit: i64,
    ) -> StoreResult<(Vec<Notification>, bool)>;
    /// Marks a user's unread notifications read (those with these ids, or
    /// all); returns how many changed.
    async fn mark_notifications_read(
        &self,
        user: ObjectId,
        ids: Option<&[ObjectId]>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64>;
    /// A user's unread notifications, counted up to `cap`.
    async fn count_unread_notifications(&self, user: ObjectId, cap: i64) -> StoreResult<i64>;
    /// Sets a notification's external delivery state (`pending`, or the
    /// outcome the queue's consumer records) and whether it went out live;
    /// whether it exists.
    async fn set_notification_delivery(
        &self,
        id: ObjectId,
        delivered_realtime: bool,
        external: Option<&str>,
    ) -> StoreResult<bool>;

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    async fn api_key(&self, id: ObjectId) -> StoreResult<Option<ApiKey>>;
    /// Every key, oldest first.
    async fn api_keys(&self) -> StoreResult<Vec<ApiKey>>;
    /// Revokes a key that is not revoked yet; whether this call did.
    async fn revoke_api_key(&self, id: ObjectId, at: DateTime<Utc>) -> StoreResult<bool>;
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

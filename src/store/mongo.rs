//! The MongoDB implementation of [`Store`], kept to single-document operations
//! and plain unique indexes so it runs unchanged on mongod and on compatible
//! servers such as FerretDB.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::{doc, oid::ObjectId, Document};
use futures::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Collection, Database, IndexModel};

use chrono::{DateTime, Utc};

use super::{ApiKey, Notification, NotificationPreferences, PreferencesChange};
use super::{
    Contact, Cursor, HistoryQuery, Member, Message, ProfileChange, Role, Room, SearchQuery, Store, StoreError,
    StoreResult, User,
};

#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    users: Collection<User>,
    rooms: Collection<Room>,
    members: Collection<Member>,
    messages: Collection<Message>,
    contacts: Collection<Contact>,
    /// Old messages, moved out of `messages` by the archive job.
    archive: Collection<Message>,
}

impl MongoStore {
    /// Connects lazily: the driver dials on first use, so a node can start
    /// (and report not-ready) while MongoDB is still coming up.
    pub async fn connect(url: &str, db_name: &str) -> StoreResult<Self> {
        let mut options =
            ClientOptions::parse(url).await.map_err(|e| StoreError::Other(format!("bad mongo url: {e}")))?;
        options.app_name = Some("confab".into());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        let client = mongodb::Client::with_options(options).map_err(map_err)?;
        let db = client.database(db_name);
        Ok(MongoStore {
            users: db.collection("users"),
            rooms: db.collection("rooms"),
            members: db.collection("room_members"),
            messages: db.collection("messages"),
            contacts: db.collection("contacts"),
            archive: db.collection("messages_archive"),
            db,
        })
    }
}

fn map_err(e: mongodb::error::Error) -> StoreError {
    match *e.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref w)) if w.code == 11000 => StoreError::Duplicate,
        ErrorKind::Command(ref c) if c.code == 11000 => StoreError::Duplicate,
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Other(e.to_string()),
    }
}

/// Times one store operation into `confab_mongo_op_seconds{op}`.
async fn timed<T>(
    op: &'static str,
    fut: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
) -> StoreResult<T> {
    let start = Instant::now();
    let out = fut.into_future().await.map_err(map_err);
    metrics::histogram!("confab_mongo_op_seconds", "op" => op).record(start.elapsed().as_secs_f64());
    out
}

/// For the documents whose `key` is one of `keys`, the (`key`, `other`)
/// id pairs: one `$in` read, only the two fields decoded.
async fn id_pairs<T: Send + Sync>(
    collection: &Collection<T>,
    op: &'static str,
    key: &str,
    keys: &[ObjectId],
    other: &str,
) -> StoreResult<Vec<(ObjectId, ObjectId)>> {
    let found: Vec<Document> = timed(op, async {
        collection
            .clone_with_type::<Document>()
            .find(doc! {key: {"$in": keys}})
            .projection(doc! {"_id": 0, key: 1, other: 1})
            .await?
            .try_collect()
            .await
    })
    .await?;
    Ok(found.iter().filter_map(|d| Some((d.get_object_id(key).ok()?, d.get_object_id(other).ok()?))).collect())
}

impl MongoStore {
    /// Gives each room stored before names were unique ignoring case its
    /// `name_key`, so the unique index can be built. Two old rooms whose
    /// names differ only in case keep their names; the later one's key
    /// gets its id appended, and no new room can take either name.
    async fn key_room_names(&self) -> StoreResult<()> {
        let unkeyed: Vec<Room> = timed("find_rooms", async {
            self.rooms.find(doc! {"name_key": {"$exists": false}}).sort(doc! {"_id": 1}).await?.try_collect().await
        })
        .await?;
        for room in unkeyed {
            let mut key = Room::key_of(&room.name);
            let taken = self.rooms.find_one(doc! {"name_key": &key, "_id": {"$ne": room.id}});
            if timed("find_room", taken).await?.is_some() {
                key = format!("{key}~{}", room.id.to_hex());
            }
            let set = self.rooms.update_one(doc! {"_id": room.id}, doc! {"$set": {"name_key": key}});
            timed("update_room", set).await?;
        }
        Ok(())
    }
}

fn index(keys: Document, name: &str, unique: bool) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_string()).unique(unique).build())
        .build()
}

#[async_trait]
impl Store for MongoStore {
    async fn ensure_indexes(&self) -> StoreResult<()> {
        // One index per command: FerretDB 1.x fails a multi-index
        // createIndexes when the indexes already exist, and a node must be
        // able to restart against its own database.
        let users = [
            index(doc! {"username": 1}, "users_username_unique", true),
            index(doc! {"username_key": 1}, "users_username_key_unique", true),
            index(doc! {"email": 1}, "users_email_unique", true),
        ];
        for model in users {
            timed("create_index", self.users.create_index(model)).await?;
        }
        timed("create_index", self.rooms.create_index(index(doc! {"name": 1}, "rooms_name_unique", true))).await?;
        self.key_room_names().await?;
        let by_key = index(doc! {"name_key": 1}, "rooms_name_key_unique", true);
        timed("create_index", self.rooms.create_index(by_key)).await?;
        let members = [
            index(doc! {"room_id": 1, "user_id": 1}, "members_room_user_unique", true),
            index(doc! {"user_id": 1}, "members_user", false),
        ];
        for model in members {
            timed("create_index", self.members.create_index(model)).await?;
        }
        let messages = [
            index(doc! {"room_id": 1, "_id": 1}, "messages_room_id", false),
            index(doc! {"room_id": 1, "seq": 1}, "messages_room_seq_unique", true),
            index(doc! {"sender_id": 1, "dedup_key": 1}, "messages_sender_client_msg_id_unique", true),
        ];
        for model in messages {
            timed("create_index", self.messages.create_index(model)).await?;
        }
        let search = index(doc! {"display_name_key": 1}, "users_display_name_key", false);
        timed("create_index", self.users.create_index(search)).await?;
        let contacts = [
            index(doc! {"owner_id": 1, "added_at": 1}, "contacts_owner", false),
            index(doc! {"contact_id": 1}, "contacts_contact", false),
        ];
        for model in contacts {
            timed("create_index", self.contacts.create_index(model)).await?;
        }
        let by_user = index(doc! {"user_id": 1, "_id": -1}, "notifications_user_newest", false);
        timed("create_index", self.notifications().create_index(by_user)).await?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        timed("ping", self.db.run_command(doc! {"ping": 1})).await.map(|_| ())
    }

    async fn insert_user(&self, user: &User) -> StoreResult<()> {
        timed("insert_user", self.users.insert_one(user)).await.map(|_| ())
    }

    async fn taken_user_field(&self, username_key: &str, email: &str) -> StoreResult<Option<&'static str>> {
        let filter = doc! {"$or": [{"username_key": username_key}, {"email": email}]};
        let found = timed("find_user", self.users.find_one(filter)).await?;
        Ok(found.map(|u| if u.username_key == username_key { "username" } else { "email" }))
    }

    async fn user_by_login(&self, login_key: &str) -> StoreResult<Option<User>> {
        let filter = doc! {"$or": [{"username_key": login_key}, {"email": login_key}]};
        timed("find_user", self.users.find_one(filter)).await
    }

    async fn insert_room(&self, room: &Room) -> StoreResult<()> {
        timed("insert_room", self.rooms.insert_one(room)).await.map(|_| ())
    }

    async fn room(&self, id: ObjectId) -> StoreResult<Option<Room>> {
        timed("find_room", self.rooms.find_one(doc! {"_id": id})).await
    }

    async fn room_name_taken(&self, name: &str) -> StoreResult<bool> {
        let found = self.rooms.find_one(doc! {"name_key": Room::key_of(name)});
        Ok(timed("find_room", found).await?.is_some())
    }

    async fn rooms_visible_to(&self, user_id: ObjectId) -> StoreResult<Vec<Room>> {
        let memberships: Vec<Member> =
            timed("find_members", async { self.members.find(doc! {"user_id": user_id}).await?.try_collect().await })
                .await?;
        let ids: Vec<ObjectId> = memberships.iter().map(|m| m.room_id).collect();
        self.rooms_listed(&ids).await
    }

    async fn rooms_listed(&self, ids: &[ObjectId]) -> StoreResult<Vec<Room>> {
        let filter = doc! {"$or": [{"type": "public"}, {"_id": {"$in": ids}}]};
        timed("find_rooms", async {
            self.rooms.find(filter).sort(doc! {"created_at": 1, "_id": 1}).await?.try_collect().await
        })
        .await
    }

    async fn room_by_name(&self, name: &str) -> StoreResult<Option<Room>> {
        timed("find_room", self.rooms.find_one(doc! {"name": name})).await
    }

    async fn user(&self, id: ObjectId) -> StoreResult<Option<User>> {
        timed("find_user", self.users.find_one(doc! {"_id": id})).await
    }

    async fn users(&self, ids: &[ObjectId]) -> StoreResult<Vec<User>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        timed("find_users", async { self.users.find(doc! {"_id": {"$in": ids}}).await?.try_collect().await }).await
    }

    async fn add_member(&self, member: &Member) -> StoreResult<Member> {
        match timed("insert_member", self.members.insert_one(member)).await {
            Ok(_) => Ok(member.clone()),
            Err(StoreError::Duplicate) => self
                .member(member.room_id, member.user_id)
                .await?
                .ok_or_else(|| StoreError::Other("membership vanished after a duplicate insert".into())),
            Err(e) => Err(e),
        }
    }

    async fn member(&self, room_id: ObjectId, user_id: ObjectId) -> StoreResult<Option<Member>> {
        timed("find_member", self.members.find_one(doc! {"_id": Member::key(room_id, user_id)})).await
    }

    async fn remove_member(&self, room_id: ObjectId, user_id: ObjectId) -> StoreResult<bool> {
        let out = timed("delete_member", self.members.delete_one(doc! {"_id": Member::key(room_id, user_id)})).await?;
        Ok(out.deleted_count > 0)
    }

    async fn set_role(&self, room_id: ObjectId, user_id: ObjectId, role: Role) -> StoreResult<bool> {
        let role = bson::to_bson(&role).map_err(|e| StoreError::Other(e.to_string()))?;
        let filter = doc! {"_id": Member::key(room_id, user_id)};
        let out = timed("update_member", self.members.update_one(filter, doc! {"$set": {"role": role}})).await?;
        Ok(out.matched_count > 0)
    }

    async fn room_members(&self, room_id: ObjectId, limit: i64) -> StoreResult<Vec<Member>> {
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

    async fn memberships(&self, user_id: ObjectId) -> StoreResult<Vec<Member>> {
        timed("find_members", async { self.members.find(doc! {"user_id": user_id}).await?.try_collect().await }).await
    }

    async fn rooms_of(&self, users: &[ObjectId]) -> StoreResult<Vec<(ObjectId, ObjectId)>> {
        id_pairs(&self.members, "find_members", "user_id", users, "room_id").await
    }

    async fn advance_cursor(
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

    async fn count_unread(&self, room_id: ObjectId, user_id: ObjectId, after_seq: i64, cap: i64) -> StoreResult<i64> {
        let filter = doc! {
            "room_id": room_id,
            "seq": {"$gt": after_seq},
            "sender_id": {"$ne": user_id},
            "deleted": {"$ne": true},
        };
        let n = timed("count_unread", self.messages.count_documents(filter).limit(cap as u64)).await?;
        Ok(n as i64)
    }

    async fn next_seq(&self, room_id: ObjectId) -> StoreResult<Option<i64>> {
        let room = timed(
            "next_seq",
            self.rooms
                .find_one_and_update(doc! {"_id": room_id}, doc! {"$inc": {"last_seq": 1_i64}})
                .return_document(ReturnDocument::After),
        )
        .await?;
        Ok(room.map(|r| r.last_seq))
    }

    async fn highest_seq(&self, room_id: ObjectId) -> StoreResult<Option<i64>> {
        let Some(room) = timed("find_room", self.rooms.find_one(doc! {"_id": room_id})).await? else {
            return Ok(None);
        };
        // Only the seq is read: the newest by the unique (room_id, seq) index.
        let newest = |c: Collection<Document>| async move {
            let found =
                c.find_one(doc! {"room_id": room_id}).sort(doc! {"seq": -1}).projection(doc! {"seq": 1}).await?;
            Ok(found.and_then(|d| d.get_i64("seq").ok()))
        };
        let live = timed("highest_seq", newest(self.messages.clone_with_type()));
        let archived = timed("highest_seq", newest(self.archive.clone_with_type()));
        let (live, archived) = tokio::try_join!(live, archived)?;
        Ok(Some([live, archived].into_iter().flatten().fold(room.last_seq, i64::max)))
    }

    async fn raise_seq(&self, room_id: ObjectId, seq: i64) -> StoreResult<()> {
        timed("raise_seq", self.rooms.update_one(doc! {"_id": room_id}, doc! {"$max": {"last_seq": seq}})).await?;
        Ok(())
    }

    async fn insert_message(&self, message: &Message) -> StoreResult<()> {
        timed("insert_message", self.messages.insert_one(message)).await.map(|_| ())
    }

    async fn message(&self, id: ObjectId) -> StoreResult<Option<Message>> {
        timed("find_message", self.messages.find_one(doc! {"_id": id})).await
    }

    async fn message_by_client_id(&self, sender_id: ObjectId, client_msg_id: &str) -> StoreResult<Option<Message>> {
        timed("find_message", self.messages.find_one(doc! {"sender_id": sender_id, "dedup_key": client_msg_id})).await
    }

    async fn messages_at(&self, at: &[(ObjectId, i64)]) -> StoreResult<Vec<Message>> {
        let mut found = Vec::with_capacity(at.len());
        for chunk in at.chunks(500) {
            let any: Vec<Document> = chunk.iter().map(|(room, seq)| doc! {"room_id": room, "seq": seq}).collect();
            let page: Vec<Message> =
                timed("messages_at", async { self.messages.find(doc! {"$or": any}).await?.try_collect().await })
                    .await?;
            found.extend(page);
        }
        Ok(found)
    }

    async fn history(&self, q: &HistoryQuery) -> StoreResult<(Vec<Message>, bool)> {
        history_page(&self.messages, q, "history").await
    }

    async fn archived_history(&self, q: &HistoryQuery) -> StoreResult<(Vec<Message>, bool)> {
        history_page(&self.archive, q, "archived_history").await
    }

    async fn archived_message(&self, id: ObjectId) -> StoreResult<Option<Message>> {
        timed("find_archived_message", self.archive.find_one(doc! {"_id": id})).await
    }

    async fn edit_message(&self, id: ObjectId, content: &str, at: DateTime<Utc>) -> StoreResult<Option<Message>> {
        let update = doc! {"$set": {"content": content, "edited_at": bson::DateTime::from_chrono(at)}};
        timed(
            "edit_message",
            self.messages
                .find_one_and_update(doc! {"_id": id, "deleted": {"$ne": true}}, update)
                .return_document(ReturnDocument::After),
        )
        .await
    }

    async fn delete_message(&self, id: ObjectId, at: DateTime<Utc>) -> StoreResult<Option<Message>> {
        let update = doc! {
            "$set": {"content": "", "deleted": true, "deleted_at": bson::DateTime::from_chrono(at)},
            "$unset": {"edited_at": ""},
        };
        timed(
            "delete_message",
            self.messages
                .find_one_and_update(doc! {"_id": id, "deleted": {"$ne": true}}, update)
                .return_document(ReturnDocument::After),
        )
        .await
    }

    /// One query: every word as a case-insensitive `$regex` of its escaped
    /// text (FerretDB has no text indexes; it scans, which is acceptable
    /// for search), newest first with the id breaking timestamp ties.
    async fn search_messages(&self, q: &SearchQuery) -> StoreResult<(Vec<Message>, bool)> {
        if q.rooms.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut all: Vec<Document> =
            q.words.iter().map(|w| doc! {"content": {"$regex": literal_pattern(w), "$options": "i"}}).collect();
        if let Some((at, id)) = q.before {
            let at = bson::DateTime::from_chrono(at);
            all.push(doc! {"$or": [{"timestamp": {"$lt": at}}, {"timestamp": at, "_id": {"$lt": id}}]});
        }
        let mut filter = doc! {"room_id": {"$in": &q.rooms}, "deleted": {"$ne": true}};
        if !all.is_empty() {
            filter.insert("$and", all);
        }
        let mut page: Vec<Message> = timed("search_messages", async {
            self.messages
                .find(filter)
                .sort(doc! {"timestamp": -1, "_id": -1})
                .limit(q.limit + 1)
                .await?
                .try_collect()
                .await
        })
        .await?;
        let has_more = page.len() as i64 > q.limit;
        page.truncate(q.limit as usize);
        Ok((page, has_more))
    }

    async fn update_profile(&self, id: ObjectId, change: &ProfileChange) -> StoreResult<Option<User>> {
        let (mut set, mut unset) = (Document::new(), Document::new());
        let fields = [
            ("display_name", Some("display_name_key"), &change.display_name),
            ("avatar_url", None, &change.avatar_url),
        ];
        for (field, key, value) in fields {
            match value {
                Some(Some(v)) => {
                    set.insert(field, v.as_str());
                    if let Some(key) = key {
                        set.insert(key, v.to_lowercase());
                    }
                }
                Some(None) => {
                    unset.insert(field, "");
                    if let Some(key) = key {
                        unset.insert(key, "");
                    }
                }
                None => {}
            }
        }
        let mut update = Document::new();
        if !set.is_empty() {
            update.insert("$set", set);
        }
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        if update.is_empty() {
            return self.user(id).await;
        }
        timed(
            "update_profile",
            self.users.find_one_and_update(doc! {"_id": id}, update).return_document(ReturnDocument::After),
        )
        .await
    }

    async fn search_users(&self, prefix: &str, after: Option<&str>, limit: i64) -> StoreResult<Vec<User>> {
        // Anchored, escaped patterns on the lower-cased keys: a prefix match
        // that ignores case without the `i` flag, which would defeat indexes.
        let pattern = format!("^{}", literal_pattern(prefix));
        let mut filter = doc! {"$or": [
            {"username_key": {"$regex": pattern.as_str()}},
            {"display_name_key": {"$regex": pattern.as_str()}},
        ]};
        if let Some(after) = after {
            filter.insert("username_key", doc! {"$gt": after});
        }
        timed("search_users", async {
            self.users.find(filter).sort(doc! {"username_key": 1}).limit(limit).await?.try_collect().await
        })
        .await
    }

    async fn add_contact(&self, contact: &Contact) -> StoreResult<(Contact, bool)> {
        match timed("insert_contact", self.contacts.insert_one(contact)).await {
            Ok(_) => Ok((contact.clone(), true)),
            Err(StoreError::Duplicate) => {
                let stored = timed("find_contact", self.contacts.find_one(doc! {"_id": &contact.key})).await?;
                Ok((stored.unwrap_or_else(|| contact.clone()), false))
            }
            Err(e) => Err(e),
        }
    }

    async fn remove_contact(&self, owner_id: ObjectId, contact_id: ObjectId) -> StoreResult<bool> {
        let key = Contact::key(owner_id, contact_id);
        let deleted = timed("delete_contact", self.contacts.delete_one(doc! {"_id": key})).await?;
        Ok(deleted.deleted_count > 0)
    }

    async fn contacts(&self, owner_id: ObjectId) -> StoreResult<Vec<Contact>> {
        timed("find_contacts", async {
            self.contacts
                .find(doc! {"owner_id": owner_id})
                .sort(doc! {"added_at": 1, "_id": 1})
                .await?
                .try_collect()
                .await
        })
        .await
    }

    async fn contact_owners_of(&self, users: &[ObjectId]) -> StoreResult<Vec<(ObjectId, ObjectId)>> {
        id_pairs(&self.contacts, "find_contacts", "contact_id", users, "owner_id").await
    }

    async fn room_members_page(
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

    async fn users_by_username_keys(&self, keys: &[String]) -> StoreResult<Vec<User>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        timed("find_users", async { self.users.find(doc! {"username_key": {"$in": keys}}).await?.try_collect().await })
            .await
    }

    async fn notification_preferences(&self, users: &[ObjectId]) -> StoreResult<Vec<NotificationPreferences>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let filter = doc! {"_id": {"$in": users}};
        timed("find_preferences", async { self.preferences().find(filter).await?.try_collect().await }).await
    }

    async fn change_notification_preferences(
        &self,
        user: ObjectId,
        change: &PreferencesChange,
    ) -> StoreResult<NotificationPreferences> {
        let update = preferences_update(change);
        let found = timed(
            "change_preferences",
            self.preferences()
                .find_one_and_update(doc! {"_id": user}, update)
                .upsert(true)
                .return_document(ReturnDocument::After),
        )
        .await?;
        found.ok_or_else(|| StoreError::Other("preferences missing after an upsert".into()))
    }

    async fn insert_notifications(&self, notifications: &[Notification]) -> StoreResult<()> {
        if notifications.is_empty() {
            return Ok(());
        }
        timed("insert_notifications", self.notifications().insert_many(notifications)).await.map(|_| ())
    }

    async fn insert_notification_once(&self, notification: &Notification) -> StoreResult<bool> {
        match timed("insert_notifications", self.notifications().insert_one(notification)).await {
            Ok(_) => Ok(true),
            Err(StoreError::Duplicate) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn notification(&self, id: ObjectId) -> StoreResult<Option<Notification>> {
        timed("find_notification", self.notifications().find_one(doc! {"_id": id})).await
    }

    async fn notifications(
        &self,
        user: ObjectId,
        before: Option<ObjectId>,
        limit: i64,
    ) -> StoreResult<(Vec<Notification>, bool)> {
        let mut filter = doc! {"user_id": user};
        if let Some(before) = before {
            filter.insert("_id", doc! {"$lt": before});
        }
        let mut page: Vec<Notification> = timed("find_notifications", async {
            self.notifications().find(filter).sort(doc! {"_id": -1}).limit(limit + 1).await?.try_collect().await
        })
        .await?;
        let has_more = page.len() as i64 > limit;
        page.truncate(limit as usize);
        Ok((page, has_more))
    }

    async fn mark_notifications_read(
        &self,
        user: ObjectId,
        ids: Option<&[ObjectId]>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let mut filter = doc! {"user_id": user, "read": false};
        if let Some(ids) = ids {
            filter.insert("_id", doc! {"$in": ids});
        }
        let update = doc! {"$set": {"read": true, "read_at": bson::DateTime::from_chrono(at)}};
        let out = timed("mark_notifications_read", self.notifications().update_many(filter, update)).await?;
        Ok(out.modified_count)
    }

    async fn count_unread_notifications(&self, user: ObjectId, cap: i64) -> StoreResult<i64> {
        let filter = doc! {"user_id": user, "read": false};
        let n = timed("count_notifications", self.notifications().count_documents(filter).limit(cap as u64)).await?;
        Ok(n as i64)
    }

    async fn set_notification_delivery(
        &self,
        id: ObjectId,
        delivered_realtime: bool,
        external: Option<&str>,
    ) -> StoreResult<bool> {
        let update = match external {
            Some(state) => doc! {"$set": {"delivered_realtime": delivered_realtime, "external": state}},
            None => doc! {"$set": {"delivered_realtime": delivered_realtime}, "$unset": {"external": ""}},
        };
        let out = timed("update_notification", self.notifications().update_one(doc! {"_id": id}, update)).await?;
        Ok(out.matched_count > 0)
    }

    async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        timed("insert_api_key", self.api_keys_collection().insert_one(key)).await.map(|_| ())
    }

    async fn api_key(&self, id: ObjectId) -> StoreResult<Option<ApiKey>> {
        timed("find_api_key", self.api_keys_collection().find_one(doc! {"_id": id})).await
    }

    async fn api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        timed("find_api_keys", async {
            self.api_keys_collection().find(doc! {}).sort(doc! {"created_at": 1, "_id": 1}).await?.try_collect().await
        })
        .await
    }

    async fn revoke_api_key(&self, id: ObjectId, at: DateTime<Utc>) -> StoreResult<bool> {
        let filter = doc! {"_id": id, "revoked_at": {"$exists": false}};
        let update = doc! {"$set": {"revoked_at": bson::DateTime::from_chrono(at)}};
        let out = timed("revoke_api_key", self.api_keys_collection().update_one(filter, update)).await?;
        Ok(out.modified_count > 0)
    }
}

/// Collections of notifications and server API keys, by name (a handle is
/// cheap to make).
impl MongoStore {
    fn notifications(&self) -> Collection<Notification> {
        self.db.collection("notifications")
    }

    fn preferences(&self) -> Collection<NotificationPreferences> {
        self.db.collection("notification_preferences")
    }

    fn api_keys_collection(&self) -> Collection<ApiKey> {
        self.db.collection("api_keys")
    }
}

/// One update for a preferences change: `$set` the fields given,
/// `$addToSet`/`$pull` a muted room, and `$setOnInsert` the defaults of
/// every field not otherwise written, for a user who had none stored.
fn preferences_update(change: &PreferencesChange) -> Document {
    let mut set = Document::new();
    if let Some(enabled) = change.enabled {
        set.insert("enabled", enabled);
    }
    if let Some(rooms) = &change.muted_rooms {
        set.insert("muted_rooms", rooms.clone());
    }
    if let Some(mentions_only) = change.mentions_only {
        set.insert("mentions_only", mentions_only);
    }
    if let Some(until) = change.dnd_until {
        set.insert(
            "dnd_until",
            until.map_or(bson::Bson::Null, |t| bson::Bson::DateTime(bson::DateTime::from_chrono(t))),
        );
    }
    let mut on_insert = Document::new();
    let defaults: [(&str, bson::Bson); 4] = [
        ("enabled", true.into()),
        ("muted_rooms", bson::Bson::Array(Vec::new())),
        ("mentions_only", false.into()),
        ("dnd_until", bson::Bson::Null),
    ];
    for (field, value) in defaults {
        let muting = field == "muted_rooms" && change.mute.is_some();
        if !set.contains_key(field) && !muting {
            on_insert.insert(field, value);
        }
    }
    let mut update = Document::new();
    if !set.is_empty() {
        update.insert("$set", set);
    }
    match change.mute {
        Some((room, true)) => {
            update.insert("$addToSet", doc! {"muted_rooms": room});
        }
        Some((room, false)) => {
            update.insert("$pull", doc! {"muted_rooms": room});
        }
        None => {}
    }
    if !on_insert.is_empty() {
        update.insert("$setOnInsert", on_insert);
    }
    update
}

/// One page of a room's history from `messages` or the archive: the same
/// query on either collection.
async fn history_page(
    messages: &Collection<Message>,
    q: &HistoryQuery,
    op: &'static str,
) -> StoreResult<(Vec<Message>, bool)> {
    let mut filter = doc! {"room_id": q.room_id};
    let mut seq = Document::new();
    if let Some(b) = q.before_seq {
        seq.insert("$lt", b);
    }
    if let Some(a) = q.after_seq {
        seq.insert("$gt", a);
    }
    if !seq.is_empty() {
        filter.insert("seq", seq);
    }
    let mut ts = Document::new();
    if let Some(s) = q.since {
        ts.insert("$gte", bson::DateTime::from_chrono(s));
    }
    if let Some(u) = q.until {
        ts.insert("$lte", bson::DateTime::from_chrono(u));
    }
    if !ts.is_empty() {
        filter.insert("timestamp", ts);
    }
    let order = if q.forward { 1 } else { -1 };
    let mut page: Vec<Message> = timed(op, async {
        messages.find(filter).sort(doc! {"seq": order}).limit(q.limit + 1).await?.try_collect().await
    })
    .await?;
    let has_more = page.len() as i64 > q.limit;
    page.truncate(q.limit as usize);
    if !q.forward {
        page.reverse();
    }
    Ok((page, has_more))
}

/// A regular expression matching `text` literally: every ASCII character
/// that is not a letter or digit is escaped, which both PCRE (MongoDB) and
/// RE2 (FerretDB) read as the character itself.
fn literal_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::literal_pattern;

    #[test]
    fn patterns_escape_every_ascii_symbol_and_keep_the_rest() {
        assert_eq!(literal_pattern("a.b*c"), r"a\.b\*c");
        assert_eq!(literal_pattern("(x|y)+[z]{2}^$?"), r"\(x\|y\)\+\[z\]\{2\}\^\$\?");
        assert_eq!(literal_pattern(r"back\slash"), r"back\\slash");
        assert_eq!(literal_pattern("Grüße_1"), r"Grüße\_1");
    }
}

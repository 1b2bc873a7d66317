//! Notifications and users' notification preferences.

use bson::{doc, oid::ObjectId, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;

use super::mongo::timed;
use super::{Notification, NotificationPreferences, PreferencesChange, Store, StoreError, StoreResult};

impl Store {
    /// Stored preferences of these users (users without any are left out).
    pub async fn notification_preferences(&self, users: &[ObjectId]) -> StoreResult<Vec<NotificationPreferences>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let filter = doc! {"_id": {"$in": users}};
        timed("find_preferences", async { self.preferences.find(filter).await?.try_collect().await }).await
    }

    /// Applies a change to a user's preferences (made from the defaults if
    /// they have none) in one update; returns them as stored afterwards.
    pub async fn change_notification_preferences(
        &self,
        user: ObjectId,
        change: &PreferencesChange,
    ) -> StoreResult<NotificationPreferences> {
        let update = preferences_update(change);
        let found = timed(
            "change_preferences",
            self.preferences
                .find_one_and_update(doc! {"_id": user}, update)
                .upsert(true)
                .return_document(ReturnDocument::After),
        )
        .await?;
        found.ok_or_else(|| StoreError::Other("preferences missing after an upsert".into()))
    }

    pub async fn insert_notifications(&self, notifications: &[Notification]) -> StoreResult<()> {
        if notifications.is_empty() {
            return Ok(());
        }
        timed("insert_notifications", self.notifications.insert_many(notifications)).await.map(|_| ())
    }

    /// Stores one notification unless one with its id is stored already;
    /// whether this call stored it.
    pub async fn insert_notification_once(&self, notification: &Notification) -> StoreResult<bool> {
        match timed("insert_notifications", self.notifications.insert_one(notification)).await {
            Ok(_) => Ok(true),
            Err(StoreError::Duplicate) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn notification(&self, id: ObjectId) -> StoreResult<Option<Notification>> {
        timed("find_notification", self.notifications.find_one(doc! {"_id": id})).await
    }

    /// A user's notifications, newest first, older than `before` (an id),
    /// at most `limit`, and whether more are older.
    pub async fn notifications(
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
            self.notifications.find(filter).sort(doc! {"_id": -1}).limit(limit + 1).await?.try_collect().await
        })
        .await?;
        let has_more = page.len() as i64 > limit;
        page.truncate(limit as usize);
        Ok((page, has_more))
    }

    /// Marks a user's unread notifications read (those with these ids, or
    /// all); returns how many changed.
    pub async fn mark_notifications_read(
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
        let out = timed("mark_notifications_read", self.notifications.update_many(filter, update)).await?;
        Ok(out.modified_count)
    }

    /// A user's unread notifications, counted up to `cap`.
    pub async fn count_unread_notifications(&self, user: ObjectId, cap: i64) -> StoreResult<i64> {
        let filter = doc! {"user_id": user, "read": false};
        let n = timed("count_notifications", self.notifications.count_documents(filter).limit(cap as u64)).await?;
        Ok(n as i64)
    }

    /// Sets a notification's external delivery state (`pending`, or the
    /// outcome the queue's consumer records) and whether it went out live;
    /// whether it exists.
    pub async fn set_notification_delivery(
        &self,
        id: ObjectId,
        delivered_realtime: bool,
        external: Option<&str>,
    ) -> StoreResult<bool> {
        let update = match external {
            Some(state) => doc! {"$set": {"delivered_realtime": delivered_realtime, "external": state}},
            None => doc! {"$set": {"delivered_realtime": delivered_realtime}, "$unset": {"external": ""}},
        };
        let out = timed("update_notification", self.notifications.update_one(doc! {"_id": id}, update)).await?;
        Ok(out.matched_count > 0)
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

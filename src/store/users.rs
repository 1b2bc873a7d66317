//! Users, their profiles and contacts, and server API keys.

use bson::{doc, oid::ObjectId, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;

use super::messages::literal_pattern;
use super::mongo::{id_pairs, timed};
use super::{ApiKey, Contact, ProfileChange, Store, StoreError, StoreResult, User};

impl Store {
    pub async fn insert_user(&self, user: &User) -> StoreResult<()> {
        timed("insert_user", self.users.insert_one(user)).await.map(|_| ())
    }

    /// Which of username (case-insensitively) or email is already taken, if any.
    pub async fn taken_user_field(&self, username_key: &str, email: &str) -> StoreResult<Option<&'static str>> {
        let filter = doc! {"$or": [{"username_key": username_key}, {"email": email}]};
        let found = timed("find_user", self.users.find_one(filter)).await?;
        Ok(found.map(|u| if u.username_key == username_key { "username" } else { "email" }))
    }

    /// A user by lower-cased username or email.
    pub async fn user_by_login(&self, login_key: &str) -> StoreResult<Option<User>> {
        let filter = doc! {"$or": [{"username_key": login_key}, {"email": login_key}]};
        timed("find_user", self.users.find_one(filter)).await
    }

    pub async fn user(&self, id: ObjectId) -> StoreResult<Option<User>> {
        timed("find_user", self.users.find_one(doc! {"_id": id})).await
    }

    /// Users by id, in no particular order; unknown ids are left out.
    pub async fn users(&self, ids: &[ObjectId]) -> StoreResult<Vec<User>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        timed("find_users", async { self.users.find(doc! {"_id": {"$in": ids}}).await?.try_collect().await }).await
    }

    /// Applies a profile edit; the user as stored afterwards, `None` if unknown.
    pub async fn update_profile(&self, id: ObjectId, change: &ProfileChange) -> StoreResult<Option<User>> {
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

    /// Up to `limit` users whose username key or display-name key starts
    /// with `prefix` (lower-cased), ordered by username key, beginning after
    /// the username key `after`.
    pub async fn search_users(&self, prefix: &str, after: Option<&str>, limit: i64) -> StoreResult<Vec<User>> {
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

    /// Users by lower-cased username, in no particular order.
    pub async fn users_by_username_keys(&self, keys: &[String]) -> StoreResult<Vec<User>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        timed("find_users", async { self.users.find(doc! {"username_key": {"$in": keys}}).await?.try_collect().await })
            .await
    }

    /// Adds a contact unless already there; the entry as stored, and whether
    /// this call created it.
    pub async fn add_contact(&self, contact: &Contact) -> StoreResult<(Contact, bool)> {
        match timed("insert_contact", self.contacts.insert_one(contact)).await {
            Ok(_) => Ok((contact.clone(), true)),
            Err(StoreError::Duplicate) => {
                let stored = timed("find_contact", self.contacts.find_one(doc! {"_id": &contact.key})).await?;
                Ok((stored.unwrap_or_else(|| contact.clone()), false))
            }
            Err(e) => Err(e),
        }
    }

    /// False if it was not a contact.
    pub async fn remove_contact(&self, owner_id: ObjectId, contact_id: ObjectId) -> StoreResult<bool> {
        let key = Contact::key(owner_id, contact_id);
        let deleted = timed("delete_contact", self.contacts.delete_one(doc! {"_id": key})).await?;
        Ok(deleted.deleted_count > 0)
    }

    /// `owner_id`'s contacts, oldest first.
    pub async fn contacts(&self, owner_id: ObjectId) -> StoreResult<Vec<Contact>> {
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

    /// Who has each of `users` among their contacts, as (user, owner)
    /// pairs: one read for a whole batch of presence changes.
    pub async fn contact_owners_of(&self, users: &[ObjectId]) -> StoreResult<Vec<(ObjectId, ObjectId)>> {
        id_pairs(&self.contacts, "find_contacts", "contact_id", users, "owner_id").await
    }

    pub async fn insert_api_key(&self, key: &ApiKey) -> StoreResult<()> {
        timed("insert_api_key", self.api_keys.insert_one(key)).await.map(|_| ())
    }

    pub async fn api_key(&self, id: ObjectId) -> StoreResult<Option<ApiKey>> {
        timed("find_api_key", self.api_keys.find_one(doc! {"_id": id})).await
    }

    /// Every key, oldest first.
    pub async fn api_keys(&self) -> StoreResult<Vec<ApiKey>> {
        timed("find_api_keys", async {
            self.api_keys.find(doc! {}).sort(doc! {"created_at": 1, "_id": 1}).await?.try_collect().await
        })
        .await
    }

    /// Revokes a key that is not revoked yet; whether this call did.
    pub async fn revoke_api_key(&self, id: ObjectId, at: DateTime<Utc>) -> StoreResult<bool> {
        let filter = doc! {"_id": id, "revoked_at": {"$exists": false}};
        let update = doc! {"$set": {"revoked_at": bson::DateTime::from_chrono(at)}};
        let out = timed("revoke_api_key", self.api_keys.update_one(filter, update)).await?;
        Ok(out.modified_count > 0)
    }

    /// Sets a user's role, by lower-cased username; the user as it was
    /// before, None if there is no such user.
    pub async fn set_user_role(&self, username_key: &str, role: super::UserRole) -> StoreResult<Option<User>> {
        let update =
            self.users.find_one_and_update(doc! {"username_key": username_key}, doc! {"$set": {"role": role.as_str()}});
        timed("update_user", update.return_document(ReturnDocument::Before)).await
    }

    /// Bans (`Some`) or unbans (`None`) a user; the user as stored before,
    /// `None` if unknown.
    pub async fn set_ban(&self, id: ObjectId, ban: Option<&super::Ban>) -> StoreResult<Option<User>> {
        let update = match ban {
            Some(ban) => doc! {"$set": {"banned": bson::to_bson(ban).map_err(|e| StoreError::Other(e.into()))?}},
            None => doc! {"$unset": {"banned": ""}},
        };
        let update = self.users.find_one_and_update(doc! {"_id": id}, update);
        timed("update_user", update.return_document(ReturnDocument::Before)).await
    }

    /// Replaces a user's password hash; false if the user is unknown.
    pub async fn set_password_hash(&self, id: ObjectId, hash: &str) -> StoreResult<bool> {
        let update = self.users.update_one(doc! {"_id": id}, doc! {"$set": {"password_hash": hash}});
        Ok(timed("update_user", update).await?.matched_count == 1)
    }
}

//! Contacts: the users someone keeps a list of, and sees the presence of.
//!
//! A contact is one-way (adding someone asks nothing of them) and private to
//! its owner. Entries are keyed `<owner>:<contact>`, so adding, removing and
//! checking are primary-key operations.

use std::sync::Arc;

use bson::oid::ObjectId;
use chrono::Utc;

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::presence::{Presence, PresenceView};
use crate::store::{Contact, Store, User};
use crate::users::Users;

/// A contact with what its owner sees of them.
pub struct Entry {
    pub user: User,
    pub contact: Contact,
    pub presence: PresenceView,
}

/// Each user's one-way contact list.
pub struct Contacts {
    store: Arc<Store>,
    users: Arc<Users>,
    presence: Arc<Presence>,
}

impl Contacts {
    pub fn new(store: Arc<Store>, users: Arc<Users>, presence: Arc<Presence>) -> Self {
        Contacts { store, users, presence }
    }

    /// Adds `contact_id` to the caller's contacts (idempotent); the entry, and
    /// whether this call added it.
    pub async fn add(&self, caller: &Caller, contact_id: ObjectId) -> Result<(Entry, bool)> {
        if contact_id == caller.user_id {
            return Err(Error::invalid("user_id", "you cannot add yourself as a contact"));
        }
        let user = self.users.profile(contact_id).await?;
        let (contact, created) = self.store.add_contact(&Contact::new(caller.user_id, contact_id, Utc::now())).await?;
        let presence = self.presence.lookup(&[contact_id]).await?.into_iter().next();
        let presence = presence.ok_or_else(|| Error::Internal("presence lookup answered nothing".into()))?;
        Ok((Entry { user, contact, presence }, created))
    }

    /// Removes `contact_id` from the caller's contacts; 404 if it was not there.
    pub async fn remove(&self, caller: &Caller, contact_id: ObjectId) -> Result<()> {
        if self.store.remove_contact(caller.user_id, contact_id).await? {
            Ok(())
        } else {
            Err(Error::NotFound("not in your contacts".into()))
        }
    }

    /// The caller's contacts, oldest first, each with their presence. Contacts
    /// whose account no longer exists are left out.
    pub async fn list(&self, caller: &Caller) -> Result<Vec<Entry>> {
        let contacts = self.store.contacts(caller.user_id).await?;
        let ids: Vec<ObjectId> = contacts.iter().map(|c| c.contact_id).collect();
        let (users, presence) = tokio::join!(self.store.users(&ids), self.presence.lookup(&ids));
        let mut users: std::collections::HashMap<ObjectId, User> = users?.into_iter().map(|u| (u.id, u)).collect();
        Ok(contacts
            .into_iter()
            .zip(presence?)
            .filter_map(|(contact, presence)| {
                Some(Entry { user: users.remove(&contact.contact_id)?, contact, presence })
            })
            .collect())
    }
}

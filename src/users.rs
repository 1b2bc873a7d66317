//! Accounts and profiles: registration, login, profile edits and search.

use std::sync::Arc;

use bson::oid::ObjectId;
use chrono::Utc;
use serde::{Deserialize, Deserializer};

use crate::audit::{self, Actor, Audit, Source};
use crate::auth::{hash_password, verify_password, Caller};
use crate::error::{Error, Result};
use crate::protocol::CloseCode;
use crate::ratelimit::SharedLimiter;
use crate::sessions::{self, Ending, Grant, Sessions};
use crate::store::{Ban, ProfileChange, Store, User, UserRole};
use crate::validate;

/// A new account as `POST /register` takes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Registration {
    /// 3–32 characters of `A–Z a–z 0–9 _ . -`, unique ignoring case; a few
    /// names (`admin`, `system`, …) are reserved.
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]+$")]
    pub username: String,
    /// Stored lower-cased; unique.
    #[schema(format = Email)]
    pub email: String,
    /// At least 8 characters, at most 1024 bytes.
    #[schema(min_length = 8, max_length = 1024)]
    pub password: String,
}

/// Credentials as `POST /login` takes them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct Login {
    /// A username or an email address.
    pub username: String,
    pub password: String,
}

/// A password change as `PATCH /users/me/password` takes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    /// The password rule of `POST /register`.
    #[schema(min_length = 8, max_length = 1024)]
    pub new_password: String,
}

/// Accounts: who may register, log in, and what their profile says.
pub struct Users {
    store: Arc<Store>,
    sessions: Arc<Sessions>,
    limiter: Arc<SharedLimiter>,
    audit: Arc<Audit>,
}

impl Users {
    pub fn new(store: Arc<Store>, sessions: Arc<Sessions>, limiter: Arc<SharedLimiter>, audit: Arc<Audit>) -> Self {
        Users { store, sessions, limiter, audit }
    }

    pub async fn register(&self, r: Registration) -> Result<User> {
        validate::username(&r.username)?;
        validate::email(&r.email)?;
        validate::password(&r.password)?;
        let username_key = r.username.to_lowercase();
        let email = r.email.to_lowercase();
        if let Some(field) = self.store.taken_user_field(&username_key, &email).await? {
            return Err(taken(field));
        }
        let user = User {
            id: bson::oid::ObjectId::new(),
            username: r.username,
            username_key,
            email,
            password_hash: hash_password(r.password).await?,
            created_at: Utc::now(),
            display_name: None,
            display_name_key: None,
            avatar_url: None,
            role: Default::default(),
            banned: None,
        };
        match self.store.insert_user(&user).await {
            Ok(()) => Ok(user),
            // Lost a race with a concurrent registration: say which field.
            Err(crate::store::StoreError::Duplicate) => {
                let field = self.store.taken_user_field(&user.username_key, &user.email).await?.unwrap_or("username");
                Err(taken(field))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Checks credentials and opens a session. Unknown users and wrong
    /// passwords fail identically, in the same time; a banned user who
    /// gives the right password is told so (403 `banned`).
    ///
    /// A name whose failed attempts in the window are used up is refused with
    /// 429 before its password is checked, right or wrong. Failures are counted
    /// per account (its username, whether it logs in by username or by email),
    /// or per name given when no account has it, so unknown names lock out too.
    pub async fn login(&self, l: Login, from: &Source) -> Result<Grant> {
        let key = l.username.trim().to_lowercase();
        let possible = !key.is_empty() && key.len() <= 254;
        let user = if possible { self.store.user_by_login(&key).await? } else { None };
        let failed = |user: &Option<User>, outcome: &'static str| {
            let actor = user.as_ref().map_or(Actor::unknown_user(), |u| Actor::user(u.id));
            let mut event = audit::Event::new(actor, "login.failed").outcome(outcome);
            match user {
                Some(u) => event = event.target(format!("user:{}", u.id.to_hex())),
                // The name as typed, cut short: never the password.
                None => event = event.details(bson::doc! {"login": key.chars().take(64).collect::<String>()}),
            }
            event
        };
        // A name no account can have has nothing to guess at: not counted.
        if possible {
            let counted = user.as_ref().map_or(key.as_str(), |u| u.username_key.as_str());
            if let Err(e) = self.limiter.login_attempt(counted).await.into_result("login") {
                self.audit.record(failed(&user, "rate_limited"), from).await;
                return Err(e);
            }
        }
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        if !verify_password(l.password, hash).await {
            let outcome = if user.is_some() { "bad_password" } else { "unknown_user" };
            self.audit.record(failed(&user, outcome), from).await;
            return Err(Error::Unauthorized("invalid username or password".into()));
        }
        let user = user.ok_or_else(|| Error::Unauthorized("invalid username or password".into()))?;
        self.limiter.login_succeeded(&user.username_key).await;
        if user.banned.is_some() {
            self.audit.record(failed(&Some(user), "banned"), from).await;
            return Err(sessions::banned());
        }
        let grant = self.sessions.open(&user, from).await?;
        let event = audit::Event::new(Actor::user(user.id), "login.ok")
            .target(format!("user:{}", user.id.to_hex()))
            .details(bson::doc! {"session": &grant.session_id});
        self.audit.record(event, from).await;
        Ok(grant)
    }

    /// Changes the caller's password, given the current one (403
    /// `wrong_password` otherwise, counted like failed logins), and ends
    /// every other session of theirs.
    pub async fn change_password(&self, caller: &Caller, change: PasswordChange, from: &Source) -> Result<()> {
        let user = self.profile(caller.user_id).await?;
        self.limiter.login_attempt(&user.username_key).await.into_result("login")?;
        if !verify_password(change.current_password, Some(user.password_hash.clone())).await {
            let event = audit::Event::new(Actor::user(user.id), "password.changed")
                .target(format!("user:{}", user.id.to_hex()))
                .outcome("wrong_password");
            self.audit.record(event, from).await;
            return Err(Error::Refused { code: "wrong_password", message: "the current password is not right".into() });
        }
        self.limiter.login_succeeded(&user.username_key).await;
        validate::password(&change.new_password).map_err(|e| match e {
            Error::Invalid { message, .. } => Error::invalid("new_password", message),
            other => other,
        })?;
        let hash = hash_password(change.new_password).await?;
        if !self.store.set_password_hash(user.id, &hash).await? {
            return Err(Error::NotFound("user not found".into()));
        }
        let ended = self.sessions.revoke_all(user.id, caller.session, Ending::PasswordChanged).await?;
        let event = audit::Event::new(Actor::user(user.id), "password.changed")
            .target(format!("user:{}", user.id.to_hex()))
            .details(bson::doc! {"sessions_revoked": ended as i64});
        self.audit.record(event, from).await;
        Ok(())
    }

    /// Bans a user: logins are refused (403 `banned`), every session ends
    /// and every socket of theirs closes. An administrator cannot ban
    /// themselves.
    pub async fn ban(&self, admin: &Caller, id: ObjectId, reason: Option<String>, from: &Source) -> Result<User> {
        if id == admin.user_id {
            return Err(Error::invalid("id", "administrators cannot ban themselves"));
        }
        let reason = reason.map(|r| r.trim().to_string()).filter(|r| !r.is_empty());
        if let Some(reason) = &reason {
            validate::reason(reason)?;
        }
        let ban = Ban { at: Utc::now(), by: admin.user_id, reason: reason.clone() };
        let mut user =
            self.store.set_ban(id, Some(&ban)).await?.ok_or_else(|| Error::NotFound("user not found".into()))?;
        let ended = self.sessions.revoke_all(id, None, Ending::Banned).await?;
        let mut details = bson::doc! {"sessions_revoked": ended as i64};
        if let Some(reason) = reason {
            details.insert("reason", reason);
        }
        let event =
            audit::Event::new(Actor::user(admin.user_id), "user.banned").target(format!("user:{}", id.to_hex()));
        self.audit.record(event.details(details), from).await;
        user.banned = Some(ban);
        Ok(user)
    }

    /// Lifts a ban; the user logs in again.
    pub async fn unban(&self, admin: &Caller, id: ObjectId, from: &Source) -> Result<User> {
        let mut user = self.store.set_ban(id, None).await?.ok_or_else(|| Error::NotFound("user not found".into()))?;
        let event =
            audit::Event::new(Actor::user(admin.user_id), "user.unbanned").target(format!("user:{}", id.to_hex()));
        let event = if user.banned.is_some() { event } else { event.outcome("not_banned") };
        self.audit.record(event, from).await;
        user.banned = None;
        Ok(user)
    }

    /// Closes every socket of a user, on every node (4003); their sessions
    /// live on, so they may reconnect.
    pub async fn disconnect(&self, admin: &Caller, id: ObjectId, from: &Source) -> Result<()> {
        self.profile(id).await?;
        let reason = "disconnected by an administrator";
        self.sessions.close_sockets(id, None, CloseCode::Disconnected, reason).await;
        let event =
            audit::Event::new(Actor::user(admin.user_id), "user.disconnected").target(format!("user:{}", id.to_hex()));
        self.audit.record(event, from).await;
        Ok(())
    }

    /// Whether the user is an administrator now (read from the store, so a
    /// demotion takes effect at once).
    pub async fn is_admin(&self, id: ObjectId) -> Result<bool> {
        Ok(self.store.user(id).await?.is_some_and(|u| u.role == UserRole::Admin))
    }

    /// A user by id; 404 if there is none.
    pub async fn profile(&self, id: ObjectId) -> Result<User> {
        self.store.user(id).await?.ok_or_else(|| Error::NotFound("user not found".into()))
    }

    pub async fn update_profile(&self, id: ObjectId, patch: ProfilePatch) -> Result<User> {
        let display_name = match patch.display_name {
            Some(Some(name)) => Some(Some(validate::display_name(&name)?)),
            other => other,
        };
        let avatar_url = match patch.avatar_url {
            Some(Some(url)) => Some(Some(validate::avatar_url(&url)?)),
            other => other,
        };
        let change = ProfileChange { display_name, avatar_url };
        self.store.update_profile(id, &change).await?.ok_or_else(|| Error::NotFound("user not found".into()))
    }

    /// Users whose username or display name starts with `query`, ignoring case,
    /// by username; `after` is a `next_cursor` from the previous page.
    pub async fn search(&self, query: &str, after: Option<&str>, limit: i64) -> Result<Found> {
        if query.trim().is_empty() {
            return Err(Error::invalid("q", format!("must be 1 to {MAX_QUERY_CHARS} characters")));
        }
        self.find(query, after, limit).await
    }

    /// Users whose username or display name starts with `query` (all users
    /// for an empty one), by username, for administrators.
    pub async fn find(&self, query: &str, after: Option<&str>, limit: i64) -> Result<Found> {
        let prefix = query.trim().to_lowercase();
        if prefix.chars().count() > MAX_QUERY_CHARS {
            return Err(Error::invalid("q", format!("must be 1 to {MAX_QUERY_CHARS} characters")));
        }
        // Each edge bounds `limit` as it documents (user search 100,
        // administrators 200).
        if limit < 1 {
            return Err(Error::invalid("limit", "must be a whole number, at least 1"));
        }
        // A cursor is a username key: at most 32 characters of [a-z0-9_.-].
        if after.is_some_and(|a| a.is_empty() || a.len() > 32) {
            return Err(Error::invalid("after", "is not a cursor this endpoint returned"));
        }
        let mut users = self.store.search_users(&prefix, after, limit + 1).await?;
        let more = users.len() as i64 > limit;
        users.truncate(limit as usize);
        let next_cursor = if more { users.last().map(|u| u.username_key.clone()) } else { None };
        Ok(Found { users, next_cursor })
    }
}

fn taken(field: &str) -> Error {
    if field == "email" {
        Error::Conflict { code: "email_taken", message: "email is already registered".into() }
    } else {
        Error::Conflict { code: "username_taken", message: "username is already taken".into() }
    }
}

/// A profile edit as `PATCH /users/me` takes it: a field left out stays as
/// it is, `null` clears it.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfilePatch {
    /// 1–64 characters once trimmed, no control, direction-override or
    /// zero-width characters; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 64)]
    pub display_name: Option<Option<String>>,
    /// An absolute `https://` URL with a host, at most 2048 characters;
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = "uri", max_length = 2048)]
    pub avatar_url: Option<Option<String>>,
}

/// Tells a field given as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Longest search term, in characters.
pub const MAX_QUERY_CHARS: usize = 64;
pub const DEFAULT_SEARCH_PAGE: i64 = 20;
pub const MAX_SEARCH_PAGE: i64 = 100;

/// One page of a user search.
pub struct Found {
    pub users: Vec<User>,
    /// Where the next page starts (`after`), if there is one.
    pub next_cursor: Option<String>,
}

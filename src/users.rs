//! Accounts: registration and login.

use chrono::Utc;
use serde::Deserialize;

use crate::auth::{hash_password, verify_password};
use crate::error::{Error, Result};
use crate::node::App;
use crate::store::User;
use crate::validate;

#[derive(Debug, Deserialize)]
pub struct Registration {
    pub username: String,
    pub email: String,
    pub password: String,
}

#[derive(Debug, Deserialize)]
pub struct Login {
    /// A username or an email address.
    pub username: String,
    pub password: String,
}

pub async fn register(app: &App, r: Registration) -> Result<User> {
    validate::username(&r.username)?;
    validate::email(&r.email)?;
    validate::password(&r.password)?;
    let username_key = r.username.to_lowercase();
    let email = r.email.to_lowercase();
    if let Some(field) = app.store.taken_user_field(&username_key, &email).await? {
        return Err(taken(field));
    }
    let user = User {
        id: bson::oid::ObjectId::new(),
        username: r.username,
        username_key,
        email,
        password_hash: hash_password(r.password).await?,
        created_at: Utc::now(),
    };
    match app.store.insert_user(&user).await {
        Ok(()) => Ok(user),
        // Lost a race with a concurrent registration: say which field.
        Err(crate::store::StoreError::Duplicate) => {
            let field = app.store.taken_user_field(&user.username_key, &user.email).await?.unwrap_or("username");
            Err(taken(field))
        }
        Err(e) => Err(e.into()),
    }
}

fn taken(field: &str) -> Error {
    if field == "email" {
        Error::Conflict { code: "email_taken", message: "email is already registered".into() }
    } else {
        Error::Conflict { code: "username_taken", message: "username is already taken".into() }
    }
}

/// Checks credentials and issues an access token. Unknown users and wrong
/// passwords fail identically, in the same time.
///
/// A name whose failed attempts in the window are used up is refused with
/// 429 before its password is checked, right or wrong. Failures are counted
/// per account (its username, whether it logs in by username or by email),
/// or per name given when no account has it, so unknown names lock out too.
pub async fn login(app: &App, l: Login) -> Result<String> {
    let key = l.username.trim().to_lowercase();
    let possible = !key.is_empty() && key.len() <= 254;
    let user = if possible { app.store.user_by_login(&key).await? } else { None };
    // A name no account can have has nothing to guess at: not counted.
    if possible {
        let counted = user.as_ref().map_or(key.as_str(), |u| u.username_key.as_str());
        app.limiter.login_attempt(counted).await.into_result("login")?;
    }
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    if !verify_password(l.password, hash).await {
        return Err(Error::Unauthorized("invalid username or password".into()));
    }
    let user = user.ok_or_else(|| Error::Unauthorized("invalid username or password".into()))?;
    app.limiter.login_succeeded(&user.username_key).await;
    app.tokens.issue(user.id, &user.username)
}

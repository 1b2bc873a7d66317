//! `GET /users/me`, `PATCH /users/me`, `PATCH /users/me/password`,
//! `GET /users/{id}`, `GET /users/search`.
//! Only `/users/me` shows an email address; other users' profiles never do.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Auth, Body, Params};
use crate::audit::Source;
use crate::error::{Error, Result};
use crate::protocol::views::{ProfileView, UserView};
use crate::users::Users;
use crate::users::{PasswordChange, ProfilePatch, DEFAULT_SEARCH_PAGE, MAX_SEARCH_PAGE};
use crate::validate;

pub async fn me(State(users): State<Arc<Users>>, Auth(caller): Auth) -> Result<Json<UserView>> {
    let user = users.profile(caller.user_id).await?;
    Ok(Json(UserView::from(&user)))
}

pub async fn update_me(
    State(users): State<Arc<Users>>,
    Auth(caller): Auth,
    Body(patch): Body<ProfilePatch>,
) -> Result<Json<UserView>> {
    let user = users.update_profile(caller.user_id, patch).await?;
    Ok(Json(UserView::from(&user)))
}

/// `PATCH /users/me/password`: 204, and every other session ends.
pub async fn change_password(
    State(users): State<Arc<Users>>,
    Auth(caller): Auth,
    source: Source,
    Body(change): Body<PasswordChange>,
) -> Result<axum::http::StatusCode> {
    users.change_password(&caller, change, &source).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

pub async fn profile(
    State(users): State<Arc<Users>>,
    Auth(_): Auth,
    Path(id): Path<String>,
) -> Result<Json<ProfileView>> {
    let user = users.profile(validate::object_id("id", &id)?).await?;
    Ok(Json(ProfileView::from(&user)))
}

#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    limit: Option<String>,
    after: Option<String>,
}

pub async fn search(
    State(users): State<Arc<Users>>,
    Auth(_): Auth,
    Params(p): Params<SearchParams>,
) -> Result<Json<Value>> {
    let q = p.q.ok_or_else(|| Error::invalid("q", "is required"))?;
    let limit = super::limit(p.limit.as_deref(), DEFAULT_SEARCH_PAGE, MAX_SEARCH_PAGE)?;
    let found = users.search(&q, p.after.as_deref(), limit).await?;
    let views: Vec<ProfileView> = found.users.iter().map(ProfileView::from).collect();
    Ok(Json(json!({ "users": views, "next_cursor": found.next_cursor })))
}

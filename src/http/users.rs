//! `GET /users/me`, `PATCH /users/me`, `PATCH /users/me/password`,
//! `GET /users/{id}`, `GET /users/search`.
//! Only `/users/me` shows an email address; other users' profiles never do.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Auth, Body, ErrorBody, Params};
use crate::audit::Source;
use crate::error::{Error, Result};
use crate::protocol::views::{ProfileView, UserView};
use crate::users::Users;
use crate::users::{PasswordChange, ProfilePatch, DEFAULT_SEARCH_PAGE, MAX_SEARCH_PAGE};
use crate::validate;

/// The caller's own account.
#[utoipa::path(
    get,
    path = "/users/me",
    tag = "users",
    operation_id = "me",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's account", body = UserView),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: the account no longer exists", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn me(State(users): State<Arc<Users>>, Auth(caller): Auth) -> Result<Json<UserView>> {
    let user = users.profile(caller.user_id).await?;
    Ok(Json(UserView::from(&user)))
}

/// Changes the caller's display name or avatar: a field left out stays,
/// `null` clears it.
#[utoipa::path(
    patch,
    path = "/users/me",
    tag = "users",
    operation_id = "update_me",
    security(("bearer" = [])),
    request_body = ProfilePatch,
    responses(
        (status = 200, description = "The updated account", body = UserView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: the account no longer exists", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a rule broken, a value of the wrong type, an unknown \
            field", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn update_me(
    State(users): State<Arc<Users>>,
    Auth(caller): Auth,
    Body(patch): Body<ProfilePatch>,
) -> Result<Json<UserView>> {
    let user = users.update_profile(caller.user_id, patch).await?;
    Ok(Json(UserView::from(&user)))
}

/// Changes the caller's password; every other session of theirs ends.
#[utoipa::path(
    patch,
    path = "/users/me/password",
    tag = "accounts",
    operation_id = "change_password",
    security(("bearer" = [])),
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed; the caller's other sessions have ended"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`wrong_password`: `current_password` is wrong (counted like a failed \
            login)", body = ErrorBody),
        (status = 404, description = "`not_found`: the account no longer exists", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a `new_password` that breaks the rule, a field missing \
            or mistyped, an unknown field", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn change_password(
    State(users): State<Arc<Users>>,
    Auth(caller): Auth,
    source: Source,
    Body(change): Body<PasswordChange>,
) -> Result<axum::http::StatusCode> {
    users.change_password(&caller, change, &source).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// A user's public profile.
#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    operation_id = "profile",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The user's profile", body = ProfileView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such user", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn profile(
    State(users): State<Arc<Users>>,
    Auth(_): Auth,
    Path(id): Path<String>,
) -> Result<Json<ProfileView>> {
    let user = users.profile(validate::object_id("id", &id)?).await?;
    Ok(Json(ProfileView::from(&user)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// The start of a username or display name, 1–64 characters once trimmed.
    #[param(required = true, min_length = 1, max_length = 64)]
    q: Option<String>,
    /// Users per page, 1–100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    after: Option<String>,
}

/// One page of users' profiles.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProfilePage {
    users: Vec<ProfileView>,
    /// Give it as `after` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// Users whose username or display name starts with `q`, by username.
#[utoipa::path(
    get,
    path = "/users/search",
    tag = "users",
    operation_id = "search_users",
    security(("bearer" = [])),
    params(SearchParams),
    responses(
        (status = 200, description = "One page of profiles", body = ProfilePage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, description = "`validation_failed`: `q` missing, empty or too long; `limit` out of range; \
            an `after` that is not a cursor", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn search(
    State(users): State<Arc<Users>>,
    Auth(_): Auth,
    Params(p): Params<SearchParams>,
) -> Result<Json<ProfilePage>> {
    let q = p.q.ok_or_else(|| Error::invalid("q", "is required"))?;
    let limit = super::limit(p.limit.as_deref(), DEFAULT_SEARCH_PAGE, MAX_SEARCH_PAGE)?;
    let found = users.search(&q, p.after.as_deref(), limit).await?;
    let users = found.users.iter().map(ProfileView::from).collect();
    Ok(Json(ProfilePage { users, next_cursor: found.next_cursor }))
}

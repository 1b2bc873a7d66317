//! `POST /token/refresh`, `POST /logout`, `POST /logout/all`,
//! `GET /sessions`, `DELETE /sessions/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Auth, Body, ClientAddress, ErrorBody};
use crate::audit::{Actor, Source};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::ratelimit::SharedLimiter;
use crate::sessions::{Ending, Grant, SessionView, Sessions};
use crate::validate;

/// A refresh token to spend.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The `refresh_token` of the latest login or refresh; good once.
    refresh_token: String,
}

/// Spends a refresh token for a new pair of the same session (limited per
/// address, as logins are). A refresh token used twice ends the session.
#[utoipa::path(
    post,
    path = "/token/refresh",
    tag = "accounts",
    operation_id = "refresh",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair of tokens; the refresh token replaces the one spent", body = Grant),
        (status = 400, response = BadRequest),
        (status = 401, description = "`invalid_refresh_token` (unknown, expired, or of an ended session) or \
            `refresh_reused` (the session is now revoked)", body = ErrorBody),
        (status = 403, description = "`banned`: the user is banned; the session ends", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: `refresh_token` missing or mistyped, or an unknown \
            field", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn refresh(
    State(sessions): State<Arc<Sessions>>,
    State(limiter): State<Arc<SharedLimiter>>,
    ClientAddress(from): ClientAddress,
    source: Source,
    Body(r): Body<RefreshRequest>,
) -> Result<Json<Grant>> {
    limiter.address(from).await.into_result("auth")?;
    Ok(Json(sessions.refresh(&r.refresh_token, &source).await?))
}

/// The caller's session; 422 for a token that has none (`confab token`).
fn session_of(caller: &Caller) -> Result<bson::oid::ObjectId> {
    caller.session.ok_or_else(|| Error::invalid("token", "this token belongs to no session"))
}

/// Ends the caller's session: its tokens and its sockets, on every node.
#[utoipa::path(
    post,
    path = "/logout",
    tag = "accounts",
    operation_id = "logout",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The session has ended"),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: the session ended meanwhile", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a token that belongs to no session (`confab token`)", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn logout(State(sessions): State<Arc<Sessions>>, Auth(caller): Auth, source: Source) -> Result<StatusCode> {
    let session = session_of(&caller)?;
    sessions.revoke(caller.user_id, session, Ending::Logout, Actor::user(caller.user_id), &source).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ends every session of the caller's.
#[utoipa::path(
    post,
    path = "/logout/all",
    tag = "accounts",
    operation_id = "logout_all",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every session of the caller's has ended"),
        (status = 401, response = Unauthorized),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn logout_all(
    State(sessions): State<Arc<Sessions>>,
    State(audit): State<Arc<crate::audit::Audit>>,
    Auth(caller): Auth,
    source: Source,
) -> Result<StatusCode> {
    let ended = sessions.revoke_all(caller.user_id, None, Ending::Logout).await?;
    let event = crate::audit::Event::new(Actor::user(caller.user_id), "logout")
        .target(format!("user:{}", caller.user_id.to_hex()))
        .details(bson::doc! {"all": true, "sessions_revoked": ended as i64});
    audit.record(event, &source).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's live sessions.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionList {
    /// Most recently used first.
    sessions: Vec<SessionView>,
}

/// The caller's live sessions, most recently used first.
#[utoipa::path(
    get,
    path = "/sessions",
    tag = "accounts",
    operation_id = "list_sessions",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's live sessions", body = SessionList),
        (status = 401, response = Unauthorized),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list(State(sessions): State<Arc<Sessions>>, Auth(caller): Auth) -> Result<Json<SessionList>> {
    let sessions = sessions.list(caller.user_id, caller.session).await?;
    Ok(Json(SessionList { sessions }))
}

/// Ends one of the caller's sessions (404 if it is not theirs or over).
#[utoipa::path(
    delete,
    path = "/sessions/{id}",
    tag = "accounts",
    operation_id = "revoke_session",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A session id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 204, description = "The session has ended"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: the caller has no such live session", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn revoke(
    State(sessions): State<Arc<Sessions>>,
    Auth(caller): Auth,
    source: Source,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let id = validate::object_id("id", &id)?;
    sessions.revoke(caller.user_id, id, Ending::Revoked, Actor::user(caller.user_id), &source).await?;
    Ok(StatusCode::NO_CONTENT)
}

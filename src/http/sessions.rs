//! `POST /token/refresh`, `POST /logout`, `POST /logout/all`,
//! `GET /sessions`, `DELETE /sessions/{id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Auth, Body, ClientAddress};
use crate::audit::{Actor, Source};
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::ratelimit::SharedLimiter;
use crate::sessions::{Ending, Grant, Sessions};
use crate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    refresh_token: String,
}

/// Spends a refresh token for a new pair (limited per address, as logins are).
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

pub async fn logout(State(sessions): State<Arc<Sessions>>, Auth(caller): Auth, source: Source) -> Result<StatusCode> {
    let session = session_of(&caller)?;
    sessions.revoke(caller.user_id, session, Ending::Logout, Actor::user(caller.user_id), &source).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

pub async fn list(State(sessions): State<Arc<Sessions>>, Auth(caller): Auth) -> Result<Json<Value>> {
    let list = sessions.list(caller.user_id, caller.session).await?;
    Ok(Json(json!({ "sessions": list })))
}

/// Ends one of the caller's sessions (404 if it is not theirs or over).
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

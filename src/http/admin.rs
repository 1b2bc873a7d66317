//! `/admin`: for users with the `admin` role (`confab user promote`), 403
//! `forbidden` for everyone else. Users by name, bans and disconnects,
//! moderation, and the audit log.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Admin, Params};
use crate::audit::{Audit, Source};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::messages::Messages;
use crate::protocol::views::MessageView;
use crate::protocol::views::UserView;
use crate::store::{AuditEntry, AuditQuery};
use crate::users::Users;
use crate::validate;

const DEFAULT_PAGE: i64 = 50;
const MAX_PAGE: i64 = 200;

#[derive(Deserialize)]
pub struct UsersParams {
    q: Option<String>,
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /admin/users?q=&after=&limit=`: users whose username or display
/// name starts with `q` (every user without it), by username.
pub async fn users(
    State(users): State<Arc<Users>>,
    Admin(_): Admin,
    Params(p): Params<UsersParams>,
) -> Result<Json<Value>> {
    let limit = super::limit(p.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let found = users.find(p.q.as_deref().unwrap_or(""), p.after.as_deref(), limit).await?;
    let views: Vec<UserView> = found.users.iter().map(UserView::from).collect();
    Ok(Json(json!({ "users": views, "next_cursor": found.next_cursor })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moderation {
    reason: Option<String>,
}

/// An optional `{"reason"}` body: none, or that object.
fn reason_of(body: &[u8]) -> Result<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let m: Moderation =
        serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?;
    Ok(m.reason)
}

/// `POST /admin/users/{id}/ban` with an optional `{"reason"}`: the user,
/// banned (200); every session of theirs ends, every socket closes.
pub async fn ban(
    State(users): State<Arc<Users>>,
    Admin(admin): Admin,
    source: Source,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<UserView>> {
    let id = validate::object_id("id", &id)?;
    let user = users.ban(&admin, id, reason_of(&body)?, &source).await?;
    Ok(Json(UserView::from(&user)))
}

/// `POST /admin/users/{id}/unban`: the user, no longer banned (200).
pub async fn unban(
    State(users): State<Arc<Users>>,
    Admin(admin): Admin,
    source: Source,
    Path(id): Path<String>,
) -> Result<Json<UserView>> {
    let id = validate::object_id("id", &id)?;
    Ok(Json(UserView::from(&users.unban(&admin, id, &source).await?)))
}

/// `POST /admin/users/{id}/disconnect`: closes the user's sockets (4003), 204.
pub async fn disconnect(
    State(users): State<Arc<Users>>,
    Admin(admin): Admin,
    source: Source,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode> {
    let id = validate::object_id("id", &id)?;
    users.disconnect(&admin, id, &source).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// `DELETE /admin/messages/{id}` with an optional `{"reason"}`: the
/// message's tombstone (200), as the sender's own delete gives.
pub async fn delete_message(
    State(messages): State<Arc<Messages>>,
    Admin(admin): Admin,
    source: Source,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    let id = validate::object_id("id", &id)?;
    let tombstone = messages.moderate(&admin, id, reason_of(&body)?, &source).await?;
    Ok(Json(json!(MessageView::from(&tombstone))))
}

#[derive(Deserialize)]
pub struct AuditParams {
    action: Option<String>,
    actor: Option<String>,
    since: Option<String>,
    before: Option<String>,
    limit: Option<String>,
}

/// One audit entry as the API shows it.
#[derive(Serialize)]
pub struct AuditView {
    pub id: String,
    pub at: String,
    pub actor_id: Option<String>,
    pub actor_kind: crate::store::ActorKind,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub outcome: String,
    pub details: Value,
}

impl From<&AuditEntry> for AuditView {
    fn from(e: &AuditEntry) -> Self {
        AuditView {
            id: e.id.to_hex(),
            at: rfc3339(&e.at),
            actor_id: e.actor_id.map(|a| a.to_hex()),
            actor_kind: e.actor_kind,
            action: e.action.clone(),
            target: e.target.clone(),
            ip: e.ip.clone(),
            user_agent: e.user_agent.clone(),
            outcome: e.outcome.clone(),
            details: bson::Bson::Document(e.details.clone()).into_relaxed_extjson(),
        }
    }
}

/// The cursor after `entry`: its time in milliseconds and its id.
fn cursor(entry: &AuditEntry) -> String {
    format!("{}_{}", entry.at.timestamp_millis(), entry.id.to_hex())
}

fn parse_cursor(raw: &str) -> Result<(chrono::DateTime<chrono::Utc>, bson::oid::ObjectId)> {
    let bad = || Error::invalid("before", "is not a cursor this endpoint returned");
    let (ms, id) = raw.split_once('_').ok_or_else(bad)?;
    let at = ms.parse::<i64>().ok().and_then(chrono::DateTime::from_timestamp_millis).ok_or_else(bad)?;
    Ok((at, bson::oid::ObjectId::parse_str(id).map_err(|_| bad())?))
}

/// The audit query from its parameters: `action` (e.g. `login.failed`),
/// `actor` (a user id), `since` (RFC 3339), `before` (the previous page's
/// `next_before`), `limit`.
pub fn audit_query(
    action: Option<&str>,
    actor: Option<&str>,
    since: Option<&str>,
    before: Option<&str>,
    limit: i64,
) -> Result<AuditQuery> {
    let action = action.map(|a| a.trim()).filter(|a| !a.is_empty());
    if action.is_some_and(|a| a.len() > 64 || !a.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')) {
        return Err(Error::invalid("action", "is not an action name (e.g. login.failed)"));
    }
    let since = since
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| Error::invalid("since", "must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"))
        })
        .transpose()?;
    Ok(AuditQuery {
        action: action.map(str::to_string),
        actor_id: actor.map(|a| validate::object_id("actor", a)).transpose()?,
        since,
        before: before.map(parse_cursor).transpose()?,
        limit,
    })
}

/// `GET /admin/audit`: entries newest first, keyset-paginated.
pub async fn audit(
    State(audit): State<Arc<Audit>>,
    Admin(_): Admin,
    Params(p): Params<AuditParams>,
) -> Result<Json<Value>> {
    let limit = super::limit(p.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let q = audit_query(p.action.as_deref(), p.actor.as_deref(), p.since.as_deref(), p.before.as_deref(), limit + 1)?;
    let mut entries = audit.page(&q).await?;
    let more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    let next = if more { entries.last().map(cursor) } else { None };
    let views: Vec<AuditView> = entries.iter().map(AuditView::from).collect();
    Ok(Json(json!({ "entries": views, "next_before": next })))
}

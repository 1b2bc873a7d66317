//! `/admin`: for users with the `admin` role (`confab user promote`), 403
//! `forbidden` for everyone else. Users by name, bans and disconnects,
//! moderation, and the audit log.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Admin, ErrorBody, Params, RawBody};
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsersParams {
    /// The start of a username or display name (every user without it),
    /// at most 64 characters.
    #[param(max_length = 64)]
    q: Option<String>,
    /// The previous page's `next_cursor`.
    after: Option<String>,
    /// Users per page, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// One page of accounts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountPage {
    users: Vec<UserView>,
    /// Give it as `after` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// `GET /admin/users?q=&after=&limit=`: users whose username or display
/// name starts with `q` (every user without it), by username.
#[utoipa::path(
    get,
    path = "/admin/users",
    tag = "admin",
    operation_id = "admin_users",
    security(("bearer" = [])),
    params(UsersParams),
    responses(
        (status = 200, description = "One page of accounts, with `email`, `role` and any ban", body = AccountPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not an administrator", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `q` too long, `limit` out of range, an `after` that is \
            not a cursor", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn users(
    State(users): State<Arc<Users>>,
    Admin(_): Admin,
    Params(p): Params<UsersParams>,
) -> Result<Json<AccountPage>> {
    let limit = super::limit(p.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let found = users.find(p.q.as_deref().unwrap_or(""), p.after.as_deref(), limit).await?;
    let users = found.users.iter().map(UserView::from).collect();
    Ok(Json(AccountPage { users, next_cursor: found.next_cursor }))
}

/// Why an administrator acted (optional).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Moderation {
    /// At most 500 characters.
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// An optional `{"reason"}` body: none (or `null`), or that object.
fn reason_of(body: &[u8]) -> Result<Option<String>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let m: Option<Moderation> =
        serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))?;
    Ok(m.and_then(|m| m.reason))
}

/// `POST /admin/users/{id}/ban` with an optional `{"reason"}`: the user,
/// banned (200); every session of theirs ends, every socket closes.
#[utoipa::path(
    post,
    path = "/admin/users/{id}/ban",
    tag = "admin",
    operation_id = "ban_user",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = Option<Moderation>,
    responses(
        (status = 200, description = "The account, banned", body = UserView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not an administrator", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: the administrator themselves, or a longer reason", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn ban(
    State(users): State<Arc<Users>>,
    Admin(admin): Admin,
    source: Source,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<UserView>> {
    let id = validate::object_id("id", &id)?;
    let user = users.ban(&admin, id, reason_of(&body)?, &source).await?;
    Ok(Json(UserView::from(&user)))
}

/// `POST /admin/users/{id}/unban`: the user, no longer banned (200).
#[utoipa::path(
    post,
    path = "/admin/users/{id}/unban",
    tag = "admin",
    operation_id = "unban_user",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The account, not banned", body = UserView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not an administrator", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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
#[utoipa::path(
    post,
    path = "/admin/users/{id}/disconnect",
    tag = "admin",
    operation_id = "disconnect_user",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A user id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 204, description = "The user's sockets are closing on every node"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not an administrator", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/admin/messages/{id}",
    tag = "admin",
    operation_id = "moderate_message",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A message id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = Option<Moderation>,
    responses(
        (status = 200, description = "The message's tombstone", body = MessageView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not an administrator", body = ErrorBody),
        (status = 404, description = "`not_found`: no such message", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a longer reason", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn delete_message(
    State(messages): State<Arc<Messages>>,
    Admin(admin): Admin,
    source: Source,
    Path(id): Path<String>,
    RawBody(body): RawBody,
) -> Result<Json<Value>> {
    let id = validate::object_id("id", &id)?;
    let tombstone = messages.moderate(&admin, id, reason_of(&body)?, &source).await?;
    Ok(Json(json!(MessageView::from(&tombstone))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this action (e.g. `login.failed`).
    #[param(max_length = 64, pattern = "^[a-z._]*$")]
    action: Option<String>,
    /// Only entries by this user.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    actor: Option<String>,
    /// Only entries at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// The previous page's `next_before`.
    before: Option<String>,
    /// Entries per page, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
}

/// One audit entry as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = AuditEntry)]
pub struct AuditView {
    pub id: String,
    #[schema(format = DateTime)]
    pub at: String,
    /// Absent for `system`, and for a login under an unknown name.
    pub actor_id: Option<String>,
    pub actor_kind: crate::store::ActorKind,
    /// What happened, e.g. `login.failed`.
    pub action: String,
    /// What it happened to, e.g. `user:<id>`.
    pub target: Option<String>,
    /// The client's address as the node saw it.
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// `ok`, or why it failed.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub details: Value,
}

/// One page of audit entries.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Newest first.
    entries: Vec<AuditView>,
    /// Give it as `before` for the next page; null on the last one.
    next_before: Option<String>,
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
#[utoipa::path(
    get,
    path = "/admin/audit",
    tag = "admin",
    operation_id = "audit",
    security(("bearer" = [])),
    params(AuditParams),
    responses(
        (status = 200, description = "One page of the audit log", body = AuditPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not an administrator", body = ErrorBody),
        (status = 422, description = "`validation_failed`: a bad action, time, cursor or limit", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn audit(
    State(audit): State<Arc<Audit>>,
    Admin(_): Admin,
    Params(p): Params<AuditParams>,
) -> Result<Json<AuditPage>> {
    let limit = super::limit(p.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let q = audit_query(p.action.as_deref(), p.actor.as_deref(), p.since.as_deref(), p.before.as_deref(), limit + 1)?;
    let mut entries = audit.page(&q).await?;
    let more = entries.len() as i64 > limit;
    entries.truncate(limit as usize);
    let next = if more { entries.last().map(cursor) } else { None };
    Ok(Json(AuditPage { entries: entries.iter().map(AuditView::from).collect(), next_before: next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moderation_body_is_optional() {
        assert_eq!(reason_of(b"").unwrap(), None);
        assert_eq!(reason_of(b" \n").unwrap(), None);
        assert_eq!(reason_of(b"null").unwrap(), None, "null is no body, as the document allows");
        assert_eq!(reason_of(b"{}").unwrap(), None);
        assert_eq!(reason_of(br#"{"reason": "spam"}"#).unwrap().as_deref(), Some("spam"));
        assert!(matches!(reason_of(br#"{"why": 1}"#), Err(Error::BadRequest(_))));
        assert!(matches!(reason_of(b"[1]"), Err(Error::BadRequest(_))));
    }
}

//! A user's notifications: `GET /notifications`, `POST /notifications/read`,
//! `GET /notifications/unread_count`, `GET`/`PUT /notifications/preferences`
//! and `PUT /rooms/{id}/notifications`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post, put, MethodRouter};
use axum::Json;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Auth, Body, ErrorBody, Params};
use crate::error::{Error, Result};
use crate::notifications::preferences::PreferencesView;
use crate::notifications::{NotificationPage, Notifier};
use crate::notifications::{DEFAULT_PAGE, MAX_PAGE};
use crate::store::PreferencesChange;
use crate::validate;

pub fn routes() -> Vec<(&'static str, MethodRouter<super::Api>)> {
    vec![
        ("/notifications", get(history)),
        ("/notifications/read", post(read)),
        ("/notifications/unread_count", get(unread_count)),
        ("/notifications/preferences", get(get_preferences).put(put_preferences)),
        ("/rooms/{id}/notifications", put(mute_room)),
    ]
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Notifications per page, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// Notifications older than this one.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    before: Option<String>,
}

/// `limit` (1–200, default 50) and `before` (a notification id).
pub(super) fn page(p: PageParams) -> Result<(Option<ObjectId>, i64)> {
    let limit = super::limit(p.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let before = p.before.map(|b| validate::object_id("before", &b)).transpose()?;
    Ok((before, limit))
}

/// The caller's notifications, newest first.
#[utoipa::path(
    get,
    path = "/notifications",
    tag = "notifications",
    operation_id = "notifications",
    security(("bearer" = [])),
    params(PageParams),
    responses(
        (status = 200, description = "One page of notifications", body = NotificationPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, description = "`validation_failed`: `limit` out of range", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn history(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
    Params(p): Params<PageParams>,
) -> Result<Json<Value>> {
    let (before, limit) = page(p)?;
    Ok(Json(notifier.history(caller.user_id, before, limit).await?))
}

/// Which notifications to mark read: `ids`, or `"all": true`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// At most 1000 notification ids.
    #[serde(default)]
    #[schema(schema_with = super::openapi::ids_up_to_1000)]
    ids: Option<Vec<String>>,
    /// `true`: every notification of the caller's.
    #[serde(default)]
    #[schema(value_type = bool, required = false)]
    all: Option<bool>,
}

/// How many notifications became read.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Marked {
    marked: u64,
}

/// Marks notifications read.
#[utoipa::path(
    post,
    path = "/notifications/read",
    tag = "notifications",
    operation_id = "read_notifications",
    security(("bearer" = [])),
    request_body = ReadBody,
    responses(
        (status = 200, description = "How many unread notifications became read", body = Marked),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: both or neither of `ids` and `all`, `all` false, more \
            than 1000 ids, a field mistyped or unknown", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn read(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
    Body(b): Body<ReadBody>,
) -> Result<Json<Marked>> {
    let ids = match (b.ids, b.all) {
        (Some(_), Some(_)) => return Err(Error::invalid("all", "give ids or all, not both")),
        (None, Some(true)) => None,
        (None, Some(false)) | (None, None) => {
            return Err(Error::invalid("ids", "is required (or \"all\": true to mark every notification read)"))
        }
        (Some(ids), None) => Some(ids.iter().map(|id| validate::object_id("ids", id)).collect::<Result<Vec<_>>>()?),
    };
    let marked = notifier.mark_read(caller.user_id, ids).await?;
    Ok(Json(Marked { marked }))
}

/// How many of the caller's notifications are unread.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UnreadCount {
    /// Counted up to 1000 (show "999+").
    unread_count: i64,
}

/// How many of the caller's notifications are unread.
#[utoipa::path(
    get,
    path = "/notifications/unread_count",
    tag = "notifications",
    operation_id = "unread_count",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The unread count", body = UnreadCount),
        (status = 401, response = Unauthorized),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn unread_count(State(notifier): State<Arc<Notifier>>, Auth(caller): Auth) -> Result<Json<UnreadCount>> {
    Ok(Json(UnreadCount { unread_count: notifier.unread_count(caller.user_id).await? }))
}

/// The caller's notification preferences (the defaults if never set).
#[utoipa::path(
    get,
    path = "/notifications/preferences",
    tag = "notifications",
    operation_id = "get_preferences",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's preferences", body = PreferencesView),
        (status = 401, response = Unauthorized),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn get_preferences(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
) -> Result<Json<PreferencesView>> {
    Ok(Json(PreferencesView::from(&notifier.get(caller.user_id).await?)))
}

/// A field that is present, even as `null` (so `"dnd_until": null` clears
/// it while a missing field leaves it alone).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A change of preferences: the fields given change, the others stay.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesBody {
    /// Off: no notifications about messages at all.
    #[serde(default)]
    enabled: Option<bool>,
    /// Replaces the list of muted rooms (at most 1000).
    #[serde(default)]
    #[schema(schema_with = super::openapi::ids_up_to_1000)]
    muted_rooms: Option<Vec<String>>,
    /// Only messages that mention the caller, and direct messages.
    #[serde(default)]
    mentions_only: Option<bool>,
    /// No notifications until then (RFC 3339); `null` ends do-not-disturb.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    dnd_until: Option<Option<String>>,
}

fn instant(field: &'static str, raw: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::invalid(field, "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z, or null"))
}

/// Changes the caller's notification preferences.
#[utoipa::path(
    put,
    path = "/notifications/preferences",
    tag = "notifications",
    operation_id = "put_preferences",
    security(("bearer" = [])),
    request_body = PreferencesBody,
    responses(
        (status = 200, description = "The preferences after the change", body = PreferencesView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a newly muted room the caller is not a member of", body = ErrorBody),
        (status = 404, description = "`not_found`: a newly muted room that does not exist", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a bad time, more than 1000 rooms, a field mistyped or \
            unknown", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn put_preferences(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
    Body(b): Body<PreferencesBody>,
) -> Result<Json<PreferencesView>> {
    let muted_rooms = b
        .muted_rooms
        .map(|rooms| rooms.iter().map(|r| validate::object_id("muted_rooms", r)).collect::<Result<Vec<_>>>())
        .transpose()?;
    let dnd_until = match b.dnd_until {
        None => None,
        Some(None) => Some(None),
        Some(Some(raw)) => Some(Some(instant("dnd_until", &raw)?)),
    };
    let change =
        PreferencesChange { enabled: b.enabled, muted_rooms, mentions_only: b.mentions_only, dnd_until, mute: None };
    let saved = notifier.update(caller.user_id, change).await?;
    Ok(Json(PreferencesView::from(&saved)))
}

/// Whether a room is muted.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteBody {
    muted: bool,
}

/// Mutes or unmutes one room's notifications for the caller.
#[utoipa::path(
    put,
    path = "/rooms/{id}/notifications",
    tag = "notifications",
    operation_id = "mute_room",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A room id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = MuteBody,
    responses(
        (status = 200, description = "The preferences after the change", body = PreferencesView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: muting a room the caller is not a member of", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: `muted` missing or not a bool, an unknown field", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn mute_room(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(b): Body<MuteBody>,
) -> Result<Json<PreferencesView>> {
    let room = validate::object_id("id", &id)?;
    let saved = notifier.set_muted(caller.user_id, room, b.muted).await?;
    Ok(Json(PreferencesView::from(&saved)))
}

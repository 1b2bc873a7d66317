//! A user's notifications: `GET /notifications`, `POST /notifications/read`,
//! `GET /notifications/unread_count`, `GET`/`PUT /notifications/preferences`
//! and `PUT /rooms/{id}/notifications`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::{get, post, put, MethodRouter};
use axum::Json;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::{Auth, Body, Params};
use crate::error::{Error, Result};
use crate::notifications::preferences::PreferencesView;
use crate::notifications::Notifier;
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

#[derive(Deserialize)]
pub struct PageParams {
    limit: Option<String>,
    before: Option<String>,
}

/// `limit` (1–200, default 50) and `before` (a notification id).
pub(super) fn page(p: PageParams) -> Result<(Option<ObjectId>, i64)> {
    let limit = super::limit(p.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let before = p.before.map(|b| validate::object_id("before", &b)).transpose()?;
    Ok((before, limit))
}

async fn history(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
    Params(p): Params<PageParams>,
) -> Result<Json<Value>> {
    let (before, limit) = page(p)?;
    Ok(Json(notifier.history(caller.user_id, before, limit).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadBody {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: Option<bool>,
}

async fn read(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
    Body(b): Body<ReadBody>,
) -> Result<Json<Value>> {
    let ids = match (b.ids, b.all) {
        (Some(_), Some(_)) => return Err(Error::invalid("all", "give ids or all, not both")),
        (None, Some(true)) => None,
        (None, Some(false)) | (None, None) => {
            return Err(Error::invalid("ids", "is required (or \"all\": true to mark every notification read)"))
        }
        (Some(ids), None) => Some(ids.iter().map(|id| validate::object_id("ids", id)).collect::<Result<Vec<_>>>()?),
    };
    let marked = notifier.mark_read(caller.user_id, ids).await?;
    Ok(Json(json!({ "marked": marked })))
}

async fn unread_count(State(notifier): State<Arc<Notifier>>, Auth(caller): Auth) -> Result<Json<Value>> {
    Ok(Json(json!({ "unread_count": notifier.unread_count(caller.user_id).await? })))
}

async fn get_preferences(State(notifier): State<Arc<Notifier>>, Auth(caller): Auth) -> Result<Json<PreferencesView>> {
    Ok(Json(PreferencesView::from(&notifier.get(caller.user_id).await?)))
}

/// A field that is present, even as `null` (so `"dnd_until": null` clears
/// it while a missing field leaves it alone).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferencesBody {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    muted_rooms: Option<Vec<String>>,
    #[serde(default)]
    mentions_only: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    dnd_until: Option<Option<String>>,
}

fn instant(field: &'static str, raw: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| Error::invalid(field, "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z, or null"))
}

async fn put_preferences(
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    muted: bool,
}

async fn mute_room(
    State(notifier): State<Arc<Notifier>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(b): Body<MuteBody>,
) -> Result<Json<PreferencesView>> {
    let room = validate::object_id("id", &id)?;
    let saved = notifier.set_muted(caller.user_id, room, b.muted).await?;
    Ok(Json(PreferencesView::from(&saved)))
}

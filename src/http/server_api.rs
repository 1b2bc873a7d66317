//! The server API, for backends holding an API key (`Authorization: ApiKey
//! <key>`): `POST /api/notify`, `POST /api/broadcast`,
//! `GET /api/notifications/{user_id}` and `POST /api/publish`.
//!
//! Every call is authenticated and counted against its key's rate limit by
//! the [`ApiCaller`] extractor, and logged with the key's id for audit.
//! Bodies may be up to 1 MiB here: 10,000 user ids do not fit the 64 KiB
//! that user requests get.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, MethodRouter};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::notifications::{page, PageParams};
use super::{Body, Params};
use crate::auth::ApiCaller;
use crate::error::{Error, Result};
use crate::messages::Draft;
use crate::messages::Messages;
use crate::notifications::server::{self, NotificationInput, MAX_USER_IDS};
use crate::notifications::Notifier;
use crate::protocol::views::MessageView;
use crate::users::Users;
use crate::validate;

/// Largest server API request body.
const BODY_LIMIT: usize = 1 << 20;

pub fn routes() -> Vec<(&'static str, MethodRouter<super::Api>)> {
    let limit = || DefaultBodyLimit::max(BODY_LIMIT);
    vec![
        ("/api/notify", post(notify).layer(limit())),
        ("/api/broadcast", post(broadcast).layer(limit())),
        ("/api/notifications/{user_id}", get(history).layer(limit())),
        ("/api/publish", post(publish).layer(limit())),
    ]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyBody {
    user_ids: Vec<String>,
    notification: NotificationInput,
}

async fn notify(
    State(notifier): State<Arc<Notifier>>,
    caller: ApiCaller,
    Body(b): Body<NotifyBody>,
) -> Result<Json<Value>> {
    if b.user_ids.len() > MAX_USER_IDS {
        return Err(Error::invalid("user_ids", format!("at most {MAX_USER_IDS} per call")));
    }
    if b.user_ids.is_empty() {
        return Err(Error::invalid("user_ids", "must name at least one user"));
    }
    let ids = b.user_ids.iter().map(|id| validate::object_id("user_ids", id)).collect::<Result<Vec<_>>>()?;
    let content = server::validate(b.notification)?;
    let outcome = notifier.notify(&ids, &content).await?;
    tracing::info!(api_key = %caller.key_id, key_name = %caller.name, users = ids.len(), kind = %content.kind, "server API: notify");
    Ok(Json(json!(outcome)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastBody {
    room_id: String,
    notification: NotificationInput,
}

async fn broadcast(
    State(notifier): State<Arc<Notifier>>,
    caller: ApiCaller,
    Body(b): Body<BroadcastBody>,
) -> Result<Json<Value>> {
    let room = validate::object_id("room_id", &b.room_id)?;
    let content = server::validate(b.notification)?;
    let outcome = notifier.broadcast(room, &content).await?;
    tracing::info!(api_key = %caller.key_id, key_name = %caller.name, room = %room, kind = %content.kind, "server API: broadcast");
    Ok(Json(json!(outcome)))
}

async fn history(
    State(notifier): State<Arc<Notifier>>,
    State(users): State<Arc<Users>>,
    caller: ApiCaller,
    Path(user): Path<String>,
    Params(p): Params<PageParams>,
) -> Result<Json<Value>> {
    let user = validate::object_id("user_id", &user)?;
    let (before, limit) = page(p)?;
    users.profile(user).await?;
    tracing::info!(api_key = %caller.key_id, key_name = %caller.name, user = %user, "server API: history");
    Ok(Json(notifier.history(user, before, limit).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    room_id: String,
    content: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

async fn publish(
    State(messages): State<Arc<Messages>>,
    caller: ApiCaller,
    Body(b): Body<PublishBody>,
) -> Result<(StatusCode, Json<Value>)> {
    let room = validate::object_id("room_id", &b.room_id)?;
    let sent = messages.send_system(room, Draft { content: b.content, client_msg_id: b.client_msg_id }).await?;
    tracing::info!(api_key = %caller.key_id, key_name = %caller.name, room = %room, message = %sent.message.id, "server API: publish");
    let status = if sent.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(MessageView::from(&sent.message)))))
}

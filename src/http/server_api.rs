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
use tracing::Instrument;

use super::notifications::{page, PageParams};
use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Body, ErrorBody, Params};
use crate::auth::ApiCaller;
use crate::error::{Error, Result};
use crate::messages::Draft;
use crate::messages::Messages;
use crate::notifications::server::{self, NotificationInput, NotifyOutcome, MAX_USER_IDS};
use crate::notifications::{NotificationPage, Notifier, Outcome};
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

/// A notification for some users.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    /// 1 to 10,000 user ids; duplicates count once.
    #[schema(schema_with = super::openapi::ids_1_to_10000)]
    user_ids: Vec<String>,
    notification: NotificationInput,
}

/// Notifies users: stored, shown on every connection they have, queued for
/// external delivery for those without one.
#[utoipa::path(
    post,
    path = "/api/notify",
    tag = "server",
    operation_id = "api_notify",
    security(("apikey" = [])),
    request_body = NotifyBody,
    responses(
        (status = 200, description = "What was done, and which ids named no user", body = NotifyOutcome),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: no ids or too many, a bad notification, an unknown \
            field", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn notify(
    State(notifier): State<Arc<Notifier>>,
    caller: ApiCaller,
    Body(b): Body<NotifyBody>,
) -> Result<Json<NotifyOutcome>> {
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
    Ok(Json(outcome))
}

/// A notification for a room's members.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    room_id: String,
    notification: NotificationInput,
}

/// Notifies every member of a room, as `notify` does.
#[utoipa::path(
    post,
    path = "/api/broadcast",
    tag = "server",
    operation_id = "api_broadcast",
    security(("apikey" = [])),
    request_body = BroadcastBody,
    responses(
        (status = 200, description = "What was done", body = Outcome),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such room", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a bad notification, a field missing, mistyped or \
            unknown", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn broadcast(
    State(notifier): State<Arc<Notifier>>,
    caller: ApiCaller,
    Body(b): Body<BroadcastBody>,
) -> Result<Json<Outcome>> {
    let room = validate::object_id("room_id", &b.room_id)?;
    let content = server::validate(b.notification)?;
    let outcome = notifier.broadcast(room, &content).await?;
    tracing::info!(api_key = %caller.key_id, key_name = %caller.name, room = %room, kind = %content.kind, "server API: broadcast");
    Ok(Json(outcome))
}

/// A user's notifications, newest first, as `GET /notifications` gives them.
#[utoipa::path(
    get,
    path = "/api/notifications/{user_id}",
    tag = "server",
    operation_id = "api_notifications",
    security(("apikey" = [])),
    params(("user_id" = String, Path, description = "A user id", pattern = "^[0-9a-fA-F]{24}$"), PageParams),
    responses(
        (status = 200, description = "One page of the user's notifications", body = NotificationPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such user", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `limit` out of range", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn history(
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

/// A system message for a room.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    room_id: String,
    /// 1–4000 characters, not only whitespace.
    #[schema(min_length = 1, max_length = 4000)]
    content: String,
    /// As in `POST /messages`: a retry returns the original message.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    client_msg_id: Option<String>,
}

/// Posts a system message into a room, through the same path as users'
/// messages.
#[utoipa::path(
    post,
    path = "/api/publish",
    tag = "server",
    operation_id = "api_publish",
    security(("apikey" = [])),
    request_body = PublishBody,
    responses(
        (status = 201, description = "The stored message (`system`: true)", body = MessageView),
        (status = 200, description = "A `client_msg_id` used before: the original message", body = MessageView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such room", body = ErrorBody),
        (status = 409, description = "`client_msg_id_reused`: the `client_msg_id` was used for another room", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: bad content or `client_msg_id`, a field missing, \
            mistyped or unknown", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn publish(
    State(messages): State<Arc<Messages>>,
    caller: ApiCaller,
    Body(b): Body<PublishBody>,
) -> Result<(StatusCode, Json<Value>)> {
    let room = validate::object_id("room_id", &b.room_id)?;
    let draft = Draft { content: b.content, client_msg_id: b.client_msg_id };
    let sent = messages.send_system(room, draft).instrument(Messages::send_span("server_api")).await?;
    tracing::info!(api_key = %caller.key_id, key_name = %caller.name, room = %room, message = %sent.message.id, "server API: publish");
    let status = if sent.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(MessageView::from(&sent.message)))))
}

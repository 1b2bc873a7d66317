//! `POST /messages`, `GET /messages`, `PATCH` and `DELETE /messages/{id}`,
//! `GET /messages/{id}/status`, `GET /messages/search`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bson::oid::ObjectId;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::Instrument;

use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Auth, Body, ErrorBody, Params};
use crate::error::{Error, Result};
use crate::messages::Messages;
use crate::messages::{self, Draft, MessagePage, Page, DEFAULT_PAGE, MAX_PAGE};
use crate::protocol::views::MessageView;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::search::Searcher;
use crate::search::{self, Search};
use crate::{receipts, validate};

/// A message to send: into a room (`room_id`) or to a user (`to_user_id`).
#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewMessage {
    /// The room; give this or `to_user_id`.
    #[serde(default)]
    #[schema(value_type = String, required = false, pattern = "^[0-9a-fA-F]{24}$")]
    room_id: Option<String>,
    /// A direct message: to this user instead of into a room.
    #[serde(default)]
    #[schema(value_type = String, required = false, pattern = "^[0-9a-fA-F]{24}$")]
    to_user_id: Option<String>,
    /// 1–4000 characters, not only whitespace.
    #[schema(min_length = 1, max_length = 4000)]
    content: String,
    /// 1–64 printable ASCII characters: the same value from the same sender
    /// returns the original message instead of storing it twice.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64)]
    client_msg_id: Option<String>,
}

/// Sends a message into a room, or to a user (a direct message).
#[utoipa::path(
    post,
    path = "/messages",
    tag = "messages",
    operation_id = "send_message",
    security(("bearer" = [])),
    request_body = NewMessage,
    responses(
        (status = 201, description = "The stored message", body = MessageView),
        (status = 200, description = "A `client_msg_id` used before: the original message", body = MessageView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller may not post there", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room or user", body = ErrorBody),
        (status = 409, description = "`client_msg_id_reused`: the `client_msg_id` was used for another room", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: bad content or `client_msg_id`, both or neither of \
            `room_id` and `to_user_id`, a message to oneself", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn create(
    State(messages): State<Arc<Messages>>,
    Auth(caller): Auth,
    Body(m): Body<NewMessage>,
) -> Result<(StatusCode, Json<Value>)> {
    let draft = Draft { content: m.content, client_msg_id: m.client_msg_id };
    let span = Messages::send_span("rest");
    let sent = match (m.room_id, m.to_user_id) {
        (Some(room), None) => {
            let room = validate::object_id("room_id", &room)?;
            messages.send(&caller, room, draft, messages::Membership::Lookup).instrument(span).await?
        }
        (None, Some(peer)) => {
            let peer = validate::object_id("to_user_id", &peer)?;
            messages.send_direct(&caller, peer, draft).instrument(span).await?
        }
        (Some(_), Some(_)) => return Err(Error::invalid("to_user_id", "give room_id or to_user_id, not both")),
        (None, None) => return Err(Error::invalid("room_id", "is required (or to_user_id for a direct message)")),
    };
    let status = if sent.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(MessageView::from(&sent.message)))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// The room; give this or `peer`.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    room_id: Option<String>,
    /// A direct conversation, by the other user's id.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    peer: Option<String>,
    /// Messages per page, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The newest messages older than this message.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    before: Option<String>,
    /// The oldest messages after this message. A seq the page lacks below
    /// its last message will never be stored; the page stops early, with
    /// `has_more` false, before a seq that may still be.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    after: Option<String>,
    /// The oldest messages after this seq (not with `after`); holes as for `after`.
    #[param(value_type = Option<i64>, minimum = 0)]
    after_seq: Option<String>,
    /// Only messages sent at or after this time (RFC 3339).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only messages sent at or before this time (RFC 3339).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Page across the archive too (default false).
    #[param(value_type = Option<bool>)]
    include_archived: Option<String>,
}

fn instant(field: &'static str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    raw.map(|s| {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| Error::invalid(field, "must be an RFC 3339 timestamp, e.g. 2026-01-31T12:00:00Z"))
    })
    .transpose()
}

fn page(room_id: ObjectId, p: HistoryParams) -> Result<Page> {
    let limit = super::limit(p.limit.as_deref(), DEFAULT_PAGE, MAX_PAGE)?;
    let id = |field, raw: Option<String>| raw.map(|s| validate::object_id(field, &s)).transpose();
    let page = Page {
        room_id,
        limit,
        before: id("before", p.before)?,
        after: id("after", p.after)?,
        after_seq: match p.after_seq.as_deref() {
            None => None,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if n >= 0 => Some(n),
                _ => return Err(Error::invalid("after_seq", "must be a whole number, 0 or more")),
            },
        },
        since: instant("since", p.since.as_deref())?,
        until: instant("until", p.until.as_deref())?,
        include_archived: match p.include_archived.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(Error::invalid("include_archived", "must be true or false")),
        },
    };
    if page.after.is_some() && page.after_seq.is_some() {
        return Err(Error::invalid("after_seq", "give after or after_seq, not both"));
    }
    if let (Some(s), Some(u)) = (page.since, page.until) {
        if s > u {
            return Err(Error::invalid("since", "must not be later than until"));
        }
    }
    Ok(page)
}

/// One page of a room's (or a direct conversation's) history, in seq order.
#[utoipa::path(
    get,
    path = "/messages",
    tag = "messages",
    operation_id = "history",
    security(("bearer" = [])),
    params(HistoryParams),
    responses(
        (status = 200, description = "One page of messages, oldest first", body = MessagePage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller may not read the room", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room or user, or a cursor that is not a message of the \
            room", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `limit`, `after_seq`, a time or `include_archived` out \
            of bounds; both or neither of `room_id` and `peer`", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn history(
    State(rooms): State<Arc<Rooms>>,
    State(messages): State<Arc<Messages>>,
    Auth(caller): Auth,
    Params(p): Params<HistoryParams>,
) -> Result<Json<Value>> {
    let room_id = match (p.room_id.as_deref(), p.peer.as_deref()) {
        (Some(room), None) => validate::object_id("room_id", room)?,
        (None, Some(peer)) => {
            let peer = validate::object_id("peer", peer)?;
            match rooms.find(&caller, peer).await? {
                Some(room) => room.id,
                // Nobody has written yet: an empty conversation.
                None => return Ok(Json(json!({ "messages": [], "has_more": false }))),
            }
        }
        (Some(_), Some(_)) => return Err(Error::invalid("peer", "give room_id or peer, not both")),
        (None, None) => return Err(Error::invalid("room_id", "is required (or peer for a direct conversation)")),
    };
    Ok(Json(messages.history_page(&caller, page(room_id, p)?).await?))
}

/// How far a message has reached its room's other members.
#[utoipa::path(
    get,
    path = "/messages/{id}/status",
    tag = "messages",
    operation_id = "message_status",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A message id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The message's delivery and read status", body = receipts::Status),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller may not read the room", body = ErrorBody),
        (status = 404, description = "`not_found`: no such message", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn status(
    State(receipts): State<Arc<Receipts>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<receipts::Status>> {
    let id = validate::object_id("id", &id)?;
    Ok(Json(receipts.status(&caller, id).await?))
}

/// A message's new content.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct Edit {
    /// 1–4000 characters, not only whitespace.
    #[schema(min_length = 1, max_length = 4000)]
    content: String,
}

/// Edits one of the caller's messages.
#[utoipa::path(
    patch,
    path = "/messages/{id}",
    tag = "messages",
    operation_id = "edit_message",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A message id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = Edit,
    responses(
        (status = 200, description = "The message with its new content", body = MessageView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: not the caller's message, or the caller can no longer read the \
            room", body = ErrorBody),
        (status = 404, description = "`not_found`: no such message", body = ErrorBody),
        (status = 409, description = "`message_deleted`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: bad content, a field missing or mistyped", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn edit(
    State(messages): State<Arc<Messages>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(e): Body<Edit>,
) -> Result<Json<Value>> {
    let id = validate::object_id("id", &id)?;
    let message = messages.edit(&caller, id, e.content).await?;
    Ok(Json(json!(MessageView::from(&message))))
}

/// Deletes a message: its sender, or the room's owner or a moderator.
///
/// Answers with the tombstone (200, not 204), also when it was deleted
/// before: clients replace the message in place with what they get.
#[utoipa::path(
    delete,
    path = "/messages/{id}",
    tag = "messages",
    operation_id = "delete_message",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A message id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The tombstone that takes the message's place", body = MessageView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: neither the sender nor the room's owner or a moderator", body = ErrorBody),
        (status = 404, description = "`not_found`: no such message", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn delete(
    State(messages): State<Arc<Messages>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let id = validate::object_id("id", &id)?;
    let tombstone = messages.delete(&caller, id).await?;
    Ok(Json(json!(MessageView::from(&tombstone))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words that must all appear in a message, 1–200 characters.
    #[param(required = true, min_length = 1, max_length = 200)]
    q: Option<String>,
    /// Only this room (else every room the caller can read).
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    room_id: Option<String>,
    /// Messages per page, 1–100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Matches older than this message.
    #[param(pattern = "^[0-9a-fA-F]{24}$")]
    before: Option<String>,
}

/// Messages whose content has every word of `q`, newest first.
#[utoipa::path(
    get,
    path = "/messages/search",
    tag = "messages",
    operation_id = "search_messages",
    security(("bearer" = [])),
    params(SearchParams),
    responses(
        (status = 200, description = "One page of matches, newest first", body = MessagePage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller may not read the room", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room, or a `before` that is not a message of the rooms \
            searched", body = ErrorBody),
        (status = 422, description = "`validation_failed`: `q` missing, blank or too long; `limit` out of range", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn search(
    State(searcher): State<Arc<Searcher>>,
    Auth(caller): Auth,
    Params(p): Params<SearchParams>,
) -> Result<Json<Value>> {
    let limit = super::limit(p.limit.as_deref(), search::DEFAULT_LIMIT, search::MAX_LIMIT)?;
    let id = |field, raw: Option<String>| raw.map(|s| validate::object_id(field, &s)).transpose();
    let s = Search {
        q: p.q.ok_or_else(|| Error::invalid("q", "is required"))?,
        room_id: id("room_id", p.room_id)?,
        before: id("before", p.before)?,
        limit,
    };
    let (messages, has_more) = searcher.search(&caller, s).await?;
    let messages = messages.iter().map(MessageView::from).collect();
    Ok(Json(json!(MessagePage { messages, has_more })))
}

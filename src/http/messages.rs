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

use super::{Auth, Body, Params};
use crate::error::{Error, Result};
use crate::messages::Messages;
use crate::messages::{self, Draft, Page, DEFAULT_PAGE, MAX_PAGE};
use crate::protocol::views::MessageView;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::search::Searcher;
use crate::search::{self, Search};
use crate::{receipts, validate};

#[derive(Deserialize)]
pub struct NewMessage {
    #[serde(default)]
    room_id: Option<String>,
    /// A direct message: to this user instead of into a room.
    #[serde(default)]
    to_user_id: Option<String>,
    content: String,
    #[serde(default)]
    client_msg_id: Option<String>,
}

pub async fn create(
    State(messages): State<Arc<Messages>>,
    Auth(caller): Auth,
    Body(m): Body<NewMessage>,
) -> Result<(StatusCode, Json<Value>)> {
    let draft = Draft { content: m.content, client_msg_id: m.client_msg_id };
    let sent = match (m.room_id, m.to_user_id) {
        (Some(room), None) => {
            messages.send(&caller, validate::object_id("room_id", &room)?, draft, messages::Membership::Lookup).await?
        }
        (None, Some(peer)) => messages.send_direct(&caller, validate::object_id("to_user_id", &peer)?, draft).await?,
        (Some(_), Some(_)) => return Err(Error::invalid("to_user_id", "give room_id or to_user_id, not both")),
        (None, None) => return Err(Error::invalid("room_id", "is required (or to_user_id for a direct message)")),
    };
    let status = if sent.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(MessageView::from(&sent.message)))))
}

#[derive(Deserialize)]
pub struct HistoryParams {
    room_id: Option<String>,
    /// A direct conversation, by the other user's id.
    peer: Option<String>,
    limit: Option<String>,
    before: Option<String>,
    after: Option<String>,
    after_seq: Option<String>,
    since: Option<String>,
    until: Option<String>,
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

/// `GET /messages/{id}/status`
pub async fn status(
    State(receipts): State<Arc<Receipts>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<receipts::Status>> {
    let id = validate::object_id("id", &id)?;
    Ok(Json(receipts.status(&caller, id).await?))
}

#[derive(Deserialize)]
pub struct Edit {
    content: String,
}

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

/// Answers with the tombstone (200, not 204), also when it was deleted
/// before: clients replace the message in place with what they get.
pub async fn delete(
    State(messages): State<Arc<Messages>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let id = validate::object_id("id", &id)?;
    let tombstone = messages.delete(&caller, id).await?;
    Ok(Json(json!(MessageView::from(&tombstone))))
}

#[derive(Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    room_id: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

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
    let views: Vec<MessageView> = messages.iter().map(MessageView::from).collect();
    Ok(Json(json!({ "messages": views, "has_more": has_more })))
}

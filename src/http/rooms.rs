//! `GET /rooms`, `POST /rooms`, `POST /rooms/{id}/join`, members, and
//! `POST /rooms/{id}/read`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Auth, Body, Params};
use crate::audit::Source;
use crate::error::Result;
use crate::protocol::views::{MemberView, RoomView};
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::rooms::{self, members, NewRoom};
use crate::store::Cursor;
use crate::{receipts, validate};

pub async fn create(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Body(r): Body<NewRoom>,
) -> Result<(StatusCode, Json<RoomView>)> {
    let room = rooms.create(&caller, r).await?;
    Ok((StatusCode::CREATED, Json(RoomView::from(&room))))
}

#[derive(Deserialize)]
pub struct ListParams {
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn list(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Params(p): Params<ListParams>,
) -> Result<Json<rooms::list::RoomPage>> {
    let limit = super::limit(p.limit.as_deref(), rooms::list::DEFAULT_PAGE, rooms::list::MAX_PAGE)?;
    let cursor = p.cursor.as_deref().map(rooms::list::ListCursor::parse).transpose()?;
    Ok(Json(rooms.list(&caller, limit, cursor).await?))
}

pub async fn join(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<MemberView>> {
    let room_id = validate::object_id("id", &id)?;
    let member = rooms.join(&caller, room_id).await?;
    Ok(Json(MemberView::from(&member)))
}

#[derive(Deserialize)]
pub struct NewMember {
    user_id: String,
    #[serde(default)]
    role: Option<String>,
}

pub async fn add_member(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(m): Body<NewMember>,
) -> Result<(StatusCode, Json<MemberView>)> {
    let room_id = validate::object_id("id", &id)?;
    let user_id = validate::object_id("user_id", &m.user_id)?;
    let role = members::parse_role(m.role.as_deref().unwrap_or("member"))?;
    let (member, created) = rooms.add(&caller, room_id, user_id, role).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(MemberView::from(&member))))
}

#[derive(Deserialize)]
pub struct RoleChange {
    role: String,
}

pub async fn set_role(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    source: Source,
    Path((id, user)): Path<(String, String)>,
    Body(r): Body<RoleChange>,
) -> Result<Json<MemberView>> {
    let room_id = validate::object_id("id", &id)?;
    let user_id = validate::object_id("user_id", &user)?;
    let member = rooms.set_role(&caller, room_id, user_id, members::parse_role(&r.role)?, &source).await?;
    Ok(Json(MemberView::from(&member)))
}

pub async fn remove_member(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    source: Source,
    Path((id, user)): Path<(String, String)>,
) -> Result<StatusCode> {
    let room_id = validate::object_id("id", &id)?;
    let user_id = validate::object_id("user_id", &user)?;
    rooms.remove(&caller, room_id, user_id, &source).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_members(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let room_id = validate::object_id("id", &id)?;
    Ok(Json(json!({ "members": rooms.members(&caller, room_id).await? })))
}

#[derive(Deserialize)]
pub struct ReadUpTo {
    message_id: String,
}

pub async fn read(
    State(receipts): State<Arc<Receipts>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
    Body(r): Body<ReadUpTo>,
) -> Result<Json<receipts::Cursors>> {
    let room_id = validate::object_id("id", &id)?;
    let message_id = validate::object_id("message_id", &r.message_id)?;
    Ok(Json(receipts.acknowledge(&caller, room_id, Cursor::Read, message_id).await?))
}

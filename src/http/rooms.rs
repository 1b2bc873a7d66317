//! `GET /rooms`, `POST /rooms`, `POST /rooms/{id}/join`, members, and
//! `POST /rooms/{id}/read`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Auth, Body, ErrorBody, Params};
use crate::audit::Source;
use crate::error::Result;
use crate::protocol::views::{MemberView, RoomView};
use crate::receipts::Receipts;
use crate::rooms::members::MemberEntry;
use crate::rooms::Rooms;
use crate::rooms::{self, members, NewRoom};
use crate::store::Cursor;
use crate::{receipts, validate};

/// Creates a room; the caller becomes its owner.
#[utoipa::path(
    post,
    path = "/rooms",
    tag = "rooms",
    operation_id = "create_room",
    security(("bearer" = [])),
    request_body = NewRoom,
    responses(
        (status = 201, description = "The new room", body = RoomView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 409, description = "`room_name_taken`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a bad name or type, a field missing or mistyped", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn create(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Body(r): Body<NewRoom>,
) -> Result<(StatusCode, Json<RoomView>)> {
    let room = rooms.create(&caller, r).await?;
    Ok((StatusCode::CREATED, Json(RoomView::from(&room))))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Rooms per page, 1–200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// The public rooms and the caller's rooms, most recently active first,
/// one page at a time.
#[utoipa::path(
    get,
    path = "/rooms",
    tag = "rooms",
    operation_id = "list_rooms",
    security(("bearer" = [])),
    params(ListParams),
    responses(
        (status = 200, description = "One page of rooms", body = rooms::list::RoomPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, description = "`validation_failed`: `limit` out of range, or a `cursor` this endpoint did \
            not give", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Params(p): Params<ListParams>,
) -> Result<Json<rooms::list::RoomPage>> {
    let limit = super::limit(p.limit.as_deref(), rooms::list::DEFAULT_PAGE, rooms::list::MAX_PAGE)?;
    let cursor = p.cursor.as_deref().map(rooms::list::ListCursor::parse).transpose()?;
    Ok(Json(rooms.list(&caller, limit, cursor).await?))
}

/// Joins a public room (idempotent); members rejoin private and direct rooms.
#[utoipa::path(
    post,
    path = "/rooms/{id}/join",
    tag = "rooms",
    operation_id = "join_room",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A room id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The caller's membership", body = MemberView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a private room the caller is not in, or another pair's direct \
            room", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn join(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<MemberView>> {
    let room_id = validate::object_id("id", &id)?;
    let member = rooms.join(&caller, room_id).await?;
    Ok(Json(MemberView::from(&member)))
}

/// A user to add to a room.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct NewMember {
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    user_id: String,
    /// `member` (the default) or `moderator` (owners only).
    #[serde(default)]
    #[schema(pattern = "^(member|moderator)$")]
    role: Option<String>,
}

/// Adds a user to a room (owners and moderators).
#[utoipa::path(
    post,
    path = "/rooms/{id}/members",
    tag = "rooms",
    operation_id = "add_member",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A room id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = NewMember,
    responses(
        (status = 201, description = "The new membership", body = MemberView),
        (status = 200, description = "Already a member: the existing membership", body = MemberView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller may not add members (or moderators) here, or the \
            room is a direct one", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room or user", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a bad role, a field missing or mistyped", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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

/// A member's new role.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct RoleChange {
    /// `member` or `moderator`.
    #[schema(pattern = "^(member|moderator)$")]
    role: String,
}

/// Changes a member's role (owners only).
#[utoipa::path(
    patch,
    path = "/rooms/{id}/members/{user_id}",
    tag = "rooms",
    operation_id = "set_member_role",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "A room id", pattern = "^[0-9a-fA-F]{24}$"),
        ("user_id" = String, Path, description = "The member's user id", pattern = "^[0-9a-fA-F]{24}$"),
    ),
    request_body = RoleChange,
    responses(
        (status = 200, description = "The membership with its new role", body = MemberView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not the owner, or the member is the owner", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room, or the user is not a member", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a bad role, a field missing or mistyped", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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

/// Removes a member from a room; removing oneself is leaving.
#[utoipa::path(
    delete,
    path = "/rooms/{id}/members/{user_id}",
    tag = "rooms",
    operation_id = "remove_member",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "A room id", pattern = "^[0-9a-fA-F]{24}$"),
        ("user_id" = String, Path, description = "The member's user id", pattern = "^[0-9a-fA-F]{24}$"),
    ),
    responses(
        (status = 204, description = "The member is out of the room, on every node"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller may not remove this member, or the room is a direct \
            one", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room, or the user is not a member", body = ErrorBody),
        (status = 409, description = "`owner_cannot_leave`", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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

/// A room's members.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MemberList {
    /// Oldest member first, at most 1000.
    members: Vec<MemberEntry>,
}

/// A room's members, for anyone who may read the room.
#[utoipa::path(
    get,
    path = "/rooms/{id}/members",
    tag = "rooms",
    operation_id = "list_members",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A room id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 200, description = "The room's members", body = MemberList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller may not read the room", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list_members(
    State(rooms): State<Arc<Rooms>>,
    Auth(caller): Auth,
    Path(id): Path<String>,
) -> Result<Json<MemberList>> {
    let room_id = validate::object_id("id", &id)?;
    Ok(Json(MemberList { members: rooms.members(&caller, room_id).await? }))
}

/// The message read up to.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct ReadUpTo {
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    message_id: String,
}

/// Moves the caller's read (and delivery) cursor in a room forward.
#[utoipa::path(
    post,
    path = "/rooms/{id}/read",
    tag = "rooms",
    operation_id = "mark_read",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "A room id", pattern = "^[0-9a-fA-F]{24}$")),
    request_body = ReadUpTo,
    responses(
        (status = 200, description = "The caller's cursors after the call", body = receipts::Cursors),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: the caller is not a member", body = ErrorBody),
        (status = 404, description = "`not_found`: no such room, or the message is not one of it", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: `message_id` missing or mistyped", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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

//! `GET /rooms`, `POST /rooms`, `POST /rooms/{id}/join`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{Auth, Body};
use crate::error::Result;
use crate::node::App;
use crate::rooms::{self, NewRoom};
use crate::store::model::{MemberView, RoomView};
use crate::validate;

pub async fn create(
    State(app): State<Arc<App>>,
    Auth(caller): Auth,
    Body(r): Body<NewRoom>,
) -> Result<(StatusCode, Json<RoomView>)> {
    let room = rooms::create(&app, &caller, r).await?;
    Ok((StatusCode::CREATED, Json(RoomView::from(&room))))
}

pub async fn list(State(app): State<Arc<App>>, Auth(caller): Auth) -> Result<Json<Value>> {
    let rooms = rooms::list(&app, &caller).await?;
    let views: Vec<RoomView> = rooms.iter().map(RoomView::from).collect();
    Ok(Json(json!({ "rooms": views })))
}

pub async fn join(State(app): State<Arc<App>>, Auth(caller): Auth, Path(id): Path<String>) -> Result<Json<MemberView>> {
    let room_id = validate::object_id("id", &id)?;
    let member = rooms::join(&app, &caller, room_id).await?;
    Ok(Json(MemberView::from(&member)))
}

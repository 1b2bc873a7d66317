//! `POST /register`, `POST /login` (which opens a session, see `sessions`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::{Body, ClientAddress};
use crate::audit::Source;
use crate::error::Result;
use crate::protocol::views::UserView;
use crate::ratelimit::SharedLimiter;
use crate::sessions::Grant;
use crate::users::{Login, Registration, Users};

pub async fn register(
    State(users): State<Arc<Users>>,
    State(limiter): State<Arc<SharedLimiter>>,
    ClientAddress(from): ClientAddress,
    Body(r): Body<Registration>,
) -> Result<(StatusCode, Json<UserView>)> {
    limiter.address(from).await.into_result("auth")?;
    let user = users.register(r).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

pub async fn login(
    State(users): State<Arc<Users>>,
    State(limiter): State<Arc<SharedLimiter>>,
    ClientAddress(from): ClientAddress,
    source: Source,
    Body(l): Body<Login>,
) -> Result<Json<Grant>> {
    limiter.address(from).await.into_result("auth")?;
    Ok(Json(users.login(l, &source).await?))
}

//! `POST /register`, `POST /login`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{Body, ClientAddress};
use crate::audit::Source;
use crate::error::Result;
use crate::protocol::views::UserView;
use crate::ratelimit::SharedLimiter;
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
) -> Result<Json<Value>> {
    limiter.address(from).await.into_result("auth")?;
    let token = users.login(l, &source).await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": users.token_ttl().as_secs(),
    })))
}

//! `POST /register`, `POST /login`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{Body, ClientAddress};
use crate::error::Result;
use crate::node::App;
use crate::store::model::UserView;
use crate::users::{self, Login, Registration};

pub async fn register(
    State(app): State<Arc<App>>,
    ClientAddress(from): ClientAddress,
    Body(r): Body<Registration>,
) -> Result<(StatusCode, Json<UserView>)> {
    app.limiter.address(from).await.into_result("auth")?;
    let user = users::register(&app, r).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

pub async fn login(
    State(app): State<Arc<App>>,
    ClientAddress(from): ClientAddress,
    Body(l): Body<Login>,
) -> Result<Json<Value>> {
    app.limiter.address(from).await.into_result("auth")?;
    let token = users::login(&app, l).await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": app.tokens.ttl().as_secs(),
    })))
}

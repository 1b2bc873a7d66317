//! `POST /register`, `POST /login` (which opens a session, see `sessions`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use super::openapi::{BadRequest, Internal, PayloadTooLarge, RateLimited, Unauthorized, Unavailable};
use super::{Body, ClientAddress, ErrorBody};
use crate::audit::Source;
use crate::error::Result;
use crate::protocol::views::UserView;
use crate::ratelimit::SharedLimiter;
use crate::sessions::Grant;
use crate::users::{Login, Registration, Users};

/// Creates an account.
#[utoipa::path(
    post,
    path = "/register",
    tag = "accounts",
    operation_id = "register",
    request_body = Registration,
    responses(
        (status = 201, description = "The new account", body = UserView),
        (status = 400, response = BadRequest),
        (status = 409, description = "`username_taken` or `email_taken`", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a rule broken, a field missing or mistyped", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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

/// Opens a session: an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/login",
    tag = "accounts",
    operation_id = "login",
    request_body = Login,
    responses(
        (status = 200, description = "The new session's tokens", body = Grant),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`banned`: the account is banned", body = ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "`validation_failed`: a field missing or mistyped", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
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

//! The per-user REST rate limit, as a middleware in front of every route.
//!
//! Requests are counted for the user whose token they carry; requests
//! without a valid token are not (they fail authentication anyway, and
//! `/login` has its own limit per username). Health and metrics endpoints are
//! never limited: probes and scrapers must see the node as it is.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ws::token_of;
use super::Api;

/// Paths no limit applies to.
const EXEMPT: &[&str] = &["/healthz", "/readyz", "/metrics"];

pub async fn per_user(State(api): State<Api>, req: Request, next: Next) -> Response {
    if EXEMPT.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let Some(caller) = token_of(&req).and_then(|t| api.sessions.tokens().verify(&t).ok()) else {
        return next.run(req).await;
    };
    match api.limiter.rest(caller.user_id).await.into_result("rest") {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

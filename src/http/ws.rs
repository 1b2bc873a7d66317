//! `GET /ws`: authenticates, checks Origin, then upgrades to a WebSocket.
//! A missing or invalid token is refused with 401 before any upgrade.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::response::Response;

use super::extract::bearer;
use crate::error::{Error, Result};
use crate::node::App;
use crate::ws;

/// The token from `Authorization: Bearer`, or else from `?token=` (browsers
/// cannot set headers on a WebSocket).
pub(super) fn token_of(req: &Request) -> Option<String> {
    if let Some(token) = bearer(req.headers()) {
        return Some(token.to_owned());
    }
    let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(req.uri()).ok()?;
    query.0.get("token").cloned()
}

fn check_origin(app: &App, req: &Request) -> Result<()> {
    if app.config.allowed_origins.is_empty() {
        return Ok(());
    }
    match req.headers().get(http::header::ORIGIN).and_then(|o| o.to_str().ok()) {
        // Non-browser clients send no Origin; browsers always do.
        None => Ok(()),
        Some(origin)
            if app.config.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(origin.trim_end_matches('/'))) =>
        {
            Ok(())
        }
        Some(_) => Err(Error::Forbidden("origin not allowed".into())),
    }
}

fn upgrade(mut req: Request) -> Result<(Response, fastwebsockets::upgrade::UpgradeFut)> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Err(Error::BadRequest("expected a WebSocket upgrade request".into()));
    }
    let (response, fut) = fastwebsockets::upgrade::upgrade(&mut req)
        .map_err(|e| Error::BadRequest(format!("WebSocket handshake: {e}")))?;
    Ok((response.map(|_| AxumBody::empty()), fut))
}

pub async fn chat(State(app): State<Arc<App>>, req: Request) -> Result<Response> {
    let token = token_of(&req).ok_or_else(|| Error::Unauthorized("missing access token".into()))?;
    let caller = app.tokens.verify(&token)?;
    check_origin(&app, &req)?;
    crate::presence::may_connect(&app, caller.user_id, app.config.max_sockets_per_user).await?;
    let (response, fut) = upgrade(req)?;
    tokio::spawn(async move {
        match fut.await {
            Ok(ws) => ws::run_chat(app, caller, ws).await,
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    Ok(response)
}

pub async fn echo(State(app): State<Arc<App>>, req: Request) -> Result<Response> {
    let (response, fut) = upgrade(req)?;
    tokio::spawn(async move {
        if let Ok(ws) = fut.await {
            ws::run_echo(app, ws).await;
        }
    });
    Ok(response)
}

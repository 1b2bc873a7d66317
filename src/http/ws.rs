//! `GET /ws`: authenticates, checks Origin, then upgrades to a WebSocket.
//! A missing or invalid token is refused with 401 before any upgrade.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body as AxumBody;
use axum::extract::{Request, State};
use axum::response::Response;
use fastwebsockets::upgrade::UpgradeFut;
use http::header::SEC_WEBSOCKET_EXTENSIONS;
use http::HeaderValue;

use super::extract::bearer;
use super::openapi::{Internal, Unauthorized, Unavailable};
use super::ErrorBody;
use crate::error::{Error, Result};
use crate::sessions::Sessions;
use crate::ws::socket::Extensions;
use crate::ws::Sockets;

/// The token from `Authorization: Bearer`, or else from `?token=` (browsers
/// cannot set headers on a WebSocket).
pub(super) fn token_of(req: &Request) -> Option<String> {
    if let Some(token) = bearer(req.headers()) {
        return Some(token.to_owned());
    }
    let query = axum::extract::Query::<HashMap<String, String>>::try_from_uri(req.uri()).ok()?;
    query.0.get("token").cloned()
}

/// Upgrades, agreeing to the extensions the node offers and the client asked for.
fn upgrade(sockets: &Sockets, mut req: Request) -> Result<(Response, UpgradeFut, Extensions)> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Err(Error::BadRequest("expected a WebSocket upgrade request".into()));
    }
    let offers = req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS);
    let extensions = sockets.extensions(offers.iter().filter_map(|v| v.to_str().ok()));
    let (response, fut) = fastwebsockets::upgrade::upgrade(&mut req)
        .map_err(|e| Error::BadRequest(format!("WebSocket handshake: {e}")))?;
    let mut response = response.map(|_| AxumBody::empty());
    if let Some(agreed) = extensions.deflate {
        let value = HeaderValue::from_str(&agreed.response()).expect("the extension response is ASCII");
        response.headers_mut().insert(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    Ok((response, fut, extensions))
}

/// Opens the chat WebSocket (docs/api.md describes its protocol). The token
/// comes in `Authorization: Bearer`, or as `?token=` from browsers.
#[utoipa::path(
    get,
    path = "/ws",
    tag = "operations",
    operation_id = "websocket",
    security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "The access token, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "`bad_request`: not a WebSocket upgrade request, or a bad handshake", body = ErrorBody),
        (status = 401, response = Unauthorized),
        (status = 403, description = "`forbidden`: a browser `Origin` not on the node's list", body = ErrorBody),
        (status = 429, description = "`rate_limited` (the user's REST limit), or `too_many_connections` (the user \
            holds the most sockets allowed)", body = ErrorBody),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn chat(
    State(sessions): State<Arc<Sessions>>,
    State(sockets): State<Arc<Sockets>>,
    req: Request,
) -> Result<Response> {
    let token = token_of(&req).ok_or_else(|| Error::Unauthorized("missing access token".into()))?;
    let caller = sessions.authenticate(&token).await?;
    // Browsers always send an Origin; other clients need not.
    let origin = req.headers().get(http::header::ORIGIN).map(|o| o.to_str().unwrap_or("\u{fffd}"));
    sockets.admit(&caller, origin).await?;
    let (response, fut, extensions) = upgrade(&sockets, req)?;
    sockets.spawn_chat(caller, extensions, fut);
    Ok(response)
}

pub async fn echo(State(sockets): State<Arc<Sockets>>, req: Request) -> Result<Response> {
    let (response, fut, extensions) = upgrade(&sockets, req)?;
    sockets.spawn_echo(extensions, fut);
    Ok(response)
}

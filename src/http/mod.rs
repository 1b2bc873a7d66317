//! The REST edge: routes, the JSON error body, and request metrics.
//!
//! Handlers are thin: an extractor authenticates and parses, a domain service
//! does the work, and [`Error`] becomes `{"error":{"code","message"}}` with
//! its status in exactly one place (`IntoResponse` below).

mod accounts;
pub mod admin;
mod contacts;
pub mod cors;
mod extract;
mod health;
mod limit;
mod messages;
mod notifications;
pub mod openapi;
mod presence;
mod rooms;
pub mod serve;
mod server_api;
mod sessions;
mod users;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, MethodRouter};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::set_header::SetResponseHeaderLayer;

pub use extract::{Admin, Auth, Body, ClientAddress, Params, RawBody};

use crate::auth::ApiKeys;
use crate::config::Cidr;
use crate::contacts::Contacts;
use crate::error::Error;
use crate::health::Health;
use crate::messages::Messages;
use crate::notifications::Notifier;
use crate::presence::Presence;
use crate::ratelimit::SharedLimiter;
use crate::receipts::Receipts;
use crate::rooms::Rooms;
use crate::search::Searcher;
use crate::sessions::Sessions;
use crate::users::Users;
use crate::ws::Sockets;

/// What the REST edge serves from: the node's services, each handler taking
/// only the ones it uses (`State<Arc<Rooms>>`, ...).
#[derive(Clone, axum::extract::FromRef)]
pub struct Api {
    pub users: Arc<Users>,
    pub rooms: Arc<Rooms>,
    pub messages: Arc<Messages>,
    pub receipts: Arc<Receipts>,
    pub presence: Arc<Presence>,
    pub contacts: Arc<Contacts>,
    pub searcher: Arc<Searcher>,
    pub notifier: Arc<Notifier>,
    pub api_keys: Arc<ApiKeys>,
    pub health: Arc<Health>,
    pub sockets: Arc<Sockets>,
    pub sessions: Arc<Sessions>,
    pub limiter: Arc<SharedLimiter>,
    pub edge: Arc<Edge>,
    pub audit: Arc<crate::audit::Audit>,
}

/// How the edge itself behaves.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Serves `/ws/echo`, the conformance endpoint.
    pub echo_endpoint: bool,
    /// Origins granted CORS (the WebSocket Origin list; empty: CORS off).
    pub cors: cors::Cors,
}

/// Every failure's body: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({"error": {"code": "validation_failed", "message": "password: must be at least 8 \
    characters"}}))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a machine-readable code and a message for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// What kind of failure (`validation_failed`, `not_found`, …; docs/api.md lists them).
    pub code: &'static str,
    /// What failed, at most 300 characters; starts with the field's name for
    /// `validation_failed`.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ErrorBody { error: ErrorDetail { code, message: message.into() } }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(ErrorBody::new(self.code(), self.public_message()));
        let mut response = (status, body).into_response();
        if status == http::StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs() {
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        }
        if let Some(report) = self.report() {
            response.extensions_mut().insert(Failure(report));
        }
        response
    }
}

/// Why a request failed on our side, for [`track`] to log: the response is
/// made without logging, the one middleware logs.
#[derive(Clone)]
struct Failure(String);

/// Every route: its path template and its handlers.
fn routes(edge: &Edge) -> Vec<(&'static str, MethodRouter<Api>)> {
    let mut routes = vec![
        ("/register", post(accounts::register)),
        ("/login", post(accounts::login)),
        ("/token/refresh", post(sessions::refresh)),
        ("/logout", post(sessions::logout)),
        ("/logout/all", post(sessions::logout_all)),
        ("/sessions", get(sessions::list)),
        ("/sessions/{id}", axum::routing::delete(sessions::revoke)),
        ("/rooms", get(rooms::list).post(rooms::create)),
        ("/rooms/{id}/join", post(rooms::join)),
        ("/rooms/{id}/members", get(rooms::list_members).post(rooms::add_member)),
        ("/rooms/{id}/members/{user_id}", patch(rooms::set_role).delete(rooms::remove_member)),
        ("/rooms/{id}/read", post(rooms::read)),
        ("/messages", get(messages::history).post(messages::create)),
        ("/messages/{id}/status", get(messages::status)),
        ("/users/me", get(users::me).patch(users::update_me)),
        ("/users/me/password", patch(users::change_password)),
        ("/users/search", get(users::search)),
        ("/users/{id}", get(users::profile)),
        ("/contacts", get(contacts::list)),
        ("/contacts/{user_id}", axum::routing::put(contacts::add).delete(contacts::remove)),
        ("/presence", get(presence::lookup)),
        ("/ws", get(ws::chat)),
        ("/healthz", get(health::healthz)),
        ("/readyz", get(health::readyz)),
        ("/metrics", get(health::metrics)),
        ("/messages/search", get(messages::search)),
        ("/messages/{id}", patch(messages::edit).delete(messages::delete)),
        ("/admin/users", get(admin::users)),
        ("/admin/users/{id}/ban", post(admin::ban)),
        ("/admin/users/{id}/unban", post(admin::unban)),
        ("/admin/users/{id}/disconnect", post(admin::disconnect)),
        ("/admin/audit", get(admin::audit)),
        ("/admin/messages/{id}", axum::routing::delete(admin::delete_message)),
        ("/openapi.json", get(openapi::serve)),
    ];
    if edge.echo_endpoint {
        routes.push(("/ws/echo", get(ws::echo)));
    }
    routes.extend(notifications::routes());
    routes.extend(server_api::routes());
    routes
}

/// Every route's path template (`/ws/echo` included, though a node serves
/// it only with `echo_endpoint`).
pub fn route_paths() -> Vec<&'static str> {
    routes(&Edge { echo_endpoint: true, ..Edge::default() }).into_iter().map(|(path, _)| path).collect()
}

pub fn router(api: Api) -> Router {
    let routes = routes(&api.edge);
    let cors = api.edge.cors.clone();
    crate::metrics::register_routes(routes.iter().map(|(path, _)| *path));
    let router = routes.into_iter().fold(Router::new(), |router, (path, handlers)| router.route(path, handlers));
    let router = router
        .fallback(|| async { Error::NotFound("no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                http::StatusCode::METHOD_NOT_ALLOWED,
                Json(ErrorBody::new("method_not_allowed", "method not allowed on this endpoint")),
            )
        })
        .layer(middleware::from_fn_with_state(api.clone(), limit::per_user))
        .layer(middleware::from_fn(track))
        // Answers are JSON for programs, never to be sniffed as something
        // else, and carry users' data: no cache along the way keeps them.
        .layer(SetResponseHeaderLayer::if_not_present(
            http::header::X_CONTENT_TYPE_OPTIONS,
            http::HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        ))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(api);
    // Outermost: a preflight is answered before routing, authentication
    // or rate limits.
    if cors.enabled() {
        router.layer(middleware::from_fn_with_state(cors, cors::cors))
    } else {
        router
    }
}

/// A `limit` query parameter: a whole number from 1 to `max`, `default`
/// when absent.
pub(crate) fn limit(raw: Option<&str>, default: i64, max: i64) -> crate::error::Result<i64> {
    match raw {
        None => Ok(default),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(Error::invalid("limit", format!("must be a whole number from 1 to {max}"))),
        },
    }
}

/// Counts and times every request by route template (bounded cardinality:
/// no ids in labels), and logs the cause of every failure of ours (5xx).
async fn track(req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let start = Instant::now();
    let response = next.run(req).await;
    if let Some(Failure(report)) = response.extensions().get::<Failure>() {
        if response.status() == http::StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%method, route, error = %report, "request failed");
        } else {
            tracing::warn!(%method, route, error = %report, "request failed");
        }
    }
    let status = response.status().as_u16().to_string();
    metrics::counter!("confab_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("confab_http_request_seconds", "route" => route).record(start.elapsed().as_secs_f64());
    response
}

//! `GET /healthz` (the process is up), `GET /readyz` (its backends answer),
//! `GET /metrics` (Prometheus).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;

use crate::health::Health;

/// The process is up.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    #[schema(value_type = String, example = "ok")]
    status: &'static str,
    /// The node that answered.
    node_id: String,
}

/// Whether the node's backends answer: each `ok` or `unavailable`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    status: &'static str,
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    redis: &'static str,
    #[schema(value_type = String, pattern = "^(ok|unavailable)$")]
    mongo: &'static str,
}

/// Whether the process runs (for liveness probes).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The process runs", body = Liveness))
)]
pub async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    Json(Liveness { status: "ok", node_id: health.node_id().to_string() })
}

/// Whether Redis and MongoDB answer (for load balancers' health checks).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    responses(
        (status = 200, description = "Ready: every backend answers", body = Readiness),
        (status = 503, description = "Not ready: which backend does not answer", body = Readiness),
    )
)]
pub async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let found = health.readiness().await;
    let status = if found.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (status, Json(Readiness { status: word(found.ready()), redis: word(found.redis), mongo: word(found.mongo) }))
}

/// The node's metrics, in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text", body = String, content_type = "text/plain; version=0.0.4"),
    )
)]
pub async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], health.render_metrics())
}

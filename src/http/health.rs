//! `GET /healthz` (the process is up), `GET /readyz` (its backends answer),
//! `GET /metrics` (Prometheus).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::health::Health;

pub async fn healthz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    Json(json!({"status": "ok", "node_id": health.node_id()}))
}

pub async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let found = health.readiness().await;
    let status = if found.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (status, Json(json!({"status": word(found.ready()), "redis": word(found.redis), "mongo": word(found.mongo)})))
}

pub async fn metrics(State(health): State<Arc<Health>>) -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], health.render_metrics())
}

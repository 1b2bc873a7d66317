//! `GET /healthz` (the process is up), `GET /readyz` (its backends answer),
//! `GET /metrics` (Prometheus).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use tokio::time::timeout;

use crate::node::App;

pub async fn healthz(State(app): State<Arc<App>>) -> impl IntoResponse {
    Json(json!({"status": "ok", "node_id": app.config.node_id}))
}

pub async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    let limit = Duration::from_secs(2);
    let (redis, mongo) = tokio::join!(timeout(limit, app.bus.ping()), timeout(limit, app.store.ping()));
    let redis_ok = matches!(redis, Ok(Ok(())));
    let mongo_ok = matches!(mongo, Ok(Ok(()))) && app.indexes_ready.load(Ordering::Relaxed);
    let status = if redis_ok && mongo_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (status, Json(json!({"status": word(redis_ok && mongo_ok), "redis": word(redis_ok), "mongo": word(mongo_ok)})))
}

pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], app.metrics.render())
}

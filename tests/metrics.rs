//! `/metrics` right after a node starts: every series docs/api.md lists is
//! there already, at zero, before anything happened that counts in it
//! (Prometheus users alert on absent series). A binary of its own, so that
//! no other test of the process has touched the recorder first.

mod common;

use common::Node;

/// The metric names of the table in docs/api.md.
fn documented() -> Vec<String> {
    let doc = include_str!("../docs/api.md");
    let names: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `confab_"))
        .map(|rest| format!("confab_{}", rest.split(['`', '{']).next().unwrap()))
        .collect();
    assert!(names.len() > 30, "the metrics table was not found: {names:?}");
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_series_is_there_from_start_at_zero() {
    let n = Node::start(common::config(&common::unique_db())).await;
    let text = n.http.get(n.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let missing: Vec<String> = documented()
        .into_iter()
        .filter(|name| !text.lines().any(|l| l.starts_with(name.as_str()) && !l.starts_with('#')))
        .collect();
    assert!(missing.is_empty(), "not in /metrics at start: {missing:?}\n{text}");
    for zero in ["confab_connections_active 0", "confab_messages_sent_total 0"] {
        assert!(text.lines().any(|l| l == zero), "{zero} missing:\n{text}");
    }
    assert!(text.contains("confab_ws_frames_in_total{type=\"send_message\"} 0"), "{text}");
    assert!(text.contains("confab_http_requests_total{route=\"/login\",status=\"200\"} 0"), "{text}");
    n.shutdown().await;
}

/// The same for a worker's own listener and the table of docs/operations.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_documented_series_are_there_from_start() {
    let db = common::unique_db();
    let mut config =
        common::worker_config(&db, confab::backend::redis::RedisConfig::new(common::redis_url()), common::keys(&db));
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let worker = confab::jobs::runner::RunningWorker::start(config).await.unwrap();
    let url = format!("http://{}/metrics", worker.metrics_addr.unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let doc = include_str!("../docs/operations.md");
    let names: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `confab_"))
        .map(|rest| format!("confab_{}", rest.split(['`', '{']).next().unwrap()))
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    let missing: Vec<&String> =
        names.iter().filter(|name| !text.lines().any(|l| l.starts_with(name.as_str()))).collect();
    assert!(missing.is_empty(), "not in the worker's /metrics at start: {missing:?}\n{text}");
    worker.shutdown().await;
}

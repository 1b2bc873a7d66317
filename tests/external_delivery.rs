//! The whole way of a notification for someone who is not connected: a
//! message on a node, the notification stored in their history and handed to
//! the external queue, and a worker delivering it to a webhook, signed.
//!
//! Nodes and worker share a Redis of this test's own: the external queue has
//! one name per deployment, and other tests' queues must not mix with it.
//! The same way runs once more over a Redis that speaks only TLS.

mod common;

use confab::backend::redis::RedisConfig;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Node, OwnRedis};
use confab::jobs::config::WorkerConfig;
use confab::jobs::runner::RunningWorker;
use confab::jobs::sink::SinkConfig;
use serde_json::{json, Value};

const SECRET: &str = "webhook-secret-0123456789";

/// A webhook receiver that keeps every correctly signed body.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let keep = keep.clone();
            async move {
                let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                let signed = confab::jobs::sink::verify(
                    SECRET,
                    &header("x-confab-timestamp"),
                    &body,
                    &header("x-confab-signature"),
                    Duration::from_secs(300),
                );
                if !signed {
                    return StatusCode::UNAUTHORIZED;
                }
                keep.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_member_gets_the_notification_in_history_and_from_the_worker_sink() {
    let redis = OwnRedis::start();
    the_whole_way(RedisConfig::new(redis.url())).await;
}

/// The same over a Redis that speaks only TLS, with a certificate of a
/// private CA: nodes publish and subscribe, hand out seqs and queue
/// notifications over `rediss://`, and the worker's queues run on it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_and_workers_run_on_a_tls_redis_with_a_private_ca() {
    let redis = common::TlsRedis::start();
    let trusted = RedisConfig { url: redis.url(), ca_file: Some(redis.ca_file()) };
    // Without the CA the server's certificate is refused.
    let untrusted = RedisConfig::new(redis.url());
    let refused = tokio::time::timeout(Duration::from_secs(5), untrusted.connected(Duration::from_secs(2))).await;
    assert!(!matches!(refused, Ok(Ok(_))), "a certificate of an unknown CA was accepted");
    the_whole_way(trusted).await;
}

/// Two nodes and a worker on `redis`: a message crosses the nodes live, and
/// a member with no connection is notified through the worker's webhook.
async fn the_whole_way(redis: RedisConfig) {
    let db = common::unique_db();
    let mut config = common::config(&db);
    config.redis = redis.clone();
    let keys = config.keys.clone();
    assert_ne!(keys.prefix(), confab::keyspace::DEFAULT_PREFIX);
    let node = Node::start(config.clone()).await;
    let other = Node::start(config).await;
    let (url, delivered) = receiver().await;
    // The node's own prefix (not the default): node and worker meet on the
    // keys it names.
    let worker = RunningWorker::start(WorkerConfig {
        worker_id: "external-delivery-test".into(),
        sink: SinkConfig::webhook(&url, SECRET, Duration::from_secs(2)),
        concurrency: 2,
        ..common::worker_config(&db, redis, keys.clone())
    })
    .await
    .unwrap();

    let alice = node.register("alice").await;
    let bob = node.register("bob").await;
    let carol = other.register("carol").await;
    let room = node.create_room(&alice, "team", "private").await;
    for user in [&bob, &carol] {
        let (s, body) = node
            .call("POST", &format!("/rooms/{room}/members"), Some(&alice.token), Some(json!({"user_id": user.id})))
            .await;
        assert_eq!(s, 201, "{body}");
    }
    // Carol listens on the other node; bob has no connection anywhere.
    let mut carol_ws = other.connect(&carol).await;
    carol_ws.join(&room).await;
    let sent = node.post_message(&alice, &room, "are you there, @bob?").await;
    let live = carol_ws.recv_type("message").await;
    assert_eq!((&live["data"]["id"], &live["data"]["seq"]), (&sent["id"], &json!(1)));

    let mut stored = None;
    for _ in 0..100 {
        let (_, page) = node.call("GET", "/notifications", Some(&bob.token), None).await;
        if let Some(n) = page["notifications"].as_array().and_then(|a| a.first()) {
            stored = Some(n.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = stored.expect("the notification is in bob's history");
    assert_eq!(stored["type"], "new_message");
    assert_eq!(stored["data"]["message_id"], sent["id"]);

    let mut got = None;
    for _ in 0..100 {
        if let Some(body) = delivered.lock().unwrap().first().cloned() {
            got = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = got.expect("the worker delivered it to the webhook");
    assert_eq!(got["id"], stored["id"]);
    assert_eq!(got["user_id"], bob.id.as_str());
    assert_eq!(got["type"], "new_message");
    assert_eq!(delivered.lock().unwrap().len(), 1, "delivered once");
    let (_, alices) = node.call("GET", "/notifications", Some(&alice.token), None).await;
    assert_eq!(alices["notifications"], json!([]), "the sender is never notified");

    worker.shutdown().await;
    other.shutdown().await;
    node.shutdown().await;
}

//! Rate limits against real Redis and FerretDB: the REST limit shared by two
//! nodes, the login lockout, the per-connection frame limit and its abuse
//! rule, and the REST limiter failing open when Redis is gone.
//!
//! Redis is shared by every test run, so each test's users have fresh random
//! names (and therefore fresh ids and keys).

mod common;

use confab::backend::redis::RedisConfig;

use std::time::{Duration, Instant};

use common::{Ended, Node, User};
use confab::config::{Config, RateLimits};
use futures::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn name(prefix: &str) -> String {
    format!("{prefix}{:08x}", rand::random::<u32>())
}

fn with_limits(db: &str, limits: RateLimits) -> Config {
    Config { rate_limits: limits, ..common::config(db) }
}

/// GET with a bearer token; returns status, `Retry-After` and the JSON body.
async fn get(node: &Node, path: &str, token: &str) -> (u16, Option<String>, Value) {
    let resp = node.http.get(node.url(path)).bearer_auth(token).send().await.expect("request sent");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

async fn login(node: &Node, username: &str, password: &str) -> (u16, Option<String>, Value) {
    let body = json!({"username": username, "password": password});
    let resp = node.http.post(node.url("/login")).json(&body).send().await.expect("request sent");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, resp.json::<Value>().await.unwrap_or(Value::Null))
}

fn assert_rate_limited(status: u16, retry_after: Option<String>, body: &Value, max_secs: u64) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("retry in")), "{body}");
    let secs: u64 = retry_after.expect("a Retry-After header").parse().expect("Retry-After is whole seconds");
    assert!((1..=max_secs).contains(&secs), "Retry-After {secs} not in 1..={max_secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_limit_is_shared_by_all_nodes_and_per_user() {
    let db = common::unique_db();
    let limits = RateLimits { rest_per_minute: 5, ..common::config(&db).rate_limits };
    let a = Node::start(with_limits(&db, limits)).await;
    let b = Node::start(with_limits(&db, limits)).await;
    let alice = a.register(&name("alice")).await;
    let bob = b.register(&name("bob")).await;

    // Five requests a minute, spent at once, alternating between the nodes.
    for i in 0..5 {
        let node = if i % 2 == 0 { &a } else { &b };
        let (status, _, body) = get(node, "/rooms", &alice.token).await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let rejections = a.metric("confab_ratelimit_rejections_total{scope=\"rest\"}").await;
    for node in [&b, &a] {
        let (status, retry_after, body) = get(node, "/rooms", &alice.token).await;
        // One request per 12 s comes back.
        assert_rate_limited(status, retry_after, &body, 12);
    }
    assert!(a.metric("confab_ratelimit_rejections_total{scope=\"rest\"}").await >= rejections + 2.0);

    // Another user has a budget of their own.
    for node in [&a, &b] {
        let (status, _, body) = get(node, "/rooms", &bob.token).await;
        assert_eq!(status, 200, "{body}");
    }
    // Requests without a valid token are not counted against anyone, and
    // probes are never limited.
    let (status, _, body) = get(&a, "/rooms", "not-a-token").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    for path in ["/healthz", "/metrics"] {
        let resp = a.http.get(a.url(path)).bearer_auth(&alice.token).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_out_the_username_even_for_the_right_password() {
    let db = common::unique_db();
    let limits = RateLimits { login_max_failures: 3, ..common::config(&db).rate_limits };
    let n = Node::start(with_limits(&db, limits)).await;
    let alice = n.register(&name("alice")).await;
    let bob = n.register(&name("bob")).await;

    // Successful logins are not failures.
    for _ in 0..4 {
        assert_eq!(login(&n, &alice.username, "correct horse").await.0, 200);
    }
    for i in 0..3 {
        let (status, _, body) = login(&n, &alice.username, "wrong horse").await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "failure {i}");
    }
    let (status, retry_after, body) = login(&n, &alice.username, "wrong horse").await;
    assert_rate_limited(status, retry_after, &body, 900);
    // Locked out whatever the password, and by email as well as by name,
    // in any letter case.
    let (status, retry_after, body) = login(&n, &alice.username.to_uppercase(), "correct horse").await;
    assert_rate_limited(status, retry_after, &body, 900);
    let (status, retry_after, body) = login(&n, &format!("{}@example.com", alice.username), "correct horse").await;
    assert_rate_limited(status, retry_after, &body, 900);
    // A token issued before still works: the lockout is about logging in.
    assert_eq!(get(&n, "/rooms", &alice.token).await.0, 200);

    // Other names are unaffected.
    assert_eq!(login(&n, &bob.username, "wrong horse").await.0, 401);
    assert_eq!(login(&n, &bob.username, "correct horse").await.0, 200);
    // A name nobody has locks out the same way, revealing nothing.
    let nobody = name("nobody");
    for _ in 0..3 {
        assert_eq!(login(&n, &nobody, "wrong horse").await.0, 401);
    }
    assert_eq!(login(&n, &nobody, "wrong horse").await.0, 429);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_frames_over_the_rate_are_refused_and_sustained_abuse_closes_with_1008() {
    let db = common::unique_db();
    let limits = RateLimits {
        socket_per_sec: 5,
        socket_burst: 10,
        socket_max_rejections: 30,
        ..common::config(&db).rate_limits
    };
    let n = Node::start(with_limits(&db, limits)).await;
    let alice: User = n.register(&name("alice")).await;
    let mut c = n.connect(&alice).await;

    // A burst of 25: the first 10 pass, most of the rest are refused, each
    // refusal carrying its frame's ref.
    for i in 0..25 {
        c.send(json!({"type": "ping", "ref": format!("p{i}")})).await;
    }
    let mut refused = 0;
    for i in 0..25 {
        let reply = c.recv().await;
        assert_eq!(reply["ref"], format!("p{i}"), "replies come in order: {reply}");
        match reply["type"].as_str() {
            // Beyond the burst a frame passes only if the rate has refilled a slot.
            Some("pong") => {}
            Some("error") => {
                assert!(i >= 10, "frame {i} is within the burst: {reply}");
                assert_eq!(reply["data"]["code"], "rate_limited", "{reply}");
                refused += 1;
            }
            _ => panic!("unexpected reply {reply}"),
        }
    }
    // The rate refills a slot every 200 ms: allow for a slow machine.
    assert!(refused >= 10, "only {refused} of 15 frames over the burst were refused");

    // Refusal is per frame, not a ban: after a pause the rate allows more.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");

    // Keep flooding: more than 30 refusals within 10 s closes the connection.
    for i in 0..100 {
        let frame = json!({"type": "ping", "ref": format!("f{i}")}).to_string();
        if c.ws.send(WsMessage::Text(frame)).await.is_err() {
            break;
        }
    }
    assert_eq!(c.ended().await, Ended::Close(Some(1008)));
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fail_open_when_redis_is_unreachable() {
    let mut redis = common::OwnRedis::start();
    let db = common::unique_db();
    let limits = RateLimits { rest_per_minute: 2, login_max_failures: 1, ..common::config(&db).rate_limits };
    let n = Node::start(Config { redis: RedisConfig::new(redis.url()), ..with_limits(&db, limits) }).await;
    let alice = n.register(&name("alice")).await;
    let rest_before = n.metric("confab_ratelimit_fail_open_total{scope=\"rest\"}").await;
    let login_before = n.metric("confab_ratelimit_fail_open_total{scope=\"login\"}").await;

    redis.stop();
    // Far over the limit of 2 a minute, and every request goes through
    // without waiting on the dead Redis for long.
    for i in 0..5 {
        let start = Instant::now();
        let (status, _, body) = get(&n, "/rooms", &alice.token).await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert!(start.elapsed() < Duration::from_secs(1), "request {i} took {:?}", start.elapsed());
    }
    // Logins too, past the failure limit of 1.
    for _ in 0..2 {
        assert_eq!(login(&n, &alice.username, "wrong horse").await.0, 401);
    }
    // The right password passes the (open) limit, but a session cannot be
    // opened without Redis: 503, try again.
    let (status, _, body) = login(&n, &alice.username, "correct horse").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");

    assert!(n.metric("confab_ratelimit_fail_open_total{scope=\"rest\"}").await >= rest_before + 5.0);
    assert!(n.metric("confab_ratelimit_fail_open_total{scope=\"login\"}").await >= login_before + 3.0);
    // Shut down with Redis back, as the other outage tests do: a node that
    // stops while Redis is still down may leave a client's reconnect task
    // running for a few seconds, which the harness counts as left over.
    redis.resume();
    n.shutdown().await;
}

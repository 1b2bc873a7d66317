//! The REST contract (docs/api.md) against a real node, Redis and
//! MongoDB-compatible server: every success and every error case.

mod common;

use std::time::Duration;

use common::{assert_error, Cluster, Node};
use serde_json::{json, Value};

async fn node() -> Node {
    Node::start(common::config(&common::unique_db())).await
}

#[tokio::test]
async fn register_and_login() {
    let n = node().await;
    let (status, body) = n
        .call(
            "POST",
            "/register",
            None,
            Some(json!({"username": "Alice", "email": "Alice@Example.com", "password": "password1"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["username"], "Alice");
    assert_eq!(body["email"], "alice@example.com");
    assert_eq!(body["id"].as_str().unwrap().len(), 24);
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(body.get("password_hash").is_none() && body.get("password").is_none());

    // Username or email, case-insensitively.
    for login in ["Alice", "alice", "alice@example.com"] {
        let (status, body) =
            n.call("POST", "/login", None, Some(json!({"username": login, "password": "password1"}))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 900);
        assert_eq!(body["refresh_expires_in"], 2_592_000);
        assert_eq!(body["refresh_token"].as_str().unwrap().split('.').count(), 3);
        assert_eq!(body["session_id"].as_str().unwrap().len(), 24);
        assert!(body["access_token"].as_str().unwrap().len() > 20);
    }

    // Wrong password and unknown user are indistinguishable.
    let (s1, b1) = n.call("POST", "/login", None, Some(json!({"username": "alice", "password": "wrong-pass"}))).await;
    let (s2, b2) = n.call("POST", "/login", None, Some(json!({"username": "nobody", "password": "wrong-pass"}))).await;
    assert_error(s1, &b1, 401, "unauthorized");
    assert_eq!((s1, &b1), (s2, &b2));
    n.shutdown().await;
}

#[tokio::test]
async fn registration_conflicts_and_validation() {
    let n = node().await;
    n.register("bob").await;
    let dup_name = json!({"username": "BOB", "email": "other@example.com", "password": "password1"});
    let (s, b) = n.call("POST", "/register", None, Some(dup_name)).await;
    assert_error(s, &b, 409, "username_taken");
    let dup_mail = json!({"username": "bobby", "email": "BOB@example.com", "password": "password1"});
    let (s, b) = n.call("POST", "/register", None, Some(dup_mail)).await;
    assert_error(s, &b, 409, "email_taken");

    let cases = [
        (json!({"username": "ab", "email": "a@example.com", "password": "password1"}), "username"),
        (json!({"username": "a".repeat(33), "email": "a@example.com", "password": "password1"}), "username"),
        (json!({"username": "bad name", "email": "a@example.com", "password": "password1"}), "username"),
        (json!({"username": "carol", "email": "not-an-email", "password": "password1"}), "email"),
        (json!({"username": "carol", "email": "c@example.com", "password": "short"}), "password"),
        (json!({"username": "carol", "email": "c@example.com"}), "password"),
        (json!({"username": 5, "email": "c@example.com", "password": "password1"}), "username"),
    ];
    for (body, field) in cases {
        let (s, b) = n.call("POST", "/register", None, Some(body.clone())).await;
        assert_error(s, &b, 422, "validation_failed");
        assert!(b["error"]["message"].as_str().unwrap().contains(field), "{body} -> {b}");
    }
    // Not JSON at all is a 400.
    let resp = n.http.post(n.url("/register")).body("{not json").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["error"]["code"], "bad_request");
    // A body over the limit (64 KiB) is a 413, in the same shape.
    let big = json!({"username": "x".repeat(70_000), "email": "a@example.com", "password": "password1"});
    let (s, b) = n.call("POST", "/register", None, Some(big)).await;
    assert_error(s, &b, 413, "payload_too_large");
    n.shutdown().await;
}

#[tokio::test]
async fn endpoints_need_a_valid_token() {
    let n = node().await;
    for (method, path) in [("GET", "/rooms"), ("POST", "/rooms"), ("GET", "/messages?room_id=x"), ("POST", "/messages")]
    {
        let (s, b) = n.call(method, path, None, Some(json!({}))).await;
        assert_error(s, &b, 401, "unauthorized");
        let (s, b) = n.call(method, path, Some("not.a.token"), Some(json!({}))).await;
        assert_error(s, &b, 401, "unauthorized");
    }
    // A token signed with another secret is refused too.
    let other = confab::auth::Tokens::new(&"z".repeat(40), std::time::Duration::from_secs(60));
    let forged = other.issue(bson::oid::ObjectId::new(), "mallory", None).unwrap();
    let (s, b) = n.call("GET", "/rooms", Some(&forged), None).await;
    assert_error(s, &b, 401, "unauthorized");
    let resp = n.http.get(n.url("/ws")).send().await.unwrap();
    assert_eq!(resp.status(), 401, "no upgrade without a token");
    n.shutdown().await;
}

#[tokio::test]
async fn a_rotated_secret_logs_no_one_out_across_nodes() {
    let db = common::unique_db();
    let old_secret = common::SECRET.to_string();
    let new_secret = "rotated-secret-0123456789abcdef0123456789abcdef".to_string();
    // Node a: not rotated yet. Node b: signs with the new secret, still
    // accepts the old one.
    let a = Node::start(common::config(&db)).await;
    let mut c = common::config(&db);
    c.jwt_secret = new_secret.clone();
    c.jwt_previous_secrets = confab::config::Secrets(vec![old_secret.clone()]);
    let b = Node::start(c).await;
    let alice = a.register("alice").await;
    let (s, _) = b.call("GET", "/rooms", Some(&alice.token), None).await;
    assert_eq!(s, 200, "a token of the old secret on the rotated node");
    let (s, body) =
        b.call("POST", "/login", None, Some(json!({"username": "alice", "password": "correct horse"}))).await;
    assert_eq!(s, 200, "{body}");
    let fresh = body["access_token"].as_str().unwrap();
    let (s, _) = b.call("GET", "/rooms", Some(fresh), None).await;
    assert_eq!(s, 200);
    let (s, body) = a.call("GET", "/rooms", Some(fresh), None).await;
    assert_error(s, &body, 401, "unauthorized");
    // Once the old secret is dropped, its tokens stop working.
    let mut c = common::config(&db);
    c.jwt_secret = new_secret;
    let dropped = Node::start(c).await;
    let (s, body) = dropped.call("GET", "/rooms", Some(&alice.token), None).await;
    assert_error(s, &body, 401, "unauthorized");
    let (s, _) = dropped.call("GET", "/rooms", Some(fresh), None).await;
    assert_eq!(s, 200);
    for n in [a, b, dropped] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn rooms_create_list_join() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let (s, room) =
        n.call("POST", "/rooms", Some(&alice.token), Some(json!({"name": "general", "type": "public"}))).await;
    assert_eq!(s, 201, "{room}");
    assert_eq!(room["name"], "general");
    assert_eq!(room["type"], "public");
    assert_eq!(room["created_by"], alice.id.as_str());
    let public = room["id"].as_str().unwrap().to_string();
    let private = n.create_room(&alice, "secret", "private").await;

    let (s, b) = n.call("POST", "/rooms", Some(&bob.token), Some(json!({"name": "general", "type": "private"}))).await;
    assert_error(s, &b, 409, "room_name_taken");
    for bad in [
        json!({"name": "", "type": "public"}),
        json!({"name": "x", "type": "secret"}),
        json!({"name": "x".repeat(65), "type": "public"}),
        json!({"type": "public"}),
    ] {
        let (s, b) = n.call("POST", "/rooms", Some(&bob.token), Some(bad)).await;
        assert_error(s, &b, 422, "validation_failed");
    }

    let names = |b: &Value| -> Vec<String> {
        b["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_string()).collect()
    };
    let (_, b) = n.call("GET", "/rooms", Some(&alice.token), None).await;
    assert_eq!(names(&b), ["secret", "general"], "most recently active first");
    let (_, b) = n.call("GET", "/rooms", Some(&bob.token), None).await;
    assert_eq!(names(&b), ["general"], "private rooms are visible to members only");

    let (s, b) = n.call("POST", &format!("/rooms/{public}/join"), Some(&bob.token), None).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((b["role"].as_str(), b["user_id"].as_str()), (Some("member"), Some(bob.id.as_str())));
    let (s, _) = n.call("POST", &format!("/rooms/{public}/join/"), Some(&bob.token), None).await;
    assert_eq!(s, 200, "joining twice is fine, trailing slash too");
    let (s, b) = n.call("POST", &format!("/rooms/{private}/join"), Some(&bob.token), None).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = n.call("POST", "/rooms/not-an-id/join", Some(&bob.token), None).await;
    assert_error(s, &b, 400, "bad_request");
    let missing = bson::oid::ObjectId::new().to_hex();
    let (s, b) = n.call("POST", &format!("/rooms/{missing}/join"), Some(&bob.token), None).await;
    assert_error(s, &b, 404, "not_found");
    n.shutdown().await;
}

#[tokio::test]
async fn messages_send_and_errors() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, "general", "public").await;
    let private = n.create_room(&alice, "secret", "private").await;

    let (s, m) =
        n.call("POST", "/messages/", Some(&alice.token), Some(json!({"room_id": room, "content": "héllo"}))).await;
    assert_eq!(s, 201, "{m}");
    assert_eq!((m["room_id"].as_str(), m["sender_id"].as_str()), (Some(room.as_str()), Some(alice.id.as_str())));
    assert_eq!((m["content"].as_str(), m["seq"].as_i64()), (Some("héllo"), Some(1)));
    assert!(m["client_msg_id"].is_null());
    let ts = m["timestamp"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'), "{ts}");

    let send = |token: String, body: Value| {
        let n = &n;
        async move { n.call("POST", "/messages", Some(&token), Some(body)).await }
    };
    let (s, b) = send(bob.token.clone(), json!({"room_id": room, "content": "not a member"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = send(bob.token.clone(), json!({"room_id": private, "content": "x"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = send(alice.token.clone(), json!({"room_id": room, "content": ""})).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, b) = send(alice.token.clone(), json!({"room_id": room, "content": "x".repeat(4001)})).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, _) = send(alice.token.clone(), json!({"room_id": room, "content": "é".repeat(4000)})).await;
    assert_eq!(s, 201, "4000 characters are allowed, whatever their bytes");
    let (s, b) = send(alice.token.clone(), json!({"room_id": "nope", "content": "x"})).await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) =
        send(alice.token.clone(), json!({"room_id": bson::oid::ObjectId::new().to_hex(), "content": "x"})).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = send(alice.token.clone(), json!({"content": "x"})).await;
    assert_error(s, &b, 422, "validation_failed");
    n.shutdown().await;
}

#[tokio::test]
async fn client_msg_id_makes_retries_idempotent() {
    let n = node().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, "general", "public").await;
    let other = n.create_room(&alice, "other", "public").await;
    let body = json!({"room_id": room, "content": "once", "client_msg_id": "c-1"});
    let (s1, first) = n.call("POST", "/messages", Some(&alice.token), Some(body.clone())).await;
    let (s2, again) = n.call("POST", "/messages", Some(&alice.token), Some(body)).await;
    assert_eq!((s1, s2), (201, 200));
    assert_eq!(first, again, "the retry returns the original message");
    assert_eq!(first["client_msg_id"], "c-1");

    // Concurrent retries still store one message.
    let body = json!({"room_id": room, "content": "race", "client_msg_id": "c-2"});
    let calls = (0..5).map(|_| n.call("POST", "/messages", Some(&alice.token), Some(body.clone())));
    let results = futures::future::join_all(calls).await;
    let ids: std::collections::HashSet<String> =
        results.iter().map(|(_, b)| b["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1, "{results:?}");
    assert_eq!(results.iter().filter(|(s, _)| *s == 201).count(), 1);

    let (_, page) = n.call("GET", &format!("/messages?room_id={room}"), Some(&alice.token), None).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);

    let reuse = json!({"room_id": other, "content": "elsewhere", "client_msg_id": "c-1"});
    let (s, b) = n.call("POST", "/messages", Some(&alice.token), Some(reuse)).await;
    assert_error(s, &b, 409, "client_msg_id_reused");
    n.shutdown().await;
}

#[tokio::test]
async fn history_pages_with_cursors_and_time_bounds() {
    let c = Cluster::start(1).await;
    let n = &c.nodes[0];
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, "general", "public").await;
    let mut sent = Vec::new();
    for i in 0..7 {
        sent.push(n.post_message(&alice, &room, &format!("m{i}")).await);
        tokio::time::sleep(std::time::Duration::from_millis(15)).await;
    }
    let ids: Vec<&str> = sent.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let contents = |b: &Value| -> Vec<String> {
        b["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_string()).collect()
    };
    let room_ref = &room;
    let token = &alice.token;
    let get =
        |q: String| async move { n.call("GET", &format!("/messages?room_id={room_ref}{q}"), Some(token), None).await };

    let (s, b) = get(String::new()).await;
    assert_eq!(s, 200);
    assert_eq!(contents(&b), ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]);
    assert_eq!(b["has_more"], false);
    let seqs: Vec<i64> = b["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);

    // Newest page first, then walk back with `before`.
    let (_, b) = get("&limit=3".into()).await;
    assert_eq!((contents(&b), b["has_more"].as_bool()), (vec!["m4".into(), "m5".into(), "m6".into()], Some(true)));
    let (_, b) = get(format!("&limit=3&before={}", ids[4])).await;
    assert_eq!((contents(&b), b["has_more"].as_bool()), (vec!["m1".into(), "m2".into(), "m3".into()], Some(true)));
    let (_, b) = get(format!("&limit=3&before={}", ids[1])).await;
    assert_eq!((contents(&b), b["has_more"].as_bool()), (vec!["m0".into()], Some(false)));
    // Forward with `after`.
    let (_, b) = get(format!("&limit=2&after={}", ids[2])).await;
    assert_eq!((contents(&b), b["has_more"].as_bool()), (vec!["m3".into(), "m4".into()], Some(true)));
    let (_, b) = get(format!("&after={}", ids[6])).await;
    assert_eq!((contents(&b).len(), b["has_more"].as_bool()), (0, Some(false)));
    // Both cursors: the window between them.
    let (_, b) = get(format!("&after={}&before={}", ids[1], ids[4])).await;
    assert_eq!(contents(&b), ["m2", "m3"]);

    // Time bounds, inclusive.
    let t = |i: usize| sent[i]["timestamp"].as_str().unwrap().replace('+', "%2B");
    let (_, b) = get(format!("&since={}", t(5))).await;
    assert_eq!(contents(&b), ["m5", "m6"]);
    let (_, b) = get(format!("&until={}", t(1))).await;
    assert_eq!(contents(&b), ["m0", "m1"]);
    let (_, b) = get(format!("&since={}&until={}&limit=2", t(2), t(5))).await;
    assert_eq!((contents(&b), b["has_more"].as_bool()), (vec!["m2".into(), "m3".into()], Some(true)));

    // Errors.
    let (s, b) = get("&limit=0".into()).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, b) = get("&limit=201".into()).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, b) = get("&limit=abc".into()).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, b) = get("&before=zzz".into()).await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = get(format!("&before={}", bson::oid::ObjectId::new())).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = get("&since=yesterday".into()).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, b) = get(format!("&since={}&until={}", t(5), t(1))).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, b) = n.call("GET", "/messages", Some(&alice.token), None).await;
    assert_error(s, &b, 422, "validation_failed");
    let (s, b) = n.call("GET", "/messages?room_id=bad", Some(&alice.token), None).await;
    assert_error(s, &b, 400, "bad_request");

    // A cursor from another room is not found in this one.
    let other = n.create_room(&alice, "other", "public").await;
    let foreign = n.post_message(&alice, &other, "elsewhere").await;
    let (s, b) = get(format!("&before={}", foreign["id"].as_str().unwrap())).await;
    assert_error(s, &b, 404, "not_found");

    // Public history is readable by any signed-in user; private is not.
    let (s, _) = n.call("GET", &format!("/messages?room_id={room}"), Some(&bob.token), None).await;
    assert_eq!(s, 200);
    let private = n.create_room(&alice, "secret", "private").await;
    let (s, b) = n.call("GET", &format!("/messages?room_id={private}"), Some(&bob.token), None).await;
    assert_error(s, &b, 403, "forbidden");
    c.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let n = node().await;
    let (s, b) = n.call("GET", "/healthz", None, None).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("ok")));
    let (s, b) = n.call("GET", "/readyz/", None, None).await;
    assert_eq!((s, b["redis"].as_str(), b["mongo"].as_str()), (200, Some("ok"), Some("ok")));
    let (s, b) = n.call("GET", "/no/such/thing", None, None).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = n.call("DELETE", "/register", None, None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    let metrics = n.http.get(n.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("confab_http_requests_total"), "{metrics}");
    // Every answer, success or refusal, is neither sniffed nor cached.
    for path in ["/healthz", "/rooms", "/no/such/thing"] {
        let resp = n.http.get(n.url(path)).send().await.unwrap();
        let header = |h: &str| resp.headers().get(h).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
        assert_eq!(header("cache-control").as_deref(), Some("no-store"), "{path}");
    }
    n.shutdown().await;
}

#[tokio::test]
async fn unavailable_backend_gives_503() {
    // A node whose MongoDB does not answer: requests fail with 503, not 500.
    let mut cfg = common::config(&common::unique_db());
    cfg.mongo.mongo_url = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300&connectTimeoutMS=300".into();
    let running = confab::node::RunningNode::start(cfg).await.unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://{}", running.addr);
    let body = json!({"username": "alice", "email": "a@example.com", "password": "password1"});
    let (s, b) = common::call(&http, &format!("{base}/register"), "POST", None, Some(body)).await;
    assert_error(s, &b, 503, "unavailable");
    let (s, b) = common::call(&http, &format!("{base}/readyz"), "GET", None, None).await;
    assert_eq!((s, b["mongo"].as_str(), b["redis"].as_str()), (503, Some("unavailable"), Some("ok")));
    running.shutdown().await;
}

#[tokio::test]
async fn a_node_restarts_against_its_existing_database() {
    let db = common::unique_db();
    let first = Node::start(common::config(&db)).await;
    let alice = first.register("alice").await;
    first.shutdown().await;
    // Index creation runs again on existing indexes; the node must get ready.
    let again = Node::start(common::config(&db)).await;
    let (s, b) = again.call("GET", "/rooms", Some(&alice.token), None).await;
    assert_eq!((s, b["rooms"].as_array().map(Vec::len)), (200, Some(0)));
    again.shutdown().await;
}

/// Reads from a raw connection until the node closes it; how long it took.
async fn closed_within(tcp: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(start + limit), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// A connection reached without the proxy in front cannot hold the node:
/// one that sends nothing, or stays idle after a request, is closed after
/// the idle timeout; one that trickles a request's head is closed after the
/// header timeout, however often it sends a byte. Upgraded sockets are the
/// WebSocket edge's and stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_and_slow_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = common::config(&common::unique_db());
    cfg.idle_timeout = Duration::from_secs(4);
    cfg.header_timeout = Duration::from_secs(1);
    let n = Node::start(cfg).await;

    let mut silent = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(10)).await.expect("a silent connection is closed");
    assert!(took >= Duration::from_millis(3500), "not before the idle timeout: {took:?}");

    let mut kept_alive = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    kept_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let took = closed_within(&mut kept_alive, Duration::from_secs(10)).await.expect("an idle keep-alive is closed");
    assert!(took >= Duration::from_millis(3500), "answered, then kept until the idle timeout: {took:?}");

    // A byte every 100 ms: never idle, and the head would take 7 s.
    let (mut from_node, mut to_node) = tokio::net::TcpStream::connect(n.addr).await.unwrap().into_split();
    let sender = tokio::spawn(async move {
        for byte in [b"GET /healthz HTTP/1.1\r\nX-Slow: ".as_slice(), &[b'a'; 50]].concat() {
            if to_node.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let took = closed_within(&mut from_node, Duration::from_secs(10)).await.expect("a trickled head is cut off");
    assert!(took < Duration::from_millis(2500), "cut off at the header timeout, not kept alive: {took:?}");
    sender.abort();

    let alice = n.register("alice").await;
    let mut ws = n.connect(&alice).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(ws.request(json!({"type": "ping"})).await["type"], "pong", "an upgraded socket outlives both");
    n.shutdown().await;
}

/// Names that pass for someone else are refused: reserved usernames, room
/// names differing only in case from an existing one, and names hiding
/// direction overrides or zero-width characters. Input quoted back in an
/// error is escaped and cut short.
#[tokio::test]
async fn names_cannot_impersonate_and_errors_do_not_echo_raw_input() {
    let n = node().await;
    for reserved in ["system", "Admin", "root", "confab"] {
        let body = json!({"username": reserved, "email": format!("{reserved}@example.com"), "password": "password1"});
        let (s, b) = n.call("POST", "/register", None, Some(body)).await;
        assert_error(s, &b, 422, "validation_failed");
        assert_eq!(b["error"]["message"], "username: is reserved", "{b}");
    }
    let alice = n.register("alice").await;
    n.create_room(&alice, "General", "public").await;
    for (name, code) in [
        ("general", 409),
        ("GENERAL", 409),
        ("gen\u{202E}eral", 422),
        ("gen\u{200B}eral", 422),
        ("gen\u{2066}eral", 422),
    ] {
        let (s, b) = n.call("POST", "/rooms", Some(&alice.token), Some(json!({"name": name, "type": "public"}))).await;
        assert_eq!(s, code, "{name:?}: {b}");
    }
    let long = format!("<script>\n{}", "x".repeat(5000));
    let (s, b) = n.call("GET", &format!("/users/{}", urlencoding(&long)), Some(&alice.token), None).await;
    assert_error(s, &b, 400, "bad_request");
    let shown = b["error"]["message"].as_str().unwrap();
    assert!(shown.contains("\"<script>\\n") && shown.len() < 120 && !shown.contains('\n'), "{shown}");
    n.shutdown().await;
}

fn urlencoding(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Registrations and logins are limited per client address, across nodes:
/// each costs a password hash. Behind a trusted proxy the address is the
/// one it forwards; other clients keep their own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_logins_are_limited_per_client_address() {
    let db = common::unique_db();
    let mut cfg = common::config(&db);
    cfg.rate_limits.auth_per_minute = 4;
    let (a, b) = (Node::start(cfg.clone()).await, Node::start(cfg).await);
    let register = |node: &Node, name: &str, from: &str| {
        let body = json!({"username": name, "email": format!("{name}@example.com"), "password": "password1"});
        node.http.post(node.url("/register")).header("X-Forwarded-For", from).json(&body).send()
    };
    let from = "203.0.113.7";
    for (i, node) in [&a, &b, &a, &b].into_iter().enumerate() {
        assert_eq!(register(node, &format!("user{i}"), from).await.unwrap().status(), 201);
    }
    let refused = register(&a, "user9", from).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let login = json!({"username": "user0", "password": "password1"});
    let resp = b.http.post(b.url("/login")).header("X-Forwarded-For", from).json(&login).send().await.unwrap();
    assert_eq!(resp.status(), 429, "logins count against the same budget, on every node");
    // Another client, through the same proxy, is not affected.
    assert_eq!(register(&b, "other", "198.51.100.2").await.unwrap().status(), 201);
    a.shutdown().await;
    b.shutdown().await;
}

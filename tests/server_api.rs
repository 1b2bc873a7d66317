//! The server API for backends, against real Redis and FerretDB: API keys
//! made and revoked with `confab apikey`, the per-key rate limit, and
//! notify, broadcast, history and system messages across two nodes.

mod common;

use std::time::Duration;

use common::{Client, Cluster, Node, User};
use confab::config::RateLimits;
use serde_json::{json, Value};

/// Runs `confab apikey ...` against the test's database; (exit code, stdout, stderr).
fn apikey(db: &str, args: &[&str]) -> (i32, String, String) {
    common::confab_command(db, &[&["apikey"], args].concat())
}

/// A fresh key, made by the command line as an operator would.
fn new_key(db: &str, name: &str) -> String {
    let (code, stdout, stderr) = apikey(db, &["create", "--name", name]);
    assert_eq!(code, 0, "{stderr}");
    let key = stdout.trim().to_string();
    assert!(key.starts_with("ck_") && stdout.lines().count() == 1, "one line, the key: {stdout}");
    key
}

/// Calls the server API with `Authorization: ApiKey <key>` (or the raw
/// header given); returns (status, Retry-After, body).
async fn api(
    node: &Node,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<u64>, Value) {
    let mut req = node.http.request(method.parse().unwrap(), node.url(path));
    if let Some(auth) = auth {
        let header = if auth.starts_with("ck_") { format!("ApiKey {auth}") } else { auth.to_string() };
        req = req.header("authorization", header);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let text = resp.text().await.unwrap_or_default();
    (status, retry, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn note(title: &str) -> Value {
    json!({"type": "announcement", "title": title, "message": "details inside", "data": {"url": "/news/1", "n": 1}})
}

async fn join(node: &Node, user: &User, room: &str) {
    let (status, body) = node.call("POST", &format!("/rooms/{room}/join"), Some(&user.token), None).await;
    assert_eq!(status, 200, "{body}");
}

async fn history(node: &Node, user: &User) -> Vec<Value> {
    let (status, body) = node.call("GET", "/notifications", Some(&user.token), None).await;
    assert_eq!(status, 200, "{body}");
    body["notifications"].as_array().unwrap().clone()
}

async fn notification(c: &mut Client) -> Value {
    c.recv_type("notification").await["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_and_revocation_takes_effect_everywhere() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let bob = a.register("bob").await;
    let key = new_key(&cluster.db, "billing");
    let other = new_key(&cluster.db, "crm");
    let path = format!("/api/notifications/{}", bob.id);

    assert_eq!(api(a, "GET", &path, Some(&key), None).await.0, 200);
    assert_eq!(api(b, "GET", &path, Some(&key), None).await.0, 200, "any node knows the key");
    let wrong_secret = format!("{}{}", &key[..key.len() - 1], if key.ends_with('0') { '1' } else { '0' });
    let bearer = format!("Bearer {}", bob.token);
    for auth in [None, Some("ApiKey"), Some("ApiKey ck_nope"), Some(wrong_secret.as_str()), Some(bearer.as_str())] {
        let (status, _, body) = api(a, "GET", &path, auth, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{auth:?}: {body}");
    }
    // A user's token is no key, and a key is no user's token.
    let (status, _, _) = api(a, "GET", "/notifications", Some(&key), None).await;
    assert_eq!(status, 401);

    // Revoked by id, refused at once on both nodes; the other key still works.
    let id = &key[3..27];
    let (code, stdout, stderr) = apikey(&cluster.db, &["revoke", id]);
    assert_eq!((code, stdout.trim()), (0, format!("revoked {id}").as_str()), "{stderr}");
    assert_eq!(api(a, "GET", &path, Some(&key), None).await.0, 401);
    assert_eq!(api(b, "GET", &path, Some(&key), None).await.0, 401);
    assert_eq!(api(b, "GET", &path, Some(&other), None).await.0, 200);
    let (code, stdout, _) = apikey(&cluster.db, &["revoke", &key]);
    assert_eq!((code, stdout.trim()), (0, format!("{id} was already revoked").as_str()));
    let (code, _, stderr) = apikey(&cluster.db, &["revoke", "507f1f77bcf86cd799439011"]);
    assert!(code == 2 && stderr.starts_with("confab: no API key"), "{stderr}");

    // The list shows both keys, never a secret.
    let (code, stdout, _) = apikey(&cluster.db, &["list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(id) && lines[0].contains("\trevoked ") && lines[0].ends_with("\tbilling"), "{stdout}");
    assert!(lines[1].contains("\tactive\t") && lines[1].ends_with("\tcrm"), "{stdout}");
    assert!(!stdout.contains(&key[28..]) && !stdout.contains(&other[28..]), "no secrets: {stdout}");
    let (code, _, stderr) = apikey(&cluster.db, &["create", "--name", ""]);
    assert!(code == 2 && stderr.contains("name"), "{stderr}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_rate_limit() {
    let db = common::unique_db();
    let limits = RateLimits { api_per_minute: 5, ..common::config(&db).rate_limits };
    let n = Node::start(confab::config::Config { rate_limits: limits, ..common::config(&db) }).await;
    let bob = n.register("bob").await;
    let (key, other) = (new_key(&db, "hammer"), new_key(&db, "gentle"));
    let path = format!("/api/notifications/{}", bob.id);
    for i in 0..5 {
        assert_eq!(api(&n, "GET", &path, Some(&key), None).await.0, 200, "request {i} is within the minute's budget");
    }
    let (status, retry, body) = api(&n, "GET", &path, Some(&key), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    let retry = retry.expect("Retry-After");
    assert!((1..=12).contains(&retry), "one request comes back every 12 s: {retry}");
    // Another key is not affected, nor is the user's own REST budget.
    assert_eq!(api(&n, "GET", &path, Some(&other), None).await.0, 200);
    assert_eq!(n.call("GET", "/notifications", Some(&bob.token), None).await.0, 200);
    // A bad key is refused as such, not counted as the limited key.
    assert_eq!(api(&n, "GET", &path, Some("ApiKey ck_nope"), None).await.0, 401);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_reaches_connected_users_on_any_node_and_stores_for_all() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let key = new_key(&cluster.db, "backend");
    let bob = b.register("bob").await;
    let carol = a.register("carol").await;
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, "lobby", "public").await;
    join(b, &bob, &room).await;
    // Bob is on node B, watching a room: server notifications reach every connection.
    let mut bob_socket = b.connect(&bob).await;
    bob_socket.join(&room).await;

    let unknown = "507f1f77bcf86cd799439011";
    let body = json!({"user_ids": [bob.id, carol.id, bob.id, unknown], "notification": note("Maintenance tonight")});
    let (status, _, outcome) = api(a, "POST", "/api/notify", Some(&key), Some(body)).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(
        outcome,
        json!({"notified": 2, "delivered_realtime": 1, "queued_external": 1, "unknown_user_ids": [unknown]})
    );
    let live = notification(&mut bob_socket).await;
    assert_eq!((&live["type"], &live["title"]), (&json!("announcement"), &json!("Maintenance tonight")));
    assert_eq!((&live["message"], &live["data"]), (&json!("details inside"), &json!({"url": "/news/1", "n": 1})));
    if let Some(again) = bob_socket.try_recv(Duration::from_millis(500)).await {
        assert_ne!(again["type"], "notification", "a duplicate id notifies once: {again}");
    }

    // Stored for both, before the call returned.
    let bobs = history(b, &bob).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(
        (&bobs[0]["id"], &bobs[0]["delivered_realtime"], &bobs[0]["external"]),
        (&live["id"], &json!(true), &Value::Null)
    );
    let carols = history(a, &carol).await;
    assert_eq!(carols.len(), 1);
    assert_eq!((&carols[0]["delivered_realtime"], &carols[0]["external"]), (&json!(false), &json!("pending")));
    assert!(common::external_queue(&cluster.db).await.contains(&carols[0]["id"].as_str().unwrap().to_string()));
    // The backend reads a user's history too.
    let (status, _, page) = api(a, "GET", &format!("/api/notifications/{}?limit=1", carol.id), Some(&key), None).await;
    assert_eq!((status, &page["notifications"][0]["id"], &page["has_more"]), (200, &carols[0]["id"], &json!(false)));

    // Refusals: too many ids, a bad id, a bad notification, an unknown field.
    let many: Vec<String> = (0..10_001).map(|_| bson::oid::ObjectId::new().to_hex()).collect();
    let cases = [
        (json!({"user_ids": many, "notification": note("x")}), 422),
        (json!({"user_ids": [], "notification": note("x")}), 422),
        (json!({"user_ids": ["nope"], "notification": note("x")}), 400),
        (json!({"user_ids": [bob.id], "notification": {"type": "", "title": "x"}}), 422),
        (json!({"user_ids": [bob.id], "notification": {"type": "t", "title": "x".repeat(201)}}), 422),
        (json!({"user_ids": [bob.id], "notification": {"type": "t", "title": "x", "data": "no"}}), 422),
        (
            json!({"user_ids": [bob.id], "notification": {"type": "t", "title": "x", "data": {"k": "v".repeat(17_000)}}}),
            422,
        ),
        (json!({"user_ids": [bob.id], "notification": note("x"), "extra": 1}), 422),
    ];
    for (body, status) in cases {
        let (got, _, reply) = api(a, "POST", "/api/notify", Some(&key), Some(body)).await;
        assert_eq!(got, status, "{reply}");
    }
    let exactly: Vec<String> = (0..10_000).map(|_| bson::oid::ObjectId::new().to_hex()).collect();
    let (status, _, reply) =
        api(a, "POST", "/api/notify", Some(&key), Some(json!({"user_ids": exactly, "notification": note("x")}))).await;
    assert_eq!(
        (status, reply["unknown_user_ids"].as_array().map(Vec::len)),
        (200, Some(10_000)),
        "the limit itself is fine"
    );
    assert_eq!(history(b, &bob).await.len(), 1, "refused calls notified nobody");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_member_of_a_room() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let key = new_key(&cluster.db, "backend");
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = a.register("carol").await;
    let dave = a.register("dave").await;
    let room = a.create_room(&alice, "staff", "private").await;
    for user in [&bob, &carol] {
        let (status, body) = a
            .call("POST", &format!("/rooms/{room}/members"), Some(&alice.token), Some(json!({"user_id": user.id})))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut alice_socket = a.connect(&alice).await;
    alice_socket.request(json!({"type": "ping"})).await;
    let mut bob_socket = b.connect(&bob).await;
    bob_socket.request(json!({"type": "ping"})).await;
    let mut dave_socket = b.connect(&dave).await;
    dave_socket.request(json!({"type": "ping"})).await;

    let body = json!({"room_id": room, "notification": note("Quarterly review")});
    let (status, _, outcome) = api(b, "POST", "/api/broadcast", Some(&key), Some(body)).await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome, json!({"notified": 3, "delivered_realtime": 2, "queued_external": 1}));
    assert_eq!(notification(&mut alice_socket).await["title"], "Quarterly review");
    assert_eq!(notification(&mut bob_socket).await["title"], "Quarterly review");
    if let Some(f) = dave_socket.try_recv(Duration::from_millis(500)).await {
        panic!("dave is not a member: {f}");
    }
    let carols = history(a, &carol).await;
    assert_eq!((carols.len(), &carols[0]["external"]), (1, &json!("pending")));
    assert!(history(b, &dave).await.is_empty());

    for (body, status) in [
        (json!({"room_id": "507f1f77bcf86cd799439011", "notification": note("x")}), 404),
        (json!({"room_id": "nope", "notification": note("x")}), 400),
        (json!({"room_id": room}), 422),
        // An array directly in an array, which the store may not keep:
        // refused up front, where it was a 500 from the store.
        (json!({"room_id": room, "notification": {"type": "t", "title": "x", "data": {"a": [[], {}, null]}}}), 422),
    ] {
        assert_eq!(api(b, "POST", "/api/broadcast", Some(&key), Some(body)).await.0, status);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_for_a_user_pages_and_checks_the_user() {
    let cluster = Cluster::start(1).await;
    let n = &cluster.nodes[0];
    let key = new_key(&cluster.db, "backend");
    let bob = n.register("bob").await;
    for i in 0..3 {
        let body = json!({"user_ids": [bob.id], "notification": note(&format!("note {i}"))});
        assert_eq!(api(n, "POST", "/api/notify", Some(&key), Some(body)).await.0, 200);
    }
    let path = format!("/api/notifications/{}", bob.id);
    let (status, _, page) = api(n, "GET", &format!("{path}?limit=2"), Some(&key), None).await;
    assert_eq!((status, &page["has_more"]), (200, &json!(true)), "{page}");
    let titles: Vec<&str> =
        page["notifications"].as_array().unwrap().iter().map(|n| n["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["note 2", "note 1"]);
    let last = page["notifications"][1]["id"].as_str().unwrap();
    let (_, _, rest) = api(n, "GET", &format!("{path}?before={last}"), Some(&key), None).await;
    assert_eq!((&rest["notifications"][0]["title"], &rest["has_more"]), (&json!("note 0"), &json!(false)));
    assert_eq!(api(n, "GET", "/api/notifications/507f1f77bcf86cd799439011", Some(&key), None).await.0, 404);
    assert_eq!(api(n, "GET", "/api/notifications/nope", Some(&key), None).await.0, 400);
    assert_eq!(api(n, "GET", &format!("{path}?limit=0"), Some(&key), None).await.0, 422);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_posts_a_system_message_through_the_send_path() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let key = new_key(&cluster.db, "status-page");
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    join(b, &bob, &room).await;
    let mut alice_socket = a.connect(&alice).await;
    alice_socket.join(&room).await;
    // Bob is connected but not watching: he is notified instead.
    let mut bob_socket = b.connect(&bob).await;
    bob_socket.request(json!({"type": "ping"})).await;

    let first = a.post_message(&alice, &room, "before the outage").await;
    assert_eq!(alice_socket.recv_type("message").await["data"]["id"], first["id"]);
    let body = json!({"room_id": room, "content": "Deploy finished", "client_msg_id": "deploy-42"});
    let (status, _, sent) = api(b, "POST", "/api/publish", Some(&key), Some(body.clone())).await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!((&sent["sender_id"], &sent["system"]), (&json!("000000000000000000000000"), &json!(true)));
    assert_eq!(sent["seq"].as_i64(), first["seq"].as_i64().map(|s| s + 1), "next in the room's order");
    assert!(first.get("system").is_none(), "user messages carry no system flag: {first}");

    // Live to subscribers on the other node, as a message.
    let live = alice_socket.recv_type("message").await;
    assert_eq!(
        (&live["data"]["id"], &live["data"]["system"], &live["data"]["content"]),
        (&sent["id"], &json!(true), &json!("Deploy finished"))
    );
    // Two notifications, in either order: Alice's message and the system's.
    let (x, y) = (notification(&mut bob_socket).await, notification(&mut bob_socket).await);
    let n = if x["data"]["message_id"] == sent["id"] { x } else { y };
    assert_eq!((&n["title"], &n["data"]["message_id"]), (&json!("New message from System in #general"), &sent["id"]));

    // In history, and idempotent by client_msg_id.
    let (_, page) = b.call("GET", &format!("/messages?room_id={room}"), Some(&bob.token), None).await;
    let last = page["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((&last["id"], &last["system"]), (&sent["id"], &json!(true)));
    let (status, _, again) = api(a, "POST", "/api/publish", Some(&key), Some(body)).await;
    assert_eq!((status, &again["id"]), (200, &sent["id"]));

    for (body, status) in [
        (json!({"room_id": "507f1f77bcf86cd799439011", "content": "x"}), 404),
        (json!({"room_id": "nope", "content": "x"}), 400),
        (json!({"room_id": room, "content": "   "}), 422),
        (json!({"room_id": room}), 422),
    ] {
        assert_eq!(api(a, "POST", "/api/publish", Some(&key), Some(body.clone())).await.0, status, "{body}");
    }
    assert_eq!(api(a, "POST", "/api/publish", None, Some(json!({"room_id": room, "content": "x"}))).await.0, 401);
    cluster.shutdown().await;
}

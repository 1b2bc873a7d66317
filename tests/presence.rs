//! Presence and typing across nodes: online while any connection is open,
//! offline after the last one closes and the grace period passes (or when
//! its node dies), explicit statuses, bulk lookups, and typing relayed to a
//! room's other subscribers at most once per user every two seconds.

mod common;

use confab::backend::redis::RedisConfig;

use std::time::{Duration, Instant};

use common::{Client, Cluster, Node, User};
use confab::config::Config;
use serde_json::{json, Value};

/// A cluster of `n` nodes whose settings `tune` adjusts.
async fn cluster(n: usize, tune: impl Fn(&mut Config)) -> Cluster {
    let db = common::unique_db();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut config = common::config(&db);
        tune(&mut config);
        nodes.push(Node::start(config).await);
    }
    Cluster { nodes, db }
}

fn grace(ms: u64) -> impl Fn(&mut Config) {
    move |c| c.presence_grace = Duration::from_millis(ms)
}

/// Connects and waits until the session runs: the user is counted online
/// and subscribed to their own topic.
async fn online(node: &Node, user: &User) -> Client {
    let mut c = node.connect(user).await;
    let pong = c.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    c
}

async fn add_contact(node: &Node, owner: &User, contact: &User) {
    let (s, body) = node.call("PUT", &format!("/contacts/{}", contact.id), Some(&owner.token), None).await;
    assert_eq!(s, 201, "{body}");
}

/// The next presence frame about `user`, checked for shape.
async fn presence_of(c: &mut Client, user: &User) -> Value {
    loop {
        let f = c.recv_type("presence").await;
        if f["user_id"] != user.id.as_str() {
            continue;
        }
        assert_eq!(f["data"]["user_id"], user.id.as_str(), "{f}");
        assert!(f["timestamp"].as_i64().unwrap() > 1_600_000_000_000, "{f}");
        assert!(f.get("channel").is_none(), "{f}");
        return f["data"].clone();
    }
}

/// Asserts that no frame of `kind` arrives within `within`.
async fn none_of(c: &mut Client, kind: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while let Some(f) = c.try_recv(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        assert_ne!(f["type"], kind, "unexpected frame: {f}");
    }
}

async fn lookup(node: &Node, caller: &User, ids: &[&str]) -> Vec<Value> {
    let (s, body) = node.call("GET", &format!("/presence?user_ids={}", ids.join(",")), Some(&caller.token), None).await;
    assert_eq!(s, 200, "{body}");
    body["presence"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_on_another_node_sees_a_user_come_online_and_go_offline_after_the_grace_period() {
    let c = cluster(2, grace(1000)).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    add_contact(a, &alice, &bob).await;
    let mut watcher = online(b, &alice).await;

    let on_a = online(a, &bob).await;
    let came = presence_of(&mut watcher, &bob).await;
    assert_eq!(came["status"], "online");
    assert!(came["last_seen"].as_str().unwrap().ends_with('Z'));

    let closed = Instant::now();
    drop(on_a);
    let went = presence_of(&mut watcher, &bob).await;
    assert_eq!(went["status"], "offline");
    assert!(closed.elapsed() >= Duration::from_millis(1000), "not before the grace period: {:?}", closed.elapsed());
    assert!(went["last_seen"].as_str().unwrap() >= came["last_seen"].as_str().unwrap());
    let seen = lookup(b, &alice, &[&bob.id]).await;
    assert_eq!(seen[0], went, "the bulk lookup agrees with the frame");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_inside_the_grace_period_is_not_seen_as_going_offline() {
    let c = cluster(2, grace(1500)).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    add_contact(a, &alice, &bob).await;
    let mut watcher = online(b, &alice).await;
    let first = online(a, &bob).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "online");

    drop(first);
    // Long enough for the node to notice the close, well inside the grace.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let _again = online(b, &bob).await; // back, through the other node
    watcher.assert_quiet(Duration::from_millis(2500)).await;
    assert_eq!(lookup(a, &alice, &[&bob.id]).await[0]["status"], "online");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_co_members_see_presence_but_a_user_never_sees_their_own() {
    let c = cluster(2, grace(200)).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    let (s, _) = a.call("POST", &format!("/rooms/{room}/join"), Some(&bob.token), None).await;
    assert_eq!(s, 200);
    let mut watcher = online(a, &alice).await;
    watcher.join(&room).await;

    let mut on_b = online(b, &bob).await;
    on_b.join(&room).await;
    let came = presence_of(&mut watcher, &bob).await;
    assert_eq!((came["user_id"].as_str(), came["status"].as_str()), (Some(bob.id.as_str()), Some("online")));
    // A second connection of bob's in the room: bob is already online, and
    // hears nothing of himself when his first connection closes, nor when
    // he changes his status.
    let mut also_bob = online(a, &bob).await;
    also_bob.join(&room).await;
    drop(on_b);
    also_bob.assert_quiet(Duration::from_millis(700)).await;
    let ack = also_bob.request(json!({"type": "set_status", "data": {"status": "busy"}})).await;
    assert_eq!(ack["data"]["status"], "busy", "{ack}");
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "busy");
    also_bob.assert_quiet(Duration::from_millis(300)).await;
    drop(also_bob);
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "offline");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_connecting_at_once_is_announced_in_full_with_batched_store_reads() {
    let c = cluster(2, grace(200)).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, "lobby", "public").await;
    let mut crowd = Vec::new();
    for i in 0..40 {
        let u = a.register(&format!("crowd{i}")).await;
        let (s, _) = a.call("POST", &format!("/rooms/{room}/join"), Some(&u.token), None).await;
        assert_eq!(s, 200);
        crowd.push(u);
    }
    let mut watcher = online(a, &alice).await;
    watcher.join(&room).await;

    const READS: &str = "confab_mongo_op_seconds_count{op=\"find_members\"}";
    let before = b.metric(READS).await;
    let _clients = futures::future::join_all(crowd.iter().map(|u| online(b, u))).await;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < crowd.len() {
        let f = watcher.recv_type("presence").await;
        assert_eq!(f["data"]["status"], "online", "{f}");
        assert!(seen.insert(f["user_id"].as_str().unwrap().to_string()), "announced twice: {f}");
    }
    watcher.assert_quiet(Duration::from_millis(500)).await;
    let used = b.metric(READS).await - before;
    assert!(used >= 1.0 && used < crowd.len() as f64, "{used} membership reads for {} users", crowd.len());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_status_reaches_contacts_persists_across_reconnects_and_shows_in_lookups() {
    let c = cluster(2, grace(200)).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    add_contact(a, &alice, &bob).await;
    let mut watcher = online(b, &alice).await;
    let mut on_a = online(a, &bob).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "online");

    let ack = on_a.request(json!({"type": "set_status", "data": {"status": "away"}})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (ack["data"]["user_id"].as_str(), ack["data"]["status"].as_str()),
        (Some(bob.id.as_str()), Some("away"))
    );
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "away");
    let unknown = bson::oid::ObjectId::new().to_hex();
    let seen = lookup(b, &alice, &[&bob.id, &alice.id, &unknown]).await;
    let statuses: Vec<&str> = seen.iter().map(|p| p["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["away", "online", "offline"], "in the order asked");
    assert_eq!(seen[2], json!({"user_id": unknown, "status": "offline", "last_seen": null}));

    // Setting the same status again changes nothing and announces nothing.
    let ack = on_a.request(json!({"type": "set_status", "data": {"status": "away"}})).await;
    assert_eq!(ack["type"], "ack");
    watcher.assert_quiet(Duration::from_millis(400)).await;

    // Offline is not a status one sets; unknown ones neither.
    for data in [json!({"status": "offline"}), json!({"status": "dnd"}), json!({"status": 3}), json!({}), json!(null)] {
        let e = on_a.request(json!({"type": "set_status", "data": data})).await;
        assert_eq!((e["type"].as_str(), e["data"]["code"].as_str()), (Some("error"), Some("validation_failed")), "{e}");
        assert!(e["data"]["message"].as_str().unwrap().starts_with("status:"), "{e}");
    }

    // Away outlives the connection: offline without one, away again on return.
    drop(on_a);
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "offline");
    let mut back = online(b, &bob).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "away");
    let ack = back.request(json!({"type": "set_status", "data": {"status": "online"}})).await;
    assert_eq!(ack["data"]["status"], "online");
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "online");
    c.shutdown().await;
}

#[tokio::test]
async fn bulk_lookups_check_their_ids() {
    let n = Node::start(common::config(&common::unique_db())).await;
    let alice = n.register("alice").await;
    let many: Vec<String> = (0..500).map(|_| bson::oid::ObjectId::new().to_hex()).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let seen = lookup(&n, &alice, &refs).await;
    assert_eq!(seen.len(), 500);
    assert!(seen.iter().all(|p| p["status"] == "offline"));
    let seen = lookup(&n, &alice, &[&alice.id, &alice.id]).await;
    assert_eq!(seen.len(), 1, "duplicates answered once");

    let too_many = format!("{},{}", many.join(","), bson::oid::ObjectId::new().to_hex());
    for (query, status, code) in [
        ("/presence".to_string(), 422, "validation_failed"),
        ("/presence?user_ids=".to_string(), 422, "validation_failed"),
        ("/presence?user_ids=,,".to_string(), 422, "validation_failed"),
        (format!("/presence?user_ids={too_many}"), 422, "validation_failed"),
        (format!("/presence?user_ids={},nope", alice.id), 400, "bad_request"),
    ] {
        let (s, body) = n.call("GET", &query, Some(&alice.token), None).await;
        assert_eq!((s, body["error"]["code"].as_str()), (status, Some(code)), "{query}: {body}");
    }
    let (s, _) = n.call("GET", &format!("/presence?user_ids={}", alice.id), None, None).await;
    assert_eq!(s, 401);
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_node_dies_its_users_go_offline_within_its_heartbeat_ttl() {
    let fast = |c: &mut Config| {
        c.node_heartbeat = Duration::from_secs(1);
        c.node_ttl = Duration::from_secs(2);
    };
    let mut c = cluster(2, fast).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    add_contact(a, &alice, &bob).await;
    let mut watcher = online(b, &alice).await;
    let mut doomed = online(a, &bob).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "online");

    let died = Instant::now();
    c.nodes.remove(0).kill().await;
    assert_eq!(doomed.ended().await, common::Ended::Eof, "a crash says no goodbye");
    let went = presence_of(&mut watcher, &bob).await;
    assert_eq!(went["status"], "offline");
    // Heartbeat TTL, plus at most one sweep interval, plus slack.
    assert!(died.elapsed() < Duration::from_secs(2 + 1 + 3), "{:?}", died.elapsed());
    let b = &c.nodes[0];
    assert_eq!(lookup(b, &alice, &[&bob.id]).await[0]["status"], "offline");
    // Bob comes back through the surviving node.
    let _back = online(b, &bob).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "online");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shutting_down_cleanly_takes_its_users_offline_without_waiting() {
    let slow = |c: &mut Config| {
        c.presence_grace = Duration::from_secs(30);
        c.node_ttl = Duration::from_secs(60);
    };
    let mut c = cluster(2, slow).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    add_contact(a, &alice, &bob).await;
    let mut watcher = online(b, &alice).await;
    let _on_a = online(a, &bob).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "online");

    let stopped = Instant::now();
    c.nodes.remove(0).shutdown().await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "offline");
    assert!(stopped.elapsed() < Duration::from_secs(10), "neither grace nor TTL: {:?}", stopped.elapsed());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_the_room_on_every_node_but_not_the_typer_at_most_once_per_two_seconds() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    let mut alice_a = online(a, &alice).await;
    alice_a.join(&room).await;
    let mut bob_b = online(b, &bob).await;
    bob_b.join(&room).await;
    let mut bob_a = online(a, &bob).await;
    bob_a.join(&room).await;
    let typing = json!({"type": "user_typing", "channel": room});

    let ack = bob_b.request(typing.clone()).await;
    assert_eq!((ack["type"].as_str(), ack["data"]["relayed"].as_bool()), (Some("ack"), Some(true)), "{ack}");
    let seen = alice_a.recv_type("user_typing").await;
    assert_eq!(seen["channel"], room.as_str());
    assert_eq!(seen["user_id"], bob.id.as_str());
    assert_eq!(seen["data"], json!({"user_id": bob.id}));
    none_of(&mut bob_a, "user_typing", Duration::from_millis(300)).await; // the typer's own connections

    // Within two seconds, from either of bob's nodes: dropped.
    let ack = bob_a.request(typing.clone()).await;
    assert_eq!(ack["data"]["relayed"], false, "{ack}");
    bob_b.send(typing.clone()).await; // no ref: no ack, silently dropped
    none_of(&mut alice_a, "user_typing", Duration::from_millis(500)).await;

    // Alice has her own window; bob's next one opens two seconds after his first.
    let ack = alice_a.request(typing.clone()).await;
    assert_eq!(ack["data"]["relayed"], true);
    assert_eq!(bob_b.recv_type("user_typing").await["user_id"], alice.id.as_str());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let ack = bob_a.request(typing.clone()).await;
    assert_eq!(ack["data"]["relayed"], true, "{ack}");
    assert_eq!(alice_a.recv_type("user_typing").await["user_id"], bob.id.as_str());

    // Only in a room this connection has joined; a channel must be a room id.
    let other = a.create_room(&alice, "other", "public").await;
    let e = bob_a.request(json!({"type": "user_typing", "channel": other})).await;
    assert_eq!((e["type"].as_str(), e["data"]["code"].as_str()), (Some("error"), Some("forbidden")), "{e}");
    bob_a.request(json!({"type": "leave_channel", "channel": room})).await;
    let e = bob_a.request(typing.clone()).await;
    assert_eq!(e["data"]["code"], "forbidden", "{e}");
    for (frame, code) in [
        (json!({"type": "user_typing"}), "bad_request"),
        (json!({"type": "user_typing", "channel": "x"}), "bad_request"),
    ] {
        let e = bob_a.request(frame).await;
        assert_eq!((e["type"].as_str(), e["data"]["code"].as_str()), (Some("error"), Some(code)), "{e}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_and_disconnects_during_a_redis_outage_are_repaired_when_it_returns() {
    let mut redis = common::OwnRedis::durable();
    let mut config = common::config(&common::unique_db());
    config.redis = RedisConfig::new(redis.url());
    let n = Node::start(config).await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    add_contact(&n, &alice, &bob).await;
    add_contact(&n, &alice, &carol).await;
    let mut watcher = online(&n, &alice).await;
    let on_bob = online(&n, &bob).await;
    assert_eq!(presence_of(&mut watcher, &bob).await["status"], "online");

    redis.stop();
    // Connections still open and close; presence just cannot follow.
    let mut on_carol = online(&n, &carol).await;
    drop(on_bob);
    let (s, body) = n.call("GET", &format!("/presence?user_ids={}", bob.id), Some(&alice.token), None).await;
    assert_eq!((s, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await; // bob's grace period ends while Redis is away

    redis.resume();
    // No time bound is promised here, only repair: wait generously, as a
    // loaded machine reconnects slowly.
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    // Redis comes back still counting bob and not carol; the node repairs
    // both and announces each change once.
    let mut changes = Vec::new();
    while changes.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let f = watcher.try_recv(left).await.expect("presence repaired after Redis returned");
        if f["type"] != "presence" {
            continue;
        }
        changes.push((f["user_id"].as_str().unwrap().to_string(), f["data"]["status"].as_str().unwrap().to_string()));
    }
    changes.sort();
    let mut want = vec![(bob.id.clone(), "offline".to_string()), (carol.id.clone(), "online".to_string())];
    want.sort();
    assert_eq!(changes, want);
    none_of(&mut watcher, "presence", Duration::from_millis(1500)).await;
    let seen = lookup(&n, &alice, &[&alice.id, &bob.id, &carol.id]).await;
    let statuses: Vec<&str> = seen.iter().map(|p| p["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["online", "offline", "online"]);
    let pong = on_carol.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    n.shutdown().await;
}

/// A burst of status changes from one user, on another node: a co-member
/// who shares ten rooms with them and is their contact sees each announced
/// change once per connection (not once per shared room), at most about
/// one a second, and finally the status the burst ended on; setting the
/// same status again announces nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_status_changes_reaches_each_connection_once_a_second() {
    let c = cluster(2, grace(300)).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    add_contact(a, &bob, &alice).await;
    let mut reader = online(b, &bob).await;
    let mut rooms = Vec::new();
    for i in 0..10 {
        let room = a.create_room(&alice, &format!("shared-{i}"), "public").await;
        let (s, body) = b.call("POST", &format!("/rooms/{room}/join"), Some(&bob.token), None).await;
        assert_eq!(s, 200, "{body}");
        reader.join(&room).await;
        rooms.push(room);
    }
    let mut talker = online(a, &alice).await;
    assert_eq!(presence_of(&mut reader, &alice).await["status"], "online");
    reader.assert_quiet(Duration::from_millis(1200)).await; // one copy, not eleven

    let started = Instant::now();
    for i in 0..40 {
        let status = ["away", "busy", "online"][i % 3];
        let ack = talker.request(json!({"type": "set_status", "data": {"status": status}})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let last = talker.request(json!({"type": "set_status", "data": {"status": "busy"}})).await;
    assert_eq!(last["data"]["status"], "busy");
    let mut seen = Vec::new();
    while let Some(f) = reader.try_recv(Duration::from_millis(2500)).await {
        assert_eq!((&f["type"], &f["user_id"]), (&json!("presence"), &json!(alice.id)), "{f}");
        seen.push(f["data"]["status"].as_str().unwrap().to_string());
    }
    let took = started.elapsed().as_secs_f64();
    assert_eq!(seen.last().map(String::as_str), Some("busy"), "the burst's last status arrives: {seen:?}");
    assert!(seen.len() as f64 <= took + 2.0, "{} announcements in {took:.1} s: {seen:?}", seen.len());
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "a status is never announced twice in a row: {seen:?}");

    // The same status again: nothing to announce.
    let again = talker.request(json!({"type": "set_status", "data": {"status": "busy"}})).await;
    assert_eq!(again["type"], "ack");
    reader.assert_quiet(Duration::from_millis(2000)).await;
    c.shutdown().await;
}

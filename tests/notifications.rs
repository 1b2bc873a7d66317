//! Notifications, against real Redis and FerretDB: preferences decide, the
//! connections outside the room are told live on whichever node they are,
//! users without a connection find them in history and in the external
//! queue, and history pages, counts and read state behave.

mod common;

use confab::backend::redis::RedisConfig;

use std::time::Duration;

use common::{Client, Cluster, Node, User, WAIT};
use serde_json::{json, Value};

/// Long enough for a message's notifications to have been worked out.
const SETTLE: Duration = Duration::from_millis(1500);

/// The next `notification` frame, skipping anything else.
async fn notification(c: &mut Client) -> Value {
    let frame = c.recv_type("notification").await;
    assert!(frame["data"]["id"].as_str().is_some_and(|id| id.len() == 24), "{frame}");
    frame["data"].clone()
}

/// Fails if a `notification` frame arrives within `within`.
async fn no_notification(c: &mut Client, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while let Some(frame) = c.try_recv(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        assert_ne!(frame["type"], "notification", "unexpected notification: {frame}");
    }
}

async fn history(node: &Node, user: &User, query: &str) -> Value {
    let (status, body) = node.call("GET", &format!("/notifications{query}"), Some(&user.token), None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until `user` has `n` notifications stored, and returns them.
async fn stored(node: &Node, user: &User, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = history(node, user, "?limit=200").await["notifications"].as_array().unwrap().clone();
        if list.len() >= n || tokio::time::Instant::now() > deadline {
            assert_eq!(list.len(), n, "{list:?}");
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn prefs(node: &Node, user: &User, body: Value) -> (u16, Value) {
    node.call("PUT", "/notifications/preferences", Some(&user.token), Some(body)).await
}

async fn join(node: &Node, user: &User, room: &str) {
    let (status, body) = node.call("POST", &format!("/rooms/{room}/join"), Some(&user.token), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_decide_across_nodes() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let general = a.create_room(&alice, "general", "public").await;
    join(b, &bob, &general).await;
    // Bob is connected on the other node, but not watching the room.
    let mut bob_socket = b.connect(&bob).await;
    bob_socket.request(json!({"type": "ping"})).await;

    let m = a.post_message(&alice, &general, "hello everyone").await;
    let n = notification(&mut bob_socket).await;
    assert_eq!(n["type"], "new_message");
    assert_eq!(n["title"], "New message from alice in #general");
    assert_eq!(n["message"], "hello everyone");
    assert_eq!(n["data"], json!({"room_id": general, "message_id": m["id"], "sender_id": alice.id}));
    assert!(n["timestamp"].as_str().unwrap().ends_with('Z'), "{n}");
    let mut allowed = vec![m["id"].clone()];

    // Each preference in turn holds a message back; undone, the next gets through.
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let an_hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let cases = [
        (json!({"enabled": false}), json!({"enabled": true})),
        (json!({"muted_rooms": [general]}), json!({"muted_rooms": []})),
        (json!({"dnd_until": in_an_hour}), json!({"dnd_until": null})),
        (json!({"mentions_only": true}), json!({"mentions_only": false})),
    ];
    for (hold, undo) in cases {
        assert_eq!(prefs(b, &bob, hold.clone()).await.0, 200);
        a.post_message(&alice, &general, &format!("held back by {hold}")).await;
        no_notification(&mut bob_socket, SETTLE).await;
        assert_eq!(prefs(b, &bob, undo).await.0, 200);
        let m = a.post_message(&alice, &general, "and this one is not").await;
        assert_eq!(notification(&mut bob_socket).await["data"]["message_id"], m["id"], "after {hold}");
        allowed.push(m["id"].clone());
    }

    // Do not disturb in the past is over.
    assert_eq!(prefs(b, &bob, json!({"dnd_until": an_hour_ago})).await.0, 200);
    let m = a.post_message(&alice, &general, "dnd is over").await;
    assert_eq!(notification(&mut bob_socket).await["data"]["message_id"], m["id"]);
    allowed.push(m["id"].clone());

    // Mentions only: a mention gets through, whatever its case.
    assert_eq!(prefs(b, &bob, json!({"mentions_only": true, "dnd_until": null})).await.0, 200);
    a.post_message(&alice, &general, "nothing for bob here").await;
    no_notification(&mut bob_socket, SETTLE).await;
    let m = a.post_message(&alice, &general, "hey @Bob, look").await;
    let n = notification(&mut bob_socket).await;
    assert_eq!((&n["data"]["message_id"], &n["message"]), (&m["id"], &json!("hey @Bob, look")));
    allowed.push(m["id"].clone());

    // Muting one room with its own endpoint holds back even mentions.
    let (status, body) =
        b.call("PUT", &format!("/rooms/{general}/notifications"), Some(&bob.token), Some(json!({"muted": true}))).await;
    assert_eq!((status, &body["muted_rooms"]), (200, &json!([general])), "{body}");
    a.post_message(&alice, &general, "@bob muted").await;
    no_notification(&mut bob_socket, SETTLE).await;

    // History holds exactly the notifications that got through, newest first.
    let list = stored(b, &bob, allowed.len()).await;
    let ids: Vec<Value> = list.iter().rev().map(|n| n["data"]["message_id"].clone()).collect();
    let (mut got, mut want) = (ids.clone(), allowed.clone());
    got.sort_by_key(|v| v.to_string());
    want.sort_by_key(|v| v.to_string());
    assert_eq!(got, want);
    assert!(list.iter().all(|n| n["delivered_realtime"] == true && n["read"] == false && n["external"].is_null()));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_connections_outside_the_room_are_notified_and_never_the_sender() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = a.register("carol").await;
    let room = a.create_room(&alice, "team", "public").await;
    join(a, &bob, &room).await;
    join(a, &carol, &room).await;

    // Bob watches the room on node A and has another connection on node B;
    // Carol's only connection watches the room; Alice has a connection on
    // node B outside the room.
    let mut bob_watching = a.connect(&bob).await;
    bob_watching.join(&room).await;
    let mut bob_elsewhere = b.connect(&bob).await;
    bob_elsewhere.request(json!({"type": "ping"})).await;
    let mut carol_watching = b.connect(&carol).await;
    carol_watching.join(&room).await;
    let mut alice_elsewhere = b.connect(&alice).await;
    alice_elsewhere.request(json!({"type": "ping"})).await;

    let m = a.post_message(&alice, &room, "standup in 5").await;
    assert_eq!(notification(&mut bob_elsewhere).await["data"]["message_id"], m["id"]);
    assert_eq!(bob_watching.recv_type("message").await["data"]["id"], m["id"]);
    assert_eq!(carol_watching.recv_type("message").await["data"]["id"], m["id"]);
    no_notification(&mut bob_watching, SETTLE).await;
    no_notification(&mut carol_watching, Duration::ZERO).await;
    no_notification(&mut alice_elsewhere, Duration::ZERO).await;

    // Bob's notification is stored once, though both nodes hold his
    // connections; Carol saw the message itself, so nothing is stored for
    // her; the sender gets nothing.
    let list = stored(a, &bob, 1).await;
    assert_eq!((&list[0]["data"]["message_id"], &list[0]["delivered_realtime"]), (&m["id"], &json!(true)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(history(b, &bob, "").await["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(history(a, &carol, "").await["notifications"], json!([]));
    assert_eq!(history(b, &alice, "").await["notifications"], json!([]));

    // Once the watching connection leaves the room, it is told too.
    let left = bob_watching.request(json!({"type": "leave_channel", "channel": room})).await;
    assert_eq!(left["type"], "ack");
    let m = a.post_message(&alice, &room, "moved to 10").await;
    assert_eq!(notification(&mut bob_watching).await["data"]["message_id"], m["id"]);
    assert_eq!(notification(&mut bob_elsewhere).await["data"]["message_id"], m["id"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_without_a_connection_get_history_and_the_external_queue() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "news", "public").await;
    join(b, &bob, &room).await;

    let long = format!("{} and the rest", "x".repeat(150));
    let m = a.post_message(&alice, &room, &long).await;
    let list = stored(b, &bob, 1).await;
    let n = &list[0];
    assert_eq!(n["type"], "new_message");
    assert_eq!(n["title"], "New message from alice in #news");
    assert_eq!(n["message"], format!("{}…", "x".repeat(140)));
    assert_eq!(n["data"]["message_id"], m["id"]);
    assert_eq!(
        (&n["delivered_realtime"], &n["external"], &n["read"]),
        (&json!(false), &json!("pending"), &json!(false))
    );
    assert!(
        common::external_queue(&cluster.db).await.contains(&n["id"].as_str().unwrap().to_string()),
        "queued for external delivery"
    );

    // A direct message is titled with its sender's name.
    let (status, dm) =
        a.call("POST", "/messages", Some(&alice.token), Some(json!({"to_user_id": bob.id, "content": "psst"}))).await;
    assert_eq!(status, 201, "{dm}");
    let list = stored(b, &bob, 2).await;
    let n = list.iter().find(|n| n["data"]["message_id"] == dm["id"]).expect("the direct message's notification");
    assert_eq!((&n["title"], &n["message"], &n["external"]), (&json!("alice"), &json!("psst"), &json!("pending")));
    assert!(common::external_queue(&cluster.db).await.contains(&n["id"].as_str().unwrap().to_string()));
    // The sender has none.
    assert_eq!(history(a, &alice, "").await["notifications"], json!([]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_are_validated() {
    let cluster = Cluster::start(1).await;
    let n = &cluster.nodes[0];
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let mine = n.create_room(&alice, "mine", "public").await;
    let theirs = n.create_room(&bob, "theirs", "private").await;
    let unknown = "507f1f77bcf86cd799439011";

    let (status, body) = n.call("GET", "/notifications/preferences", Some(&alice.token), None).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"enabled": true, "muted_rooms": [], "mentions_only": false, "dnd_until": null}));

    let bad = [
        (json!({"muted_rooms": [unknown]}), 404, "not_found"),
        (json!({"muted_rooms": [theirs]}), 403, "forbidden"),
        (json!({"muted_rooms": ["nope"]}), 400, "bad_request"),
        (json!({"dnd_until": "tomorrow"}), 422, "validation_failed"),
        (json!({"dnd_until": 17}), 422, "validation_failed"),
        (json!({"enabled": "yes"}), 422, "validation_failed"),
        (json!({"muted": true}), 422, "validation_failed"),
    ];
    for (body, status, code) in bad {
        let (got, reply) = prefs(n, &alice, body.clone()).await;
        assert_eq!((got, reply["error"]["code"].as_str()), (status, Some(code)), "{body}: {reply}");
    }
    let too_many: Vec<String> = (0..1001).map(|_| bson::oid::ObjectId::new().to_hex()).collect();
    assert_eq!(prefs(n, &alice, json!({"muted_rooms": too_many})).await.0, 422);
    let (_, body) = n.call("GET", "/notifications/preferences", Some(&alice.token), None).await;
    assert_eq!(body["muted_rooms"], json!([]), "nothing was saved by a refused change");

    // A good change; fields not given are left alone; null ends do-not-disturb.
    let (status, body) =
        prefs(n, &alice, json!({"muted_rooms": [mine, mine], "dnd_until": "2030-01-31T12:00:00+01:00"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"enabled": true, "muted_rooms": [mine], "mentions_only": false,
                            "dnd_until": "2030-01-31T11:00:00.000Z"})
    );
    let (_, body) = prefs(n, &alice, json!({"enabled": false})).await;
    assert_eq!((&body["enabled"], &body["muted_rooms"]), (&json!(false), &json!([mine])));
    let (_, body) = prefs(n, &alice, json!({"dnd_until": null, "enabled": true})).await;
    assert_eq!((&body["dnd_until"], &body["enabled"]), (&Value::Null, &json!(true)));

    // One room at a time.
    let mute = |room: &str| format!("/rooms/{room}/notifications");
    let cases = [
        (mute(unknown), json!({"muted": true}), 404),
        (mute(&theirs), json!({"muted": true}), 403),
        (mute("nope"), json!({"muted": true}), 400),
        (mute(&mine), json!({}), 422),
        (mute(&mine), json!({"muted": "yes"}), 422),
    ];
    for (path, body, status) in cases {
        let (got, reply) = n.call("PUT", &path, Some(&alice.token), Some(body.clone())).await;
        assert_eq!(got, status, "{path} {body}: {reply}");
    }
    let (status, body) = n.call("PUT", &mute(&mine), Some(&alice.token), Some(json!({"muted": false}))).await;
    assert_eq!((status, &body["muted_rooms"]), (200, &json!([])));
    let (_, body) = n.call("PUT", &mute(&mine), Some(&alice.token), Some(json!({"muted": true}))).await;
    assert_eq!(body["muted_rooms"], json!([mine]));

    // A room muted before may be sent back after leaving it.
    let general = n.create_room(&bob, "general", "public").await;
    join(n, &alice, &general).await;
    let (_, body) = n.call("PUT", &mute(&general), Some(&alice.token), Some(json!({"muted": true}))).await;
    assert_eq!(body["muted_rooms"], json!([mine, general]));
    let (status, _) =
        n.call("DELETE", &format!("/rooms/{general}/members/{}", alice.id), Some(&alice.token), None).await;
    assert_eq!(status, 204);
    let (status, body) = prefs(n, &alice, json!({"muted_rooms": [mine, general], "mentions_only": true})).await;
    assert_eq!((status, &body["mentions_only"]), (200, &json!(true)), "{body}");
    // Without a token, nothing.
    assert_eq!(n.call("GET", "/notifications/preferences", None, None).await.0, 401);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_newest_first_and_read_state_counts() {
    let cluster = Cluster::start(1).await;
    let n = &cluster.nodes[0];
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, "busy", "public").await;
    join(n, &bob, &room).await;
    for i in 0..5 {
        n.post_message(&alice, &room, &format!("message {i}")).await;
    }
    let all = stored(n, &bob, 5).await;
    let ids: Vec<String> = all.iter().map(|n| n["id"].as_str().unwrap().to_string()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by(|x, y| y.cmp(x));
    assert_eq!(ids, sorted, "newest (highest id) first");

    let unread = |body: Value| body["unread_count"].as_i64().unwrap();
    let (status, body) = n.call("GET", "/notifications/unread_count", Some(&bob.token), None).await;
    assert_eq!((status, unread(body)), (200, 5));

    // Pages of two: 2 + 2 + 1, each older than the last.
    let page1 = history(n, &bob, "?limit=2").await;
    assert_eq!(page1["has_more"], true);
    let p1: Vec<&str> = page1["notifications"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(p1, ids[..2]);
    let page2 = history(n, &bob, &format!("?limit=2&before={}", p1[1])).await;
    let p2: Vec<&str> = page2["notifications"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(p2, ids[2..4]);
    assert_eq!(page2["has_more"], true);
    let page3 = history(n, &bob, &format!("?limit=2&before={}", p2[1])).await;
    assert_eq!(page3["notifications"].as_array().unwrap().len(), 1);
    assert_eq!((page3["notifications"][0]["id"].as_str(), &page3["has_more"]), (Some(ids[4].as_str()), &json!(false)));
    for (query, status) in [("?limit=0", 422), ("?limit=201", 422), ("?limit=x", 422), ("?before=nope", 400)] {
        assert_eq!(n.call("GET", &format!("/notifications{query}"), Some(&bob.token), None).await.0, status, "{query}");
    }

    // Read by id: only one's own, only once.
    let token = bob.token.as_str();
    let read = |body: Value| async move { n.call("POST", "/notifications/read", Some(token), Some(body)).await };
    let (status, body) = read(json!({"ids": [ids[0], ids[1]]})).await;
    assert_eq!((status, &body["marked"]), (200, &json!(2)), "{body}");
    assert_eq!(read(json!({"ids": [ids[0]]})).await.1["marked"], 0, "already read");
    let (_, body) = n.call("POST", "/notifications/read", Some(&alice.token), Some(json!({"ids": [ids[2]]}))).await;
    assert_eq!(body["marked"], 0, "someone else's notification is left alone");
    let (_, body) = n.call("GET", "/notifications/unread_count", Some(&bob.token), None).await;
    assert_eq!(unread(body), 3);
    let newest = &history(n, &bob, "?limit=1").await["notifications"][0];
    assert_eq!(newest["read"], true);
    assert!(newest["read_at"].as_str().is_some(), "{newest}");

    for (body, status) in [
        (json!({}), 422),
        (json!({"all": false}), 422),
        (json!({"ids": [ids[0]], "all": true}), 422),
        (json!({"ids": ["nope"]}), 400),
        (json!({"ids": "all"}), 422),
    ] {
        assert_eq!(read(body.clone()).await.0, status, "{body}");
    }
    let (status, body) = read(json!({"all": true})).await;
    assert_eq!((status, &body["marked"]), (200, &json!(3)));
    let (_, body) = n.call("GET", "/notifications/unread_count", Some(&bob.token), None).await;
    assert_eq!(unread(body), 0);
    assert_eq!(n.call("GET", "/notifications", None, None).await.0, 401);
    cluster.shutdown().await;
}

/// Whether node-side "watching" hint for (room, user) is in Redis.
async fn watching_hint(db: &str, room: &str, user: &User) -> bool {
    use fred::prelude::*;
    let client = confab::jobs::redis_client(&RedisConfig::new(common::redis_url())).await.unwrap();
    let lapse: Option<f64> = client
        .zscore(common::keys(db).watching(bson::oid::ObjectId::parse_str(room).unwrap()), user.id.as_str())
        .await
        .unwrap();
    let _ = client.quit().await;
    lapse.is_some_and(|at| at > chrono::Utc::now().timestamp_millis() as f64)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reach changes node `n` has heard of for members of rooms it keeps.
const CHANGES: &str = "confab_notification_reach_changes_total";

/// Waits until node `n` has heard of a reach change since it counted `since`.
async fn heard_of_a_change(n: &Node, since: f64) {
    eventually("the dispatching node hearing of the change", async || n.metric(CHANGES).await > since).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_keeps_a_rooms_reach_until_a_member_comes_or_goes() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "kept", "public").await;
    join(b, &bob, &room).await;
    let kept = "confab_notification_reach_total{source=\"kept\"";

    // Bob is offline: node A reads that once, then keeps it.
    let first = a.post_message(&alice, &room, "one").await;
    stored(b, &bob, 1).await;
    let second = a.post_message(&alice, &room, "two").await;
    let list = stored(b, &bob, 2).await;
    for (n, m) in list.iter().rev().zip([&first, &second]) {
        assert_eq!((&n["data"]["message_id"], &n["external"]), (&m["id"], &json!("pending")));
    }
    assert!(a.metric(kept).await >= 1.0, "the second message used the kept reach");

    // Bob connects on node B: node A hears of it, and tells him live.
    let before = a.metric(CHANGES).await;
    let mut bob_socket = b.connect(&bob).await;
    bob_socket.request(json!({"type": "ping"})).await;
    heard_of_a_change(a, before).await;
    let m = a.post_message(&alice, &room, "three").await;
    assert_eq!(notification(&mut bob_socket).await["data"]["message_id"], m["id"]);
    let m = a.post_message(&alice, &room, "four").await;
    assert_eq!(notification(&mut bob_socket).await["data"]["message_id"], m["id"], "from the kept reach");

    // He goes: the next message is for the external queue again.
    let before = a.metric(CHANGES).await;
    let _ = bob_socket.ws.close(None).await;
    heard_of_a_change(a, before).await;
    let m = a.post_message(&alice, &room, "five").await;
    let list = stored(b, &bob, 5).await;
    assert_eq!((&list[0]["data"]["message_id"], &list[0]["external"]), (&m["id"], &json!("pending")));
    assert_eq!(list[1]["delivered_realtime"], true);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_member_list_takes_joins_and_removals_in_place() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = a.create_room(&alice, "grows", "public").await;
    join(b, &bob, &room).await;
    let first = a.post_message(&alice, &room, "one").await;
    stored(b, &bob, 1).await;
    let updated = "confab_notification_audience_total{source=\"updated\"";
    let before = a.metric(updated).await;

    // Carol joins and Bob is removed: node A applies both to the list it
    // keeps, and the next message notifies Carol and not Bob.
    join(b, &carol, &room).await;
    let (status, body) = a.call("DELETE", &format!("/rooms/{room}/members/{}", bob.id), Some(&alice.token), None).await;
    assert_eq!(status, 204, "{body}");
    let second = a.post_message(&alice, &room, "two").await;
    let list = stored(b, &carol, 1).await;
    assert_eq!(list[0]["data"]["message_id"], second["id"]);
    // Carol's and any for Bob would have been stored together.
    let bobs = history(b, &bob, "").await["notifications"].as_array().unwrap().clone();
    assert_eq!(bobs.len(), 1, "nothing for a removed member: {bobs:?}");
    assert_eq!(bobs[0]["data"]["message_id"], first["id"]);
    assert!(a.metric(updated).await > before, "applied from the members log, not read again");

    // Bob joins again: back in the list.
    join(b, &bob, &room).await;
    let third = a.post_message(&alice, &room, "three").await;
    let list = stored(b, &bob, 2).await;
    assert_eq!(list[0]["data"]["message_id"], third["id"]);
    stored(b, &carol, 2).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_node_died_is_notified_through_the_external_queue() {
    let mut cluster = Cluster::start(2).await;
    let b = cluster.nodes.pop().unwrap();
    let a = &cluster.nodes[0];
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "crash", "public").await;
    join(&b, &bob, &room).await;
    let mut bob_socket = b.connect(&bob).await;
    bob_socket.request(json!({"type": "ping"})).await;
    let m = a.post_message(&alice, &room, "before").await;
    assert_eq!(notification(&mut bob_socket).await["data"]["message_id"], m["id"]);

    // Node B dies without a word: node A still keeps bob as held by one
    // node, but the live notification reaches no node, so it is stored and
    // queued for push instead.
    let kept = "confab_notification_reach_total{source=\"kept\"";
    let before = a.metric(kept).await;
    b.kill().await;
    let m = a.post_message(&alice, &room, "after").await;
    let list = stored(a, &bob, 2).await;
    assert_eq!((&list[0]["data"]["message_id"], &list[0]["external"]), (&m["id"], &json!("pending")));
    assert!(common::external_queue(&cluster.db).await.contains(&list[0]["id"].as_str().unwrap().to_string()));
    assert!(a.metric(kept).await > before, "routed from the kept reach");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_stops_watching_is_notified_at_once() {
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let alice = a.register("alice").await;
    let dave = b.register("dave").await;
    let room = a.create_room(&alice, "ops", "public").await;
    join(b, &dave, &room).await;
    let mut dave_watching = b.connect(&dave).await;
    dave_watching.join(&room).await;

    // Dave watches on node B: B tells the cluster, and messages from node A
    // stop costing him a notification.
    let before = a.metric(CHANGES).await;
    let m = a.post_message(&alice, &room, "first").await;
    assert_eq!(dave_watching.recv_type("message").await["data"]["id"], m["id"]);
    eventually("node B noting that dave watches the room", || watching_hint(&cluster.db, &room, &dave)).await;
    heard_of_a_change(a, before).await;
    let m = a.post_message(&alice, &room, "second").await;
    assert_eq!(dave_watching.recv_type("message").await["data"]["id"], m["id"]);
    no_notification(&mut dave_watching, SETTLE).await;

    // A second connection watches nothing: the note is withdrawn with it.
    let before = a.metric(CHANGES).await;
    let mut dave_elsewhere = b.connect(&dave).await;
    dave_elsewhere.request(json!({"type": "ping"})).await;
    assert!(!watching_hint(&cluster.db, &room, &dave).await, "withdrawn when the connection opened");
    heard_of_a_change(a, before).await;
    let m = a.post_message(&alice, &room, "third").await;
    assert_eq!(notification(&mut dave_elsewhere).await["data"]["message_id"], m["id"]);
    let _ = dave_elsewhere.ws.close(None).await;

    // Leaving the room withdraws it too: the very next message notifies.
    let mut dave_only = b.connect(&dave).await;
    dave_only.join(&room).await;
    let before = a.metric(CHANGES).await;
    let m = a.post_message(&alice, &room, "fourth").await;
    assert_eq!(dave_only.recv_type("message").await["data"]["id"], m["id"]);
    // Once noted again, "fourth" has been dealt with.
    eventually("node B noting again that dave watches the room", || watching_hint(&cluster.db, &room, &dave)).await;
    heard_of_a_change(a, before).await;
    let before = a.metric(CHANGES).await;
    let left = dave_only.request(json!({"type": "leave_channel", "channel": room})).await;
    assert_eq!(left["type"], "ack");
    heard_of_a_change(a, before).await;
    let m = a.post_message(&alice, &room, "fifth").await;
    assert_eq!(notification(&mut dave_only).await["data"]["message_id"], m["id"]);
    no_notification(&mut dave_watching, Duration::ZERO).await;
    cluster.shutdown().await;
}

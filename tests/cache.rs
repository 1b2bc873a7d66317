//! The Redis cache of room lists and newest history pages: after every kind
//! of change made on one node, a read on another node shows it; repeated
//! reads are hits; Redis trouble falls back to MongoDB without errors and
//! without stale answers.

mod common;

use confab::backend::redis::RedisConfig;

use common::{Node, User};
use serde_json::{json, Value};

/// Bob's entry for `room` in his room list, read on `node`.
async fn entry(node: &Node, user: &User, room: &str) -> Option<Value> {
    let (s, body) = node.call("GET", "/rooms", Some(&user.token), None).await;
    assert_eq!(s, 200, "{body}");
    body["rooms"].as_array().unwrap().iter().find(|r| r["id"] == room).cloned()
}

/// Reads twice: the second read must be a cache hit and agree with the first.
async fn entry_twice(node: &Node, user: &User, room: &str) -> Option<Value> {
    let first = entry(node, user, room).await;
    let hits = node.metric("confab_cache_requests_total{cache=\"rooms\",result=\"hit\"}").await;
    let second = entry(node, user, room).await;
    let after = node.metric("confab_cache_requests_total{cache=\"rooms\",result=\"hit\"}").await;
    assert!(after > hits, "the second identical read is served from the cache");
    assert_eq!(first, second);
    second
}

async fn newest_contents(node: &Node, user: &User, room: &str) -> Vec<String> {
    let (s, body) = node.call("GET", &format!("/messages?room_id={room}"), Some(&user.token), None).await;
    assert_eq!(s, 200, "{body}");
    body["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap_or("").to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_change_on_one_node_is_seen_at_once_on_another() {
    let c = common::Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = b.register("alice").await;
    let bob = a.register("bob").await;
    let public = b.create_room(&alice, "lobby", "public").await;

    // A new public room appears in everyone's list.
    let seen = entry_twice(a, &bob, &public).await.expect("public room listed");
    assert_eq!(
        (&seen["role"], &seen["unread_count"], &seen["last_message"]),
        (&Value::Null, &Value::Null, &Value::Null)
    );
    let later = b.create_room(&alice, "later", "public").await;
    assert!(entry(a, &bob, &later).await.is_some(), "new public room visible at once");

    // Join: bob becomes a member with an unread count.
    entry_twice(a, &bob, &public).await;
    let (s, _) = b.call("POST", &format!("/rooms/{public}/join"), Some(&bob.token), None).await;
    assert_eq!(s, 200);
    let seen = entry_twice(a, &bob, &public).await.unwrap();
    assert_eq!((seen["role"].as_str(), seen["unread_count"].as_i64()), (Some("member"), Some(0)));

    // New message: last message and unread count; the newest history page too.
    assert!(newest_contents(a, &bob, &public).await.is_empty());
    assert!(newest_contents(a, &bob, &public).await.is_empty());
    let sent = b.post_message(&alice, &public, "hello").await;
    let seen = entry_twice(a, &bob, &public).await.unwrap();
    assert_eq!((seen["last_message"]["content"].as_str(), seen["unread_count"].as_i64()), (Some("hello"), Some(1)));
    assert_eq!(newest_contents(a, &bob, &public).await, ["hello"]);
    let hits = a.metric("confab_cache_requests_total{cache=\"history\",result=\"hit\"}").await;
    assert_eq!(newest_contents(a, &bob, &public).await, ["hello"]);
    assert!(a.metric("confab_cache_requests_total{cache=\"history\",result=\"hit\"}").await > hits);

    // Edit and delete: the page and the list show the change at once.
    let id = sent["id"].as_str().unwrap();
    let (s, _) =
        b.call("PATCH", &format!("/messages/{id}"), Some(&alice.token), Some(json!({"content": "hello!"}))).await;
    assert_eq!(s, 200);
    assert_eq!(newest_contents(a, &bob, &public).await, ["hello!"]);
    assert_eq!(entry_twice(a, &bob, &public).await.unwrap()["last_message"]["content"], "hello!");
    let extra = b.post_message(&alice, &public, "to be deleted").await;
    assert_eq!(newest_contents(a, &bob, &public).await, ["hello!", "to be deleted"]);
    assert_eq!(entry_twice(a, &bob, &public).await.unwrap()["unread_count"], 2);
    let (s, _) =
        b.call("DELETE", &format!("/messages/{}", extra["id"].as_str().unwrap()), Some(&alice.token), None).await;
    assert_eq!(s, 200);
    assert_eq!(newest_contents(a, &bob, &public).await, ["hello!", ""], "a tombstone, without content");
    let seen = entry_twice(a, &bob, &public).await.unwrap();
    assert_eq!((&seen["last_message"]["deleted"], &seen["unread_count"]), (&json!(true), &json!(1)));

    // Read cursor: unread drops to 0.
    let (s, _) = b
        .call("POST", &format!("/rooms/{public}/read"), Some(&bob.token), Some(json!({"message_id": sent["id"]})))
        .await;
    assert_eq!(s, 200);
    assert_eq!(entry_twice(a, &bob, &public).await.unwrap()["unread_count"], 0);

    // Membership changes in a private group: added, promoted, removed.
    let group = b.create_room(&alice, "group", "private").await;
    assert!(entry_twice(a, &bob, &group).await.is_none());
    let members = format!("/rooms/{group}/members");
    let (s, _) = b.call("POST", &members, Some(&alice.token), Some(json!({"user_id": bob.id}))).await;
    assert_eq!(s, 201);
    assert_eq!(entry_twice(a, &bob, &group).await.expect("added")["role"], "member");
    let (s, _) =
        b.call("PATCH", &format!("{members}/{}", bob.id), Some(&alice.token), Some(json!({"role": "moderator"}))).await;
    assert_eq!(s, 200);
    assert_eq!(entry_twice(a, &bob, &group).await.unwrap()["role"], "moderator");
    let (s, _) = b.call("DELETE", &format!("{members}/{}", bob.id), Some(&alice.token), None).await;
    assert_eq!(s, 204);
    assert!(entry(a, &bob, &group).await.is_none(), "removed: gone from the list at once");

    let ratio = a.metric("confab_cache_hit_ratio{cache=\"rooms\"}").await;
    assert!(ratio > 0.0 && ratio < 1.0, "hit ratio is exported: {ratio}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_trouble_falls_back_to_mongodb_and_never_serves_stale_entries() {
    let mut redis = common::OwnRedis::start();
    let mut cfg = common::config(&common::unique_db());
    cfg.redis = RedisConfig::new(redis.url());
    let n = Node::start(cfg).await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, "general", "public").await;
    n.post_message(&alice, &room, "one").await;
    entry_twice(&n, &alice, &room).await;
    assert_eq!(newest_contents(&n, &alice, &room).await, ["one"]);

    // Redis still answers reads but refuses writes: the version bump fails,
    // the cached entries are still there, and they must not be served.
    redis_cli(redis.port, &["CONFIG", "SET", "min-replicas-to-write", "1"]);
    n.post_message(&alice, &room, "two").await;
    assert_eq!(entry(&n, &alice, &room).await.unwrap()["last_message"]["content"], "two");
    assert_eq!(newest_contents(&n, &alice, &room).await, ["one", "two"]);
    redis_cli(redis.port, &["CONFIG", "SET", "min-replicas-to-write", "0"]);
    // Once the bump lands, caching resumes, fresh.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(entry_twice(&n, &alice, &room).await.unwrap()["last_message"]["content"], "two");

    // Redis gone: answers come from MongoDB, never an error.
    redis.stop();
    n.post_message(&alice, &room, "three").await;
    assert_eq!(entry(&n, &alice, &room).await.unwrap()["last_message"]["content"], "three");
    assert_eq!(newest_contents(&n, &alice, &room).await, ["one", "two", "three"]);
    redis.resume();
    n.shutdown().await;
}

fn redis_cli(port: u16, args: &[&str]) {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed with redis-server");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

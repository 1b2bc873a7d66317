//! Editing and deleting messages (docs/api.md, "Editing and deleting
//! messages"): who may, what every subscriber on every node sees, and what
//! history and replays return afterwards.

mod common;

use std::time::Duration;

use bson::{doc, oid::ObjectId};
use common::{assert_error, Client, Cluster, Node, User};
use serde_json::{json, Value};

/// Adds `user` to the room with `role`, as the room's owner, over the API.
async fn add_member(n: &Node, owner: &User, room: &str, user: &User, role: &str) {
    let body = json!({"user_id": user.id, "role": role});
    let (s, b) = n.call("POST", &format!("/rooms/{room}/members"), Some(&owner.token), Some(body)).await;
    assert_eq!(s, 201, "{b}");
}

/// `user` leaves the room, over the API.
async fn leave(n: &Node, room: &str, user: &User) {
    let (s, b) = n.call("DELETE", &format!("/rooms/{room}/members/{}", user.id), Some(&user.token), None).await;
    assert_eq!(s, 204, "{b}");
}

async fn edit(n: &Node, user: &User, id: &str, body: Value) -> (u16, Value) {
    n.call("PATCH", &format!("/messages/{id}"), Some(&user.token), Some(body)).await
}

async fn delete(n: &Node, user: &User, id: &str) -> (u16, Value) {
    n.call("DELETE", &format!("/messages/{id}"), Some(&user.token), None).await
}

async fn history(n: &Node, user: &User, room: &str) -> Vec<Value> {
    let (s, page) = n.call("GET", &format!("/messages?room_id={room}"), Some(&user.token), None).await;
    assert_eq!(s, 200, "{page}");
    page["messages"].as_array().unwrap().clone()
}

async fn joined(n: &Node, user: &User, room: &str) -> Client {
    let mut c = n.connect(user).await;
    c.join(room).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_reaches_subscribers_on_the_other_node_and_history() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    let sent = a.post_message(&alice, &room, "helo wrold").await;
    let id = sent["id"].as_str().unwrap();
    assert!(sent["edited_at"].is_null() && sent["deleted"] == false, "{sent}");
    let mut on_b = joined(b, &bob, &room).await;

    let (s, edited) = edit(a, &alice, id, json!({"content": "hello world"})).await;
    assert_eq!(s, 200, "{edited}");
    assert_eq!((edited["id"].as_str(), edited["content"].as_str()), (Some(id), Some("hello world")));
    assert_eq!((edited["seq"].as_i64(), edited["deleted"].as_bool()), (Some(1), Some(false)));
    assert_eq!(edited["timestamp"], sent["timestamp"], "the send time stays");
    let edited_at = edited["edited_at"].as_str().expect("edited_at is set");
    assert!(chrono::DateTime::parse_from_rfc3339(edited_at).is_ok() && edited_at.ends_with('Z'), "{edited_at}");

    let frame = on_b.recv().await;
    assert_eq!(frame["type"], "message_updated", "{frame}");
    assert_eq!((frame["channel"].as_str(), frame["user_id"].as_str()), (Some(room.as_str()), Some(alice.id.as_str())));
    assert_eq!(frame["data"], edited, "the frame carries the message as the PATCH returned it");
    on_b.assert_silent(Duration::from_millis(300)).await;

    let msgs = history(b, &bob, &room).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0], edited);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_sender_edits_a_live_message_with_valid_content() {
    let c = Cluster::start(1).await;
    let n = &c.nodes[0];
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, "general", "public").await;
    n.call("POST", &format!("/rooms/{room}/join"), Some(&bob.token), None).await;
    let sent = n.post_message(&alice, &room, "original").await;
    let id = sent["id"].as_str().unwrap().to_string();

    let (s, b) = edit(n, &bob, &id, json!({"content": "hijacked"})).await;
    assert_error(s, &b, 403, "forbidden");
    let (s, b) = edit(n, &alice, &ObjectId::new().to_hex(), json!({"content": "x"})).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = edit(n, &alice, "not-an-id", json!({"content": "x"})).await;
    assert_error(s, &b, 400, "bad_request");
    for bad in [json!({"content": ""}), json!({"content": " \n "}), json!({"content": "x".repeat(4001)}), json!({})] {
        let (s, b) = edit(n, &alice, &id, bad.clone()).await;
        assert_error(s, &b, 422, "validation_failed");
        assert!(b["error"]["message"].as_str().unwrap().contains("content"), "{bad} -> {b}");
    }
    let (s, _) = n.call("PATCH", &format!("/messages/{id}"), None, Some(json!({"content": "x"}))).await;
    assert_eq!(s, 401);
    assert_eq!(history(n, &alice, &room).await[0]["content"], "original", "nothing above changed it");

    // A sender who can no longer read the room may not edit there.
    let private = n.create_room(&alice, "secret", "private").await;
    add_member(n, &alice, &private, &bob, "member").await;
    let theirs = n.post_message(&bob, &private, "before leaving").await;
    let theirs = theirs["id"].as_str().unwrap();
    leave(n, &private, &bob).await;
    let (s, b) = edit(n, &bob, theirs, json!({"content": "after leaving"})).await;
    assert_error(s, &b, 403, "forbidden");

    // A tombstone cannot be edited back to life.
    let (s, _) = delete(n, &alice, &id).await;
    assert_eq!(s, 200);
    let (s, b) = edit(n, &alice, &id, json!({"content": "revived"})).await;
    assert_error(s, &b, 409, "message_deleted");
    let (s, b) = edit(n, &bob, &id, json!({"content": "revived"})).await;
    assert_error(s, &b, 403, "forbidden");
    assert!(history(n, &alice, &room).await[0]["content"].is_null());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_leave_tombstones_in_place_for_history_and_replay() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let owner = a.register("owner").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = a.create_room(&owner, "general", "public").await;
    b.call("POST", &format!("/rooms/{room}/join"), Some(&bob.token), None).await;
    let mut ids = Vec::new();
    for i in 1..=3 {
        let m = b.post_message(&bob, &room, &format!("m{i}")).await;
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    let mut on_b = joined(b, &carol, &room).await;

    // The sender deletes on node A; a subscriber on node B sees it.
    let (s, tomb) = delete(a, &bob, &ids[0]).await;
    assert_eq!(s, 200, "{tomb}");
    assert_eq!((tomb["id"].as_str(), tomb["seq"].as_i64()), (Some(ids[0].as_str()), Some(1)));
    assert_eq!((tomb["deleted"].as_bool(), tomb["sender_id"].as_str()), (Some(true), Some(bob.id.as_str())));
    assert!(tomb["content"].is_null() && tomb["edited_at"].is_null(), "{tomb}");
    let frame = on_b.recv().await;
    assert_eq!(frame["type"], "message_deleted", "{frame}");
    assert_eq!((frame["channel"].as_str(), frame["user_id"].as_str()), (Some(room.as_str()), Some(bob.id.as_str())));
    assert_eq!(frame["data"], tomb);

    // The room's owner may delete someone else's message.
    let (s, tomb2) = delete(a, &owner, &ids[1]).await;
    assert_eq!(s, 200, "{tomb2}");
    let frame = on_b.recv().await;
    assert_eq!((frame["type"].as_str(), frame["user_id"].as_str()), (Some("message_deleted"), Some(owner.id.as_str())));
    assert_eq!(frame["data"], tomb2);

    // Again: the same tombstone, and no second frame.
    let (s, again) = delete(b, &bob, &ids[0]).await;
    assert_eq!((s, &again), (200, &tomb));
    on_b.assert_silent(Duration::from_millis(300)).await;

    // History keeps them in place.
    let msgs = history(b, &carol, &room).await;
    let seqs: Vec<i64> = msgs.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!((msgs[0].clone(), msgs[1]["deleted"].clone()), (tomb.clone(), json!(true)));
    assert!(msgs[1]["content"].is_null());
    assert_eq!((msgs[2]["content"].as_str(), msgs[2]["deleted"].as_bool()), (Some("m3"), Some(false)));

    // So does a replay on join.
    let mut late = b.connect(&carol).await;
    let ack = late.request(json!({"type": "join_channel", "channel": room, "data": {"after_seq": 0}})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let mut replayed = Vec::new();
    for _ in 0..3 {
        replayed.push(late.recv_type("message").await["data"].clone());
    }
    assert_eq!(replayed, msgs, "replay returns what history returns, tombstones included");

    // The content is gone from the store, not just hidden.
    let client = mongodb::Client::with_uri_str(common::mongo_url()).await.unwrap();
    let stored = client
        .database(&c.db)
        .collection::<bson::Document>("messages")
        .find_one(doc! {"_id": ObjectId::parse_str(&ids[0]).unwrap()})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.get_str("content").unwrap(), "");
    assert!(stored.get_bool("deleted").unwrap() && stored.get_datetime("deleted_at").is_ok(), "{stored}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_may_not_delete_others_messages_but_moderators_may() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let owner = a.register("owner").await;
    let bob = a.register("bob").await;
    let dave = b.register("dave").await;
    let room = a.create_room(&owner, "general", "public").await;
    for user in [&bob, &dave] {
        a.call("POST", &format!("/rooms/{room}/join"), Some(&user.token), None).await;
    }
    let m = a.post_message(&bob, &room, "mine").await;
    let id = m["id"].as_str().unwrap();
    let mut watcher = joined(a, &owner, &room).await;

    let (s, body) = delete(b, &dave, id).await;
    assert_error(s, &body, 403, "forbidden");
    let outsider = b.register("outsider").await;
    let (s, body) = delete(b, &outsider, id).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = delete(b, &dave, &ObjectId::new().to_hex()).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = delete(b, &dave, "nope").await;
    assert_error(s, &body, 400, "bad_request");
    assert_eq!(history(a, &owner, &room).await[0]["content"], "mine");
    watcher.assert_silent(Duration::from_millis(300)).await;

    let (s, body) = a
        .call(
            "PATCH",
            &format!("/rooms/{room}/members/{}", dave.id),
            Some(&owner.token),
            Some(json!({"role": "moderator"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let (s, tomb) = delete(b, &dave, id).await;
    assert_eq!(s, 200, "{tomb}");
    assert_eq!(tomb["deleted"], true);
    let frame = watcher.recv_type("message_deleted").await;
    assert_eq!((frame["type"].as_str(), frame["user_id"].as_str()), (Some("message_deleted"), Some(dave.id.as_str())));
    c.shutdown().await;
}

#[tokio::test]
async fn the_search_path_is_not_taken_for_a_message_id() {
    let n = Node::start(common::config(&common::unique_db())).await;
    let alice = n.register("alice").await;
    let (s, body) = n.call("PATCH", "/messages/search", Some(&alice.token), Some(json!({"content": "x"}))).await;
    assert_error(s, &body, 405, "method_not_allowed");
    let (s, body) = n.call("DELETE", "/messages/search/", Some(&alice.token), None).await;
    assert_error(s, &body, 405, "method_not_allowed");
    let (s, body) = n.call("GET", &format!("/messages/{}", ObjectId::new().to_hex()), Some(&alice.token), None).await;
    assert_error(s, &body, 405, "method_not_allowed");
    n.shutdown().await;
}

//! Direct messages and private groups with roles, across two nodes: who may
//! see, join, read and change a conversation, and how removal takes effect
//! on live sockets everywhere.

mod common;

use std::time::Duration;

use common::{assert_error, Cluster, User};
use serde_json::{json, Value};

fn ids(body: &Value, list: &str, field: &str) -> Vec<String> {
    body[list].as_array().unwrap().iter().map(|r| r[field].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_make_one_private_room_per_pair() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = a.register("carol").await;

    let dm = |to: &User, content: &str| json!({"to_user_id": to.id, "content": content});
    let (s, first) = a.call("POST", "/messages", Some(&alice.token), Some(dm(&bob, "hi bob"))).await;
    assert_eq!(s, 201, "{first}");
    let room = first["room_id"].as_str().unwrap().to_string();

    // Bob finds the conversation in his list, with alice as the peer, on the other node.
    let (_, list) = b.call("GET", "/rooms", Some(&bob.token), None).await;
    let entry = list["rooms"].as_array().unwrap().iter().find(|r| r["id"] == room.as_str()).expect("dm listed");
    assert_eq!(entry["type"], "direct");
    assert_eq!(entry["peer"]["id"], alice.id.as_str());
    assert_eq!(entry["peer"]["username"], "alice");
    assert_eq!(entry["unread_count"], 1);
    assert_eq!(entry["last_message"]["content"], "hi bob");

    let mut bob_ws = b.connect(&bob).await;
    bob_ws.join(&room).await;
    let (s, reply) = b.call("POST", "/messages", Some(&bob.token), Some(dm(&alice, "hi alice"))).await;
    assert_eq!(s, 201, "{reply}");
    assert_eq!(reply["room_id"], room.as_str(), "the same room both ways");
    let (_, again) = a.call("POST", "/messages", Some(&alice.token), Some(dm(&bob, "again"))).await;
    assert_eq!(again["room_id"], room.as_str());
    assert_eq!(bob_ws.recv_type("message").await["data"]["content"], "hi alice");
    assert_eq!(bob_ws.recv_type("message").await["data"]["content"], "again");

    let (s, page) = a.call("GET", &format!("/messages?peer={}", bob.id), Some(&alice.token), None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(ids(&page, "messages", "content"), ["hi bob", "hi alice", "again"]);
    let (_, page) = b.call("GET", &format!("/messages?peer={}&limit=1", alice.id), Some(&bob.token), None).await;
    assert_eq!((ids(&page, "messages", "content"), &page["has_more"]), (vec!["again".to_string()], &json!(true)));

    // A third user cannot see, join, read or post into it.
    let (_, list) = a.call("GET", "/rooms", Some(&carol.token), None).await;
    assert!(!ids(&list, "rooms", "id").contains(&room), "{list}");
    let (s, body) = a.call("POST", &format!("/rooms/{room}/join"), Some(&carol.token), None).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = a.call("GET", &format!("/messages?room_id={room}"), Some(&carol.token), None).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) =
        a.call("POST", "/messages", Some(&carol.token), Some(json!({"room_id": room, "content": "x"}))).await;
    assert_error(s, &body, 403, "forbidden");
    let mut carol_ws = a.connect(&carol).await;
    let denied = carol_ws.request(json!({"type": "join_channel", "channel": room})).await;
    assert_eq!((denied["type"].as_str(), denied["data"]["code"].as_str()), (Some("error"), Some("forbidden")));
    let (s, body) =
        a.call("POST", &format!("/rooms/{room}/members"), Some(&alice.token), Some(json!({"user_id": carol.id}))).await;
    assert_error(s, &body, 403, "forbidden");

    // No conversation yet: an empty page, not an error.
    let (s, empty) = a.call("GET", &format!("/messages?peer={}", carol.id), Some(&alice.token), None).await;
    assert_eq!((s, &empty["messages"]), (200, &json!([])));

    // Bad input.
    let (s, body) = a.call("POST", "/messages", Some(&alice.token), Some(dm(&alice, "me"))).await;
    assert_error(s, &body, 422, "validation_failed");
    let ghost = bson::oid::ObjectId::new().to_hex();
    let (s, body) =
        a.call("POST", "/messages", Some(&alice.token), Some(json!({"to_user_id": ghost, "content": "x"}))).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) =
        a.call("POST", "/messages", Some(&alice.token), Some(json!({"to_user_id": "nope", "content": "x"}))).await;
    assert_error(s, &body, 400, "bad_request");
    let both = json!({"to_user_id": bob.id, "room_id": room, "content": "x"});
    let (s, body) = a.call("POST", "/messages", Some(&alice.token), Some(both)).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = a.call("POST", "/messages", Some(&alice.token), Some(json!({"content": "x"}))).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = a.call("POST", "/messages", Some(&alice.token), Some(dm(&bob, ""))).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = a.call("GET", &format!("/messages?peer={ghost}"), Some(&alice.token), None).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = a.call("GET", "/messages?peer=nope", Some(&alice.token), None).await;
    assert_error(s, &body, 400, "bad_request");
    let (s, body) = a.call("POST", "/rooms", Some(&alice.token), Some(json!({"name": "dm:x", "type": "public"}))).await;
    assert_error(s, &body, 422, "validation_failed");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_messages_racing_from_both_sides_make_one_room() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (ra, rb) = tokio::join!(
        a.call("POST", "/messages", Some(&alice.token), Some(json!({"to_user_id": bob.id, "content": "a"}))),
        b.call("POST", "/messages", Some(&bob.token), Some(json!({"to_user_id": alice.id, "content": "b"}))),
    );
    assert_eq!((ra.0, rb.0), (201, 201), "{ra:?} {rb:?}");
    assert_eq!(ra.1["room_id"], rb.1["room_id"]);
    let (_, page) = a.call("GET", &format!("/messages?peer={}", bob.id), Some(&alice.token), None).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_and_moderators_manage_members_and_removal_cuts_traffic_on_every_node() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = b.register("carol").await;
    let dave = b.register("dave").await;
    let room = a.create_room(&alice, "team", "private").await;
    let members_url = format!("/rooms/{room}/members");
    let add = |user: &User| Some(json!({"user_id": user.id}));

    let (s, m) = a.call("POST", &members_url, Some(&alice.token), add(&bob)).await;
    assert_eq!((s, m["role"].as_str()), (201, Some("member")), "{m}");
    let (s, _) = a.call("POST", &members_url, Some(&alice.token), add(&bob)).await;
    assert_eq!(s, 200, "adding a member again changes nothing");
    let (s, body) = a.call("POST", &members_url, Some(&bob.token), add(&carol)).await;
    assert_error(s, &body, 403, "forbidden");
    let bob_role = format!("{members_url}/{}", bob.id);
    let (s, body) = a.call("PATCH", &bob_role, Some(&bob.token), Some(json!({"role": "moderator"}))).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, m) = b.call("PATCH", &bob_role, Some(&alice.token), Some(json!({"role": "moderator"}))).await;
    assert_eq!((s, m["role"].as_str()), (200, Some("moderator")), "{m}");
    let (s, body) = a.call("PATCH", &bob_role, Some(&alice.token), Some(json!({"role": "owner"}))).await;
    assert_error(s, &body, 422, "validation_failed");

    // Carol, invited by the moderator, is told on her open connection.
    let mut carol_ws = b.connect(&carol).await;
    let (s, m) = a.call("POST", &members_url, Some(&bob.token), add(&carol)).await;
    assert_eq!(s, 201, "{m}");
    let added = carol_ws.recv_type("room_added").await;
    assert_eq!(added["data"]["room_id"], room.as_str());
    let (s, body) =
        a.call("POST", &members_url, Some(&bob.token), Some(json!({"user_id": dave.id, "role": "moderator"}))).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = a.call("DELETE", &format!("{members_url}/{}", alice.id), Some(&bob.token), None).await;
    assert_error(s, &body, 403, "forbidden");

    let (s, list) = b.call("GET", &members_url, Some(&carol.token), None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(ids(&list, "members", "username"), ["alice", "bob", "carol"]);
    assert_eq!(ids(&list, "members", "role"), ["owner", "moderator", "member"]);
    let (s, body) = b.call("GET", &members_url, Some(&dave.token), None).await;
    assert_error(s, &body, 403, "forbidden");

    // Carol listens on node B, alice on node A; the moderator removes carol.
    carol_ws.join(&room).await;
    let mut alice_ws = a.connect(&alice).await;
    alice_ws.join(&room).await;
    alice_ws.say(&room, "before").await;
    assert_eq!(carol_ws.recv_type("message").await["data"]["content"], "before");
    let (s, _) = a.call("DELETE", &format!("{members_url}/{}", carol.id), Some(&bob.token), None).await;
    assert_eq!(s, 204);
    let removed = carol_ws.recv_type("room_removed").await;
    assert_eq!(removed["data"]["room_id"], room.as_str());
    assert_eq!(alice_ws.recv_type("member_removed").await["data"]["user_id"], carol.id.as_str());
    alice_ws.say(&room, "after").await;
    // Carol's socket gets nothing more of the room, cannot post, cannot rejoin.
    let mut seen = Vec::new();
    while let Some(f) = carol_ws.try_recv(Duration::from_millis(700)).await {
        seen.push(f);
    }
    assert!(seen.iter().all(|f| f["type"] != "message"), "removed member still got traffic: {seen:?}");
    let denied = carol_ws.request(json!({"type": "send_message", "channel": room, "data": {"content": "x"}})).await;
    assert_eq!(denied["data"]["code"], "forbidden", "{denied}");
    let denied = carol_ws.request(json!({"type": "join_channel", "channel": room})).await;
    assert_eq!(denied["data"]["code"], "forbidden", "{denied}");
    let (s, body) = b.call("GET", &format!("/messages?room_id={room}"), Some(&carol.token), None).await;
    assert_error(s, &body, 403, "forbidden");

    // Leaving is removing yourself; the owner cannot leave.
    let (s, _) = b.call("DELETE", &format!("{members_url}/{}", bob.id), Some(&bob.token), None).await;
    assert_eq!(s, 204);
    let (s, body) = a.call("DELETE", &format!("{members_url}/{}", alice.id), Some(&alice.token), None).await;
    assert_error(s, &body, 409, "owner_cannot_leave");
    let (s, body) = a.call("DELETE", &format!("{members_url}/{}", dave.id), Some(&alice.token), None).await;
    assert_error(s, &body, 404, "not_found");

    // Bad input.
    let ghost = bson::oid::ObjectId::new().to_hex();
    let (s, body) = a.call("POST", &members_url, Some(&alice.token), Some(json!({"user_id": ghost}))).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = a.call("POST", &members_url, Some(&alice.token), Some(json!({"user_id": "x"}))).await;
    assert_error(s, &body, 400, "bad_request");
    let (s, body) = a.call("POST", &members_url, Some(&alice.token), Some(json!({}))).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = a.call("POST", &format!("/rooms/{ghost}/members"), Some(&alice.token), add(&dave)).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = a.call("GET", "/rooms/nope/members", Some(&alice.token), None).await;
    assert_error(s, &body, 400, "bad_request");
    c.shutdown().await;
}

/// A removed member, or one who left, can no longer post through a socket
/// that was open before: whether the socket had joined the room and left
/// it, or only ever posted to it, every node refuses their next frame for
/// the room, and nothing of theirs is stored. Each way a membership ends is
/// tried with the socket on the other node from the one that ended it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_membership_refuses_the_next_frame_on_every_node() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let group = a.create_room(&alice, "group", "private").await;
    let public = a.create_room(&alice, "lobby", "public").await;
    let (s, body) =
        a.call("POST", &format!("/rooms/{group}/members"), Some(&alice.token), Some(json!({"user_id": bob.id}))).await;
    assert_eq!(s, 201, "{body}");

    // Two sockets of bob's on node B: one joined the group and left it, the
    // other never joined and only posts.
    let mut joined_and_left = b.connect(&bob).await;
    joined_and_left.join(&group).await;
    joined_and_left.say(&group, "from the joined socket").await;
    let left = joined_and_left.request(json!({"type": "leave_channel", "channel": group})).await;
    assert_eq!(left["type"], "ack", "{left}");
    let mut posting_only = b.connect(&bob).await;
    posting_only.say(&group, "from the posting socket").await;

    // Alice removes bob through node A.
    let (s, body) = a.call("DELETE", &format!("/rooms/{group}/members/{}", bob.id), Some(&alice.token), None).await;
    assert_eq!(s, 204, "{body}");
    for socket in [&mut joined_and_left, &mut posting_only] {
        let reply =
            socket.request(json!({"type": "send_message", "channel": group, "data": {"content": "still here?"}})).await;
        assert_eq!((&reply["type"], &reply["data"]["code"]), (&json!("error"), &json!("forbidden")), "{reply}");
    }
    // Nor may the socket join the group again.
    let reply = posting_only.request(json!({"type": "join_channel", "channel": group})).await;
    assert_eq!(reply["data"]["code"], "forbidden", "{reply}");

    // Bob joins the public room and posts there from node B, then leaves
    // it himself through node A.
    let (s, body) = b.call("POST", &format!("/rooms/{public}/join"), Some(&bob.token), None).await;
    assert_eq!(s, 200, "{body}");
    posting_only.say(&public, "hello lobby").await;
    let (s, body) = a.call("DELETE", &format!("/rooms/{public}/members/{}", bob.id), Some(&bob.token), None).await;
    assert_eq!(s, 204, "{body}");
    let reply = posting_only
        .request(json!({"type": "send_message", "channel": public, "data": {"content": "after leaving"}}))
        .await;
    assert_eq!(reply["data"]["code"], "forbidden", "{reply}");

    // Nothing of theirs was stored after the membership ended.
    let contents = |page: &Value| ids(page, "messages", "content");
    let (_, page) = a.call("GET", &format!("/messages?room_id={group}"), Some(&alice.token), None).await;
    assert_eq!(contents(&page), ["from the joined socket", "from the posting socket"]);
    let (_, page) = a.call("GET", &format!("/messages?room_id={public}"), Some(&alice.token), None).await;
    assert_eq!(contents(&page), ["hello lobby"]);
    c.shutdown().await;
}

/// The seq counter is what stops a remembered membership that ended: a
/// connection's memory is refused a seq while the marker stands, whether or
/// not the announcement of the removal reached its node, and without Redis
/// it is refused outright (the store must confirm the sender).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seq_counter_refuses_a_remembered_sender_whose_membership_ended() {
    use confab::seq::{Sender, Seqs, Taken};
    let mut redis = common::OwnRedis::start();
    let db = common::unique_db();
    let store = confab::store::Store::connect(&common::mongo_url(), &db).await.unwrap();
    let seqs = Seqs::connect(
        &confab::backend::redis::RedisConfig::new(redis.url()),
        common::keys(&db),
        std::sync::Arc::new(store),
    )
    .unwrap();
    let (room, bob, carol) = (bson::oid::ObjectId::new(), bson::oid::ObjectId::new(), bson::oid::ObjectId::new());
    for _ in 0..50 {
        seqs.started(room).await;
        if seqs.current(room).await == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seqs.next(room, Sender::Remembered(bob), false).await.unwrap(), Taken::Seq(1));
    seqs.membership_ended(room, bob).await;
    assert_eq!(seqs.next(room, Sender::Remembered(bob), false).await.unwrap(), Taken::Recheck);
    assert_eq!(seqs.next(room, Sender::Remembered(carol), false).await.unwrap(), Taken::Seq(2), "others go on");
    assert_eq!(seqs.next(room, Sender::Confirmed, false).await.unwrap(), Taken::Seq(3), "no seq was skipped");
    seqs.membership_started(room, bob).await;
    assert_eq!(seqs.next(room, Sender::Remembered(bob), false).await.unwrap(), Taken::Seq(4), "invited back");

    redis.stop();
    assert_eq!(seqs.next(room, Sender::Remembered(carol), false).await.unwrap(), Taken::Recheck);
}

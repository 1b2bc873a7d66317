//! Behaviour that crosses nodes: two nodes share Redis and the database;
//! clients on each see every message exactly once, in order, and the
//! messages are in history. Also: a Redis restart mid-test.

mod common;

use confab::backend::redis::RedisConfig;

use std::time::Duration;

use common::{Client, Cluster, Node};
use serde_json::{json, Value};

/// Reads `n` message frames and returns their stored messages.
async fn messages(c: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        out.push(c.recv_type("message").await["data"].clone());
    }
    out
}

/// The contents of the next `n` messages.
async fn contents(c: &mut Client, n: usize) -> Vec<String> {
    messages(c, n).await.iter().map(|m| m["content"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_nodes_exactly_once_in_order() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;

    let mut on_a = a.connect(&alice).await;
    let mut on_b = b.connect(&bob).await;
    let mut also_b = b.connect(&alice).await; // the same user, another node
    on_a.join(&room).await;
    on_b.join(&room).await;
    also_b.join(&room).await;

    // Interleave: each node's client sends in turn.
    let mut expected = Vec::new();
    for i in 0..10 {
        on_a.say(&room, &format!("a{i}")).await;
        expected.push(format!("a{i}"));
        on_b.say(&room, &format!("b{i}")).await;
        expected.push(format!("b{i}"));
    }
    for client in [&mut on_a, &mut on_b, &mut also_b] {
        assert_eq!(contents(client, expected.len()).await, expected);
        client.assert_silent(Duration::from_millis(300)).await; // no duplicates trail behind
    }

    // History on either node holds them all, in seq order.
    let (s, page) = b.call("GET", &format!("/messages?room_id={room}&limit=200"), Some(&bob.token), None).await;
    assert_eq!(s, 200);
    let msgs = page["messages"].as_array().unwrap();
    let history: Vec<&str> = msgs.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(history, expected);
    let seqs: Vec<i64> = msgs.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_two_nodes_get_unique_increasing_seqs() {
    let c = Cluster::start(2).await;
    let alice = c.nodes[0].register("alice").await;
    let room = c.nodes[0].create_room(&alice, "general", "public").await;
    let mut listener = c.nodes[1].connect(&alice).await;
    listener.join(&room).await;
    let per_node = 15;
    let mut tasks = Vec::new();
    for (k, node) in c.nodes.iter().enumerate() {
        let mut sender = node.connect(&alice).await;
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..per_node {
                acks.push(sender.say(&room, &format!("n{k}-{i}")).await);
            }
            acks
        }));
    }
    let mut acked: Vec<Value> = Vec::new();
    for t in tasks {
        let acks = t.await.unwrap();
        // Each sender's own messages get increasing seqs.
        let seqs: Vec<i64> = acks.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        acked.extend(acks);
    }
    let mut seqs: Vec<i64> = acked.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), 2 * per_node, "no seq handed out twice");
    // The listener got each message exactly once.
    let mut got: Vec<String> = contents(&mut listener, 2 * per_node).await;
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 2 * per_node);
    listener.assert_silent(Duration::from_millis(300)).await;
    c.shutdown().await;
}

/// Six members of one room on each node, four senders at once from the
/// room's first message: the test nodes split every event of two or more
/// receivers over three fan-out lanes, and every member still gets every
/// message once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_split_over_fan_out_lanes_keeps_each_members_order() {
    let c = Cluster::start(2).await;
    let owner = c.nodes[0].register("owner").await;
    let room = c.nodes[0].create_room(&owner, "crowd", "public").await;
    let mut members = Vec::new();
    for i in 0..12 {
        let node = &c.nodes[i % 2];
        let user = node.register(&format!("member{i}")).await;
        let mut client = node.connect(&user).await;
        client.join(&room).await;
        members.push(client);
    }
    let per_sender = 10;
    let mut senders = Vec::new();
    for k in 0..4 {
        let mut sender = c.nodes[k % 2].connect(&owner).await;
        let room = room.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..per_sender {
                sender.say(&room, &format!("s{k}-{i}")).await;
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let all: Vec<i64> = (1..=4 * per_sender as i64).collect();
    for (i, member) in members.iter_mut().enumerate() {
        assert_eq!(seqs(member, all.len()).await, all, "member {i}");
    }
    for member in &mut members {
        member.assert_silent(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_local_subscriber_leaving_stops_delivery_to_that_node() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, "general", "public").await;
    let mut on_b = b.connect(&alice).await;
    on_b.join(&room).await;
    a.post_message(&alice, &room, "one").await;
    assert_eq!(contents(&mut on_b, 1).await, ["one"]);
    drop(on_b); // disconnect: node B drops its subscription
    let mut again = b.connect(&alice).await;
    again.join(&room).await; // and subscribes afresh
    a.post_message(&alice, &room, "two").await;
    assert_eq!(contents(&mut again, 1).await, ["two"]);
    c.shutdown().await;
}

/// `n` nodes sharing one new database and the test's own Redis; returns
/// the database's name too.
async fn nodes_on(redis: &common::OwnRedis, n: usize) -> (String, Vec<Node>) {
    let db = common::unique_db();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let mut cfg = common::config(&db);
        cfg.redis = RedisConfig::new(redis.url());
        nodes.push(Node::start(cfg).await);
    }
    (db, nodes)
}

/// `n` nodes on `redis` (see `nodes_on`), alice's new public room, and a
/// connection of hers on each node, joined to it.
async fn alice_in_a_room(redis: &common::OwnRedis, n: usize) -> (String, Vec<Node>, common::User, String, Vec<Client>) {
    let (db, nodes) = nodes_on(redis, n).await;
    let alice = nodes[0].register("alice").await;
    let room = nodes[0].create_room(&alice, "general", "public").await;
    let mut clients = Vec::new();
    for node in &nodes {
        let mut c = node.connect(&alice).await;
        c.join(&room).await;
        clients.push(c);
    }
    (db, nodes, alice, room, clients)
}

/// A Redis of our own, so the test can restart it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_resubscribe_after_a_redis_restart() {
    // Durable, as a deployment's Redis must be: sessions survive the restart.
    let mut redis = common::OwnRedis::durable();
    let (_, nodes, alice, room, mut clients) = alice_in_a_room(&redis, 2).await;
    let a = &nodes[0];
    let (mut on_b, mut on_a) = (clients.pop().unwrap(), clients.pop().unwrap());
    on_a.say(&room, "before").await;
    assert_eq!(contents(&mut on_b, 1).await, ["before"]);
    assert_eq!(contents(&mut on_a, 1).await, ["before"]);

    redis.restart();
    // Nodes reconnect and resubscribe on their own; wait until both are ready.
    for n in &nodes {
        n.wait_ready().await;
    }
    // Sends right after a restart may race the resubscription: they are
    // stored (and so in history) but live delivery is at-most-once. Keep
    // sending until a message gets through, then check the next ones all do.
    let mut through = false;
    for i in 0..50 {
        on_a.say(&room, &format!("probe{i}")).await;
        if let Some(f) = on_b.try_recv(Duration::from_millis(200)).await {
            if f["type"] == "message" {
                through = true;
                break;
            }
        }
    }
    assert!(through, "delivery resumed after the restart");
    for client in [&mut on_a, &mut on_b] {
        while client.try_recv(Duration::from_millis(300)).await.is_some() {}
    }
    for i in 0..5 {
        on_b.say(&room, &format!("after{i}")).await;
    }
    let want: Vec<String> = (0..5).map(|i| format!("after{i}")).collect();
    assert_eq!(contents(&mut on_a, 5).await, want);
    assert_eq!(contents(&mut on_b, 5).await, want);
    // Everything sent is in history, delivered live or not.
    let (_, page) = a.call("GET", &format!("/messages?room_id={room}&limit=200"), Some(&alice.token), None).await;
    let all: Vec<&str> = page["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(all.first(), Some(&"before"));
    assert_eq!(all.last(), Some(&"after4"));
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_one_node_works_on_another() {
    let c = Cluster::start(2).await;
    let alice = c.nodes[0].register("alice").await;
    let (s, body) =
        c.nodes[1].call("POST", "/rooms", Some(&alice.token), Some(json!({"name": "x", "type": "public"}))).await;
    assert_eq!(s, 201, "{body}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_sends_are_stored_and_joins_say_unavailable() {
    let mut redis = common::OwnRedis::start();
    let (_, mut nodes, alice, room, mut clients) = alice_in_a_room(&redis, 1).await;
    let (n, mut c) = (nodes.pop().unwrap(), clients.pop().unwrap());
    let other = n.create_room(&alice, "other", "public").await;

    redis.stop();
    // Stored and acknowledged even though it cannot be published.
    let stored = c.say(&room, "while redis is down").await;
    let (s, page) = n.call("GET", &format!("/messages?room_id={room}"), Some(&alice.token), None).await;
    assert_eq!(s, 200);
    assert_eq!(page["messages"][0]["id"], stored["id"]);
    // A new subscription cannot be made: the client is told to retry.
    let reply = c.request(json!({"type": "join_channel", "channel": other})).await;
    assert_eq!((reply["type"].as_str(), reply["data"]["code"].as_str()), (Some("error"), Some("unavailable")));
    let (s, body) = n.call("GET", "/readyz", None, None).await;
    assert_eq!((s, body["redis"].as_str()), (503, Some("unavailable")));
    n.shutdown().await;
}

/// After Redis came back empty: each of alice's sockets is closed as her
/// session is gone (4001); she logs in again and reconnects on each node,
/// joined to `room`. Her new self and her new sockets, one per node.
async fn relogin(
    nodes: &[Node],
    alice: &common::User,
    room: &str,
    on_a: &mut Client,
    on_b: &mut Client,
) -> (common::User, Client, Client) {
    for socket in [on_a, on_b] {
        assert_eq!(socket.ended().await, common::Ended::Close(Some(4001)));
    }
    let alice = nodes[0].login(alice).await;
    let mut on_a = nodes[0].connect(&alice).await;
    on_a.join(room).await;
    let mut on_b = nodes[1].connect(&alice).await;
    on_b.join(room).await;
    (alice, on_a, on_b)
}

/// Seqs of a room's whole history, oldest first.
async fn history_seqs(n: &Node, user: &common::User, room: &str) -> Vec<i64> {
    let (s, page) = n.call("GET", &format!("/messages?room_id={room}&limit=200"), Some(&user.token), None).await;
    assert_eq!(s, 200, "{page}");
    page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

/// Seqs come from a Redis counter per room (ADR 11); the store decides
/// what is taken. A counter lost with Redis starts again from the store,
/// and one left behind the store catches up on its first collision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_never_repeat_when_redis_loses_its_counters_or_falls_behind() {
    use fred::prelude::*;
    let mut redis = common::OwnRedis::start();
    let (db, nodes, alice, room, mut clients) = alice_in_a_room(&redis, 2).await;
    let a = &nodes[0];
    let (mut on_b, mut on_a) = (clients.pop().unwrap(), clients.pop().unwrap());
    for (i, want) in (1..=3).enumerate() {
        assert_eq!(on_a.say(&room, &format!("m{i}")).await["seq"], want);
    }

    // Redis comes back empty: the counter starts from the store's highest seq.
    redis.restart();
    for n in &nodes {
        n.wait_ready().await;
    }
    // Sessions went with the data: the nodes close alice's sockets (4001)
    // once they are back on the bus, and she logs in again.
    let (alice, mut on_a, mut on_b) = relogin(&nodes, &alice, &room, &mut on_a, &mut on_b).await;
    assert_eq!(on_b.say(&room, "after the restart").await["seq"], 4);
    assert_eq!(on_a.say(&room, "and from the other node").await["seq"], 5);

    // A counter behind the store (restored from an old snapshot, say) by
    // more than a send's attempts: the first seq it hands out is taken, and
    // the counter is raised past the store's highest in one step.
    for i in 6..=30 {
        assert_eq!(on_a.say(&room, &format!("m{i}")).await["seq"], i);
    }
    let client = confab::jobs::redis_client(&RedisConfig::new(redis.url())).await.unwrap();
    let key = confab::keyspace::Keyspace::new(&db).room_seq(bson::oid::ObjectId::parse_str(&room).unwrap());
    let _: () = client.set(&key, 1, None, None, false).await.unwrap();
    assert_eq!(on_a.say(&room, "behind").await["seq"], 31);
    assert_eq!(on_b.say(&room, "caught up").await["seq"], 32);
    let counter: i64 = client.get(&key).await.unwrap();
    assert_eq!(counter, 32);
    let _ = client.quit().await;

    assert_eq!(history_seqs(a, &alice, &room).await, (1..=32).collect::<Vec<_>>());
    for n in nodes {
        n.shutdown().await;
    }
}

/// While Redis is down, seqs come from the room document, raised past the
/// ones Redis handed out; when Redis is back, its counter catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_seqs_come_from_the_store_and_continue_after() {
    let mut redis = common::OwnRedis::start();
    let (_, mut nodes, alice, room, mut clients) = alice_in_a_room(&redis, 1).await;
    let (n, mut c) = (nodes.pop().unwrap(), clients.pop().unwrap());
    // More than a send's attempts, so that the room document's counter,
    // left at 0 while Redis handed seqs out, must be raised, not stepped.
    for i in 1..=20 {
        assert_eq!(c.say(&room, &format!("m{i}")).await["seq"], i);
    }

    redis.stop();
    assert_eq!(c.say(&room, "redis down").await["seq"], 21);
    assert_eq!(n.post_message(&alice, &room, "still down").await["seq"], 22);

    redis.resume();
    n.wait_ready().await;
    // This Redis came back empty, sessions and all: alice's socket is closed
    // (4001) and she logs in again.
    assert_eq!(c.ended().await, common::Ended::Close(Some(4001)));
    let alice = n.login(&alice).await;
    let mut c = n.connect(&alice).await;
    c.join(&room).await;
    assert_eq!(c.say(&room, "redis back").await["seq"], 23);
    assert_eq!(c.say(&room, "and on").await["seq"], 24);
    assert_eq!(history_seqs(&n, &alice, &room).await, (1..=24).collect::<Vec<_>>());
    n.shutdown().await;
}

/// The seqs of the next `n` messages.
async fn seqs(c: &mut Client, n: usize) -> Vec<i64> {
    messages(c, n).await.iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

/// Publishes a stored-message event for `seq` in `room` straight to Redis,
/// as a node that stored it would.
async fn publish_seq(redis: &fred::prelude::Client, db: &str, room: &str, seq: i64) {
    use confab::bus::{wire, Event, Topic};
    let message = confab::store::Message {
        id: bson::oid::ObjectId::new(),
        room_id: bson::oid::ObjectId::parse_str(room).unwrap(),
        seq,
        sender_id: bson::oid::ObjectId::new(),
        content: format!("m{seq}"),
        client_msg_id: None,
        dedup_key: String::new(),
        timestamp: chrono::Utc::now(),
        edited_at: None,
        deleted: false,
        deleted_at: None,
    };
    let frame = confab::protocol::ServerEvent::Message(&message).encode();
    let event =
        wire::encode(Event::Message { id: message.id, seq, stored_at_us: confab::clock::now_us(), frame: &frame });
    let keys = common::keys(db);
    let channel = confab::bus::redis::channel(&keys, Topic::Room(message.room_id));
    common::bus_publish(redis, channel, event).await;
}

/// The first two messages a node gets after it subscribes to a room keep
/// their order even when they cross in flight (two senders on two other
/// nodes): the node starts the room's order at the room's seq counter,
/// read once it is subscribed. Redis keeps one channel's order, so the
/// crossing is made here by publishing the later seq first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_messages_after_a_node_subscribes_keep_their_order() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    for i in 1..=3 {
        a.post_message(&alice, &room, &format!("m{i}")).await;
    }
    let mut on_b = b.connect(&bob).await;
    on_b.join(&room).await; // node b subscribes; the counter stands at 3
    let redis = confab::jobs::redis_client(&RedisConfig::new(common::redis_url())).await.unwrap();
    publish_seq(&redis, &c.db, &room, 5).await;
    publish_seq(&redis, &c.db, &room, 4).await;
    assert_eq!(seqs(&mut on_b, 2).await, [4, 5]);
    on_b.assert_silent(Duration::from_millis(300)).await;

    // A new room's counter starts at 0 before its first message.
    let new = a.create_room(&alice, "new", "public").await;
    on_b.join(&new).await;
    publish_seq(&redis, &c.db, &new, 2).await;
    publish_seq(&redis, &c.db, &new, 1).await;
    assert_eq!(seqs(&mut on_b, 2).await, [1, 2]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_replays_from_its_last_seq_then_continues_live() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    for i in 1..=5 {
        a.post_message(&alice, &room, &format!("m{i}")).await;
    }
    let mut on_b = b.connect(&bob).await;
    let ack = on_b.request(json!({"type": "join_channel", "channel": room, "data": {"after_seq": 2}})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(seqs(&mut on_b, 3).await, [3, 4, 5]);
    a.post_message(&alice, &room, "m6").await;
    assert_eq!(seqs(&mut on_b, 1).await, [6]);
    on_b.assert_silent(Duration::from_millis(300)).await;

    // `after` with a message id resolves to its seq.
    let (_, page) = a.call("GET", &format!("/messages?room_id={room}&after_seq=4"), Some(&alice.token), None).await;
    let contents: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["m5", "m6"]);
    let fifth = page["messages"][0]["id"].as_str().unwrap().to_string();
    let mut again = b.connect(&bob).await;
    let ack = again.request(json!({"type": "join_channel", "channel": room, "data": {"after": fifth}})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(seqs(&mut again, 1).await, [6]);
    again.assert_silent(Duration::from_millis(300)).await;

    // Bad replay points.
    let other = a.create_room(&alice, "other", "public").await;
    let foreign = a.post_message(&alice, &other, "elsewhere").await;
    let cases = [
        (json!({"after_seq": -1}), "validation_failed"),
        (json!({"after_seq": 1, "after": fifth}), "validation_failed"),
        (json!({"after": "nope"}), "bad_request"),
        (json!({"after": foreign["id"]}), "not_found"),
        (json!({"after_seq": "x"}), "bad_request"),
    ];
    let mut probe = b.connect(&bob).await;
    for (data, code) in cases {
        let reply = probe.request(json!({"type": "join_channel", "channel": room, "data": data})).await;
        assert_eq!((reply["type"].as_str(), reply["data"]["code"].as_str()), (Some("error"), Some(code)), "{data}");
    }
    for q in ["after_seq=-1", "after_seq=abc", &format!("after_seq=1&after={fifth}")] {
        let (s, body) = a.call("GET", &format!("/messages?room_id={room}&{q}"), Some(&alice.token), None).await;
        assert_eq!((s, body["error"]["code"].as_str()), (422, Some("validation_failed")), "{q}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_during_live_traffic_from_another_node_has_no_gap_and_no_duplicate() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    // More than one replay page of history.
    let mut sender = a.connect(&alice).await;
    for i in 0..250 {
        sender.say(&room, &format!("h{i}")).await;
    }
    // Live traffic keeps flowing from node A while bob replays on node B.
    let live = 40;
    let room2 = room.clone();
    let traffic = tokio::spawn(async move {
        for i in 0..live {
            sender.say(&room2, &format!("l{i}")).await;
        }
    });
    let mut on_b = b.connect(&bob).await;
    let ack = on_b.request(json!({"type": "join_channel", "channel": room, "data": {"after_seq": 0}})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    traffic.await.unwrap();
    let got = seqs(&mut on_b, 250 + live).await;
    assert_eq!(got, (1..=(250 + live as i64)).collect::<Vec<_>>(), "every seq once, in order");
    on_b.assert_silent(Duration::from_millis(300)).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_missing_from_the_live_stream_is_filled_from_history_in_order() {
    // Nodes A and B share Redis; node C shares the database but publishes to
    // a Redis of its own, so A never hears what C stores.
    let c = Cluster::start(2).await;
    let isolated = common::OwnRedis::start();
    let mut cfg = common::config(&c.db);
    cfg.redis = RedisConfig::new(isolated.url());
    let island = Node::start(cfg).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    // The island keeps its sessions in its own Redis.
    let alice_on_island = island.login(&alice).await;
    let room = a.create_room(&alice, "general", "public").await;
    let mut listener = a.connect(&carol).await;
    listener.join(&room).await;

    a.post_message(&alice, &room, "one").await;
    assert_eq!(listener.recv_type("message").await["data"]["content"], "one");
    let filled_before = a.metric("confab_seq_gap_filled_total").await;
    island.post_message(&alice_on_island, &room, "two").await; // stored, never published where A listens
    b.post_message(&alice, &room, "three").await;

    let mut got = Vec::new();
    for _ in 0..2 {
        let m = listener.recv_type("message").await;
        got.push((m["data"]["seq"].as_i64().unwrap(), m["data"]["content"].as_str().unwrap().to_string()));
    }
    assert_eq!(got, [(2, "two".to_string()), (3, "three".to_string())], "the gap is filled, in seq order");
    listener.assert_silent(Duration::from_millis(500)).await;
    assert!(a.metric("confab_seq_gap_filled_total").await > filled_before);
    island.shutdown().await;
    c.shutdown().await;
}

/// A seq is handed out before its message is stored, so a later seq can be
/// stored first. Catch-up reads (`after_seq`) never show a hole that may
/// still fill: a young hole ends the page; one older than
/// `seq_void_after` is voided for good, and the late write is refused by
/// the store and re-sequenced by its sender, not lost (docs/api.md, "Seqs
/// that skip").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_stored_late_is_waited_for_and_one_never_stored_is_voided() {
    use fred::interfaces::{ClientLike, KeysInterface};
    let db = common::unique_db();
    let mut config = common::config(&db);
    config.seq_void_after = Duration::from_millis(1500);
    let (a, b) = (Node::start(config.clone()).await, Node::start(config).await);
    let alice = a.register("alice").await;
    let room = a.create_room(&alice, "general", "public").await;
    let room_id = bson::oid::ObjectId::parse_str(&room).unwrap();
    let mut on_a = a.connect(&alice).await;
    on_a.join(&room).await;
    let redis = confab::jobs::redis_client(&RedisConfig::new(common::redis_url())).await.unwrap();
    let counter = common::keys(&db).room_seq(room_id);
    let store = confab::store::Store::connect(&common::mongo_url(), &db).await.unwrap();
    let after = |seq: i64| format!("/messages?room_id={room}&after_seq={seq}");
    let page_seqs = |page: &serde_json::Value| -> Vec<i64> {
        page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect()
    };
    // A sender that took a seq and has not stored it yet.
    let take = || async { redis.incr::<i64, _>(&counter).await.unwrap() };
    let late = |seq: i64| {
        let mut m = confab::store::Message::void(room_id, seq, chrono::Utc::now());
        m.id = bson::oid::ObjectId::new();
        m.sender_id = bson::oid::ObjectId::parse_str(&alice.id).unwrap();
        m.content = format!("late {seq}");
        m.dedup_key = m.id.to_hex();
        m.deleted = false;
        m.deleted_at = None;
        m
    };

    assert_eq!(on_a.say(&room, "one").await["seq"], 1);
    assert_eq!(take().await, 2);
    assert_eq!(on_a.say(&room, "three").await["seq"], 3);
    // 2 may still come: the page stops before it, on either node.
    for n in [&a, &b] {
        let (s, page) = n.call("GET", &after(1), Some(&alice.token), None).await;
        assert_eq!(s, 200, "{page}");
        assert_eq!((page_seqs(&page), &page["has_more"]), (vec![], &json!(false)));
        let (_, page) = n.call("GET", &after(0), Some(&alice.token), None).await;
        assert_eq!(page_seqs(&page), [1]);
    }
    // It comes, late but within the wait: shown, in its place.
    store.insert_message(&late(2)).await.unwrap();
    let (_, page) = b.call("GET", &after(0), Some(&alice.token), None).await;
    assert_eq!(page_seqs(&page), [1, 2, 3]);

    // 4 is taken and never stored (its node died, say).
    assert_eq!(take().await, 4);
    assert_eq!(on_a.say(&room, "five").await["seq"], 5);
    let (_, page) = b.call("GET", &after(3), Some(&alice.token), None).await;
    assert_eq!(page_seqs(&page), Vec::<i64>::new());
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // After the wait 4 is given up for good: the page reads past it.
    let (_, page) = b.call("GET", &after(3), Some(&alice.token), None).await;
    assert_eq!((page_seqs(&page), &page["has_more"]), (vec![5], &json!(false)));
    assert_eq!(b.metric("confab_seq_voided_total").await, 1.0);
    // Its write, should it come now, is refused: no one would show it.
    assert!(matches!(store.insert_message(&late(4)).await, Err(confab::store::StoreError::Duplicate)));
    // A send that was handed 4 (a counter behind, as a slow sender's was)
    // collides with the void and is stored under a new seq.
    let _: () = redis.set(&counter, 3, None, None, false).await.unwrap();
    assert_eq!(on_a.say(&room, "six").await["seq"], 6);
    for n in [&a, &b] {
        let (_, page) = n.call("GET", &after(0), Some(&alice.token), None).await;
        assert_eq!(page_seqs(&page), [1, 2, 3, 5, 6], "the void is never shown");
        let (_, page) = n.call("GET", &format!("/messages?room_id={room}"), Some(&alice.token), None).await;
        assert_eq!(page_seqs(&page), [1, 2, 3, 5, 6]);
    }
    // A time bound is not a hole: what it leaves out is not voided.
    let (_, newest) = a.call("GET", &format!("/messages?room_id={room}&limit=1"), Some(&alice.token), None).await;
    let at = newest["messages"][0]["timestamp"].as_str().unwrap().to_string();
    let bounded = format!("/messages?room_id={room}&after_seq=0&since={}", at.replace('+', "%2B"));
    let (s, page) = a.call("GET", &bounded, Some(&alice.token), None).await;
    assert_eq!((s, page_seqs(&page)), (200, vec![6]), "{page}");
    // Nor counted as unread, nor shown as the room's last message.
    let (_, rooms) = a.call("GET", "/rooms", Some(&alice.token), None).await;
    let listed = rooms["rooms"].as_array().unwrap().iter().find(|r| r["id"] == room.as_str()).unwrap().clone();
    assert_eq!(listed["last_message"]["seq"], 6, "{listed}");

    // A socket that joins after 3 gets 5 and 6, nothing in 4's place.
    let mut fresh = b.connect(&alice).await;
    fresh.send(json!({"type": "join_channel", "channel": room, "data": {"after_seq": 3}, "ref": 1})).await;
    let replayed: Vec<i64> = messages(&mut fresh, 2).await.iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(replayed, [5, 6]);
    let _ = redis.quit().await;
    a.shutdown().await;
    b.shutdown().await;
}

//! Delivery and read cursors across two nodes: acknowledgements over the
//! socket and REST, receipts to senders wherever they are connected, message
//! status, and unread counts.

mod common;

use common::{assert_error, Cluster};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_move_forward_and_senders_get_receipts_on_any_node() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = a.create_room(&alice, "team", "private").await;
    for user in [&bob, &carol] {
        let (s, body) = a
            .call("POST", &format!("/rooms/{room}/members"), Some(&alice.token), Some(json!({"user_id": user.id})))
            .await;
        assert_eq!(s, 201, "{body}");
    }
    // Alice listens on node A without joining the room: receipts come on her own topic.
    let mut alice_ws = a.connect(&alice).await;
    let m1 = a.post_message(&alice, &room, "one").await;
    let m2 = a.post_message(&alice, &room, "two").await;
    let (m1, m2) = (m1["id"].as_str().unwrap().to_string(), m2["id"].as_str().unwrap().to_string());

    let unread = |body: &Value| {
        body["rooms"].as_array().unwrap().iter().find(|r| r["id"] == room.as_str()).unwrap()["unread_count"].clone()
    };
    let (_, list) = b.call("GET", "/rooms", Some(&bob.token), None).await;
    assert_eq!(unread(&list), 2);
    let (_, list) = a.call("GET", "/rooms", Some(&alice.token), None).await;
    assert_eq!(unread(&list), 0, "your own messages are never unread");

    // Bob's client on node B says m1 arrived.
    let mut bob_ws = b.connect(&bob).await;
    let ack = bob_ws.request(json!({"type": "delivered", "channel": room, "data": {"message_id": m1}})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (ack["data"]["delivered_up_to"].as_str(), &ack["data"]["read_up_to"]),
        (Some(m1.as_str()), &Value::Null)
    );
    let receipt = alice_ws.recv_type("receipt").await;
    assert_eq!(receipt["data"]["status"], "delivered");
    assert_eq!(receipt["data"]["message_id"], m1.as_str());
    assert_eq!(receipt["data"]["user_id"], bob.id.as_str());
    assert_eq!(receipt["channel"], room.as_str());

    // Reading m2 over REST passes both cursors over m2: one receipt each.
    let (s, cursors) =
        b.call("POST", &format!("/rooms/{room}/read"), Some(&bob.token), Some(json!({"message_id": m2}))).await;
    assert_eq!(s, 200, "{cursors}");
    assert_eq!(
        (cursors["delivered_up_to"].as_str(), cursors["read_up_to"].as_str()),
        (Some(m2.as_str()), Some(m2.as_str()))
    );
    let mut got = [alice_ws.recv_type("receipt").await, alice_ws.recv_type("receipt").await];
    got.sort_by_key(|r| r["data"]["status"].as_str().unwrap().to_string());
    assert_eq!(
        (got[0]["data"]["status"].as_str(), got[0]["data"]["message_id"].as_str()),
        (Some("delivered"), Some(m2.as_str()))
    );
    assert_eq!(
        (got[1]["data"]["status"].as_str(), got[1]["data"]["message_id"].as_str()),
        (Some("read"), Some(m2.as_str()))
    );
    let (_, list) = b.call("GET", "/rooms", Some(&bob.token), None).await;
    assert_eq!(unread(&list), 0);

    // Cursors never move back, and nobody is told twice.
    let back = bob_ws.request(json!({"type": "read", "channel": room, "data": {"message_id": m1}})).await;
    assert_eq!(back["data"]["read_up_to"], m2.as_str(), "{back}");
    alice_ws.assert_silent(std::time::Duration::from_millis(500)).await;

    // Status: bob read both, carol has neither.
    let (s, status) = a.call("GET", &format!("/messages/{m1}/status"), Some(&alice.token), None).await;
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["status"], "sent");
    assert_eq!((status["recipients"].as_u64(), status["read_count"].as_u64()), (Some(2), Some(1)));
    assert_eq!(status["read_by"], json!([bob.id]));
    assert_eq!(status["delivered_to"], json!([bob.id]));
    let (_, _) =
        b.call("POST", &format!("/rooms/{room}/read"), Some(&carol.token), Some(json!({"message_id": m2}))).await;
    let (_, status) = a.call("GET", &format!("/messages/{m2}/status"), Some(&alice.token), None).await;
    assert_eq!(status["status"], "read", "{status}");

    // Errors.
    let other = a.create_room(&alice, "other", "public").await;
    let elsewhere = a.post_message(&alice, &other, "elsewhere").await;
    let (s, body) = b
        .call("POST", &format!("/rooms/{room}/read"), Some(&bob.token), Some(json!({"message_id": elsewhere["id"]})))
        .await;
    assert_error(s, &body, 404, "not_found");
    let dave = a.register("dave").await;
    let (s, body) =
        a.call("POST", &format!("/rooms/{room}/read"), Some(&dave.token), Some(json!({"message_id": m1}))).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = a.call("GET", &format!("/messages/{m1}/status"), Some(&dave.token), None).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) =
        b.call("POST", &format!("/rooms/{room}/read"), Some(&bob.token), Some(json!({"message_id": "x"}))).await;
    assert_error(s, &body, 400, "bad_request");
    let (s, body) = b.call("POST", &format!("/rooms/{room}/read"), Some(&bob.token), Some(json!({}))).await;
    assert_error(s, &body, 422, "validation_failed");
    let ghost = bson::oid::ObjectId::new().to_hex();
    let (s, body) = a.call("GET", &format!("/messages/{ghost}/status"), Some(&alice.token), None).await;
    assert_error(s, &body, 404, "not_found");
    let bad = bob_ws.request(json!({"type": "read", "channel": room, "data": {}})).await;
    assert_eq!(bad["data"]["code"], "bad_request", "{bad}");
    c.shutdown().await;
}

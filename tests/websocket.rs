//! The WebSocket protocol against a real node: the envelope, acks and errors,
//! bad input that must not close the connection, and violations that must
//! (with their RFC 6455 close codes); slow consumers; pings.

mod common;

use std::time::Duration;

use common::{Client, Ended, Node};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

async fn node() -> Node {
    Node::start(common::config(&common::unique_db())).await
}

#[tokio::test]
async fn join_send_receive_and_ack_carry_the_stored_message() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, "general", "public").await;
    let mut a = n.connect(&alice).await;
    let mut b = n.connect(&bob).await;
    let ack = a.join(&room).await;
    assert_eq!((ack["channel"].as_str(), ack["data"]["room_id"].as_str()), (Some(room.as_str()), Some(room.as_str())));
    b.join(&room).await; // a public room: joining over the socket makes bob a member

    let reply = a
        .request(json!({"type": "send_message", "channel": room, "data": {"content": "hi bob", "client_msg_id": "k1"}}))
        .await;
    assert_eq!(reply["type"], "ack");
    let stored = &reply["data"];
    assert_eq!(stored["seq"], 1);
    assert_eq!(stored["client_msg_id"], "k1");
    assert_eq!(stored["id"].as_str().unwrap().len(), 24);

    for client in [&mut a, &mut b] {
        let m = client.recv_type("message").await;
        assert_eq!(m["channel"], room.as_str());
        assert_eq!(m["user_id"], alice.id.as_str());
        assert_eq!(m["data"], *stored, "delivered frame carries the stored message");
        assert!(m["timestamp"].as_i64().unwrap() > 1_600_000_000_000, "unix milliseconds");
    }

    // A message posted over REST reaches socket subscribers too.
    let posted = n.post_message(&bob, &room, "via rest").await;
    assert_eq!(a.recv_type("message").await["data"], posted);

    // After leaving, none of the room's messages arrive; as a member alice
    // is notified of them instead.
    let left = a.request(json!({"type": "leave_channel", "channel": room})).await;
    assert_eq!(left["type"], "ack");
    let after = n.post_message(&bob, &room, "after leave").await;
    b.recv_type("message").await;
    loop {
        let f = a.recv().await;
        if f["type"] == "presence" {
            // Bob's coming online may be announced this late; not a room message.
            continue;
        }
        assert_eq!(f["type"], "notification", "no more of the room's messages: {f}");
        if f["data"]["data"]["message_id"] == after["id"] {
            break;
        }
    }
    while let Some(f) = a.try_recv(Duration::from_millis(300)).await {
        assert_eq!(f["type"], "notification", "no more of the room's messages: {f}");
    }

    let pong = a.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    n.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_error_frames_and_the_connection_stays_open() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let room = n.create_room(&alice, "general", "public").await;
    let private = n.create_room(&alice, "secret", "private").await;
    let mut c = n.connect(&bob).await;

    c.send_raw(WsMessage::Text("{not json".into())).await;
    let e = c.recv().await;
    assert_eq!((e["type"].as_str(), e["data"]["code"].as_str()), (Some("error"), Some("bad_request")));

    let cases = [
        (json!({"type": "dance"}), "unknown_type"),
        (json!({"channel": room}), "bad_request"),
        (json!({"type": "join_channel"}), "bad_request"),
        (json!({"type": "join_channel", "channel": "nope"}), "bad_request"),
        (json!({"type": "join_channel", "channel": bson::oid::ObjectId::new().to_hex()}), "not_found"),
        (json!({"type": "join_channel", "channel": private}), "forbidden"),
        (json!({"type": "send_message", "channel": room}), "bad_request"),
        (json!({"type": "send_message", "channel": room, "data": {"content": "not a member yet"}}), "forbidden"),
        (json!({"type": "send_message", "channel": private, "data": {"content": "x"}}), "forbidden"),
        // Fields of the wrong type: the envelope does not parse, and the
        // error still carries the frame's ref.
        (json!({"type": "join_channel", "channel": {"$ne": null}}), "bad_request"),
        (json!({"type": 5}), "bad_request"),
        (json!({"type": "send_message", "channel": [room]}), "bad_request"),
    ];
    for (frame, code) in cases {
        let reply = c.request(frame.clone()).await;
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["data"]["code"], code, "{frame} -> {reply}");
        assert!(reply["data"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A number ref is carried back as a number.
    c.send(json!({"type": ["join_channel"], "ref": 42})).await;
    let e = c.recv().await;
    assert_eq!(
        (&e["type"], &e["ref"], &e["data"]["code"]),
        (&json!("error"), &json!(42), &json!("bad_request")),
        "{e}"
    );
    c.join(&room).await;
    for (content, code) in [(String::new(), "validation_failed"), ("x".repeat(4001), "validation_failed")] {
        let reply = c.request(json!({"type": "send_message", "channel": room, "data": {"content": content}})).await;
        assert_eq!((reply["type"].as_str(), reply["data"]["code"].as_str()), (Some("error"), Some(code)));
    }
    // Still open and working.
    let m = c.say(&room, "still here").await;
    assert_eq!(m["content"], "still here");
    n.shutdown().await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let n = node().await;
    let alice = n.register("alice").await;
    let mut c = n.connect(&alice).await;
    c.send_raw(WsMessage::Text("x".repeat(64 * 1024 + 1))).await;
    assert_eq!(c.ended().await, Ended::Close(Some(1009)));

    // The cap is on the whole message, not each fragment.
    let mut c = n.connect(&alice).await;
    let piece = "y".repeat(40 * 1024);
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    let first = Frame::message(piece.clone().into_bytes(), OpCode::Data(Data::Text), false);
    let last = Frame::message(piece.into_bytes(), OpCode::Data(Data::Continue), true);
    c.send_raw(WsMessage::Frame(first)).await;
    c.send_raw(WsMessage::Frame(last)).await;
    assert_eq!(c.ended().await, Ended::Close(Some(1009)));
    n.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_binary_with_1003() {
    let n = node().await;
    let alice = n.register("alice").await;
    let mut c = n.connect(&alice).await;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::Data, coding::OpCode, Frame};
    let bad = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.send_raw(WsMessage::Frame(bad)).await;
    assert_eq!(c.ended().await, Ended::Close(Some(1007)));

    let mut c = n.connect(&alice).await;
    c.send_raw(WsMessage::Binary(vec![1, 2, 3])).await;
    assert_eq!(c.ended().await, Ended::Close(Some(1003)));
    n.shutdown().await;
}

#[tokio::test]
async fn upgrade_needs_a_valid_token_and_an_allowed_origin() {
    let mut cfg = common::config(&common::unique_db());
    cfg.allowed_origins = confab::config::Origins(vec!["https://chat.example.com".into()]);
    let n = Node::start(cfg).await;
    let alice = n.register("alice").await;
    let url = format!("ws://{}/ws", n.addr);
    let err = tokio_tungstenite::connect_async(url.clone()).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let err = tokio_tungstenite::connect_async(format!("{url}?token=forged")).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("{url}?token={}", alice.token).into_client_request().unwrap();
    req.headers_mut().insert("Origin", "https://evil.example.net".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");

    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {}", alice.token).parse().unwrap());
    req.headers_mut().insert("Origin", "https://chat.example.com".parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.expect("allowed origin, header token");
    drop(ws);
    n.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_and_the_room_keeps_flowing() {
    let mut cfg = common::config(&common::unique_db());
    cfg.outbound_queue = 256;
    // Enough bytes to fill the kernel's socket buffers several times over.
    let got = slow_consumer(cfg, 2400).await;
    assert!(got < 2400, "the slow consumer must be disconnected, got all {got} frames");
}

/// With a fixed send buffer, the kernel holds little for a client that does
/// not read, and its queue fills after a few hundred kilobytes; the kernel
/// sizing on its own takes megabytes on loopback (the test above).
#[tokio::test]
async fn a_fixed_send_buffer_cuts_a_slow_consumer_off_sooner() {
    let mut cfg = common::config(&common::unique_db());
    cfg.outbound_queue = 64;
    cfg.socket_send_buffer = 16 * 1024;
    let got = slow_consumer(cfg, 400).await;
    assert!(got < 200, "cut off after at most the queue and the buffers' worth of frames, got {got}");
}

/// Runs `total` messages of 4 KB through a room with a fast reader and one
/// that reads nothing until the end; asserts the fast one gets every message
/// once, the slow one is cut off and counted; returns how many frames the
/// slow one had received by then.
async fn slow_consumer(cfg: confab::config::Config, total: usize) -> usize {
    let n = Node::start(cfg).await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let room = n.create_room(&alice, "general", "public").await;

    // Carol's socket takes bytes slowly: a tiny receive buffer, and she
    // never reads until the end.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(n.addr).await.unwrap();
    let url = format!("ws://{}/ws?token={}", n.addr, carol.token);
    let (ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    let mut slow = Client { ws, next_ref: 0, pending: Default::default() };
    slow.join(&room).await;

    let mut fast = n.connect(&bob).await;
    fast.join(&room).await;

    let senders = 1;
    let body = "z".repeat(3990);
    let mut tasks = Vec::new();
    for s in 0..senders {
        // Senders are members without subscribing: they receive nothing.
        let mut c = n.connect(&alice).await;
        let (room, body) = (room.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for i in (s..total).step_by(senders) {
                let content = format!("{i:05} {body}");
                c.request(json!({"type": "send_message", "channel": room, "data": {"content": content}})).await;
            }
        }));
    }
    // The fast client gets every message exactly once.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < total {
        let Some(m) = fast.try_recv(common::WAIT).await else {
            panic!("fast client stopped after {} messages: {:?}", seen.len(), fast.ended().await);
        };
        if m["type"] != "message" {
            continue;
        }

        let content = m["data"]["content"].as_str().unwrap();
        assert!(seen.insert(content[..5].to_string()), "duplicate {}", &content[..5]);
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The slow one was cut off before the end.
    let mut got = 0;
    loop {
        match tokio::time::timeout(common::WAIT, futures::StreamExt::next(&mut slow.ws))
            .await
            .expect("slow client ends")
        {
            Some(Ok(WsMessage::Text(_))) => got += 1,
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
    eprintln!("slow consumer received {got} of {total} before being cut off");
    // One process's counter: other tests' cut-offs may add to it.
    let cuts = n.metric("confab_slow_consumer_disconnects_total").await;
    assert!(cuts >= 1.0, "slow-consumer cut-offs counted: {cuts}");
    n.shutdown().await;
    got
}

#[tokio::test]
async fn a_client_that_ignores_pings_is_dropped() {
    let mut cfg = common::config(&common::unique_db());
    cfg.ping_interval = Duration::from_secs(1);
    let n = Node::start(cfg).await;
    let alice = n.register("alice").await;
    // A raw TCP client that completes the handshake and then never answers.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(n.addr).await.unwrap();
    let req = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        alice.token
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut seen = Vec::new();
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("server drops us");
        match read {
            Ok(0) | Err(_) => break,
            Ok(k) => seen.extend_from_slice(&buf[..k]),
        }
    }
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 101"));
    assert!(seen.windows(2).any(|w| w == [0x89, 6]), "server sent pings");
    assert!(started.elapsed() >= Duration::from_secs(2), "two pings were missed first");

    // A client that answers (tungstenite replies to pings) stays connected.
    let mut ok = n.connect(&alice).await;
    ok.assert_silent(Duration::from_millis(3500)).await;
    let pong = ok.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    n.shutdown().await;
}

#[tokio::test]
async fn shutdown_says_going_away_with_1001() {
    let n = node().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, "general", "public").await;
    let mut c = n.connect(&alice).await;
    c.join(&room).await;
    n.shutdown().await;
    assert_eq!(c.ended().await, Ended::Close(Some(1001)));
}

/// A user may hold at most `max_sockets_per_user` sockets at once across
/// the cluster; one more is refused before the upgrade, with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_socket_too_many_is_refused_with_429() {
    let db = common::unique_db();
    let mut cfg = common::config(&db);
    cfg.max_sockets_per_user = 2;
    let (a, b) = (Node::start(cfg.clone()).await, Node::start(cfg).await);
    let alice = a.register("alice").await;
    let mut first = a.connect(&alice).await;
    let mut second = b.connect(&alice).await;
    for c in [&mut first, &mut second] {
        assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    }
    let url = format!("ws://{}/ws?token={}", a.addr, alice.token);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body: serde_json::Value = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
        }
        other => panic!("a third socket was not refused: {:?}", other.map(|_| ())),
    }
    let bob = b.register("bob").await;
    let mut others = a.connect(&bob).await;
    assert_eq!(others.request(json!({"type": "ping"})).await["type"], "pong", "other users are not affected");
    a.shutdown().await;
    b.shutdown().await;
}

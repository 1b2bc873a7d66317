//! The bus's delivery probe: a subscriber connection that stays open but
//! delivers nothing, while publishes still succeed (messages silently lost),
//! turns the node not ready, is counted, and is replaced, after which
//! messages flow again. The wedge is made by a proxy between the node and
//! Redis that stops passing Redis's bytes to the subscriber connection.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, unique_db, Node};
use confab::backend::redis::RedisConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to Redis that can wedge the subscriber connections it has
/// seen: their connection stays open and their commands still reach Redis,
/// but nothing Redis sends them gets through.
#[derive(Clone, Default)]
struct Proxy {
    next: Arc<AtomicU64>,
    /// Connections that sent a SUBSCRIBE.
    subscribers: Arc<Mutex<HashSet<u64>>>,
    /// Connections whose replies are dropped.
    wedged: Arc<Mutex<HashSet<u64>>>,
}

impl Proxy {
    async fn start(upstream: String) -> (Proxy, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let proxy = Proxy::default();
        let accepting = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let id = accepting.next.fetch_add(1, Ordering::Relaxed);
                accepting.pass(id, client, server);
            }
        });
        (proxy, url)
    }

    fn pass(&self, id: u64, client: TcpStream, server: TcpStream) {
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let subscribers = self.subscribers.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = client_read.read(&mut buf).await {
                if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                if buf[..n].windows(9).any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE")) {
                    subscribers.lock().unwrap().insert(id);
                }
            }
        });
        let wedged = self.wedged.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = server_read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if wedged.lock().unwrap().contains(&id) {
                    continue;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Wedges every subscriber connection open now; new ones pass.
    fn wedge_subscribers(&self) -> usize {
        let subscribers = self.subscribers.lock().unwrap().clone();
        self.wedged.lock().unwrap().extend(subscribers.iter().copied());
        subscribers.len()
    }
}

fn upstream() -> String {
    common::redis_url().trim_start_matches("redis://").trim_end_matches('/').to_string()
}

/// Node a reaches Redis through the proxy, node b directly; one database.
async fn nodes_behind_proxy() -> (Proxy, Node, Node) {
    let db = unique_db();
    let (proxy, url) = Proxy::start(upstream()).await;
    let mut through_proxy = config(&db);
    through_proxy.redis = RedisConfig::new(url);
    (proxy, Node::start(through_proxy).await, Node::start(config(&db)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_subscriber_is_noticed_counted_and_replaced() {
    let (proxy, a, b) = nodes_behind_proxy().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = b.create_room(&bob, "general", "public").await;
    let mut on_a = a.connect(&alice).await;
    on_a.join(&room).await;
    b.post_message(&bob, &room, "before").await;
    assert_eq!(on_a.recv_type("message").await["data"]["content"], "before");
    assert_eq!(a.metric("confab_bus_probe_failures_total").await, 0.0);

    // The subscriber goes silent; publishing still works, so the message is
    // stored and published, and lost on its way to node a.
    assert!(proxy.wedge_subscribers() >= 1);
    b.post_message(&bob, &room, "lost live").await;

    // Within the probe's deadline node a says it is not ready and counts
    // the failure...
    let start = Instant::now();
    let (mut unready, mut counted) = (false, false);
    while !(unready && counted) {
        let (s, body) = a.call("GET", "/readyz", None, None).await;
        if s == 503 {
            assert_eq!(body["redis"], "unavailable", "{body}");
            unready = true;
        }
        counted = a.metric("confab_bus_probe_failures_total").await >= 1.0;
        assert!(start.elapsed() < Duration::from_secs(20), "unready {unready}, probe failure counted {counted}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // ...then reconnects its subscriber, is ready again, and delivers.
    a.wait_ready().await;
    let start = Instant::now();
    let mut delivered = false;
    while !delivered && start.elapsed() < Duration::from_secs(15) {
        b.post_message(&bob, &room, "after").await;
        while let Some(f) = on_a.try_recv(Duration::from_millis(300)).await {
            if f["type"] == "message" && f["data"]["content"] == "after" {
                delivered = true;
            }
        }
    }
    assert!(delivered, "live delivery came back after the subscriber was replaced");
    // What was lost live is in history.
    let (_, page) = a.call("GET", &format!("/messages?room_id={room}"), Some(&alice.token), None).await;
    assert!(page["messages"].as_array().unwrap().iter().any(|m| m["content"] == "lost live"), "{page}");
    a.shutdown().await;
    b.shutdown().await;
}

/// A logout whose close event node a missed (its subscriber wedged at the
/// time) still closes the session's socket there, once the bus is back: the
/// node checks its sockets' sessions after every resubscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_missed_while_wedged_still_closes_the_socket() {
    let (proxy, a, b) = nodes_behind_proxy().await;
    let alice = b.register("alice").await;
    let mut on_a = a.connect(&alice).await;
    on_a.request(serde_json::json!({"type": "ping"})).await;

    assert!(proxy.wedge_subscribers() >= 1);
    let (s, _) = b.call("POST", "/logout", Some(&alice.token), None).await;
    assert_eq!(s, 204);
    // The close never reaches node a live; once its subscriber is replaced,
    // it finds the session gone and closes the socket.
    let ended = tokio::time::timeout(Duration::from_secs(20), on_a.ended()).await;
    assert_eq!(ended.expect("the socket closes once the bus is back"), common::Ended::Close(Some(4001)));
    a.shutdown().await;
    b.shutdown().await;
}

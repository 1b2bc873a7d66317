//! The same exchange as the multi-node test, once through the nginx that
//! `scripts/cluster.sh up` starts in front of two nodes: REST and WebSocket
//! upgrades through the proxy, messages crossing nodes via Redis.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Client;
use serde_json::json;

struct ClusterScript {
    dir: tempfile::TempDir,
}

impl ClusterScript {
    fn run(&self, action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
            .arg(action)
            .env("CONFAB_CLUSTER_DIR", self.dir.path())
            .env("CONFAB_BIN", env!("CARGO_BIN_EXE_confab"))
            .env("CONFAB_HTTP_PORT", "0")
            .env("CONFAB_NODES", "2")
            .env("CONFAB_MONGO_DB", common::unique_db())
            .env("REDIS_URL", common::redis_url())
            .env("MONGO_URL", common::mongo_url())
            .output()
            .expect("bash runs scripts/cluster.sh")
    }
}

impl Drop for ClusterScript {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_nginx_exchange_messages() {
    let cluster = ClusterScript { dir: tempfile::tempdir().unwrap() };
    let up = cluster.run("up");
    assert!(up.status.success(), "cluster.sh up failed:\n{}", String::from_utf8_lossy(&up.stderr));
    let stdout = String::from_utf8(up.stdout).unwrap();
    let base =
        stdout.split_whitespace().find(|w| w.starts_with("http://")).expect("cluster.sh prints its URL").to_string();
    let ws_base = base.replacen("http://", "ws://", 1);

    let http = reqwest::Client::new();
    let alice = common::register_at(&http, &base, "alice").await;
    let bob = common::register_at(&http, &base, "bob").await;
    let (s, room) = common::call(
        &http,
        &format!("{base}/rooms"),
        "POST",
        Some(&alice.token),
        Some(json!({"name": "general", "type": "public"})),
    )
    .await;
    assert_eq!(s, 201, "{room}");
    let room = room["id"].as_str().unwrap().to_string();

    // nginx balances by least connections, so four sockets land two on each
    // node and every message has to cross Redis to reach half of them.
    let mut clients = Vec::new();
    for user in [&alice, &bob, &alice, &bob] {
        let mut c = Client::connect(&format!("{ws_base}/ws?token={}", user.token)).await;
        c.join(&room).await;
        clients.push(c);
    }
    let sent = clients[0].say(&room, "through nginx").await;
    let (s, posted) = common::call(
        &http,
        &format!("{base}/messages"),
        "POST",
        Some(&bob.token),
        Some(json!({"room_id": room, "content": "rest through nginx"})),
    )
    .await;
    assert_eq!(s, 201, "{posted}");
    for c in clients.iter_mut() {
        let first = c.recv_type("message").await;
        let second = c.recv_type("message").await;
        assert_eq!(first["data"], sent);
        assert_eq!(second["data"], posted);
        c.assert_silent(Duration::from_millis(200)).await;
    }
    let (s, page) =
        common::call(&http, &format!("{base}/messages?room_id={room}"), "GET", Some(&bob.token), None).await;
    assert_eq!(s, 200);
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);

    let status = cluster.run("status");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    drop(clients);
    let down = cluster.run("down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
}

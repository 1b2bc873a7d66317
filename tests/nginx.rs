//! The same exchange as the multi-node test, once through the nginx that
//! `scripts/cluster.sh up` starts in front of two nodes: REST and WebSocket
//! upgrades through the proxy, messages crossing nodes via Redis.

mod common;

use std::process::Command;
use std::time::Duration;

use common::Client;
use serde_json::json;

/// Asserts a refusal of nginx's own: its status, and the API's JSON error.
async fn json_refusal(resp: reqwest::Response, status: u16, code: &str) {
    assert_eq!(resp.status().as_u16(), status);
    let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(kind.as_deref(), Some("application/json"));
    let body: serde_json::Value = resp.json().await.expect("a JSON body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// What nginx refuses by itself, before any node sees it, comes back as the
/// API's JSON errors; /metrics is not served through the front.
async fn refusals_are_json(http: &reqwest::Client, base: &str) {
    let resp = http.post(format!("{base}/register")).body("x".repeat(100_000)).send().await.unwrap();
    json_refusal(resp, 413, "payload_too_large").await;
    let resp = http.get(format!("{base}/{}", "a".repeat(10_000))).send().await.unwrap();
    json_refusal(resp, 414, "uri_too_long").await;
    let resp = http.get(format!("{base}/healthz")).header("X-Big", "b".repeat(10_000)).send().await.unwrap();
    json_refusal(resp, 431, "headers_too_large").await;
    let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
    json_refusal(resp, 404, "not_found").await;
    // Not HTTP at all.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    tcp.write_all(b"NOT HTTP AT ALL\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("{\"error\":{\"code\":\"bad_request\""), "{raw}");
}

struct ClusterScript {
    dir: tempfile::TempDir,
    tls: bool,
}

impl ClusterScript {
    fn run(&self, action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh"))
            .arg(action)
            .env("CONFAB_CLUSTER_DIR", self.dir.path())
            .env("CONFAB_BIN", env!("CARGO_BIN_EXE_confab"))
            .env("CONFAB_HTTP_PORT", "0")
            .env("CONFAB_TLS", if self.tls { "1" } else { "0" })
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
    let cluster = ClusterScript { dir: tempfile::tempdir().unwrap(), tls: false };
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

    refusals_are_json(&http, &base).await;

    // The sockets above put their tokens in the URL; the log has none of them.
    let log = std::fs::read_to_string(cluster.dir.path().join("nginx-access.log")).unwrap();
    assert!(log.contains("/ws?token=REDACTED"), "{log}");
    for token in [&alice.token, &bob.token] {
        assert!(!log.contains(token.as_str()), "a token in the access log:\n{log}");
    }

    // With every node gone, the front still answers in the API's shape.
    for pid in std::fs::read_dir(cluster.dir.path()).unwrap().flatten() {
        let name = pid.file_name().to_string_lossy().to_string();
        if name.starts_with("node-") && name.ends_with(".pid") {
            let pid = std::fs::read_to_string(pid.path()).unwrap();
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = http.get(format!("{base}/healthz")).send().await.unwrap();
    json_refusal(resp, 502, "unavailable").await;
    let down = cluster.run("down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
}

/// A WebSocket over TLS to `url` (wss://127.0.0.1:PORT/...), trusting `ca`.
async fn wss(url: &str, ca: &std::path::Path) -> common::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let hostport = url.trim_start_matches("wss://").split('/').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(hostport).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Rustls(tls)).await.unwrap();
    common::Client { ws, next_ref: 0, pending: Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_front_speaks_https_and_wss_only() {
    let cluster = ClusterScript { dir: tempfile::tempdir().unwrap(), tls: true };
    let up = cluster.run("up");
    assert!(up.status.success(), "cluster.sh up failed:\n{}", String::from_utf8_lossy(&up.stderr));
    let stdout = String::from_utf8(up.stdout).unwrap();
    let base =
        stdout.split_whitespace().find(|w| w.starts_with("https://")).expect("cluster.sh prints its URL").to_string();
    let ca = cluster.dir.path().join("tls/ca.pem");
    assert!(stdout.contains(ca.to_str().unwrap()), "{stdout}");

    // Trusting the CA it made: REST works, as for any client.
    let cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let http = reqwest::Client::builder().add_root_certificate(cert).build().unwrap();
    let alice = common::register_at(&http, &base, "alice").await;
    let (s, room) = common::call(
        &http,
        &format!("{base}/rooms"),
        "POST",
        Some(&alice.token),
        Some(json!({"name": "secure", "type": "public"})),
    )
    .await;
    assert_eq!(s, 201, "{room}");
    let room = room["id"].as_str().unwrap().to_string();
    // Without trusting it, no connection.
    assert!(reqwest::Client::new().get(format!("{base}/healthz")).send().await.is_err());

    // A WebSocket over TLS, end to end.
    let ws_base = base.replacen("https://", "wss://", 1);
    let mut c = wss(&format!("{ws_base}/ws?token={}", alice.token), &ca).await;
    c.join(&room).await;
    let sent = c.say(&room, "over wss").await;
    assert_eq!(c.recv_type("message").await["data"], sent);

    // Plain HTTP to the TLS port: a JSON refusal, not nginx's page.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("https://")).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(raw.contains("{\"error\":{\"code\":\"https_required\""), "{raw}");
    drop(c);
    let down = cluster.run("down");
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
}

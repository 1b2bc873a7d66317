//! The shared test harness: real nodes (in this process, on port 0) against
//! the real Redis and MongoDB-compatible server that `scripts/test.sh` starts
//! (`REDIS_URL`, `MONGO_URL`). Each test gets its own database, so tests run
//! in parallel without seeing each other's users and rooms.

#![allow(dead_code)]

use confab::backend::redis::RedisConfig;
use std::net::SocketAddr;
use std::time::Duration;

use confab::config::Config;
use confab::node::RunningNode;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").expect("REDIS_URL is not set: run the tests with scripts/test.sh")
}

pub fn mongo_url() -> String {
    std::env::var("MONGO_URL").expect("MONGO_URL is not set: run the tests with scripts/test.sh")
}

/// Runs the `confab` binary with `args` against database `db` (only the
/// store's settings in its environment); (exit code, stdout, stderr).
pub fn confab_command(db: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CONFAB_MONGO_URL", mongo_url())
        .env("CONFAB_MONGO_DB", db)
        .output()
        .expect("confab runs");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// The Redis names under `prefix`, as nodes on the test's Redis write them
/// (with hash tags on a Redis Cluster).
pub fn keys(prefix: &str) -> confab::keyspace::Keyspace {
    confab::keyspace::Keyspace::new(prefix).hash_tagged(RedisConfig::new(redis_url()).is_cluster())
}

/// Publishes `payload` on a bus channel as nodes do: sharded on a Redis
/// Cluster.
pub async fn bus_publish(redis: &fred::prelude::Client, channel: String, payload: bytes::Bytes) {
    use fred::prelude::*;
    let _: i64 = if RedisConfig::new(redis_url()).is_cluster() {
        redis.spublish(channel, payload).await.unwrap()
    } else {
        redis.publish(channel, payload).await.unwrap()
    };
}

pub fn unique_db() -> String {
    format!("confab_test_{:016x}", rand::random::<u64>())
}

pub fn config(db: &str) -> Config {
    let mut c = Config::defaults(&redis_url(), &mongo_url(), SECRET);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.mongo.mongo_db = db.to_string();
    // Each test's Redis names apart from every other test's.
    c.keys = keys(db);
    c.node_id = format!("test-{:06x}", rand::random::<u32>() & 0xffffff);
    // Every event for two or more local connections is split over three
    // lanes, so that every test checks the lanes keep each connection's
    // frames in order.
    c.fanout_lanes = 3;
    c.fanout_split_at = 2;
    // The default limits, except a frame rate far above what tests that
    // stream messages send (tests of the frame limit set their own), and
    // registrations and logins, which all come from 127.0.0.1 here.
    c.rate_limits.socket_per_sec = 100_000;
    c.rate_limits.socket_burst = 100_000;
    c.rate_limits.auth_per_minute = 100_000;
    c.presence_grace = Duration::from_millis(300);
    c.node_heartbeat = Duration::from_secs(1);
    c.node_ttl = Duration::from_secs(3);
    c
}

/// A worker's settings for database `db` on `redis`, with names from `keys`:
/// log sink, quick retries and heartbeats, no scheduled run during a test,
/// no metrics listener.
pub fn worker_config(
    db: &str,
    redis: RedisConfig,
    keys: confab::keyspace::Keyspace,
) -> confab::jobs::config::WorkerConfig {
    let mut c = confab::jobs::config::WorkerConfig::defaults(&redis.url, &mongo_url());
    c.redis = redis;
    c.mongo.mongo_db = db.to_string();
    c.worker_id = format!("w-{:06x}", rand::random::<u32>() & 0xffffff);
    c.keys = keys;
    c.retry = confab::jobs::delivery::RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(100),
        cap: Duration::from_millis(500),
    };
    c.archive_cron = NEVER.into();
    c.summary_cron = NEVER.into();
    c.metrics_listen = None;
    c.heartbeat = Duration::from_secs(1);
    c
}

/// A cron expression that never fires during a test.
pub const NEVER: &str = "0 0 0 1 1 * 2099";

/// A running node and an HTTP client for it. Each node runs on its own
/// thread and runtime, as a separate process would, so test clients and
/// nodes never compete for one scheduler; dropping the handle stops it.
pub struct Node {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Node {
    pub async fn start(config: Config) -> Node {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("CONFAB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let running = RunningNode::start(config).await.expect("node starts");
                let _ = ready_tx.send(running.addr);
                tokio::select! {
                    _ = stopped => {
                        running.shutdown().await;
                        assert_nothing_left().await;
                    }
                    // Killed: return at once; dropping the runtime drops every task.
                    Ok(()) = killed => {}
                }
            });
        });
        let addr = ready_rx.await.expect("node thread started");
        let node =
            Node { addr, http: reqwest::Client::new(), stop: Some(stop), thread: Some(thread), kill: Some(kill) };
        node.wait_ready().await;
        node
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {} never became ready", self.addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join()).await.unwrap().expect("node thread ends cleanly");
        }
    }

    /// Stops the node the way a crash would: no close frames, no clean-up in
    /// Redis; its runtime, and every task and socket on it, are dropped.
    pub async fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join()).await.unwrap().expect("node thread ends");
        }
    }

    /// Sends a request; returns (status, JSON body or Null).
    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        call(&self.http, &self.url(path), method, token, body).await
    }

    pub async fn register(&self, username: &str) -> User {
        register_at(&self.http, &format!("http://{}", self.addr), username).await
    }

    /// `POST /login` with a user agent: the status and the body.
    pub async fn login_as(&self, username: &str, password: &str, agent: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/login"))
            .header("User-Agent", agent)
            .json(&json!({"username": username, "password": password}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Logs `user` in again on this node: a new session, as after a Redis
    /// that lost its data (sessions live there), or on a node with a Redis
    /// of its own.
    pub async fn login(&self, user: &User) -> User {
        let body = json!({"username": user.username, "password": "correct horse"});
        let (status, grant) = self.call("POST", "/login", None, Some(body)).await;
        assert_eq!(status, 200, "{grant}");
        User { token: grant["access_token"].as_str().unwrap().into(), ..user.clone() }
    }

    pub async fn create_room(&self, user: &User, name: &str, kind: &str) -> String {
        let (status, body) =
            self.call("POST", "/rooms", Some(&user.token), Some(json!({"name": name, "type": kind}))).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    pub async fn post_message(&self, user: &User, room: &str, content: &str) -> Value {
        let (status, body) =
            self.call("POST", "/messages", Some(&user.token), Some(json!({"room_id": room, "content": content}))).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// The sum of a metric's samples whose line starts with `prefix` (a name,
    /// optionally with the start of its labels).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self.http.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    }

    pub async fn connect(&self, user: &User) -> Client {
        Client::connect(&format!("ws://{}/ws?token={}", self.addr, user.token)).await
    }
}

pub async fn call(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub token: String,
}

pub async fn register_at(http: &reqwest::Client, base: &str, username: &str) -> User {
    let body = json!({"username": username, "email": format!("{username}@example.com"), "password": "correct horse"});
    let (status, reg) = call(http, &format!("{base}/register"), "POST", None, Some(body)).await;
    assert_eq!(status, 201, "{reg}");
    let (status, login) = call(
        http,
        &format!("{base}/login"),
        "POST",
        None,
        Some(json!({"username": username, "password": "correct horse"})),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    User {
        id: reg["id"].as_str().unwrap().into(),
        username: username.into(),
        token: login["access_token"].as_str().unwrap().into(),
    }
}

/// After a clean shutdown nothing of the node may run on its runtime: no
/// task it spawned, no backend client's connection task.
async fn assert_nothing_left() {
    let metrics = tokio::runtime::Handle::current().metrics();
    // A backend client's reconnect attempt that was under way ends at its
    // next step; on a loaded machine that can take several seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // This check itself is the runtime's one task (block_on's future is not counted).
    while metrics.num_alive_tasks() > 0 {
        if tokio::time::Instant::now() > deadline {
            panic!("{} of the node's tasks still run after shutdown", metrics.num_alive_tasks());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Two or more nodes sharing one Redis and one database.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub db: String,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        let db = unique_db();
        let mut nodes = Vec::new();
        for _ in 0..n {
            nodes.push(Node::start(config(&db)).await);
        }
        Cluster { nodes, db }
    }

    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// A WebSocket client speaking Confab's JSON envelope.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub next_ref: u64,
    /// Frames that arrived while waiting for a reply, kept for `recv`.
    pub pending: std::collections::VecDeque<Value>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Close(Option<u16>),
    Eof,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connects");
        Client { ws, next_ref: 0, pending: Default::default() }
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(WsMessage::Text(frame.to_string())).await.expect("frame sent");
    }

    pub async fn send_raw(&mut self, msg: WsMessage) {
        self.ws.send(msg).await.expect("frame sent");
    }

    /// Sends a frame with a fresh `ref` and returns the reply carrying it.
    pub async fn request(&mut self, mut frame: Value) -> Value {
        self.next_ref += 1;
        let r = format!("r{}", self.next_ref);
        frame["ref"] = json!(r);
        self.send(frame).await;
        loop {
            let frame = self.read_socket(WAIT).await.expect("a reply arrives in time");
            if frame["ref"] == json!(r) {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let reply = self.request(json!({"type": "join_channel", "channel": room})).await;
        assert_eq!(reply["type"], "ack", "join failed: {reply}");
        reply
    }

    pub async fn say(&mut self, room: &str, content: &str) -> Value {
        let reply = self.request(json!({"type": "send_message", "channel": room, "data": {"content": content}})).await;
        assert_eq!(reply["type"], "ack", "send failed: {reply}");
        reply["data"].clone()
    }

    /// The next text frame as JSON (fails the test after `WAIT`).
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a frame arrives in time")
    }

    pub async fn try_recv(&mut self, within: Duration) -> Option<Value> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        self.read_socket(within).await
    }

    async fn read_socket(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??;
            match next.ok()? {
                WsMessage::Text(t) => return Some(serde_json::from_str(&t).expect("server frames are JSON")),
                WsMessage::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next frame of the given type, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f["type"] == kind {
                return f;
            }
        }
    }

    /// Asserts no message frame arrives within `within`. Presence frames
    /// (co-members coming and going) and notifications are not room traffic
    /// and are skipped — a notification is decided when it is processed, so
    /// a member who connects just after a message may be notified of it
    /// before joining; tests of those frames check them explicitly.
    /// `assert_quiet` counts every frame.
    pub async fn assert_silent(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while let Some(f) = self.try_recv(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            assert!(f["type"] == "presence" || f["type"] == "notification", "unexpected frame: {f}");
        }
    }

    /// Asserts no frame at all arrives within `within`.
    pub async fn assert_quiet(&mut self, within: Duration) {
        if let Some(f) = self.try_recv(within).await {
            panic!("unexpected frame: {f}");
        }
    }

    /// Reads until the connection ends; returns how.
    pub async fn ended(&mut self) -> Ended {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("connection ends in time") {
                Some(Ok(WsMessage::Close(frame))) => return Ended::Close(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Eof,
            }
        }
    }
}

pub fn close_code(code: CloseCode) -> u16 {
    u16::from(code)
}

/// A redis-server of a test's own, on a free port, to stop and restart.
pub struct OwnRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// Keeps its data across a kill (append-only file, synced on every write).
    durable: bool,
}

impl OwnRedis {
    /// A Redis whose data is gone when it stops.
    pub fn start() -> OwnRedis {
        Self::launch(false)
    }

    /// A Redis that comes back with the data it had when it was stopped.
    pub fn durable() -> OwnRedis {
        Self::launch(true)
    }

    fn launch(durable: bool) -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let child = Self::spawn(port, &dir, durable);
        OwnRedis { port, dir, child, durable }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(port: u16, dir: &tempfile::TempDir, durable: bool) -> std::process::Child {
        let persistence: &[&str] =
            if durable { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(persistence)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// Stops the server (a kill, like a crash).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port.
    pub fn resume(&mut self) {
        self.child = Self::spawn(self.port, &self.dir, self.durable);
    }

    pub fn restart(&mut self) {
        self.stop();
        std::thread::sleep(Duration::from_millis(500));
        self.resume();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A redis-server of a test's own that speaks only TLS, with a certificate
/// for 127.0.0.1 signed by a CA made for it (openssl).
pub struct TlsRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsRedis {
    pub fn start() -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl is installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=confab test CA"],
            ]
            .concat(),
        );
        openssl(
            &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat(),
        );
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--tls-auth-clients", "no"])
            .args(["--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsRedis { port, dir, child }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts an error response: its status, its code, and a message.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

/// The ids the Redis list of notifications awaiting external delivery holds,
/// for the nodes of database `db` (whose key prefix is the database name).
pub async fn external_queue(db: &str) -> Vec<String> {
    use fred::prelude::*;
    let client = confab::jobs::redis_client(&RedisConfig::new(redis_url())).await.unwrap();
    let keys = keys(db);
    let ids: Vec<String> = client.lrange(keys.external_notifications(), 0, -1).await.unwrap();
    let _ = client.quit().await;
    ids
}

//! Confab on the Redis deployments bigger than one server, each started by
//! the test itself on loopback: a Redis Cluster of three masters, whose
//! room and user channels must be sharded over the masters; and a master
//! with a replica watched by three sentinels, whose master is killed in the
//! middle of traffic. (`scripts/test.sh` also runs the cross-node suites
//! against a Redis Cluster.)

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Node;
use confab::backend::redis::RedisConfig;
use confab::keyspace::Keyspace;
use fred::prelude::*;
use serde_json::json;

/// redis-server processes of one test, killed when it ends.
struct Servers {
    dir: tempfile::TempDir,
    children: BTreeMap<u16, Child>,
}

impl Servers {
    fn new() -> Servers {
        Servers { dir: tempfile::tempdir().unwrap(), children: BTreeMap::new() }
    }

    /// Starts a redis-server on `port` with `args`, in a directory of its
    /// own, and waits until it accepts connections.
    fn spawn(&mut self, port: u16, args: &[&str]) {
        let dir = self.dir.path().join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(args)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.children.insert(port, child);
        wait_port(port);
    }

    fn dir(&self, port: u16) -> std::path::PathBuf {
        self.dir.path().join(port.to_string())
    }

    /// SIGKILL: a crash.
    fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.children.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.children.keys().copied().collect();
        for port in ports {
            self.kill(port);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server on port {port} did not start");
}

/// `redis-cli -p PORT ARGS...`, its output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain client to one server (not the cluster as a whole).
async fn server(port: u16) -> Client {
    let client = Builder::from_config(Config::from_url(&format!("redis://127.0.0.1:{port}")).unwrap()).build().unwrap();
    client.init().await.unwrap();
    client
}

fn node_config(db: &str, redis_url: &str) -> confab::config::Config {
    let mut config = common::config(db);
    config.redis = RedisConfig::new(redis_url);
    config.keys = Keyspace::new(db);
    config
}

// ------------------------------------------------------------ Redis Cluster

/// Three masters, no replicas; the cluster's `redis-cluster://` URL.
fn own_cluster(servers: &mut Servers) -> (Vec<u16>, String) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for port in &ports {
        let conf = format!("nodes-{port}.conf");
        // The cluster bus's default port, PORT + 10000, may be past 65535.
        let bus = free_port().to_string();
        let args = ["--cluster-enabled", "yes", "--cluster-port", &bus, "--cluster-config-file", &conf];
        let rest = ["--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no"];
        servers.spawn(*port, &[&args[..], &rest[..]].concat());
    }
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli runs");
    assert!(created.status.success(), "cluster create: {}", String::from_utf8_lossy(&created.stdout));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ports.iter().all(|p| cli(*p, &["cluster", "info"]).contains("cluster_state:ok")) {
        assert!(Instant::now() < deadline, "the cluster never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}", ports[0], ports[1], ports[2]);
    (ports, url)
}

/// Two nodes on a three-master cluster: messages in many rooms cross
/// nodes exactly once, each room's channel lives on the master of its slot
/// as a sharded channel (so a message is not copied to every master), the
/// channels are spread over all three masters, and nothing of a room or
/// user travels on classic Pub/Sub, which a cluster broadcasts to every
/// master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_rooms_shard_their_channels_over_the_masters() {
    let mut servers = Servers::new();
    let (ports, url) = own_cluster(&mut servers);
    let db = common::unique_db();
    let a = Node::start(node_config(&db, &url)).await;
    let b = Node::start(node_config(&db, &url)).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (mut on_a, mut on_b) = (a.connect(&alice).await, b.connect(&bob).await);
    let mut rooms = Vec::new();
    for i in 0..12 {
        let room = a.create_room(&alice, &format!("room-{i}"), "public").await;
        on_a.join(&room).await;
        on_b.join(&room).await;
        rooms.push(room);
    }
    for (i, room) in rooms.iter().enumerate() {
        assert_eq!(on_a.say(room, &format!("hello {i}")).await["seq"], 1);
    }
    let mut got = Vec::new();
    while got.len() < rooms.len() {
        let m = on_b.recv_type("message").await;
        got.push((m["channel"].as_str().unwrap().to_string(), m["data"]["content"].as_str().unwrap().to_string()));
    }
    let want: Vec<(String, String)> =
        rooms.iter().enumerate().map(|(i, room)| (room.clone(), format!("hello {i}"))).collect();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got, want_sorted);
    on_b.assert_silent(Duration::from_millis(300)).await;

    // Where each channel lives: as a sharded channel on exactly one master.
    let keys = Keyspace::new(&db).hash_tagged(true);
    let mut masters_with_rooms = 0;
    let mut sharded = HashSet::new();
    for port in &ports {
        let master = server(*port).await;
        let shard: Vec<String> = master.pubsub_shardchannels(format!("{db}:*")).await.unwrap();
        let classic: Vec<String> = master.pubsub_channels(format!("{db}:*")).await.unwrap();
        assert!(
            classic.iter().all(|c| keys.channel(c).is_none()),
            "no room or user channel on classic Pub/Sub: {classic:?}"
        );
        let room_channels = shard.iter().filter(|c| c.contains(":room:")).count();
        if room_channels > 0 {
            masters_with_rooms += 1;
        }
        for channel in shard {
            assert!(sharded.insert(channel.clone()), "{channel} on two masters");
        }
        let _ = master.quit().await;
    }
    for room in &rooms {
        let channel = keys.room_channel(bson::oid::ObjectId::parse_str(room).unwrap());
        assert!(sharded.contains(&channel), "{channel} is not a sharded channel");
    }
    assert_eq!(masters_with_rooms, 3, "twelve rooms' channels spread over all three masters");

    a.shutdown().await;
    b.shutdown().await;
}

// ----------------------------------------------------------------- Sentinel

const SERVICE: &str = "confab";

/// A master, its replica, and three sentinels watching them (a quorum of
/// two); (master port, replica port, the `redis-sentinel://` URL).
fn own_sentinels(servers: &mut Servers) -> (u16, u16, Vec<u16>, String) {
    let (master, replica) = (free_port(), free_port());
    servers.spawn(master, &["--save", "", "--appendonly", "no"]);
    servers.spawn(replica, &["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1", &master.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(replica, &["info", "replication"]).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sentinels: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for port in &sentinels {
        let dir = servers.dir(*port);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        write_sentinel_conf(&conf, master);
        servers.spawn(*port, &[conf.to_str().unwrap(), "--sentinel"]);
    }
    // Ready once every sentinel knows the replica and the two others.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sentinels.iter().all(|s| {
        cli(*s, &["sentinel", "replicas", SERVICE]).contains(&replica.to_string())
            && cli(*s, &["sentinel", "sentinels", SERVICE]).matches("runid").count() == 2
    }) {
        assert!(Instant::now() < deadline, "the sentinels never found each other and the replica");
        std::thread::sleep(Duration::from_millis(200));
    }
    let url = format!(
        "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SERVICE}&node=127.0.0.1:{}&node=127.0.0.1:{}",
        sentinels[0], sentinels[1], sentinels[2]
    );
    (master, replica, sentinels, url)
}

fn write_sentinel_conf(path: &Path, master: u16) {
    let conf = format!(
        "sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n\
         sentinel down-after-milliseconds {SERVICE} 1000\n\
         sentinel failover-timeout {SERVICE} 5000\n\
         sentinel parallel-syncs {SERVICE} 1\n"
    );
    std::fs::write(path, conf).unwrap();
}

/// The master's port as the sentinel on `port` names it.
fn named_master(sentinel: u16) -> Option<u16> {
    let out = cli(sentinel, &["sentinel", "get-master-addr-by-name", SERVICE]);
    out.lines().nth(1)?.trim().parse().ok()
}

/// Adds a delivered message to `live`; its seq.
fn record(live: &mut Vec<(i64, String)>, frame: Option<serde_json::Value>) -> Option<i64> {
    let m = frame.filter(|m| m["type"] == "message")?;
    let seq = m["data"]["seq"].as_i64()?;
    live.push((seq, m["data"]["content"].as_str()?.to_string()));
    Some(seq)
}

/// Two nodes on a Sentinel-watched master; alice (on node A) posts
/// steadily to bob (on node B) while the master is killed. Once the
/// sentinels have promoted the replica, messages reach bob live again
/// within 10 s, the job queue follows the new master, and bob, catching up
/// from history, has every acknowledged message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_traffic_loses_and_repeats_nothing() {
    let mut servers = Servers::new();
    let (master, replica, sentinels, url) = own_sentinels(&mut servers);
    let db = common::unique_db();
    let a = Node::start(node_config(&db, &url)).await;
    let b = Node::start(node_config(&db, &url)).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "general", "public").await;
    let mut on_b = b.connect(&bob).await;
    on_b.join(&room).await;
    let queues =
        confab::jobs::queue::Queues::connect(&RedisConfig::new(&url), &Keyspace::new(&db), Duration::from_secs(1))
            .await
            .expect("the job queue connects through the sentinels");

    // alice posts every 50 ms until told to stop; every acknowledged
    // message is recorded with the time it was sent.
    let acked: Arc<Mutex<Vec<(i64, String, Instant)>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let sender = {
        let (acked, stop, http, url, token, room) =
            (acked.clone(), stop.clone(), a.http.clone(), a.url("/messages"), alice.token.clone(), room.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                i += 1;
                let content = format!("m{i}");
                let sent = Instant::now();
                let body = json!({"room_id": room, "content": content, "client_msg_id": format!("c{i}")});
                let reply = http.post(&url).bearer_auth(&token).json(&body).send().await;
                if let Ok(reply) = reply {
                    if reply.status().is_success() {
                        let v: serde_json::Value = reply.json().await.unwrap();
                        acked.lock().unwrap().push((v["seq"].as_i64().unwrap(), content, sent));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Live deliveries to bob: (seq, content).
    let mut live: Vec<(i64, String)> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        record(&mut live, on_b.try_recv(Duration::from_millis(200)).await);
    }
    assert!(!live.is_empty(), "traffic flows before the failover");

    servers.kill(master);
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    let promoted = loop {
        if sentinels.iter().filter(|s| named_master(**s) == Some(replica)).count() >= 2 {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "the sentinels never promoted the replica");
        record(&mut live, on_b.try_recv(Duration::from_millis(100)).await);
    };

    // Messages flow live again: one sent after the promotion reaches bob.
    let flowing = loop {
        if let Some(seq) = record(&mut live, on_b.try_recv(Duration::from_millis(200)).await) {
            let sent_after = acked.lock().unwrap().iter().any(|(s, _, at)| *s == seq && *at > promoted);
            if sent_after {
                break Instant::now();
            }
        }
        assert!(
            promoted.elapsed() < Duration::from_secs(10),
            "no message sent after the failover reached bob within 10 s of it"
        );
    };

    // The job queue follows the new master.
    let mut queued = false;
    for _ in 0..50 {
        if queues.push_run(confab::jobs::runner::Run::now(confab::jobs::JobKind::Archive)).await.is_ok() {
            queued = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(queued, "a job queued after the failover");
    let on_new_master = server(replica).await;
    let runs_data = format!("{}:data", Keyspace::new(&db).job_queue("runs"));
    assert_eq!(on_new_master.exists::<i64, _>(&runs_data).await.unwrap(), 1, "the job is on the new master");
    let _ = on_new_master.quit().await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    sender.await.unwrap();
    while let Some(m) = on_b.try_recv(Duration::from_millis(500)).await {
        record(&mut live, Some(m));
    }

    // Nothing twice on the live stream.
    let live_seqs: Vec<i64> = live.iter().map(|(s, _)| *s).collect();
    let distinct: HashSet<i64> = live_seqs.iter().copied().collect();
    assert_eq!(distinct.len(), live_seqs.len(), "a message reached bob twice: {live_seqs:?}");
    // Bob catches up from history: every acknowledged message is there once.
    let mut history: Vec<(i64, String)> = Vec::new();
    loop {
        let after = history.last().map_or(0, |(seq, _)| *seq);
        let path = format!("/messages?room_id={room}&after_seq={after}&limit=200");
        let (status, page) = b.call("GET", &path, Some(&bob.token), None).await;
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap();
        if messages.is_empty() {
            break;
        }
        history.extend(
            messages
                .iter()
                .map(|m| (m["seq"].as_i64().unwrap(), m["content"].as_str().unwrap_or_default().to_string())),
        );
    }
    for (seq, content) in &live {
        assert!(
            history.contains(&(*seq, content.clone())),
            "{content} (seq {seq}) was delivered live but is not stored"
        );
    }
    let history_seqs: HashSet<i64> = history.iter().map(|(s, _)| *s).collect();
    assert_eq!(history_seqs.len(), history.len(), "a seq twice in history");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 40, "traffic ran through the failover: {} acknowledged", acked.len());
    for (seq, content, _) in &acked {
        assert!(history.contains(&(*seq, content.clone())), "acknowledged {content} (seq {seq}) lost");
    }
    let contents: Vec<&String> = history.iter().map(|(_, c)| c).collect();
    let unique: HashSet<&&String> = contents.iter().collect();
    assert_eq!(unique.len(), contents.len(), "a message stored twice");
    eprintln!(
        "failover: promoted {:.1} s after the kill; live again {:.1} s after the promotion; {} acknowledged, {} live",
        (promoted - killed).as_secs_f64(),
        (flowing - promoted).as_secs_f64(),
        acked.len(),
        live.len()
    );

    a.shutdown().await;
    b.shutdown().await;
}

//! Chaos: users chatting through the front (rooms, DMs, REST history
//! reads, churn) while a seeded fault schedule breaks the cluster at
//! intervals, then exact accounting. Confab only; `scripts/chaos.sh` builds
//! the cluster and carries out the faults it is told (`--fault-cmd`).
//!
//! At the end: every message the server acknowledged is in history exactly
//! once; every client's log holds every message of its rooms exactly once
//! and in seq order after its final catch-up; no `client_msg_id` is stored
//! twice; nothing stays unacknowledged. The report says how long each fault
//! took to recover from (`results.json`, `summary.md`, `timeline.png`).

pub mod client;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use client::{Client, Msg};

/// Every kind of fault the schedule draws from.
pub const FAULTS: &[&str] =
    &["kill-node", "restart-redis", "pause-redis", "kill-subscriber", "restart-store", "partition-node", "slow-client"];

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct ChaosParams {
    /// Seconds of traffic and faults (the drain and the accounting follow).
    #[arg(long, default_value_t = 600)]
    pub duration: u64,
    /// Users, each on one socket through the front.
    #[arg(long, default_value_t = 24)]
    pub users: usize,
    /// Public rooms.
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Members per room.
    #[arg(long, default_value_t = 8)]
    pub members: usize,
    /// Direct conversations (pairs of users).
    #[arg(long, default_value_t = 4)]
    pub dm_pairs: usize,
    /// Messages per second, all users together.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// REST history reads per second.
    #[arg(long, default_value_t = 5.0)]
    pub history_rate: f64,
    /// Mean seconds between a client's own reconnects (churn).
    #[arg(long, default_value_t = 60)]
    pub churn_secs: u64,
    /// Seed of the fault schedule (random if not given; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Least seconds between faults.
    #[arg(long, default_value_t = 20)]
    pub fault_min: u64,
    /// Most seconds between faults.
    #[arg(long, default_value_t = 60)]
    pub fault_max: u64,
    /// Kinds of fault to draw from (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = FAULTS.iter().map(|s| s.to_string()))]
    pub faults: Vec<String>,
    /// Nodes behind the front (faults pick among 1..=N).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Nodes that can be cut off from Redis (those in a network namespace).
    #[arg(long, value_delimiter = ',', default_value = "3")]
    pub partition_nodes: Vec<u32>,
    /// Shell command carrying out a fault, called with the kind and its
    /// argument (node number or seconds); it returns once the fault is
    /// healed. slow-client is done in-process.
    #[arg(long)]
    pub fault_cmd: Option<String>,
    /// A node's own URL for the slow reader's socket (default: the front).
    #[arg(long)]
    pub slow_url: Option<String>,
    /// Seconds allowed after the traffic for acknowledgements and catch-up.
    #[arg(long, default_value_t = 120)]
    pub drain: u64,
}

#[derive(Default, Serialize)]
pub struct Counters {
    pub sent: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub drops: AtomicU64,
    pub churned: AtomicU64,
    pub relogins: AtomicU64,
    pub resends: AtomicU64,
    pub send_errors: AtomicU64,
    pub join_errors: AtomicU64,
    pub gap_fills: AtomicU64,
    /// Seqs given up on: missing from history for `client::SKIP_AFTER`.
    pub skipped_seqs: AtomicU64,
    pub redelivered: AtomicU64,
    pub history_reads: AtomicU64,
    pub history_errors: AtomicU64,
    pub flood_sent: AtomicU64,
    pub flood_unacknowledged: AtomicU64,
    /// The slow reader's connection ended by the server's side (a cut-off
    /// whose close frame sat behind the full buffers is an end of stream).
    pub slow_dropped: AtomicU64,
}

/// One second of the run.
struct Second {
    deliveries: u64,
    latency_ms: Histogram<u64>,
    min_connected: usize,
    history_errors: u64,
}

impl Second {
    fn new() -> Second {
        Second {
            deliveries: 0,
            latency_ms: Histogram::new_with_bounds(1, 3_600_000, 2).unwrap(),
            min_connected: usize::MAX,
            history_errors: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Acked {
    room: String,
    seq: u64,
    client_msg_id: Option<String>,
}

/// What the clients and the fault schedule share.
pub struct Run {
    base: String,
    http: reqwest::Client,
    start: Instant,
    send_interval: Duration,
    churn_mean: f64,
    pub counters: Counters,
    connected: AtomicUsize,
    draining: AtomicBool,
    deadline: Mutex<Option<Instant>>,
    slow_until: Mutex<Option<Instant>>,
    seconds: Mutex<Vec<Second>>,
    acked: Mutex<HashMap<String, Acked>>,
    closes: Mutex<BTreeMap<u16, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Run {
    fn new(base: &str, p: &ChaosParams) -> Run {
        let per_user = (p.rate / p.users.max(1) as f64).max(0.001);
        Run {
            base: base.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap(),
            start: Instant::now(),
            send_interval: Duration::from_secs_f64(1.0 / per_user),
            churn_mean: p.churn_secs.max(1) as f64,
            counters: Counters::default(),
            connected: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            deadline: Mutex::new(None),
            slow_until: Mutex::new(None),
            seconds: Mutex::new(Vec::new()),
            acked: Mutex::new(HashMap::new()),
            closes: Mutex::new(BTreeMap::new()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Run {
        let p = <ChaosParams as clap::FromArgMatches>::from_arg_matches(
            &<ChaosParams as clap::Args>::augment_args(clap::Command::new("t")).get_matches_from(["t"]),
        )
        .unwrap();
        Run::new("http://127.0.0.1:1", &p)
    }

    fn second(&self) -> usize {
        self.start.elapsed().as_secs() as usize
    }

    fn with_second<R>(&self, f: impl FnOnce(&mut Second) -> R) -> R {
        let i = self.second();
        let mut s = self.seconds.lock().unwrap();
        while s.len() <= i {
            s.push(Second::new());
        }
        f(&mut s[i])
    }

    pub fn record_delivery(&self, latency_ms: u64) {
        self.with_second(|s| {
            s.deliveries += 1;
            let _ = s.latency_ms.record(latency_ms.clamp(1, 3_600_000));
        });
    }

    fn record_ack(&self, room: &str, m: Msg) {
        let acked = Acked { room: room.to_string(), seq: m.seq, client_msg_id: m.client_msg_id };
        self.acked.lock().unwrap().insert(m.id, acked);
    }

    pub fn note_close(&self, code: u16) {
        *self.closes.lock().unwrap().entry(code).or_default() += 1;
    }

    /// Counts an error by its kind (the text up to the first digit or
    /// brace, so that ids do not make every one distinct).
    pub fn note_error(&self, e: &str) {
        let key: String = e.chars().take_while(|c| !c.is_ascii_digit() && *c != '{').take(60).collect();
        *self.errors.lock().unwrap().entry(key.trim().to_string()).or_default() += 1;
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn past_deadline(&self) -> bool {
        self.deadline.lock().unwrap().is_some_and(|d| Instant::now() >= d)
    }

    pub fn slow_paused(&self) -> bool {
        self.slow_until.lock().unwrap().is_some_and(|t| Instant::now() < t)
    }

    pub fn send_interval(&self) -> Duration {
        self.send_interval
    }

    pub fn churn_delay(&self) -> Duration {
        // Exponential: reconnects at random, `churn_mean` apart on average.
        let u: f64 = rand::thread_rng().gen_range(0.0001..1.0);
        Duration::from_secs_f64(-u.ln() * self.churn_mean)
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub at_secs: f64,
    pub kind: String,
    pub arg: u32,
}

/// The schedule: a fault every `fault_min..=fault_max` seconds until 15 s
/// before the end, its kinds drawn in seeded shuffled rounds so that a
/// short run still sees different ones.
pub fn schedule(p: &ChaosParams, seed: u64) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (lo, hi) = (p.fault_min.max(1) as f64, p.fault_max.max(p.fault_min).max(1) as f64);
    let mut out = Vec::new();
    let mut round: Vec<String> = Vec::new();
    let mut t = rng.gen_range(lo / 2.0..=hi / 2.0);
    while t + 15.0 < p.duration as f64 && !p.faults.is_empty() {
        if round.is_empty() {
            round = p.faults.clone();
            round.shuffle(&mut rng);
        }
        let kind = round.pop().unwrap();
        let arg = match kind.as_str() {
            "kill-node" | "kill-subscriber" => rng.gen_range(1..=p.nodes.max(1)),
            "partition-node" => *p.partition_nodes.choose(&mut rng).unwrap_or(&p.nodes),
            "pause-redis" => rng.gen_range(3..=6),
            "slow-client" => 20,
            _ => 0,
        };
        out.push(Planned { at_secs: (t * 10.0).round() / 10.0, kind, arg });
        t += rng.gen_range(lo..=hi);
    }
    out
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: String,
    pub arg: u32,
    pub started_secs: f64,
    pub healed_secs: f64,
    /// From the start of the fault until messages flowed at half the rate
    /// before it again with every client connected; None if not before the
    /// next fault or the end.
    pub recovered_after_secs: Option<f64>,
    pub ok: bool,
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Accounting {
    pub rooms: usize,
    pub stored: usize,
    pub acknowledged: usize,
    /// Acknowledged messages missing from history.
    pub acknowledged_missing: usize,
    /// Messages stored more than once (the same client_msg_id twice).
    pub stored_twice: usize,
    /// History out of seq order or with a repeated id.
    pub history_disorder: usize,
    /// Messages of a client's rooms missing from its log.
    pub lost: usize,
    /// Of those, messages whose seq the client skipped because history
    /// read past it (it was to be void forever) and that are in history
    /// after all: the server broke its word on holes (docs/api.md, "Seqs
    /// that skip").
    pub lost_stored_late: usize,
    pub duplicated: usize,
    pub out_of_order: usize,
    /// Messages still waiting for an acknowledgement when the drain ended.
    pub unacknowledged: usize,
    pub client_logs: usize,
    pub delivered_total: usize,
    /// The first few logs that missed messages: client, room, missing seqs.
    pub lost_examples: Vec<String>,
}

impl Accounting {
    /// Nothing lost, repeated, reordered or left.
    pub fn clean(&self) -> bool {
        self.acknowledged_missing == 0
            && self.stored_twice == 0
            && self.history_disorder == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.unacknowledged == 0
    }
}

#[derive(Debug, Serialize)]
pub struct ChaosResult {
    pub target: &'static str,
    pub scenario: &'static str,
    pub params: ChaosParams,
    pub seed: u64,
    pub schedule: Vec<Planned>,
    pub faults: Vec<FaultRecord>,
    pub accounting: Accounting,
    pub passed: bool,
    pub counters: Value,
    pub closes: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// Per second: deliveries, p99 latency (ms), fewest connected clients.
    pub timeline: Vec<(u64, f64, usize)>,
}

struct User {
    name: String,
    password: String,
    id: String,
    token: String,
}

async fn register(run: &Run, name: String) -> Result<User> {
    let password = format!("chaos-{name}-pw");
    let body = json!({"username": name, "email": format!("{name}@chaos.invalid"), "password": password});
    let reg: Value = run.http.post(format!("{}/register", run.base)).json(&body).send().await?.json().await?;
    let id = reg["id"].as_str().ok_or_else(|| anyhow!("register {name}: {reg}"))?.to_string();
    let token = client::login(run, &name, &password).await?;
    Ok(User { name, password, id, token })
}

async fn post(run: &Run, token: &str, path: &str, body: Value) -> Result<Value> {
    let resp = run.http.post(format!("{}{path}", run.base)).bearer_auth(token).json(&body).send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {path}: {status} {v}");
    }
    Ok(v)
}

pub async fn run(base: &str, p: &ChaosParams, out: &Path) -> Result<ChaosResult> {
    let seed = p.seed.unwrap_or_else(rand::random);
    let plan = schedule(p, seed);
    println!("chaos: seed {seed}; {} s of traffic, {} faults planned:", p.duration, plan.len());
    for f in &plan {
        println!("  at {:>6.1} s  {} {}", f.at_secs, f.kind, f.arg);
    }
    let run = Arc::new(Run::new(base, p));
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);

    // Users, rooms, memberships, direct conversations.
    let mut users = Vec::new();
    for i in 0..=p.users + 1 {
        users.push(register(&run, format!("chaos{tag}u{i}")).await.context("registering users")?);
    }
    let reader = users.pop().unwrap();
    let slow = users.pop().unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut rooms_of: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    let mut rooms = Vec::new();
    for r in 0..p.rooms {
        let room = post(&run, &users[0].token, "/rooms", json!({"name": format!("chaos-{tag}-{r}"), "type": "public"}))
            .await?;
        let id = room["id"].as_str().context("room id")?.to_string();
        let mut members: Vec<usize> = (0..users.len()).filter(|u| u % p.rooms == r).collect();
        let mut others: Vec<usize> = (0..users.len()).filter(|u| !members.contains(u)).collect();
        others.shuffle(&mut rng);
        members.extend(others.into_iter().take(p.members.saturating_sub(members.len())));
        for &u in &members {
            post(&run, &users[u].token, &format!("/rooms/{id}/join"), Value::Null).await?;
            rooms_of[u].push(id.clone());
        }
        rooms.push(id);
    }
    post(&run, &slow.token, &format!("/rooms/{}/join", rooms[0]), Value::Null).await?;
    let mut dm_rooms = Vec::new();
    for k in 0..p.dm_pairs.min(users.len() / 2) {
        let (a, b) = (2 * k, 2 * k + 1);
        let cmid = format!("{}-dm", users[a].name);
        let m = post(
            &run,
            &users[a].token,
            "/messages",
            json!({"to_user_id": users[b].id, "content": format!("hello t={}", now_ms()), "client_msg_id": cmid}),
        )
        .await?;
        let room = m["room_id"].as_str().context("dm room")?.to_string();
        run.record_ack(&room, Msg::from_json(&m).context("dm message")?);
        rooms_of[a].push(room.clone());
        rooms_of[b].push(room.clone());
        dm_rooms.push(room);
    }
    let total = users.len() + 1;
    println!(
        "chaos: {} users ({} rooms, {} direct conversations) and a slow reader",
        users.len(),
        rooms.len(),
        dm_rooms.len()
    );

    let flooder = (users[0].name.clone(), users[0].password.clone());
    let mut tasks = Vec::new();
    for (i, u) in users.into_iter().enumerate() {
        let c = Client::new(u.name, u.password, u.token, std::mem::take(&mut rooms_of[i]));
        tasks.push(tokio::spawn(c.run(run.clone())));
    }
    let mut slow_client = Client::new(slow.name, slow.password, slow.token, vec![rooms[0].clone()]);
    slow_client.slow = true;
    slow_client.socket_base = p.slow_url.clone();
    tasks.push(tokio::spawn(slow_client.run(run.clone())));

    let started = Instant::now();
    while run.connected.load(Ordering::Relaxed) < total && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Side traffic: history reads, the connection sampler, the flood for
    // the slow reader.
    let side = Arc::new(AtomicBool::new(true));
    let history = tokio::spawn(read_history(run.clone(), reader, rooms.clone(), p.history_rate, side.clone()));
    let sampler = {
        let (run, side) = (run.clone(), side.clone());
        tokio::spawn(async move {
            while side.load(Ordering::Relaxed) {
                let c = run.connected.load(Ordering::Relaxed);
                run.with_second(|s| s.min_connected = s.min_connected.min(c));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // A session of its own for the first user, who floods the slow reader's room.
    let flooder_token = client::login(&run, &flooder.0, &flooder.1).await.ok();
    let flood = tokio::spawn(flood(run.clone(), flooder_token, rooms[0].clone(), side.clone()));

    // The faults, on schedule.
    let faults = tokio::spawn(run_faults(run.clone(), plan.clone(), p.fault_cmd.clone(), out.to_path_buf()));
    let mut last_print = Instant::now();
    while run.start.elapsed() < Duration::from_secs(p.duration) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let s = run.second().saturating_sub(1);
            let d = run.seconds.lock().unwrap().get(s).map(|x| x.deliveries).unwrap_or(0);
            println!(
                "  {:>4} s: {} of {} connected, {} deliveries in the last second, {} acknowledged",
                run.second(),
                run.connected.load(Ordering::Relaxed),
                total,
                d,
                run.acked.lock().unwrap().len()
            );
        }
    }
    println!("chaos: traffic stops; draining (at most {} s)", p.drain);
    let faults = faults.await.context("fault task")?;
    *run.deadline.lock().unwrap() = Some(Instant::now() + Duration::from_secs(p.drain));
    run.draining.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.context("client task")?);
    }
    // Every client's last messages are in (or given up): now each catches
    // up from history, as after its last reconnect, once every hole in it
    // is settled (the nodes' seq_void_after_ms).
    println!("chaos: every client done sending; final catch-up from history");
    tokio::time::sleep(confab::config::default_seq_void_after() + SETTLE_MARGIN).await;
    for c in &mut clients {
        c.final_catch_up(&run).await;
    }
    side.store(false, Ordering::Relaxed);
    let _ = history.await;
    let _ = sampler.await;
    let _ = flood.await;

    let accounting = account(&run, &clients).await?;
    let mut faults = faults;
    recovery(&run, &mut faults);
    let all = {
        let secs = run.seconds.lock().unwrap();
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 2).unwrap();
        for s in secs.iter() {
            h.add(&s.latency_ms).unwrap();
        }
        h
    };
    let timeline = run
        .seconds
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            let p99 = if s.latency_ms.is_empty() { 0.0 } else { s.latency_ms.value_at_quantile(0.99) as f64 };
            (s.deliveries, p99, if s.min_connected == usize::MAX { 0 } else { s.min_connected })
        })
        .collect();
    let c = &run.counters;
    let counters = json!({
        "sent": c.sent.load(Ordering::Relaxed), "connects": c.connects.load(Ordering::Relaxed),
        "connect_failures": c.connect_failures.load(Ordering::Relaxed), "drops": c.drops.load(Ordering::Relaxed),
        "churned": c.churned.load(Ordering::Relaxed), "relogins": c.relogins.load(Ordering::Relaxed),
        "resends": c.resends.load(Ordering::Relaxed), "send_errors": c.send_errors.load(Ordering::Relaxed),
        "join_errors": c.join_errors.load(Ordering::Relaxed), "gap_fills": c.gap_fills.load(Ordering::Relaxed), "skipped_seqs": c.skipped_seqs.load(Ordering::Relaxed),
        "redelivered_dropped": c.redelivered.load(Ordering::Relaxed),
        "history_reads": c.history_reads.load(Ordering::Relaxed), "history_errors": c.history_errors.load(Ordering::Relaxed),
        "flood_sent": c.flood_sent.load(Ordering::Relaxed), "flood_unacknowledged": c.flood_unacknowledged.load(Ordering::Relaxed),
        "slow_dropped": c.slow_dropped.load(Ordering::Relaxed),
    });
    let passed = accounting.clean() && faults.iter().all(|f| f.ok);
    let closes = run.closes.lock().unwrap().clone();
    let errors = run.errors.lock().unwrap().clone();
    Ok(ChaosResult {
        target: "confab",
        scenario: "chaos",
        params: p.clone(),
        seed,
        schedule: plan,
        faults,
        accounting,
        passed,
        counters,
        closes,
        errors,
        latency_p50_ms: all.value_at_quantile(0.5) as f64,
        latency_p99_ms: all.value_at_quantile(0.99) as f64,
        latency_max_ms: all.max() as f64,
        timeline,
    })
}

async fn run_faults(
    run: Arc<Run>,
    plan: Vec<Planned>,
    cmd: Option<String>,
    out: std::path::PathBuf,
) -> Vec<FaultRecord> {
    let mut done = Vec::new();
    for f in plan {
        let at = run.start + Duration::from_secs_f64(f.at_secs);
        tokio::time::sleep_until(at.into()).await;
        let started = run.start.elapsed().as_secs_f64();
        println!("  fault at {started:.1} s: {} {}", f.kind, f.arg);
        let (ok, output) = if f.kind == "slow-client" {
            *run.slow_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(f.arg as u64));
            tokio::time::sleep(Duration::from_secs(f.arg as u64)).await;
            (true, String::new())
        } else if let Some(cmd) = &cmd {
            let line = format!("{cmd} {} {}", f.kind, f.arg);
            let res = tokio::time::timeout(
                Duration::from_secs(120),
                tokio::process::Command::new("sh").arg("-c").arg(&line).output(),
            )
            .await;
            match res {
                Ok(Ok(o)) => {
                    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
                    (o.status.success(), text.trim().to_string())
                }
                Ok(Err(e)) => (false, format!("could not run `{line}`: {e}")),
                Err(_) => (false, format!("`{line}` took over 120 s")),
            }
        } else {
            (false, "no --fault-cmd".to_string())
        };
        if !ok {
            eprintln!("  fault {} {} failed: {output}", f.kind, f.arg);
        }
        let _ = std::fs::create_dir_all(&out);
        let healed = run.start.elapsed().as_secs_f64();
        done.push(FaultRecord {
            kind: f.kind,
            arg: f.arg,
            started_secs: started,
            healed_secs: healed,
            recovered_after_secs: None,
            ok,
            output,
        });
    }
    done
}

/// Recovery: from a fault's start to the end of the first second after it
/// healed with every client connected and messages flowing at half the
/// median rate of the 10 s before the fault, or more.
fn recovery(run: &Run, faults: &mut [FaultRecord]) {
    let secs = run.seconds.lock().unwrap();
    let total = secs.iter().map(|s| s.min_connected).filter(|&c| c != usize::MAX).max().unwrap_or(0);
    let ends: Vec<f64> = faults.iter().skip(1).map(|f| f.started_secs).chain([secs.len() as f64]).collect();
    for (f, end) in faults.iter_mut().zip(ends) {
        let s0 = f.started_secs as usize;
        let mut before: Vec<u64> =
            secs[s0.saturating_sub(10)..s0.min(secs.len())].iter().map(|s| s.deliveries).collect();
        before.sort_unstable();
        let baseline = before.get(before.len() / 2).copied().unwrap_or(0);
        let from = f.healed_secs.ceil() as usize;
        f.recovered_after_secs = (from..(end as usize).min(secs.len()))
            .find(|&t| secs[t].min_connected >= total && secs[t].deliveries * 2 >= baseline)
            .map(|t| ((t + 1) as f64 - f.started_secs).max(0.0));
    }
}

async fn read_history(run: Arc<Run>, mut reader: User, rooms: Vec<String>, rate: f64, on: Arc<AtomicBool>) {
    if rate <= 0.0 || rooms.is_empty() {
        return;
    }
    let every = Duration::from_secs_f64(1.0 / rate);
    while on.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let room = &rooms[rand::thread_rng().gen_range(0..rooms.len())];
        let res = run
            .http
            .get(format!("{}/messages", run.base))
            .query(&[("room_id", room.as_str()), ("limit", "50")])
            .bearer_auth(&reader.token)
            .send()
            .await;
        run.counters.history_reads.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                run.counters.history_errors.fetch_add(1, Ordering::Relaxed);
                run.with_second(|s| s.history_errors += 1);
                if r.status() == 401 {
                    if let Ok(token) = client::login(&run, &reader.name, &reader.password).await {
                        reader.token = token;
                    }
                }
            }
            Err(_) => {
                run.counters.history_errors.fetch_add(1, Ordering::Relaxed);
                run.with_second(|s| s.history_errors += 1);
            }
        }
    }
}

/// While the slow reader does not read, large messages into its room, so
/// that its queue on the node fills and the node cuts it off (1013).
async fn flood(run: Arc<Run>, token: Option<String>, room: String, on: Arc<AtomicBool>) {
    let Some(token) = token else { return };
    // Eight senders: enough to fill the slow reader's buffers and queue
    // within the fault's 20 s, even on a slow machine.
    let lanes: Vec<_> = (0..8)
        .map(|lane| tokio::spawn(flood_lane(run.clone(), token.clone(), room.clone(), on.clone(), lane)))
        .collect();
    for l in lanes {
        let _ = l.await;
    }
}

async fn flood_lane(run: Arc<Run>, token: String, room: String, on: Arc<AtomicBool>, lane: u32) {
    let filler = "x".repeat(3900);
    let mut n = 0u64;
    while on.load(Ordering::Relaxed) {
        if !run.slow_paused() || run.draining() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        n += 1;
        let cmid = format!("flood-{lane}-{n}");
        let body = json!({"room_id": room, "content": format!("flood t={} {filler}", now_ms()), "client_msg_id": cmid});
        let mut acked = false;
        for attempt in 0..10 {
            if let Ok(m) = post(&run, &token, "/messages", body.clone()).await {
                if let Some(m) = Msg::from_json(&m) {
                    run.record_ack(&room, m);
                    acked = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
        }
        run.counters.flood_sent.fetch_add(1, Ordering::Relaxed);
        if !acked {
            run.counters.flood_unacknowledged.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// How much longer than the nodes' default `seq_void_after_ms` the final
/// catch-up waits, so that the last holes are settled when it reads.
const SETTLE_MARGIN: Duration = Duration::from_secs(1);

/// Every room's whole history, read as one of its members.
async fn history_of(run: &Run, room: &str, token: &str) -> Result<Vec<Msg>> {
    let mut out: Vec<Msg> = Vec::new();
    let mut failures = 0;
    loop {
        let after = out.last().map_or(0, |m| m.seq);
        match client::page_after(run, token, room, after).await {
            Ok((page, more)) => {
                let done = !more || page.is_empty();
                out.extend(page);
                if done {
                    return Ok(out);
                }
            }
            Err(e) => {
                failures += 1;
                if failures > 20 {
                    return Err(e.context(format!("reading the history of {room}")));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn account(run: &Run, clients: &[Client]) -> Result<Accounting> {
    let mut a = Accounting::default();
    let mut member_of: HashMap<&str, Vec<&Client>> = HashMap::new();
    for c in clients {
        for r in &c.rooms {
            member_of.entry(r.as_str()).or_default().push(c);
        }
    }
    let acked = run.acked.lock().unwrap().clone();
    a.acknowledged = acked.len();
    a.rooms = member_of.len();
    let mut stored_ids = HashSet::new();
    for (room, members) in &member_of {
        let history = history_of(run, room, &members[0].token).await?;
        a.stored += history.len();
        let mut cmids = HashSet::new();
        let mut ids = HashSet::new();
        let mut last = 0;
        for m in &history {
            if m.seq <= last || !ids.insert(m.id.clone()) {
                a.history_disorder += 1;
            }
            last = m.seq;
            if let Some(c) = &m.client_msg_id {
                if !cmids.insert(c.clone()) {
                    a.stored_twice += 1;
                }
            }
            stored_ids.insert(m.id.clone());
        }
        for c in members {
            let log = &c.streams[*room].log;
            a.client_logs += 1;
            a.delivered_total += log.len();
            let seen: HashSet<&str> = log.iter().map(|(_, id)| id.as_str()).collect();
            let missing: Vec<u64> = history.iter().filter(|m| !seen.contains(m.id.as_str())).map(|m| m.seq).collect();
            a.lost += missing.len();
            let skipped = &c.streams[*room].skipped;
            a.lost_stored_late += missing.iter().filter(|seq| skipped.contains(seq)).count();
            if !missing.is_empty() && a.lost_examples.len() < 20 {
                let shown: Vec<String> = missing.iter().take(12).map(u64::to_string).collect();
                a.lost_examples.push(format!(
                    "{} in {room}: {} missing (seqs {}{}), log ends at seq {}",
                    c.name,
                    missing.len(),
                    shown.join(", "),
                    if missing.len() > 12 { ", …" } else { "" },
                    log.last().map(|l| l.0).unwrap_or(0)
                ));
            }
            a.duplicated += log.len() - seen.len();
            a.out_of_order += log.windows(2).filter(|w| w[1].0 <= w[0].0).count();
        }
    }
    a.acknowledged_missing = acked.keys().filter(|id| !stored_ids.contains(*id)).count();
    a.unacknowledged = clients.iter().map(|c| c.unacknowledged()).sum::<usize>()
        + run.counters.flood_unacknowledged.load(Ordering::Relaxed) as usize;
    Ok(a)
}

pub fn markdown(r: &ChaosResult) -> String {
    let p = &r.params;
    let a = &r.accounting;
    let mut md =
        format!(
        "# chaos: {}\n\n{} s of traffic, seed {}: {} users in {} rooms of {} and {} direct conversations, {} msgs/s, \
         {} history reads/s, a reconnect per client every {} s on average, faults every {}–{} s\n\n",
        if r.passed { "passed" } else { "FAILED" },
        p.duration, r.seed, p.users, p.rooms, p.members, p.dm_pairs, p.rate, p.history_rate, p.churn_secs,
        p.fault_min, p.fault_max,
    );
    md.push_str("| at (s) | fault | healed after (s) | recovered after (s) | ok |\n|---|---|---|---|---|\n");
    for f in &r.faults {
        md.push_str(&format!(
            "| {:.1} | {} {} | {:.1} | {} | {} |\n",
            f.started_secs,
            f.kind,
            f.arg,
            f.healed_secs - f.started_secs,
            f.recovered_after_secs.map(|s| format!("{s:.1}")).unwrap_or_else(|| "not before the next".into()),
            if f.ok { "yes" } else { "NO" },
        ));
    }
    md.push_str(&format!(
        "\n| stored | acknowledged | acknowledged missing | stored twice | history disorder | client logs | delivered | lost | of which stored late | duplicated | out of order | unacknowledged |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n\
         | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n\n",
        a.stored, a.acknowledged, a.acknowledged_missing, a.stored_twice, a.history_disorder, a.client_logs,
        a.delivered_total, a.lost, a.lost_stored_late, a.duplicated, a.out_of_order, a.unacknowledged,
    ));
    md.push_str(&format!(
        "delivery latency (send to the client's log, catch-ups included): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n\n",
        r.latency_p50_ms, r.latency_p99_ms, r.latency_max_ms
    ));
    for example in &a.lost_examples {
        md.push_str(&format!("- lost: {example}\n"));
    }
    let slow_faults = r.faults.iter().filter(|f| f.kind == "slow-client").count();
    md.push_str(&format!(
        "the slow reader's connection: {} ended by the server in {slow_faults} slow-client faults (a kill of node 1 ends it too), {} of them with close 1013 seen (a cut-off's close frame may be lost behind the full buffers)\n",
        r.counters["slow_dropped"], r.closes.get(&1013).copied().unwrap_or(0)
    ));
    md.push_str(&format!("\nclient counters: {}\n\nclose codes seen: {:?}\n", r.counters, r.closes));
    if !r.errors.is_empty() {
        md.push_str(&format!("\nclient-side errors by kind: {:?}\n", r.errors));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(args: &[&str]) -> ChaosParams {
        let m = <ChaosParams as clap::Args>::augment_args(clap::Command::new("t"))
            .get_matches_from(std::iter::once("t").chain(args.iter().copied()));
        <ChaosParams as clap::FromArgMatches>::from_arg_matches(&m).unwrap()
    }

    #[test]
    fn a_seed_gives_the_same_schedule_and_every_kind_in_a_round() {
        let p = params(&["--duration", "600"]);
        let a = schedule(&p, 7);
        let b = schedule(&p, 7);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(format!("{a:?}"), format!("{:?}", schedule(&p, 8)));
        let first: HashSet<&str> = a.iter().take(FAULTS.len()).map(|f| f.kind.as_str()).collect();
        assert_eq!(first.len(), FAULTS.len(), "{a:?}");
        for w in a.windows(2) {
            let gap = w[1].at_secs - w[0].at_secs;
            assert!((19.9..=60.1).contains(&gap), "{gap}");
        }
        assert!(a.last().unwrap().at_secs + 15.0 < 600.0);
        for f in &a {
            match f.kind.as_str() {
                "partition-node" => assert_eq!(f.arg, 3),
                "kill-node" | "kill-subscriber" => assert!((1..=3).contains(&f.arg)),
                "pause-redis" => assert!((3..=6).contains(&f.arg)),
                _ => {}
            }
        }
    }

    #[test]
    fn a_short_run_gets_a_few_faults_of_the_kinds_asked_for() {
        let p = params(&[
            "--duration",
            "120",
            "--fault-min",
            "20",
            "--fault-max",
            "30",
            "--faults",
            "kill-node,restart-redis",
        ]);
        let s = schedule(&p, 1);
        assert!((3..=6).contains(&s.len()), "{s:?}");
        assert!(s.iter().all(|f| f.kind == "kill-node" || f.kind == "restart-redis"));
    }

    #[test]
    fn any_loss_repeat_or_leftover_fails_the_run() {
        assert!(Accounting::default().clean());
        for bad in [
            Accounting { lost: 3, lost_stored_late: 3, ..Default::default() },
            Accounting { lost: 1, ..Default::default() },
            Accounting { duplicated: 1, ..Default::default() },
            Accounting { out_of_order: 1, ..Default::default() },
            Accounting { unacknowledged: 1, ..Default::default() },
            Accounting { stored_twice: 1, ..Default::default() },
            Accounting { acknowledged_missing: 1, ..Default::default() },
            Accounting { history_disorder: 1, ..Default::default() },
        ] {
            assert!(!bad.clean(), "{bad:?}");
        }
    }

    #[test]
    fn recovery_waits_for_every_client_and_half_the_rate() {
        let run = Run::for_tests();
        {
            let mut secs = run.seconds.lock().unwrap();
            for t in 0..40 {
                let mut s = Second::new();
                s.deliveries = if (20..25).contains(&t) {
                    0
                } else if t == 25 {
                    3
                } else {
                    10
                };
                s.min_connected = if (20..27).contains(&t) { 4 } else { 5 };
                secs.push(s);
            }
        }
        let mut f = vec![FaultRecord {
            kind: "kill-node".into(),
            arg: 1,
            started_secs: 20.0,
            healed_secs: 22.5,
            recovered_after_secs: None,
            ok: true,
            output: String::new(),
        }];
        recovery(&run, &mut f);
        // Second 27 is the first with all five connected and ≥ 5 deliveries.
        assert_eq!(f[0].recovered_after_secs, Some(8.0));
    }
}

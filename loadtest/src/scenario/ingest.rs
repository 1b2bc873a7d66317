//! Ingest: many small rooms, like direct messages and small groups. In each
//! room one member publishes and the others receive; the total rate steps
//! up until Confab stores less than it is offered. Per step: messages stored
//! per second, send→ack and send→delivery latency, Confab's CPU. Over the
//! run: every acknowledged message reached every other member of its room
//! exactly once.
//!
//! Beside it, in the same run and against the same store, the ceiling: a
//! bare driver loop inserting the same documents (a stored message, copied)
//! into a scratch collection with the same indexes, at a few concurrencies.
//! A chat backend stores every message before delivering it, so its
//! publishing rate is bounded by that loop; the report says how close
//! Confab gets. Confab only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bson::{doc, oid::ObjectId, Document};
use futures::{SinkExt, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::probe;
use crate::stats::{self, Latencies, Percentiles, Seen};
use crate::target::confab::message_content;
use crate::target::wire::Role;
use crate::target::ws::{self, json_string_field, Ws};

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct IngestParams {
    /// Rooms.
    #[arg(long, default_value_t = 2000)]
    pub rooms: usize,
    /// Members per room: one publishes, the others receive.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Total messages per second offered at each step, over all rooms.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,1500,2000,3000,4000")]
    pub steps: Vec<f64>,
    /// Seconds of warm-up before the steps, every room sending a message
    /// every two seconds: the rooms' first messages (caches filling) are
    /// checked for loss but left out of the figures. 0 skips it.
    #[arg(long, default_value_t = 6)]
    pub warmup: u64,
    /// Seconds of publishing per step.
    #[arg(long, default_value_t = 10)]
    pub step_secs: u64,
    /// Bytes of message content.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// After a step, the most seconds to wait for its acks and deliveries
    /// while they still arrive.
    #[arg(long, default_value_t = 30)]
    pub drain: u64,
    /// Stepping stops after a step that stores less than this fraction of
    /// its offered rate (the backlog would only grow).
    #[arg(long, default_value_t = 0.9)]
    pub saturated_below: f64,
    /// The store Confab uses, for the ceiling (left out without it).
    #[arg(long)]
    pub mongo_url: Option<String>,
    /// Confab's database in that store.
    #[arg(long, default_value = "confab")]
    pub mongo_db: String,
    /// Concurrent inserters of the ceiling loop (each one measured).
    #[arg(long, value_delimiter = ',', default_value = "10,20")]
    pub ceiling_concurrency: Vec<usize>,
    /// Documents per insert in the ceiling loop (each one measured with
    /// each concurrency): 1 is one `insert_one` per message, as Confab's
    /// single writes; more is `insert_many`.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub ceiling_batch: Vec<usize>,
    /// Seconds of inserting per concurrency and batch.
    #[arg(long, default_value_t = 10)]
    pub ceiling_secs: u64,
    /// Most seconds to wait, once connected, for the machine to go quiet.
    #[arg(long, default_value_t = 60)]
    pub settle: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub target: String,
    pub scenario: &'static str,
    pub params: IngestParams,
    pub connections: usize,
    pub connect_failures: u64,
    pub steps: Vec<StepResult>,
    /// The most messages stored per second in any step.
    pub stored_per_sec: f64,
    /// Messages acknowledged, and the deliveries owed for them (one to each
    /// receiving member).
    pub acked: u64,
    pub refused: u64,
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub receiver_disconnects: u64,
    pub ceiling: Option<Ceiling>,
    /// `stored_per_sec` over the ceiling's best rate.
    pub of_ceiling: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub offered_per_sec: f64,
    pub sent: u64,
    pub acked: u64,
    /// Acknowledged messages over the time from the step's start to its last
    /// acknowledgement: under overload, the rate the backlog drained at.
    pub stored_per_sec: f64,
    pub ack: Percentiles,
    pub delivery: Percentiles,
    pub server_cpu_seconds: f64,
    pub cpu_ms_per_message: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub collection_indexes: Vec<String>,
    pub runs: Vec<CeilingRun>,
    /// The best rate of single inserts.
    pub inserts_per_sec: f64,
    /// The best rate with several documents per insert (0 if not measured).
    pub batched_inserts_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingRun {
    pub concurrency: usize,
    pub batch: usize,
    pub inserts: u64,
    pub errors: u64,
    pub inserts_per_sec: f64,
    pub latency: Percentiles,
}

/// What publishers are told to do next.
#[derive(Clone, Copy, PartialEq)]
enum Plan {
    Wait,
    Publish { step: usize, per_room: f64, until: tokio::time::Instant },
    Stop,
}

/// Figures the publishers and receivers record into, per step.
struct Tally {
    /// When each step began (Unix ns; `u64::MAX` until then): a probe's
    /// send time says which step it belongs to.
    starts: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    last_ack: Vec<AtomicU64>,
    ack: Vec<Latencies>,
    delivery: Vec<Latencies>,
    sent_total: AtomicU64,
    answered: AtomicU64,
    delivered: AtomicU64,
}

impl Tally {
    fn new(steps: usize) -> Self {
        let atomics = |v: u64| (0..steps).map(|_| AtomicU64::new(v)).collect::<Vec<_>>();
        Tally {
            starts: atomics(u64::MAX),
            sent: atomics(0),
            acked: atomics(0),
            last_ack: atomics(0),
            ack: (0..steps).map(|_| Latencies::new()).collect(),
            delivery: (0..steps).map(|_| Latencies::new()).collect(),
            sent_total: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    fn step_of(&self, sent_ns: u64) -> Option<usize> {
        step_of(&self.starts, sent_ns)
    }
}

/// The last step that began at or before `sent_ns`.
fn step_of(starts: &[AtomicU64], sent_ns: u64) -> Option<usize> {
    starts.iter().rposition(|s| {
        let s = s.load(Ordering::Relaxed);
        s != u64::MAX && s <= sent_ns
    })
}

pub async fn run(urls: &[String], secret: &str, p: &IngestParams, server_pids: &[u32]) -> Result<IngestResult> {
    anyhow::ensure!(p.rooms > 0 && p.members >= 2, "at least one room of two members");
    anyhow::ensure!(!p.steps.is_empty() && p.steps.iter().all(|&r| r > 0.0), "steps must be positive rates");
    let tokens = confab::auth::Tokens::new(secret, Duration::from_secs(86_400));
    let run_id = format!("{:08x}", rand::random::<u32>());
    let mut tokens_of = Vec::with_capacity(p.rooms * p.members);
    for i in 0..p.rooms * p.members {
        tokens_of.push(tokens.issue(ObjectId::new(), &format!("lt{run_id}m{i}"), None).map_err(|e| anyhow!("{e}"))?);
    }
    let token = |room: usize, member: usize| tokens_of[room * p.members + member].clone();
    let node = |room: usize, member: usize| urls[(room + member) % urls.len()].clone();

    // Rooms: member 0 makes each, the others join.
    let http = reqwest::Client::new();
    let bar = super::count_bar(p.rooms as u64, "rooms");
    let rooms: Vec<String> = futures::stream::iter(0..p.rooms)
        .map(|r| {
            let (http, bar) = (http.clone(), bar.clone());
            let base = urls[r % urls.len()].clone();
            let owner = token(r, 0);
            let others: Vec<String> = (1..p.members).map(|m| token(r, m)).collect();
            let name = format!("ingest-{run_id}-{r}");
            async move {
                let resp: Value = http
                    .post(format!("{base}/rooms"))
                    .bearer_auth(&owner)
                    .json(&json!({"name": name, "type": "public"}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let id = resp["id"].as_str().ok_or_else(|| anyhow!("creating a room failed: {resp}"))?.to_string();
                for t in others {
                    let join = http.post(format!("{base}/rooms/{id}/join")).bearer_auth(&t).send().await?;
                    if !join.status().is_success() {
                        bail!("joining a room failed: {}", join.status());
                    }
                }
                bar.inc(1);
                Ok::<_, anyhow::Error>(id)
            }
        })
        .buffered(32)
        .try_collect()
        .await?;
    bar.finish_and_clear();

    // Receivers, then publishers.
    let receivers_n = p.rooms * (p.members - 1);
    let bar = super::count_bar(receivers_n as u64, "receivers");
    let mut failures = 0u64;
    let mut receivers = Vec::with_capacity(receivers_n);
    let mut opening = futures::stream::iter((0..p.rooms).flat_map(|r| (1..p.members).map(move |m| (r, m))))
        .map(|(r, m)| {
            let (url, t, room) = (node(r, m), token(r, m), rooms[r].clone());
            async move { (r, open(&url, &t, r * p.members + m, Some(&room)).await) }
        })
        .buffer_unordered(64);
    while let Some((r, opened)) = opening.next().await {
        match opened {
            Ok(ws) => receivers.push((r, ws)),
            Err(e) => {
                failures += 1;
                if failures <= 3 {
                    bar.println(format!("receiver failed: {e:#}"));
                }
            }
        }
        bar.inc(1);
    }
    drop(opening);
    bar.finish_and_clear();
    let bar = super::count_bar(p.rooms as u64, "publishers");
    let publishers: Vec<(usize, Ws)> = futures::stream::iter(0..p.rooms)
        .map(|r| {
            let (url, t, bar) = (node(r, 0), token(r, 0), bar.clone());
            async move {
                let ws = open(&url, &t, r * p.members, None).await.with_context(|| format!("publisher {r}"))?;
                bar.inc(1);
                Ok::<_, anyhow::Error>((r, ws))
            }
        })
        .buffered(64)
        .try_collect()
        .await?;
    bar.finish_and_clear();
    super::settle(p.settle, 0.3).await;

    // The warm-up is step 0 when there is one; it is not reported.
    let warmup = (p.warmup > 0).then_some((p.rooms as f64 / 2.0, p.warmup));
    let rates: Vec<(f64, u64)> = warmup.into_iter().chain(p.steps.iter().map(|&r| (r, p.step_secs))).collect();
    let tally = Arc::new(Tally::new(rates.len()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = JoinSet::new();
    for (k, (room, ws)) in receivers.into_iter().enumerate() {
        readers.spawn(receive(k, room, ws, tally.clone(), stop.clone()));
    }
    let (plan_tx, plan_rx) = watch::channel(Plan::Wait);
    let mut writers = JoinSet::new();
    for (room, ws) in publishers {
        let spread = room as f64 / p.rooms as f64;
        writers.spawn(publish(room, rooms[room].clone(), ws, spread, p.payload, plan_rx.clone(), tally.clone()));
    }

    let mut steps = Vec::new();
    for (i, &(rate, secs)) in rates.iter().enumerate() {
        let begin = stats::sample(server_pids);
        let start_ns = probe::now_ns();
        tally.starts[i].store(start_ns, Ordering::Relaxed);
        let until = tokio::time::Instant::now() + Duration::from_secs(secs);
        plan_tx.send_replace(Plan::Publish { step: i, per_room: rate / p.rooms as f64, until });
        let what = if warmup.is_some() && i == 0 { "warm-up".to_string() } else { format!("{rate:.0} msgs/s") };
        let bar = super::timed_bar(Duration::from_secs(secs), &what);
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
            bar.set_position(
                secs.saturating_sub(until.saturating_duration_since(tokio::time::Instant::now()).as_secs()),
            );
            bar.set_message(format!("{} stored", tally.acked[i].load(Ordering::Relaxed)));
        }
        plan_tx.send_replace(Plan::Wait);
        bar.finish_and_clear();
        drain(&tally, p).await;
        let end = stats::sample(server_pids);
        let acked = tally.acked[i].load(Ordering::Relaxed);
        let span = tally.last_ack[i].load(Ordering::Relaxed).saturating_sub(start_ns) as f64 / 1e9;
        let stored_per_sec = if span > 0.0 { acked as f64 / span.max(secs as f64) } else { 0.0 };
        let cpu = end.cpu_seconds - begin.cpu_seconds;
        let step = StepResult {
            offered_per_sec: rate,
            sent: tally.sent[i].load(Ordering::Relaxed),
            acked,
            stored_per_sec,
            ack: Percentiles::of(&tally.ack[i].merged()),
            delivery: Percentiles::of(&tally.delivery[i].merged()),
            server_cpu_seconds: cpu,
            cpu_ms_per_message: if acked > 0 { cpu * 1000.0 / acked as f64 } else { 0.0 },
        };
        if warmup.is_some() && i == 0 {
            continue;
        }
        println!(
            "{rate:>7.0} msgs/s offered: {:.0} stored/s, ack p99 {:.1} ms, delivery p99 {:.1} ms",
            step.stored_per_sec, step.ack.p99_ms, step.delivery.p99_ms
        );
        let saturated = step.stored_per_sec < p.saturated_below * rate;
        steps.push(step);
        if saturated {
            break;
        }
    }
    plan_tx.send_replace(Plan::Stop);
    let (mut acked, mut refused) = (0u64, 0u64);
    let mut acked_per_room = vec![0u64; p.rooms];
    while let Some(r) = writers.join_next().await {
        let (room, ok, failed) = r?;
        acked_per_room[room] = ok;
        acked += ok;
        refused += failed;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut expected, mut delivered, mut duplicated, mut disconnects) = (0, 0, 0, 0);
    while let Some(r) = readers.join_next().await {
        let (room, seen, disconnected) = r?;
        expected += acked_per_room[room];
        delivered += seen.distinct;
        duplicated += seen.duplicates;
        disconnects += disconnected as u64;
    }

    let ceiling = match &p.mongo_url {
        Some(url) => Some(ceiling(url, &p.mongo_db, &rooms[0], p).await.context("the store's ceiling")?),
        None => None,
    };
    let stored_per_sec = steps.iter().map(|s| s.stored_per_sec).fold(0.0, f64::max);
    let of_ceiling = ceiling.as_ref().filter(|c| c.inserts_per_sec > 0.0).map(|c| stored_per_sec / c.inserts_per_sec);
    Ok(IngestResult {
        target: "confab".into(),
        scenario: "ingest",
        params: p.clone(),
        connections: receivers_n - failures as usize + p.rooms,
        connect_failures: failures,
        steps,
        stored_per_sec,
        acked,
        refused,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicated,
        receiver_disconnects: disconnects,
        ceiling,
        of_ceiling,
    })
}

/// Opens a socket as the holder of `token`, joining `room` if given (and
/// returning once the join is acknowledged).
async fn open(base: &str, token: &str, spread: usize, room: Option<&str>) -> Result<Ws> {
    let mut ws = ws::open(&format!("{}/ws?token={token}", base.replacen("http", "ws", 1)), spread, Role::Other).await?;
    let Some(room) = room else { return Ok(ws) };
    ws.send(Message::Text(json!({"type": "join_channel", "channel": room, "ref": 1}).to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"ack\"") => return Ok(ws),
            Some(Ok(Message::Text(t))) if t.starts_with("{\"type\":\"error\"") => bail!("join failed: {t}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed while joining"),
        }
    }
}

/// One room's publisher: sends at the plan's rate while it says so, and
/// counts the acknowledgements (each carries the stored message, whose
/// probe says when it was sent). Returns (room, acked, refused).
async fn publish(
    room: usize,
    room_id: String,
    ws: Ws,
    spread: f64,
    payload: usize,
    mut plan: watch::Receiver<Plan>,
    tally: Arc<Tally>,
) -> (usize, u64, u64) {
    let (mut sink, mut stream) = ws.split();
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let reader = {
        let (tally, counts) = (tally.clone(), counts.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(t) = msg else { continue };
                if t.starts_with("{\"type\":\"ack\"") {
                    let now = probe::now_ns();
                    let Some(pr) = json_string_field(&t, "content").as_deref().and_then(probe::decode) else {
                        continue;
                    };
                    counts.0.fetch_add(1, Ordering::Relaxed);
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    if let Some(step) = tally.step_of(pr.sent_ns) {
                        tally.acked[step].fetch_add(1, Ordering::Relaxed);
                        tally.last_ack[step].fetch_max(now, Ordering::Relaxed);
                        tally.ack[step].record(room, &[now.saturating_sub(pr.sent_ns) / 1000]);
                    }
                } else if t.starts_with("{\"type\":\"error\"") {
                    counts.1.fetch_add(1, Ordering::Relaxed);
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut seq = 0u64;
    loop {
        let current = *plan.borrow_and_update();
        match current {
            Plan::Stop => break,
            Plan::Wait => {}
            Plan::Publish { step, per_room, until } => {
                let period = Duration::from_secs_f64(1.0 / per_room);
                let first = tokio::time::Instant::now() + period.mul_f64(spread);
                let mut tick = tokio::time::interval_at(first, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = tokio::time::sleep_until(until) => break,
                    }
                    if tokio::time::Instant::now() >= until {
                        break;
                    }
                    let frame = json!({
                        "type": "send_message",
                        "channel": room_id,
                        "data": {"content": probe::encode(room as u32, seq, payload)},
                        "ref": seq,
                    });
                    if sink.send(Message::Text(frame.to_string())).await.is_err() {
                        break;
                    }
                    seq += 1;
                    tally.sent[step].fetch_add(1, Ordering::Relaxed);
                    tally.sent_total.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if plan.changed().await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    (room, counts.0.load(Ordering::Relaxed), counts.1.load(Ordering::Relaxed))
}

/// One receiving member: notes every probe it is delivered until told to
/// stop. Returns (room, what it saw, whether the server closed it).
async fn receive(k: usize, room: usize, mut ws: Ws, tally: Arc<Tally>, stop: Arc<AtomicBool>) -> (usize, Seen, bool) {
    let mut seen = Seen::default();
    loop {
        match tokio::time::timeout(Duration::from_millis(250), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let now = probe::now_ns();
                let Some(pr) = message_content(&t).and_then(probe::decode) else { continue };
                if seen.note(pr.publisher, pr.seq) {
                    tally.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(step) = tally.step_of(pr.sent_ns) {
                        tally.delivery[step].record(k, &[now.saturating_sub(pr.sent_ns) / 1000]);
                    }
                }
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return (room, seen, true),
            Ok(Some(Ok(_))) => {}
            Err(_) if stop.load(Ordering::Relaxed) => return (room, seen, false),
            Err(_) => {}
        }
    }
}

/// Waits until every message sent so far is answered and every acked one
/// delivered, as long as answers and deliveries keep coming (at most
/// `p.drain` seconds without progress).
async fn drain(tally: &Tally, p: &IngestParams) {
    let receivers = (p.members - 1) as u64;
    let mut last = (u64::MAX, Instant::now());
    loop {
        let sent = tally.sent_total.load(Ordering::Relaxed);
        let answered = tally.answered.load(Ordering::Relaxed);
        let acked: u64 = tally.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        let delivered = tally.delivered.load(Ordering::Relaxed);
        if answered >= sent && delivered >= acked * receivers {
            return;
        }
        let progress = answered + delivered;
        if progress != last.0 {
            last = (progress, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(p.drain) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The bare driver loop: copies of a message Confab stored in `room`,
/// inserted one at a time (as Confab inserts them) by `c` concurrent tasks
/// into a scratch collection with the messages collection's indexes.
async fn ceiling(url: &str, db: &str, room: &str, p: &IngestParams) -> Result<Ceiling> {
    let client = mongodb::Client::with_uri_str(url).await?;
    let db = client.database(db);
    let messages = db.collection::<Document>("messages");
    let room_id = ObjectId::parse_str(room)?;
    let template = messages.find_one(doc! {"room_id": room_id}).await?.context("no stored message to copy")?;
    let indexes: Vec<mongodb::IndexModel> = messages.list_indexes().await?.try_collect().await?;
    let scratch_name = format!("ingest_ceiling_{:08x}", rand::random::<u32>());
    let scratch = db.collection::<Document>(&scratch_name);
    let mut names = Vec::new();
    for index in indexes {
        let name = index.options.as_ref().and_then(|o| o.name.clone()).unwrap_or_default();
        if name == "_id_" {
            continue;
        }
        let unique = index.options.as_ref().and_then(|o| o.unique);
        let options = mongodb::options::IndexOptions::builder().name(name.clone()).unique(unique).build();
        scratch.create_index(mongodb::IndexModel::builder().keys(index.keys).options(options).build()).await?;
        names.push(name);
    }
    let mut runs = Vec::new();
    let combos = p.ceiling_batch.iter().flat_map(|&b| p.ceiling_concurrency.iter().map(move |&c| (c, b.max(1))));
    for (c, batch_size) in combos {
        let what = format!("store ceiling ×{c}, {batch_size} per insert");
        let bar = super::timed_bar(Duration::from_secs(p.ceiling_secs), &what);
        let end = Instant::now() + Duration::from_secs(p.ceiling_secs);
        let latencies = Arc::new(Latencies::new());
        let mut tasks = JoinSet::new();
        for k in 0..c {
            let (scratch, template, latencies) = (scratch.clone(), template.clone(), latencies.clone());
            let payload = p.payload;
            tasks.spawn(async move {
                let (room, sender) = (ObjectId::new(), ObjectId::new());
                let (mut inserts, mut errors, mut batch) = (0u64, 0u64, Vec::with_capacity(64));
                let mut seq = 1i64;
                while Instant::now() < end {
                    let docs: Vec<Document> = (0..batch_size as i64)
                        .map(|i| {
                            let content = probe::encode(k as u32, (seq + i) as u64, payload);
                            copy_of(&template, room, sender, seq + i, &content)
                        })
                        .collect();
                    seq += batch_size as i64;
                    let t = Instant::now();
                    let written = if batch_size == 1 {
                        scratch.insert_one(&docs[0]).await.map(|_| ())
                    } else {
                        scratch.insert_many(&docs).await.map(|_| ())
                    };
                    match written {
                        Ok(()) => {
                            inserts += batch_size as u64;
                            batch.push(t.elapsed().as_micros() as u64);
                        }
                        Err(_) => errors += 1,
                    }
                    if batch.len() == 64 {
                        latencies.record(k, &batch);
                        batch.clear();
                    }
                }
                latencies.record(k, &batch);
                (inserts, errors)
            });
        }
        let started = Instant::now();
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(500)).await;
            bar.set_position(started.elapsed().as_secs());
        }
        let (mut inserts, mut errors) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            let (i, e) = r?;
            inserts += i;
            errors += e;
        }
        bar.finish_and_clear();
        let run = CeilingRun {
            concurrency: c,
            batch: batch_size,
            inserts,
            errors,
            inserts_per_sec: inserts as f64 / started.elapsed().as_secs_f64(),
            latency: Percentiles::of(&latencies.merged()),
        };
        println!(
            "store ceiling with {c} inserters, {batch_size} per insert: {:.0} inserts/s, p99 {:.1} ms",
            run.inserts_per_sec, run.latency.p99_ms
        );
        runs.push(run);
    }
    scratch.drop().await?;
    // The ceiling Confab is held to is that of its own kind of write.
    let best = runs.iter().filter(|r| r.batch == 1).map(|r| r.inserts_per_sec).fold(0.0, f64::max);
    let batched = runs.iter().filter(|r| r.batch > 1).map(|r| r.inserts_per_sec).fold(0.0, f64::max);
    Ok(Ceiling { collection_indexes: names, runs, inserts_per_sec: best, batched_inserts_per_sec: batched })
}

/// A stored message with a new identity: its own id, room, sender, seq,
/// dedup key, time and content; every other field as stored.
fn copy_of(template: &Document, room: ObjectId, sender: ObjectId, seq: i64, content: &str) -> Document {
    let mut d = template.clone();
    let id = ObjectId::new();
    d.insert("_id", id);
    d.insert("room_id", room);
    d.insert("sender_id", sender);
    d.insert("seq", seq);
    d.insert("dedup_key", id.to_hex());
    d.insert("timestamp", bson::DateTime::now());
    d.insert("content", content);
    d
}

/// The report's table.
pub fn markdown(r: &IngestResult) -> String {
    let p = &r.params;
    let mut md = format!(
        "# ingest: {}\n\n{} rooms × {} members (one publishes, {} receive), {} s per step, {} B payload; \
         {} connections, {} connect failures\n\n\
         | offered msgs/s | stored msgs/s | ack p50 ms | ack p99 ms | delivery p50 ms | delivery p99 ms | Confab CPU ms per message |\n\
         |---|---|---|---|---|---|---|\n",
        r.target, p.rooms, p.members, p.members - 1, p.step_secs, p.payload, r.connections, r.connect_failures
    );
    for s in &r.steps {
        md.push_str(&format!(
            "| {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} |\n",
            s.offered_per_sec,
            s.stored_per_sec,
            s.ack.p50_ms,
            s.ack.p99_ms,
            s.delivery.p50_ms,
            s.delivery.p99_ms,
            s.cpu_ms_per_message
        ));
    }
    md.push_str(&format!(
        "\nacked {}, refused {}; deliveries owed {}, delivered {}, lost {}, duplicated {}; receiver disconnects {}\n",
        r.acked, r.refused, r.expected, r.delivered, r.lost, r.duplicated, r.receiver_disconnects
    ));
    if let Some(c) = &r.ceiling {
        md.push_str(
            "\n| store ceiling: inserters | documents per insert | documents/s | p50 ms per insert | p99 ms | errors |\n\
             |---|---|---|---|---|---|\n",
        );
        for run in &c.runs {
            md.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} |\n",
                run.concurrency, run.batch, run.inserts_per_sec, run.latency.p50_ms, run.latency.p99_ms, run.errors
            ));
        }
        md.push_str(&format!(
            "\nConfab stored {:.0} msgs/s at best; the bare loop of single inserts {:.0}/s: {:.2} of the ceiling\n",
            r.stored_per_sec,
            c.inserts_per_sec,
            r.of_ceiling.unwrap_or(0.0)
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_belongs_to_the_last_step_begun_before_it_was_sent() {
        let starts = [100, 200, u64::MAX].map(AtomicU64::new);
        assert_eq!(step_of(&starts, 50), None);
        assert_eq!(step_of(&starts, 100), Some(0));
        assert_eq!(step_of(&starts, 199), Some(0));
        assert_eq!(step_of(&starts, 5_000), Some(1));
    }

    #[test]
    fn copies_keep_the_stored_shape_with_a_new_identity() {
        let template = doc! {
            "_id": ObjectId::new(), "room_id": ObjectId::new(), "seq": 7i64, "sender_id": ObjectId::new(),
            "content": "hi", "dedup_key": "k", "client_msg_id": bson::Bson::Null,
            "timestamp": bson::DateTime::now(), "deleted": false,
        };
        let (room, sender) = (ObjectId::new(), ObjectId::new());
        let a = copy_of(&template, room, sender, 1, "LT|1|1|1|");
        let b = copy_of(&template, room, sender, 2, "LT|1|2|1|");
        let keys = |d: &Document| d.keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&a), keys(&template));
        assert_ne!(a.get_object_id("_id").unwrap(), b.get_object_id("_id").unwrap());
        assert_ne!(a.get_str("dedup_key").unwrap(), b.get_str("dedup_key").unwrap());
        assert_eq!((a.get_object_id("room_id").unwrap(), a.get_i64("seq").unwrap()), (room, 1));
        assert!(!a.get_bool("deleted").unwrap(), "other fields as stored");
    }
}

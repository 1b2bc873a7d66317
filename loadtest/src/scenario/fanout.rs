//! Fan-out: R rooms × S subscribers, P publishers at a total rate X for D
//! seconds, clients spread over the target's nodes so traffic crosses the
//! broker. Every message carries a probe (publisher, seq, send time):
//! subscribers measure end-to-end latency and account for every message
//! exactly once (lost and duplicated must be 0).
//!
//! Publishing starts with a warm-up: its messages are accounted for (lost,
//! duplicated) but not measured, so that latency, rate and CPU describe the
//! steady state rather than the target's first look at each room (caches
//! filling, connections to its store opening).
//!
//! Subscribers' sockets count the bytes they read (`target::wire`), so the
//! result also says what the deliveries cost on the wire, e.g. with and
//! without permessage-deflate (`--opt deflate=true` for Confab).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::probe;
use crate::stats::{self, Latencies, Percentiles, Seen, ServerSample};
use crate::target::{wire, Target};

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct FanoutParams {
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Publishers in all (spread over the rooms).
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Total messages per second over all publishers.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of publishing that are measured.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Seconds of publishing before the measured `duration`, at the same
    /// rate: checked for loss and duplicates, left out of latency, rate and
    /// CPU.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Bytes of message content.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds to wait for in-flight messages after publishing stops.
    #[arg(long, default_value_t = 3)]
    pub grace: u64,
    /// Most seconds to wait, once every subscriber is connected, for the
    /// machine to go quiet before publishing, so that work set off by the
    /// connects (presence announcements, store reads) is not counted as
    /// fan-out; 0 publishes at once.
    #[arg(long, default_value_t = 60)]
    pub settle: u64,
    /// Quiet means the whole machine's CPUs are busy less than this
    /// fraction of a second.
    #[arg(long, default_value_t = 0.3)]
    pub settle_below: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub target: String,
    pub scenario: &'static str,
    pub params: FanoutParams,
    pub connections: usize,
    pub connect_failures: u64,
    /// Messages accepted, warm-up included.
    pub published: u64,
    /// Deliveries owed for them; `delivered`, `lost` and `duplicated` count
    /// against this.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub subscriber_disconnects: u64,
    /// Seconds waited for the machine to go quiet before publishing.
    pub settled_secs: f64,
    /// Deliveries of messages sent after the warm-up.
    pub measured: u64,
    pub delivered_per_sec: f64,
    pub latency: Percentiles,
    pub server_cpu_seconds: f64,
    pub cpu_seconds_per_million: f64,
    pub server_rss_bytes: u64,
    pub server_rss_bytes_per_connection: f64,
    /// Bytes the subscribers' sockets read from TCP (WebSocket framing and
    /// any compression included, TCP/IP headers not) in the measured
    /// window: from the end of the warm-up until every subscriber stopped
    /// reading, after the grace period. Besides the measured deliveries this
    /// holds what else arrived meanwhile: the last warm-up deliveries, pings
    /// and, with churn, the churning connections' handshakes, joins and
    /// deliveries.
    pub wire_bytes_received: u64,
    /// `wire_bytes_received / measured` (0 without measured deliveries).
    pub wire_bytes_per_delivery: f64,
    #[serde(skip)]
    pub histogram: Option<hdrhistogram::Histogram<u64>>,
}

struct SubscriberOutcome {
    room: usize,
    seen: Seen,
    disconnected: bool,
}

/// Runs the scenario against a target already prepared with `p.rooms` rooms.
pub async fn run(
    target: Arc<dyn Target>,
    p: &FanoutParams,
    server_pids: &[u32],
    churn: Option<crate::scenario::churn::Churn>,
) -> Result<FanoutResult> {
    anyhow::ensure!(
        p.rooms > 0 && p.subscribers > 0 && p.publishers > 0 && p.rate > 0.0,
        "rooms, subscribers, publishers and rate must be positive"
    );
    let target: &dyn Target = &*target;
    let idle = stats::sample(server_pids);

    // Connect subscribers, a few at a time.
    let total_subs = p.rooms * p.subscribers;
    let bar = super::count_bar(total_subs as u64, "subscribing");
    let mut subs = Vec::with_capacity(total_subs);
    let mut failures = 0u64;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut next = 0usize;
    use futures::StreamExt;
    while next < total_subs || !pending.is_empty() {
        while next < total_subs && pending.len() < 64 {
            let (idx, room) = (next, next % p.rooms);
            pending.push(async move { (room, target.subscriber(idx, room).await) });
            next += 1;
        }
        if let Some((room, r)) = pending.next().await {
            match r {
                Ok(s) => subs.push((room, s)),
                Err(e) => {
                    failures += 1;
                    if failures <= 3 {
                        bar.println(format!("subscriber failed: {e:#}"));
                    }
                }
            }
            bar.inc(1);
        }
    }
    drop(pending);
    bar.finish_and_clear();
    let settled_secs = super::settle(p.settle, p.settle_below).await;
    let connected = stats::sample(server_pids);

    let mut publishers = Vec::with_capacity(p.publishers);
    for i in 0..p.publishers {
        publishers
            .push((i % p.rooms, target.publisher(i, i % p.rooms).await.with_context(|| format!("publisher {i}"))?));
    }

    // Subscribers record until told to stop.
    let latencies = Arc::new(Latencies::new());
    let delivered = Arc::new(AtomicU64::new(0));
    let measured = Arc::new(AtomicU64::new(0));
    // Probes sent from this instant on are measured (set when the warm-up ends).
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = JoinSet::new();
    for (k, (room, mut sub)) in subs.into_iter().enumerate() {
        let (latencies, delivered, stop) = (latencies.clone(), delivered.clone(), stop.clone());
        let (measured, measure_from) = (measured.clone(), measure_from.clone());
        readers.spawn(async move {
            let mut seen = Seen::default();
            let mut batch = Vec::with_capacity(64);
            let mut disconnected = false;
            loop {
                let next = tokio::time::timeout(Duration::from_millis(250), sub.next()).await;
                match next {
                    Ok(Ok(Some(content))) => {
                        let now = probe::now_ns();
                        if let Some(pr) = probe::decode(&content) {
                            if seen.note(pr.publisher, pr.seq) {
                                delivered.fetch_add(1, Ordering::Relaxed);
                                if pr.sent_ns >= measure_from.load(Ordering::Relaxed) {
                                    batch.push(now.saturating_sub(pr.sent_ns) / 1000);
                                    measured.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        if batch.len() == 64 {
                            latencies.record(k, &batch);
                            batch.clear();
                        }
                    }
                    Ok(Ok(None)) | Ok(Err(_)) => {
                        disconnected = true;
                        break;
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => break,
                    Err(_) => {}
                }
            }
            latencies.record(k, &batch);
            SubscriberOutcome { room, seen, disconnected }
        });
    }

    let churner = churn.map(|c| tokio::spawn(c.run(stop.clone())));

    // Publish at the total rate, spread evenly over the publishers.
    let per_pub = p.rate / p.publishers as f64;
    let bar = super::timed_bar(Duration::from_secs(p.warmup + p.duration), "warm-up");
    let started = Instant::now();
    let mut writers = JoinSet::new();
    let count = publishers.len().max(1) as f64;
    for (i, (room, mut publisher)) in publishers.into_iter().enumerate() {
        let (duration, payload) = (Duration::from_secs(p.warmup + p.duration), p.payload);
        writers.spawn(async move {
            let period = Duration::from_secs_f64(1.0 / per_pub);
            // Phases spread over one period: messages arrive evenly, not in bursts.
            let phase = period.mul_f64(i as f64 / count);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + duration;
            let mut seq = 0u64;
            let mut errors = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                if publisher.publish(&probe::encode(i as u32, seq, payload)).await.is_err() {
                    errors += 1;
                }
                seq += 1;
            }
            publisher.settle().await;
            (room, publisher.accepted(), errors)
        });
    }
    let mut begin = None;
    let mut wire_begin = None;
    while started.elapsed() < Duration::from_secs(p.warmup + p.duration) {
        if begin.is_none() && started.elapsed() >= Duration::from_secs(p.warmup) {
            measure_from.store(probe::now_ns(), Ordering::Relaxed);
            wire_begin = Some(wire::subscriber_bytes());
            begin = Some(stats::sample(server_pids));
            bar.set_prefix("fan-out");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        bar.set_position(started.elapsed().as_secs());
        bar.set_message(format!("{} delivered", delivered.load(Ordering::Relaxed)));
    }
    let begin = begin.unwrap_or_else(|| stats::sample(server_pids));
    let wire_begin = wire_begin.unwrap_or_else(wire::subscriber_bytes);
    let mut published_per_room = vec![0u64; p.rooms];
    let mut published = 0;
    while let Some(r) = writers.join_next().await {
        let (room, accepted, _errors) = r?;
        published_per_room[room] += accepted;
        published += accepted;
    }
    tokio::time::sleep(Duration::from_secs(p.grace)).await;
    let end = stats::sample(server_pids);
    stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
    if let Some(c) = churner {
        let _ = c.await;
    }

    let mut expected = 0;
    let mut distinct = 0;
    let mut duplicated = 0;
    let mut disconnects = 0;
    while let Some(r) = readers.join_next().await {
        let o = r?;
        expected += published_per_room[o.room];
        distinct += o.seen.distinct;
        duplicated += o.seen.duplicates;
        disconnects += o.disconnected as u64;
    }
    // Every reader has stopped: `measured` and the wire count end together.
    let wire_bytes = wire::subscriber_bytes() - wire_begin;
    let histogram = latencies.merged();
    let cpu = end.cpu_seconds - begin.cpu_seconds;
    let measured = measured.load(Ordering::Relaxed);
    Ok(FanoutResult {
        target: target.name().to_string(),
        scenario: "fanout",
        params: p.clone(),
        connections: total_subs - failures as usize + p.publishers,
        connect_failures: failures,
        published,
        expected,
        delivered: distinct,
        lost: expected.saturating_sub(distinct),
        duplicated,
        subscriber_disconnects: disconnects,
        settled_secs,
        measured,
        // Measured messages are published during `duration`; their
        // deliveries trail by the latency, so the rate is over that time.
        delivered_per_sec: measured as f64 / p.duration.max(1) as f64,
        latency: Percentiles::of(&histogram),
        server_cpu_seconds: cpu,
        cpu_seconds_per_million: if measured > 0 { cpu / (measured as f64 / 1e6) } else { 0.0 },
        server_rss_bytes: end.rss_bytes,
        server_rss_bytes_per_connection: per_connection(idle, connected, total_subs),
        wire_bytes_received: wire_bytes,
        wire_bytes_per_delivery: if measured > 0 { wire_bytes as f64 / measured as f64 } else { 0.0 },
        histogram: Some(histogram),
    })
}

fn per_connection(before: ServerSample, after: ServerSample, n: usize) -> f64 {
    if n == 0 {
        return 0.0;
    }
    after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / n as f64
}

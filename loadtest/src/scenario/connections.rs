//! Connections: open N authenticated WebSockets (source addresses spread
//! over 127.0.0.x), hold them, and report connect rate, failures and the
//! server processes' memory per connection.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use serde::Serialize;

use crate::stats;
use crate::target::Target;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct ConnectionsParams {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Seconds to hold them open before measuring memory and closing.
    #[arg(long, default_value_t = 5)]
    pub hold: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsResult {
    pub target: String,
    pub scenario: &'static str,
    pub params: ConnectionsParams,
    pub opened: usize,
    pub failures: u64,
    pub connect_seconds: f64,
    pub connects_per_sec: f64,
    pub server_rss_before_bytes: u64,
    pub server_rss_after_bytes: u64,
    pub server_rss_bytes_per_connection: f64,
}

pub async fn run(target: &dyn Target, p: &ConnectionsParams, server_pids: &[u32]) -> Result<ConnectionsResult> {
    let before = stats::sample(server_pids);
    let bar = super::count_bar(p.connections as u64, "connecting");
    let started = Instant::now();
    let mut held = Vec::with_capacity(p.connections);
    let mut failures = 0u64;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut next = 0;
    while next < p.connections || !pending.is_empty() {
        while next < p.connections && pending.len() < p.concurrency.max(1) {
            let idx = next;
            pending.push(async move { target.idle(idx).await });
            next += 1;
        }
        match pending.next().await {
            Some(Ok(c)) => held.push(c),
            Some(Err(e)) => {
                failures += 1;
                if failures <= 3 {
                    bar.println(format!("connect failed: {e:#}"));
                }
            }
            None => {}
        }
        bar.inc(1);
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    tokio::time::sleep(Duration::from_secs(p.hold)).await;
    let after = stats::sample(server_pids);
    let opened = held.len();
    drop(held);
    Ok(ConnectionsResult {
        target: target.name().to_string(),
        scenario: "connections",
        params: p.clone(),
        opened,
        failures,
        connect_seconds,
        connects_per_sec: opened as f64 / connect_seconds.max(1e-9),
        server_rss_before_bytes: before.rss_bytes,
        server_rss_after_bytes: after.rss_bytes,
        server_rss_bytes_per_connection: if opened > 0 {
            after.rss_bytes.saturating_sub(before.rss_bytes) as f64 / opened as f64
        } else {
            0.0
        },
    })
}

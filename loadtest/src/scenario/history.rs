//! History: REST history reads per second (`GET /messages`, newest page) by
//! concurrent readers, against a room seeded with messages. Confab only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::stats::{Latencies, Percentiles};

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct HistoryParams {
    /// Concurrent readers.
    #[arg(long, default_value_t = 16)]
    pub readers: usize,
    /// Messages seeded into the room first.
    #[arg(long, default_value_t = 200)]
    pub seed: usize,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Seconds of reading.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryResult {
    pub target: String,
    pub scenario: &'static str,
    pub params: HistoryParams,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_sec: f64,
    pub latency: Percentiles,
}

pub async fn run(urls: &[String], secret: &str, p: &HistoryParams) -> Result<HistoryResult> {
    let tokens = confab::auth::Tokens::new(secret, Duration::from_secs(86_400));
    let user = bson::oid::ObjectId::new();
    let token = tokens.issue(user, "lthistory", None).map_err(|e| anyhow!("{e}"))?;
    let http = reqwest::Client::new();
    let base = &urls[0];
    let name = format!("loadtest-history-{:08x}", rand::random::<u32>());
    let room: Value = http
        .post(format!("{base}/rooms"))
        .bearer_auth(&token)
        .json(&json!({"name": name, "type": "public"}))
        .send()
        .await?
        .json()
        .await?;
    let room_id = room["id"].as_str().ok_or_else(|| anyhow!("creating the room failed: {room}"))?.to_string();
    let bar = super::count_bar(p.seed as u64, "seeding");
    for i in 0..p.seed {
        let body = json!({"room_id": room_id, "content": format!("history message {i}")});
        http.post(format!("{base}/messages")).bearer_auth(&token).json(&body).send().await?.error_for_status()?;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let latencies = Arc::new(Latencies::new());
    let bar = super::timed_bar(Duration::from_secs(p.duration), "history");
    let end = Instant::now() + Duration::from_secs(p.duration);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..p.readers {
        let (http, token, latencies) = (http.clone(), token.clone(), latencies.clone());
        let url = format!("{}/messages?room_id={room_id}&limit={}", urls[r % urls.len()], p.limit);
        tasks.spawn(async move {
            let (mut ok, mut errors, mut batch) = (0u64, 0u64, Vec::new());
            while Instant::now() < end {
                let t = Instant::now();
                let success = match http.get(&url).bearer_auth(&token).send().await {
                    Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if success {
                    ok += 1;
                    batch.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                if batch.len() == 64 {
                    latencies.record(r, &batch);
                    batch.clear();
                }
            }
            latencies.record(r, &batch);
            (ok, errors)
        });
    }
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.set_position(started.elapsed().as_secs());
    }
    let (mut requests, mut errors) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (ok, err) = r?;
        requests += ok;
        errors += err;
    }
    bar.finish_and_clear();
    Ok(HistoryResult {
        target: "confab".into(),
        scenario: "history",
        params: p.clone(),
        requests,
        errors,
        requests_per_sec: requests as f64 / started.elapsed().as_secs_f64(),
        latency: Percentiles::of(&latencies.merged()),
    })
}

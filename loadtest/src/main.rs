//! `confab-loadtest`: drives Confab (or a peer, through an adapter) with a
//! scenario, shows progress, and writes results.json, summary.md and
//! latency.png. Every run is bounded in count and time and stops by itself;
//! point it only at servers you run (loopback, by default).

mod probe;
mod report;
mod scenario;
mod stats;
mod target;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use scenario::chaos::ChaosParams;
use scenario::churn::{Churn, ChurnParams, ChurnResult};
use scenario::connections::ConnectionsParams;
use scenario::fanout::{FanoutParams, FanoutResult};
use scenario::history::HistoryParams;
use scenario::ingest::IngestParams;
use scenario::volume::{SeedParams, VolumeParams};

#[derive(Parser)]
#[command(name = "confab-loadtest", version, about = "Load generator for Confab and its peers")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone)]
struct Common {
    /// System under test: confab, centrifugo, socketio, baseline.
    #[arg(long, default_value = "confab")]
    target: String,
    /// Base URL of each node (repeat; clients are spread over them).
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Confab's token secret: tokens are minted locally instead of
    /// registering users over REST (they belong to no session, so the
    /// nodes must run with CONFAB_SESSIONLESS_TOKENS=true).
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Adapter settings, key=value (repeat). confab: `deflate=true`
    /// (subscribers negotiate permessage-deflate; the server must run with
    /// CONFAB_WS_DEFLATE=true). centrifugo: `centrifugo_hmac_secret=S`.
    #[arg(long = "opt", value_parser = parse_opt)]
    opts: Vec<(String, String)>,
    /// Server process ids, for CPU and memory figures (repeat).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Where results.json, summary.md and latency.png go.
    #[arg(long, default_value = "loadtest-results")]
    out: PathBuf,
}

fn parse_opt(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not key=value"))
}

#[derive(Subcommand)]
enum Scenario {
    /// R rooms × S subscribers, P publishers at X msgs/s for D seconds.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        params: FanoutParams,
    },
    /// Open and hold N authenticated WebSockets.
    Connections {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        params: ConnectionsParams,
    },
    /// Fan-out while clients connect and disconnect at a constant rate.
    Churn {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        params: FanoutParams,
        #[command(flatten)]
        churn: ChurnParams,
    },
    /// Draws p99 against deliveries per second from fan-out results, one
    /// line per system: `--series NAME=DIR` (repeat), each DIR holding one
    /// `results.json` per rate in its subdirectories.
    Plot {
        #[arg(long = "series", required = true, value_parser = parse_opt)]
        series: Vec<(String, String)>,
        /// The PNG to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Drawn as a horizontal line (ms).
        #[arg(long, default_value_t = 50.0)]
        limit_ms: f64,
    },
    /// Many small rooms, one publisher each, at rates stepping up; beside
    /// it the store's own insert ceiling (Confab only; needs --jwt-secret,
    /// and --mongo-url for the ceiling).
    Ingest {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        params: IngestParams,
    },
    /// Fills an empty store with a long history (users, private rooms,
    /// memberships, messages) and Redis with the rooms' seq counters, for
    /// `volume`. Writes to the store directly; run no node on it meanwhile.
    Seed {
        #[command(flatten)]
        params: SeedParams,
        /// Where results.json and summary.md go.
        #[arg(long, default_value = "loadtest-results")]
        out: PathBuf,
    },
    /// Reads against a store `seed` filled: history pages deep and newest,
    /// the room list with unread counts, search (Confab only; needs
    /// --jwt-secret); `--explain` prints the store's plans first.
    Volume {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        params: VolumeParams,
    },
    /// Users chatting through the front (rooms, DMs, churn, history reads)
    /// while a seeded fault schedule breaks the cluster, then exact
    /// accounting; fails unless nothing was lost, duplicated or reordered
    /// (Confab only; scripts/chaos.sh runs it).
    Chaos {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        params: ChaosParams,
    },
    /// REST history reads per second (Confab only; needs --jwt-secret).
    History {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        params: HistoryParams,
    },
}

fn build_target(c: &Common) -> Result<Box<dyn target::Target>> {
    let opts: target::Options = c.opts.iter().cloned().collect();
    target::build(&c.target, c.urls.clone(), c.jwt_secret.clone(), &opts)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    yield_to_servers();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli))
}

/// Puts this process (and the runtime threads it starts next) in the
/// batch scheduling class, so that waking up for a delivery does not
/// preempt the servers it measures when they share the machine: the
/// servers then pay for their own work only, not for being interrupted by
/// their clients (which, deployed, run elsewhere). Latency is still taken
/// when a client reads, so any wait this adds is counted against the server.
fn yield_to_servers() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain system call on this process with a valid parameter.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
            eprintln!("note: could not enter the batch scheduling class: {}", std::io::Error::last_os_error());
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.scenario {
        Scenario::Fanout { common, params } => fanout(common, params, None).await,
        Scenario::Churn { common, params, churn } => fanout(common, params, Some(churn)).await,
        Scenario::Connections { common, params } => {
            let mut target = build_target(&common)?;
            target.prepare(1).await.context("preparing")?;
            let r = scenario::connections::run(&*target, &params, &common.server_pids).await?;
            let md = format!(
                "# connections: {}\n\n| opened | failures | connects/s | server RSS per connection |\n|---|---|---|---|\n| {} | {} | {:.0} | {:.1} KiB |\n",
                r.target, r.opened, r.failures, r.connects_per_sec, r.server_rss_bytes_per_connection / 1024.0
            );
            finish(&common.out, &r, &md)
        }
        Scenario::Plot { series, out, limit_ms } => {
            let mut lines = Vec::new();
            for (name, dir) in series {
                lines.push((name, report::saturation_points(std::path::Path::new(&dir))?));
            }
            report::write_saturation_png(&out, &lines, limit_ms)
        }
        Scenario::Ingest { common, params } => {
            let secret = common.jwt_secret.as_deref().context("ingest needs --jwt-secret")?;
            let r = scenario::ingest::run(&common.urls, secret, &params, &common.server_pids).await?;
            finish(&common.out, &r, &scenario::ingest::markdown(&r))
        }
        Scenario::Seed { params, out } => {
            let r = scenario::volume::seed(&params).await?;
            finish(&out, &r, &scenario::volume::seed_markdown(&r))
        }
        Scenario::Volume { common, params } => {
            let secret = common.jwt_secret.as_deref().context("volume needs --jwt-secret")?;
            let r = scenario::volume::run(&common.urls, secret, &params).await?;
            finish(&common.out, &r, &scenario::volume::markdown(&r))
        }
        Scenario::Chaos { common, params } => {
            let r = scenario::chaos::run(&common.urls[0], &params, &common.out).await?;
            let spans: Vec<(f64, f64, String)> =
                r.faults.iter().map(|f| (f.started_secs, f.healed_secs, format!("{} {}", f.kind, f.arg))).collect();
            report::write_timeline_png(&common.out, &r.timeline, &spans)?;
            finish(&common.out, &r, &scenario::chaos::markdown(&r))?;
            anyhow::ensure!(r.passed, "the chaos run failed its accounting or a fault (see summary.md)");
            Ok(())
        }
        Scenario::History { common, params } => {
            let secret = common.jwt_secret.as_deref().context("history needs --jwt-secret")?;
            let r = scenario::history::run(&common.urls, secret, &params).await?;
            let l = &r.latency;
            let md = format!(
                "# history\n\n| requests/s | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|\n| {:.0} | {} | {:.2} | {:.2} | {:.2} |\n",
                r.requests_per_sec, r.errors, l.p50_ms, l.p99_ms, l.max_ms
            );
            finish(&common.out, &r, &md)
        }
    }
}

async fn fanout(common: Common, params: FanoutParams, churn: Option<ChurnParams>) -> Result<()> {
    let mut target = build_target(&common)?;
    target.prepare(params.rooms).await.context("preparing rooms")?;
    let target: Arc<dyn target::Target> = Arc::from(target);
    let counters = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let churner = churn.clone().map(|p| Churn {
        target: target.clone(),
        params: p,
        rooms: params.rooms,
        first_idx: params.rooms * params.subscribers + params.publishers + 1,
        result: counters.clone(),
    });
    let mut r = scenario::fanout::run(target, &params, &common.server_pids, churner).await?;
    let churned = churn.map(|_| ChurnResult {
        connects: counters.0.load(Ordering::Relaxed),
        failures: counters.1.load(Ordering::Relaxed),
    });
    if let Some(h) = r.histogram.take() {
        report::write_latency_png(&common.out, &format!("{} fan-out latency", r.target), &h)?;
    }
    let md = fanout_markdown(&r, churned.as_ref());
    #[derive(serde::Serialize)]
    struct WithChurn<'a> {
        #[serde(flatten)]
        fanout: &'a FanoutResult,
        #[serde(skip_serializing_if = "Option::is_none")]
        churn: Option<&'a ChurnResult>,
    }
    finish(&common.out, &WithChurn { fanout: &r, churn: churned.as_ref() }, &md)
}

fn fanout_markdown(r: &FanoutResult, churn: Option<&ChurnResult>) -> String {
    let p = &r.params;
    let l = &r.latency;
    let mut md = format!(
        "# fan-out: {}\n\n{} rooms × {} subscribers, {} publishers at {} msgs/s for {} s after {} s of warm-up, {} B payload\n\n\
         | delivered/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | lost | dup | CPU s per 1M deliveries | server RSS per connection |\n\
         |---|---|---|---|---|---|---|---|---|---|\n\
         | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.1} KiB |\n\n\
         published {} (accepted by the server, warm-up included), expected deliveries {}, delivered {} ({} measured), connect failures {}, subscriber disconnects {}; publishing began after {:.0} s of settling\n",
        r.target, p.rooms, p.subscribers, p.publishers, p.rate, p.duration, p.warmup, p.payload,
        r.delivered_per_sec, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, r.lost, r.duplicated,
        r.cpu_seconds_per_million, r.server_rss_bytes_per_connection / 1024.0,
        r.published, r.expected, r.delivered, r.measured, r.connect_failures, r.subscriber_disconnects, r.settled_secs,
    );
    md.push_str(&format!(
        "\nwire: subscribers read {} bytes in the measured window, {:.1} bytes per measured delivery\n",
        r.wire_bytes_received, r.wire_bytes_per_delivery
    ));
    if let Some(c) = churn {
        md.push_str(&format!("\nchurn: {} connects, {} failures\n", c.connects, c.failures));
    }
    md
}

fn finish<T: serde::Serialize>(out: &std::path::Path, result: &T, md: &str) -> Result<()> {
    report::write_json(out, result)?;
    report::write_markdown(out, md)?;
    println!("{md}");
    println!("results in {}", out.display());
    Ok(())
}

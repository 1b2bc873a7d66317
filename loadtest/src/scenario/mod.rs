//! Load scenarios. Each runs bounded in count and time, stops by itself, and
//! returns a JSON-serialisable result.

pub mod chaos;
pub mod churn;
pub mod connections;
pub mod fanout;
pub mod history;
pub mod ingest;
pub mod volume;

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over a fixed duration, with a live message.
pub fn timed_bar(d: Duration, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(d.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len}s {msg}").unwrap().progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

pub fn count_bar(n: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len} {per_sec} {msg}")
            .unwrap()
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Waits (at most `max_secs`) until the machine is quiet, its CPUs busy less
/// than `below` of a second, so that work set off by connecting (presence
/// announcements, store reads) is not counted in what follows; returns how
/// long it waited. 0 does not wait.
pub async fn settle(max_secs: u64, below: f64) -> f64 {
    let started = Instant::now();
    if max_secs == 0 {
        return 0.0;
    }
    let bar = timed_bar(Duration::from_secs(max_secs), "settling");
    while started.elapsed() < Duration::from_secs(max_secs) {
        match crate::stats::machine_busy(Duration::from_secs(1)).await {
            Some(busy) if busy >= below => bar.set_message(format!("machine {:.0}% busy", busy * 100.0)),
            _ => break,
        }
        bar.set_position(started.elapsed().as_secs());
    }
    bar.finish_and_clear();
    started.elapsed().as_secs_f64()
}

//! Load scenarios. Each runs bounded in count and time, stops by itself, and
//! returns a JSON-serialisable result.

pub mod churn;
pub mod connections;
pub mod fanout;
pub mod history;

use std::time::Duration;

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

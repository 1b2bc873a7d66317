//! Measurements: latency histograms, exactly-once accounting, and the
//! server processes' CPU time and memory read from /proc.

use std::collections::HashMap;
use std::sync::Mutex;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency histograms sharded to keep many recording tasks off one lock.
pub struct Latencies {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Latencies {
    pub fn new() -> Self {
        let shards = (0..32).map(|_| Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap())).collect();
        Latencies { shards }
    }

    /// Records a batch of latencies in microseconds.
    pub fn record(&self, shard: usize, micros: &[u64]) {
        let mut h = self.shards[shard % self.shards.len()].lock().unwrap();
        for &m in micros {
            let _ = h.record(m.clamp(1, 60_000_000));
        }
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for s in &self.shards {
            all.add(&*s.lock().unwrap()).unwrap();
        }
        all
    }
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// What one subscriber saw: which (publisher, seq) arrived, and how often.
#[derive(Default)]
pub struct Seen {
    per_publisher: HashMap<u32, Vec<u64>>,
    pub distinct: u64,
    pub duplicates: u64,
}

impl Seen {
    /// Notes one delivery; false if it is a duplicate.
    pub fn note(&mut self, publisher: u32, seq: u64) -> bool {
        let bits = self.per_publisher.entry(publisher).or_default();
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return false;
        }
        bits[word] |= 1 << bit;
        self.distinct += 1;
        true
    }
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Resident memory of a process in bytes, from /proc/PID/status.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Jiffies of all CPUs since boot, as (busy, total), from /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let total: u64 = f.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = f.get(3)? + f.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Fraction of the whole machine's CPU time that was busy over `window`
/// (every process counts: servers, their store, Redis, this generator).
pub async fn machine_busy(window: std::time::Duration) -> Option<f64> {
    let (b0, t0) = machine_jiffies()?;
    tokio::time::sleep(window).await;
    let (b1, t1) = machine_jiffies()?;
    (t1 > t0).then(|| (b1 - b0) as f64 / (t1 - t0) as f64)
}

/// Totals over a set of server processes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ServerSample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

pub fn sample(pids: &[u32]) -> ServerSample {
    let mut s = ServerSample::default();
    for &pid in pids {
        s.cpu_seconds += cpu_seconds(pid).unwrap_or(0.0);
        s.rss_bytes += rss_bytes(pid).unwrap_or(0);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn machine_busy_is_a_fraction() {
        let busy = machine_busy(std::time::Duration::from_millis(200)).await.expect("/proc/stat");
        assert!((0.0..=1.0).contains(&busy), "{busy}");
    }

    #[test]
    fn seen_counts_distinct_and_duplicates() {
        let mut s = Seen::default();
        assert!(s.note(1, 0));
        assert!(s.note(1, 200));
        assert!(!s.note(1, 0));
        assert!(s.note(2, 0));
        assert_eq!((s.distinct, s.duplicates), (3, 1));
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_seconds(me).is_some());
    }

    #[test]
    fn percentiles_in_milliseconds() {
        let l = Latencies::new();
        l.record(0, &[1000, 2000, 3000]);
        let p = Percentiles::of(&l.merged());
        assert_eq!(p.count, 3);
        assert!((p.p50_ms - 2.0).abs() < 0.01, "{p:?}");
    }
}

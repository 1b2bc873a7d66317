//! Churn: a constant rate of connect → subscribe → disconnect while fan-out
//! runs, the pattern of mobile clients coming and going.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::target::Target;

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct ChurnParams {
    /// New connections per second (each subscribes, lives a moment, leaves).
    #[arg(long, default_value_t = 20.0)]
    pub churn_rate: f64,
    /// How long each churning connection stays, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub churn_hold_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnResult {
    pub connects: u64,
    pub failures: u64,
}

pub struct Churn {
    pub target: Arc<dyn Target>,
    pub params: ChurnParams,
    pub rooms: usize,
    /// Subscriber indexes start here, past the fan-out's own.
    pub first_idx: usize,
    pub result: Arc<(AtomicU64, AtomicU64)>,
}

impl Churn {
    pub async fn run(self, stop: Arc<AtomicBool>) {
        let period = Duration::from_secs_f64(1.0 / self.params.churn_rate.max(0.1));
        let mut tick = tokio::time::interval(period);
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (target, result, hold) = (self.target.clone(), self.result.clone(), self.params.churn_hold_ms);
            let (idx, room) = (self.first_idx + n, n % self.rooms.max(1));
            n += 1;
            tokio::spawn(async move {
                match target.subscriber(idx, room).await {
                    Ok(sub) => {
                        result.0.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(hold)).await;
                        drop(sub);
                    }
                    Err(_) => {
                        result.1.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }
}

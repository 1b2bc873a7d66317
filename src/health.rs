//! Whether this node is up and ready: what `/healthz`, `/readyz` and
//! `/metrics` report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::timeout;

use crate::bus::Bus;
use crate::store::Store;

/// How long a readiness probe waits for each backend.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Health {
    node_id: String,
    bus: Arc<Bus>,
    store: Arc<Store>,
    /// Set once the store's indexes exist; until then the node is not ready.
    indexes_ready: AtomicBool,
    metrics: PrometheusHandle,
}

/// What a readiness probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub redis: bool,
    /// MongoDB answers and the node's indexes exist.
    pub mongo: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.redis && self.mongo
    }
}

impl Health {
    pub fn new(node_id: String, bus: Arc<Bus>, store: Arc<Store>, metrics: PrometheusHandle) -> Self {
        Health { node_id, bus, store, indexes_ready: AtomicBool::new(false), metrics }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Pings both backends at once, each for at most two seconds.
    pub async fn readiness(&self) -> Readiness {
        let (redis, mongo) =
            tokio::join!(timeout(PROBE_TIMEOUT, self.bus.ping()), timeout(PROBE_TIMEOUT, self.store.ping()));
        Readiness {
            redis: matches!(redis, Ok(Ok(()))),
            mongo: matches!(mongo, Ok(Ok(()))) && self.indexes_ready.load(Ordering::Relaxed),
        }
    }

    /// Every metric of the process, in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    /// Creates the store's indexes, retrying while MongoDB is unreachable
    /// (or until `stop`); the node is ready only once they exist.
    pub async fn ensure_indexes(&self, stop: tokio_util::sync::CancellationToken) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.store.ensure_indexes().await {
                Ok(()) => {
                    self.indexes_ready.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "creating indexes failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

//! Prometheus metrics. One recorder per process (the `metrics` facade is
//! global); every node in the process renders from it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets, in seconds: sub-millisecond resolution where fan-out lives.
const BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Background job durations, in seconds: a webhook call to a long archive run.
const JOB_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Messages per message insert (`store::batch`).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// Installs the recorder on first use and returns the handle that renders it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full("confab_job_duration_seconds".into()), JOB_BUCKETS)
                .expect("bucket list is not empty")
                .set_buckets_for_metric(Matcher::Full("confab_store_insert_batch_size".into()), BATCH_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// Counters a node keeps, registered at zero when it starts: Prometheus
/// alerts on a missing series as on a stopped one, so every series
/// docs/api.md lists is there from the first scrape.
const COUNTERS: &[&str] = &[
    "confab_messages_sent_total",
    "confab_messages_delivered_total",
    "confab_messages_edited_total",
    "confab_messages_deleted_total",
    "confab_slow_consumer_disconnects_total",
    "confab_ws_token_expired_total",
    "confab_pubsub_lagged_total",
    "confab_pubsub_duplicates_total",
    "confab_pubsub_malformed_total",
    "confab_bus_publish_failures_total",
    "confab_bus_probe_failures_total",
    "confab_audit_write_failures_total",
    "confab_redis_reconnects_total",
    "confab_seq_collisions_total",
    "confab_seq_voided_total",
    "confab_store_batch_orphans_total",
    "confab_replayed_messages_total",
    "confab_seq_gaps_total",
    "confab_seq_gap_filled_total",
    "confab_cache_invalidation_failures_total",
    "confab_notifications_dropped_total",
    "confab_notifications_external_failures_total",
    "confab_notification_preferences_cache_failures_total",
    "confab_notification_reach_changes_total",
    "confab_presence_repaired_total",
    "confab_presence_swept_nodes_total",
    "confab_typing_relayed_total",
    "confab_typing_throttled_total",
    "confab_typing_throttle_fallbacks_total",
];

/// Labelled counters, with every value their label takes.
const LABELLED_COUNTERS: &[(&str, &str, &[&str])] = &[
    ("confab_seq_handed_out_total", "source", &["redis", "seeded", "store"]),
    (
        "confab_ws_frames_in_total",
        "type",
        &[
            "ping",
            "join_channel",
            "leave_channel",
            "send_message",
            "delivered",
            "read",
            "set_status",
            "user_typing",
            "refresh",
            "unknown",
            "malformed",
        ],
    ),
    ("confab_cache_requests_total", "cache", &["rooms", "history"]),
    ("confab_ratelimit_rejections_total", "scope", &["rest", "login", "socket", "api", "auth"]),
    ("confab_ratelimit_fail_open_total", "scope", &["rest", "login", "api", "auth"]),
    ("confab_notifications_total", "channel", &["stored", "realtime", "external"]),
    ("confab_notifications_suppressed_total", "reason", &["disabled", "muted", "dnd", "mentions_only", "watching"]),
    ("confab_notification_audience_total", "source", &["kept", "updated", "store"]),
    ("confab_notification_reach_total", "source", &["kept", "redis"]),
    ("confab_presence_changes_total", "status", &["online", "away", "busy", "offline"]),
    ("confab_presence_errors_total", "op", &["connect", "disconnect", "heartbeat", "repair", "sweep"]),
];

const GAUGES: &[&str] = &["confab_connections_active", "confab_bus_subscriptions"];

const HISTOGRAMS: &[&str] = &[
    "confab_message_delivery_latency_seconds",
    "confab_redis_publish_seconds",
    "confab_bus_probe_seconds",
    "confab_store_insert_batch_size",
];

/// The store operations on the send and read paths, whose timings exist from start.
const STORE_OPS: &[&str] = &["insert_message", "insert_messages", "history", "find_member", "highest_seq"];

/// Registers every series of a node at zero (see [`COUNTERS`]). Adding zero
/// leaves a series another node of the process already counted as it is.
pub fn register_node() {
    for name in COUNTERS {
        metrics::counter!(*name).increment(0);
    }
    for (name, label, values) in LABELLED_COUNTERS {
        for value in *values {
            metrics::counter!(*name, *label => *value).increment(0);
        }
    }
    for name in GAUGES {
        metrics::gauge!(*name).increment(0.0);
    }
    for cache in ["rooms", "history"] {
        metrics::gauge!("confab_cache_hit_ratio", "cache" => cache).increment(0.0);
    }
    for name in HISTOGRAMS {
        let _ = metrics::histogram!(*name);
    }
    for op in STORE_OPS {
        let _ = metrics::histogram!("confab_mongo_op_seconds", "op" => *op);
    }
}

/// Registers the request series of every route at zero.
pub fn register_routes<'a>(routes: impl Iterator<Item = &'a str>) {
    for route in routes {
        let route = route.to_owned();
        metrics::counter!("confab_http_requests_total", "route" => route.clone(), "status" => "200").increment(0);
        let _ = metrics::histogram!("confab_http_request_seconds", "route" => route);
    }
}

/// Registers a worker's series at zero (docs/operations.md), for each job.
pub fn register_worker(jobs: &[&'static str]) {
    for job in jobs {
        for name in ["confab_job_runs_total", "confab_job_items_total", "confab_job_failures_total"] {
            metrics::counter!(name, "job" => *job).increment(0);
        }
        let _ = metrics::histogram!("confab_job_duration_seconds", "job" => *job);
    }
    metrics::gauge!("confab_deliveries_dead_letter").increment(0.0);
    metrics::counter!("confab_deliveries_dead_lettered_total").increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_frame_type_has_its_frames_in_series() {
        let (_, _, types) = LABELLED_COUNTERS.iter().find(|(name, _, _)| *name == "confab_ws_frames_in_total").unwrap();
        for t in crate::protocol::command::TYPES {
            assert!(types.contains(&t), "`{t}` is registered at zero");
        }
        assert_eq!(types.len(), crate::protocol::command::TYPES.len() + 2, "plus unknown and malformed");
    }
}

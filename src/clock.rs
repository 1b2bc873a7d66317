//! Wall-clock time as Unix numbers, for what nodes compare across the
//! cluster (lapse times and timestamps in Redis, frame timestamps, the
//! store-to-socket latency): comparable as far as the hosts' clocks agree.

/// Now, Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Now, Unix microseconds.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// RFC 3339, UTC, millisecond precision (what BSON dates hold).
pub fn rfc3339(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

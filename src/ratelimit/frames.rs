//! The per-connection frame limit: a token bucket (governor's GCRA) local to
//! the node, since a connection lives on exactly one node and a Redis round
//! trip per frame would cost more than the frame. Frames over the rate are
//! refused one by one; a connection that keeps sending them regardless is
//! closed.

use std::num::NonZeroU32;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::RateLimits;

/// The window in which `socket_max_rejections` refused frames close a
/// connection.
pub const ABUSE_WINDOW: Duration = Duration::from_secs(10);

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the limit: handle it.
    Yes,
    /// Over the limit: answer `rate_limited` without handling it; the rate
    /// allows another frame after this long.
    Refuse(Duration),
    /// Over the limit for too long: close the connection (1008).
    Close,
}

/// The clock every connection's limiter reads. Making a clock checks the
/// CPU's features (`cpuid`, which a virtual machine traps): 14 µs per
/// connection when each limiter made its own.
static CLOCK: LazyLock<DefaultClock> = LazyLock::new(DefaultClock::default);

/// One connection's frame limit.
pub struct FrameLimiter {
    /// `None` when the limit is off.
    bucket: Option<DefaultDirectRateLimiter>,
    abuse: AbuseMeter,
}

impl FrameLimiter {
    pub fn new(limits: &RateLimits) -> Self {
        let bucket = NonZeroU32::new(limits.socket_per_sec).map(|rate| {
            let burst = NonZeroU32::new(limits.socket_burst).unwrap_or(rate);
            RateLimiter::direct_with_clock(Quota::per_second(rate).allow_burst(burst), CLOCK.clone())
        });
        FrameLimiter { bucket, abuse: AbuseMeter::new(limits.socket_max_rejections, ABUSE_WINDOW) }
    }

    /// Counts one frame. Every data frame counts, including `ping`: a client
    /// keeping its connection alive needs one every few seconds, far below
    /// any sensible rate.
    pub fn admit(&mut self) -> Admit {
        let Some(bucket) = &self.bucket else { return Admit::Yes };
        match bucket.check() {
            Ok(()) => Admit::Yes,
            Err(not_until) => {
                if self.abuse.refused(Instant::now()) {
                    Admit::Close
                } else {
                    Admit::Refuse(not_until.wait_time_from(bucket.clock().now()))
                }
            }
        }
    }
}

/// The "sustained abuse" rule: more than `max` refused frames within one
/// window closes the connection. Windows are fixed, starting at the first
/// refusal after the previous window ended, so a client that bursts now and
/// then is told off frame by frame but never cut off, while one that keeps
/// sending well above the rate is.
#[derive(Debug)]
pub struct AbuseMeter {
    max: u32,
    window: Duration,
    started: Option<Instant>,
    refused: u32,
}

impl AbuseMeter {
    pub fn new(max: u32, window: Duration) -> Self {
        AbuseMeter { max, window, started: None, refused: 0 }
    }

    /// Records a refused frame at `now`; true when that makes too many.
    pub fn refused(&mut self, now: Instant) -> bool {
        match self.started {
            Some(start) if now.saturating_duration_since(start) < self.window => {}
            _ => {
                self.started = Some(now);
                self.refused = 0;
            }
        }
        self.refused = self.refused.saturating_add(1);
        self.refused > self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_sec: u32, burst: u32, max_rejections: u32) -> RateLimits {
        RateLimits {
            socket_per_sec: per_sec,
            socket_burst: burst,
            socket_max_rejections: max_rejections,
            ..RateLimits::default()
        }
    }

    #[test]
    fn the_burst_passes_then_frames_are_refused_then_the_connection_closes() {
        let mut l = FrameLimiter::new(&limits(1, 3, 2));
        for _ in 0..3 {
            assert_eq!(l.admit(), Admit::Yes);
        }
        match l.admit() {
            Admit::Refuse(wait) => assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(l.admit(), Admit::Refuse(_)));
        assert_eq!(l.admit(), Admit::Close);
    }

    #[test]
    fn a_zero_rate_admits_everything() {
        let mut l = FrameLimiter::new(&limits(0, 1, 1));
        for _ in 0..10_000 {
            assert_eq!(l.admit(), Admit::Yes);
        }
    }

    #[test]
    fn refusals_spread_over_windows_never_close() {
        let mut m = AbuseMeter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for round in 0..5 {
            let start = t0 + Duration::from_secs(10 * round);
            for i in 0..3 {
                assert!(!m.refused(start + Duration::from_millis(i)), "round {round} refusal {i}");
            }
        }
    }

    #[test]
    fn too_many_refusals_within_a_window_close() {
        let mut m = AbuseMeter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!m.refused(t0 + Duration::from_secs(i * 3)));
        }
        assert!(m.refused(t0 + Duration::from_millis(9_999)));
        // A new window starts afresh.
        assert!(!m.refused(t0 + Duration::from_secs(30)));
    }
}

//! Rate limits (docs/adr/0006-rate-limits.md):
//!
//! - `shared`: limits all nodes agree on, kept in Redis — REST requests per
//!   user (GCRA) and failed logins per username. They fail open when Redis
//!   is unreachable.
//! - `frames`: WebSocket frames per connection, on the connection's node.
//!
//! The REST limit is applied by a middleware in `http`, the login limit by
//! `users::login`, the frame limit by the chat session.

mod frames;
mod shared;

pub use frames::{AbuseMeter, Admit, FrameLimiter, ABUSE_WINDOW};
pub use shared::{SharedLimiter, Verdict, COMMAND_TIMEOUT};

use std::time::Duration;

use crate::error::Error;

/// Counts one refusal in `scope` (`rest`, `api`, `login` or `socket`).
pub fn count_rejection(scope: &'static str) {
    metrics::counter!("confab_ratelimit_rejections_total", "scope" => scope).increment(1);
}

/// The counted `rate_limited` error (429) for a refusal in `scope`.
pub fn rejection(scope: &'static str, retry_after: Duration) -> Error {
    count_rejection(scope);
    Error::RateLimited { retry_after }
}

//! The domain error, and the one place where each failure is mapped to an
//! HTTP status and a machine-readable code (used by REST bodies and by
//! WebSocket `error` frames alike).

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Any error, kept as the cause of ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input: unparsable JSON, an id that is not an ObjectId.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input that breaks a rule; `field` names the culprit.
    #[error("{field}: {message}")]
    Invalid { field: Cow<'static, str>, message: String },
    /// A request body over the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A socket frame whose `type` this server does not know (quoted).
    #[error("unknown frame type {0}")]
    UnknownType(String),
    #[error("{0}")]
    Unauthorized(String),
    /// 401 with a code of its own (`refresh_reused`, `session_revoked`).
    #[error("{message}")]
    Unauthenticated { code: &'static str, message: String },
    #[error("{0}")]
    Forbidden(String),
    /// 403 with a code of its own (`banned`, `wrong_password`).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    /// A uniqueness rule; `code` says which (e.g. `username_taken`).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Over a limit of how many at once; `code` says which.
    #[error("{message}")]
    TooMany { code: &'static str, message: String },
    /// Over a rate limit; the caller may try again after `retry_after`.
    #[error("rate limit exceeded, retry in {} s", whole_seconds(*.retry_after))]
    RateLimited { retry_after: Duration },
    /// Something this node depends on cannot serve now; try again.
    #[error("{0}")]
    Unavailable(String),
    /// A backend did not answer; `what` names it for the client ("the
    /// message store"), `source` says why, for the log.
    #[error("{what} is unavailable: {source}")]
    Backend {
        what: &'static str,
        #[source]
        source: BoxError,
    },
    /// A fault of ours; clients see only "internal error".
    #[error("internal error: {0}")]
    Internal(#[source] BoxError),
}

impl Error {
    pub fn invalid(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::UnknownType(_) => StatusCode::BAD_REQUEST,
            Error::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized(_) | Error::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) | Error::Refused { .. } => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::RateLimited { .. } | Error::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) | Error::Backend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::UnknownType(_) => "unknown_type",
            Error::Invalid { .. } => "validation_failed",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::Unauthenticated { code, .. } | Error::Refused { code, .. } => code,
            Error::NotFound(_) => "not_found",
            Error::Conflict { code, .. } => code,
            Error::RateLimited { .. } => "rate_limited",
            Error::TooMany { code, .. } => code,
            Error::Unavailable(_) | Error::Backend { .. } => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// Whole seconds to wait before retrying (the `Retry-After` header), if
    /// the error says.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::RateLimited { retry_after } => Some(whole_seconds(*retry_after)),
            _ => None,
        }
    }

    /// The text shown to clients; causes stay out of it (the edge logs them,
    /// see [`report`](Self::report)). Capped at [`MAX_MESSAGE`] characters,
    /// control characters escaped: parts of it may come from the client's
    /// input (a parser's complaint quotes what it could not read).
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(_) => "internal error".into(),
            Error::Backend { what, .. } => format!("{what} is unavailable, try again"),
            other => shown(&other.to_string()),
        }
    }

    /// For the log, once the answer is made: the error with its causes, if
    /// it is the server's fault (5xx); None for the client's errors, which
    /// the client is told and the log need not repeat.
    pub fn report(&self) -> Option<String> {
        if !self.status().is_server_error() {
            return None;
        }
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        // Causes a variant already prints are not printed twice.
        while let Some(e) = cause {
            let text = e.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = e.source();
        }
        Some(out)
    }

    /// Logs [`report`](Self::report), if there is one: at error level for
    /// our faults, warn for a backend that is away. `context` says where.
    pub fn log(&self, context: &str) {
        match (self.report(), self) {
            (None, _) => {}
            (Some(report), Error::Internal(_)) => tracing::error!(error = %report, "{context}"),
            (Some(report), _) => tracing::warn!(error = %report, "{context}"),
        }
    }
}

/// Longest error message shown to a client, in characters.
pub const MAX_MESSAGE: usize = 300;

fn shown(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE + 8));
    let mut count = 0;
    for c in message.chars() {
        let escaped = c.is_control().then(|| c.escape_default());
        let width = escaped.clone().map_or(1, |e| e.count());
        if count + width > MAX_MESSAGE {
            out.push('…');
            break;
        }
        match escaped {
            Some(e) => out.extend(e),
            None => out.push(c),
        }
        count += width;
    }
    out
}

/// Rounded up and at least 1: a client that waits this long is not refused
/// again for the same reason, and `Retry-After: 0` would invite a busy loop.
fn whole_seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).clamp(1, u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status_and_code() {
        let e = Error::invalid("username", "too short");
        assert_eq!((e.status().as_u16(), e.code()), (422, "validation_failed"));
        assert_eq!(e.public_message(), "username: too short");
        let e = Error::Conflict { code: "email_taken", message: "taken".into() };
        assert_eq!((e.status().as_u16(), e.code()), (409, "email_taken"));
        let internal = Error::Internal("secret detail".into());
        assert_eq!(internal.public_message(), "internal error");
        assert_eq!(internal.report().as_deref(), Some("internal error: secret detail"));
        assert_eq!(Error::NotFound("x".into()).report(), None, "the client's errors are not logged");
        let echoed = Error::BadRequest(format!("data: invalid type: string \"{}\"", "\n".repeat(1000)));
        let shown = echoed.public_message();
        assert!(shown.chars().count() <= MAX_MESSAGE + 1 && !shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("data: invalid type: string \"\\n\\n"), "{shown}");
    }

    #[test]
    fn rate_limited_rounds_retry_after_up_to_whole_seconds() {
        let e = Error::RateLimited { retry_after: Duration::from_millis(12_001) };
        assert_eq!((e.status().as_u16(), e.code(), e.retry_after_secs()), (429, "rate_limited", Some(13)));
        assert_eq!(e.public_message(), "rate limit exceeded, retry in 13 s");
        assert_eq!(Error::RateLimited { retry_after: Duration::ZERO }.retry_after_secs(), Some(1));
        assert_eq!(Error::RateLimited { retry_after: Duration::from_secs(2) }.retry_after_secs(), Some(2));
        assert_eq!(Error::NotFound("x".into()).retry_after_secs(), None);
    }
}

//! The domain error, and the one place where each failure is mapped to an
//! HTTP status and a machine-readable code (used by REST bodies and by
//! WebSocket `error` frames alike).

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    #[error("{0}")]
    Forbidden(String),
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
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
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
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::RateLimited { .. } | Error::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            Error::NotFound(_) => "not_found",
            Error::Conflict { code, .. } => code,
            Error::RateLimited { .. } => "rate_limited",
            Error::TooMany { code, .. } => code,
            Error::Unavailable(_) => "unavailable",
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

    /// The text shown to clients; internal details go to the log instead.
    /// Capped at [`MAX_MESSAGE`] characters, control characters escaped:
    /// parts of it may come from the client's input (a parser's complaint
    /// quotes what it could not read).
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".into()
            }
            other => shown(&other.to_string()),
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

impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                Error::Unavailable("the message store is unavailable, try again".into())
            }
            StoreError::Duplicate => Error::Conflict { code: "conflict", message: "already exists".into() },
            StoreError::Other(m) => {
                tracing::error!(error = %m, "store error");
                Error::Internal(m)
            }
        }
    }
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
        assert_eq!(Error::Internal("secret detail".into()).public_message(), "internal error");
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

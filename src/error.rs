//! The domain error, and the one place where each failure is mapped to an
//! HTTP status and a machine-readable code (used by REST bodies and by
//! WebSocket `error` frames alike).

use std::borrow::Cow;

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
    /// A socket frame whose `type` this server does not know.
    #[error("unknown frame type `{0}`")]
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
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::UnknownType(_) => "unknown_type",
            Error::Invalid { .. } => "validation_failed",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::Conflict { code, .. } => code,
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The text shown to clients; internal details go to the log instead.
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".into()
            }
            other => other.to_string(),
        }
    }
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
    }
}

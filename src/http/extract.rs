//! Extractors: authentication and JSON/query parsing with our error body, so
//! no handler repeats either and every rejection has the same shape.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::auth::{apikey, ApiCaller, Caller};
use crate::error::Error;
use crate::node::App;

/// The authenticated caller, from `Authorization: Bearer <token>`.
pub struct Auth(pub Caller);

pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Error> {
        let token = bearer(&parts.headers).ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        Ok(Auth(app.tokens.verify(token)?))
    }
}

/// A JSON body. Unparsable JSON is 400; JSON of the wrong shape (missing or
/// mistyped fields) is 422. The Content-Type header is not required.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge("the request body is larger than this endpoint accepts".into())
            } else {
                Error::BadRequest("could not read the request body".into())
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data if path == "." => Error::invalid("body", inner.to_string()),
                serde_json::error::Category::Data => Error::invalid(path, inner.to_string()),
                _ => Error::BadRequest(format!("request body is not valid JSON: {inner}")),
            }
        })?;
        de.end().map_err(|e| Error::BadRequest(format!("request body is not valid JSON: {e}")))?;
        Ok(Body(value))
    }
}

/// Query-string parameters; a malformed query string is 400.
pub struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Params(q.0))
            .map_err(|e| Error::BadRequest(format!("invalid query string: {}", e.body_text())))
    }
}

/// A backend calling the server API, from `Authorization: ApiKey <key>`:
/// 401 for a missing, malformed, unknown or revoked key; then the key's
/// per-minute limit is counted (429 with `Retry-After` when spent).
impl FromRequestParts<Arc<App>> for ApiCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Error> {
        let value = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let key = value
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
            .map(|(_, key)| key)
            .ok_or_else(|| Error::Unauthorized("missing API key: send Authorization: ApiKey <key>".into()))?;
        let caller = apikey::authenticate(app.store.as_ref(), key).await?;
        app.limiter.api_key(caller.key_id).await.into_result("api")?;
        Ok(caller)
    }
}

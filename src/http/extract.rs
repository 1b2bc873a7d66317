//! Extractors: authentication and JSON/query parsing with our error body, so
//! no handler repeats either and every rejection has the same shape.

use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::Api;
use crate::audit::Source;
use crate::auth::{ApiCaller, Caller};
use crate::config::Cidr;
use crate::error::Error;

/// The authenticated caller, from `Authorization: Bearer <token>` whose
/// session is live.
pub struct Auth(pub Caller);

pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<Api> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Error> {
        let token = bearer(&parts.headers).ok_or_else(|| Error::Unauthorized("missing bearer token".into()))?;
        Ok(Auth(api.sessions.authenticate(token).await?))
    }
}

/// An administrator: a valid token whose user holds the `admin` role now;
/// 403 `forbidden` for anyone else.
pub struct Admin(pub Caller);

impl FromRequestParts<Api> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Error> {
        let Auth(caller) = Auth::from_request_parts(parts, api).await?;
        if !api.users.is_admin(caller.user_id).await? {
            return Err(Error::Forbidden("administrators only".into()));
        }
        Ok(Admin(caller))
    }
}

/// Where the request came from, for the audit log: the client's address
/// (as [`ClientAddress`]) and user agent.
impl FromRequestParts<Api> for Source {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Error> {
        let ClientAddress(ip) = ClientAddress::from_request_parts(parts, api).await?;
        let user_agent = parts.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok());
        Ok(Source::new(Some(ip.to_string()), user_agent))
    }
}

/// The client's address: the connection's, or behind a trusted proxy
/// (`trusted_proxies`), the nearest address in `X-Forwarded-For` that is
/// not one of those proxies (then `X-Real-IP`).
pub struct ClientAddress(pub std::net::IpAddr);

impl FromRequestParts<Api> for ClientAddress {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Error> {
        let peer = parts
            .extensions
            .get::<super::serve::Peer>()
            .map(|p| p.0.ip().to_canonical())
            .ok_or_else(|| Error::Internal("a request without its connection's address".into()))?;
        Ok(ClientAddress(client_address(peer, &parts.headers, &api.edge.trusted_proxies)))
    }
}

fn client_address(peer: std::net::IpAddr, headers: &http::HeaderMap, trusted: &[Cidr]) -> std::net::IpAddr {
    let trusts = |a: std::net::IpAddr| trusted.iter().any(|t| t.contains(a));
    if !trusts(peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .collect::<Vec<_>>();
    if let Some(client) = forwarded.iter().rev().map(|a| a.to_canonical()).find(|a| !trusts(*a)) {
        return client;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .unwrap_or(peer)
}

/// A JSON body. Unparsable JSON is 400; JSON of the wrong shape (missing or
/// mistyped fields) is 422. The Content-Type header is not required.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
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

/// The body's bytes, whatever they are; one over the size limit is 413 with
/// our error body.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge("the request body is larger than this endpoint accepts".into())
            } else {
                Error::BadRequest("could not read the request body".into())
            }
        })?;
        Ok(RawBody(bytes))
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
impl FromRequestParts<Api> for ApiCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Error> {
        let value = parts.headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let key = value
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("apikey"))
            .map(|(_, key)| key)
            .ok_or_else(|| Error::Unauthorized("missing API key: send Authorization: ApiKey <key>".into()))?;
        let caller = api.api_keys.authenticate(key).await?;
        api.limiter.api_key(caller.key_id).await.into_result("api")?;
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_address_a_trusted_proxy_did_not_add() {
        let trusted = [Cidr::parse("127.0.0.0/8").unwrap(), Cidr::parse("10.0.0.0/8").unwrap()];
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let mut headers = http::HeaderMap::new();
        assert_eq!(client_address(ip("203.0.113.9"), &headers, &trusted), ip("203.0.113.9"));
        headers.insert("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3".parse().unwrap());
        assert_eq!(client_address(ip("127.0.0.1"), &headers, &trusted), ip("203.0.113.7"), "spoofed left part ignored");
        assert_eq!(client_address(ip("203.0.113.9"), &headers, &trusted), ip("203.0.113.9"), "an untrusted peer");
        let mut headers = http::HeaderMap::new();
        headers.insert("x-real-ip", "192.0.2.5".parse().unwrap());
        assert_eq!(client_address(ip("::ffff:127.0.0.1"), &headers, &trusted), ip("192.0.2.5"));
    }
}

//! CORS for web apps served from another origin, driven by the same
//! `allowed_origins` list as the WebSocket Origin check.
//!
//! An allowed origin's preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here with 204 and the
//! methods, headers and max-age; its other requests get
//! `Access-Control-Allow-Origin` naming it. Any other origin gets no CORS
//! header at all, so the browser keeps its answers from the page; its
//! preflights go on to the router like any request. With the list empty
//! (any origin may open a WebSocket) CORS is off: a cross-origin REST client
//! must be listed. Credentials are bearer tokens, never cookies, so
//! `Access-Control-Allow-Credentials` is not sent.
//!
//! Not tower-http's `CorsLayer`: it answers every `OPTIONS` as a preflight
//! with 200, and adds the allowed methods and headers whatever the origin.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderValue, Method, StatusCode};

/// Methods the API answers.
const METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
/// Request headers a page may send.
const HEADERS: &str = "Authorization, Content-Type";
/// Response headers a page may read, besides the always-safe ones.
const EXPOSE: &str = "Retry-After";
/// How long a browser may keep a preflight's answer, in seconds.
const MAX_AGE: &str = "600";

/// The origins CORS is granted to (lower case, no trailing slash).
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Arc<Vec<String>>,
}

impl Cors {
    pub fn new(allowed: &[String]) -> Self {
        let origins = allowed.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect();
        Cors { origins: Arc::new(origins) }
    }

    pub fn enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        let Ok(origin) = origin.to_str() else { return false };
        let origin = origin.trim_end_matches('/');
        self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// The middleware (see the module docs).
pub async fn cors(State(cors): State<Cors>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(ORIGIN).filter(|o| cors.allows(o)).cloned();
    let Some(origin) = origin else {
        let mut response = next.run(req).await;
        // Answers differ by Origin: caches must keep them apart.
        response.headers_mut().append(VARY, HeaderValue::from_static("origin"));
        return response;
    };
    let preflight = req.method() == Method::OPTIONS && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let headers = response.headers_mut();
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(VARY, HeaderValue::from_static("origin"));
    if preflight {
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(METHODS));
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(HEADERS));
        headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE));
    } else {
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_without_case_or_trailing_slash() {
        let cors = Cors::new(&["https://Chat.example.com/".into()]);
        assert!(cors.enabled());
        assert!(cors.allows(&HeaderValue::from_static("https://chat.example.com")));
        assert!(cors.allows(&HeaderValue::from_static("HTTPS://CHAT.EXAMPLE.COM/")));
        assert!(!cors.allows(&HeaderValue::from_static("https://chat.example.com.evil")));
        assert!(!cors.allows(&HeaderValue::from_static("http://chat.example.com")));
        assert!(!Cors::new(&[]).enabled());
    }
}

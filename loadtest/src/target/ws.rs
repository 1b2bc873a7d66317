//! Helpers shared by the WebSocket adapters of the peers (Centrifugo,
//! Socket.IO, the baseline): URL shaping, opening a socket from a spread
//! source address, pulling a string field out of a frame without a full
//! parse, and waiting for acknowledgements at the end of a run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;

use super::{connect_spread, socket_addr};

/// The WebSocket URL for `base`: `http(s)://` becomes `ws(s)://`, and a URL
/// without a path (or with `/` only) gets `default_path` (which may carry a
/// query string).
pub fn ws_url(base: &str, default_path: &str) -> String {
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_string()
    };
    let after_scheme = base.split_once("://").map(|(_, r)| r).unwrap_or(&base);
    let has_path = after_scheme.find('/').is_some_and(|i| after_scheme.len() > i + 1);
    if has_path {
        base
    } else {
        format!("{}{default_path}", base.trim_end_matches('/'))
    }
}

/// Opens a WebSocket to `url`, from source address number `spread`.
pub async fn open(url: &str, spread: usize) -> Result<WebSocketStream<TcpStream>> {
    let addr = socket_addr(url)?;
    let stream = connect_spread(addr, spread).await.with_context(|| format!("connecting to {addr}"))?;
    let (ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .with_context(|| format!("websocket handshake with {url}"))?;
    Ok(ws)
}

/// The JSON string value of the first `"key":"…"` in `frame`, unescaped.
/// Probe contents have no escapes, so the common case is a plain slice.
pub fn json_string_field(frame: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\":\"");
    let start = frame.find(&pat)? + pat.len();
    let bytes = frame.as_bytes();
    let mut i = start;
    let mut escaped = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                escaped = true;
                i += 2;
                continue;
            }
            b'"' => break,
            _ => i += 1,
        }
    }
    if i >= bytes.len() {
        return None;
    }
    if escaped {
        serde_json::from_str(&frame[start - 1..=i]).ok()
    } else {
        Some(frame[start..i].to_string())
    }
}

/// Acknowledgement counters of one publisher, shared with its reader task.
#[derive(Clone, Default)]
pub struct Acks {
    pub acked: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
}

impl Acks {
    pub fn accepted(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn ack(&self) {
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fail(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits up to ten seconds until every one of `sent` messages was
    /// acknowledged or refused.
    pub async fn settle(&self, sent: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.acked.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed) < sent
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_default_path_only_when_they_have_none() {
        assert_eq!(
            ws_url("http://127.0.0.1:8000", "/connection/websocket"),
            "ws://127.0.0.1:8000/connection/websocket"
        );
        assert_eq!(ws_url("ws://127.0.0.1:8000/", "/x?a=1"), "ws://127.0.0.1:8000/x?a=1");
        assert_eq!(ws_url("ws://127.0.0.1:8000/custom", "/x"), "ws://127.0.0.1:8000/custom");
    }

    #[test]
    fn string_fields_are_found_and_unescaped() {
        assert_eq!(json_string_field(r#"42["msg",{"c":"LT|1|2|3|xx"}]"#, "c").as_deref(), Some("LT|1|2|3|xx"));
        assert_eq!(json_string_field(r#"{"c":"a\"b\\c"}"#, "c").as_deref(), Some("a\"b\\c"));
        assert_eq!(json_string_field(r#"{"d":"x"}"#, "c"), None);
        assert_eq!(json_string_field(r#"{"c":"unterminated"#, "c"), None);
    }
}

//! Helpers shared by the WebSocket adapters of the peers (Centrifugo,
//! Socket.IO, the baseline): URL shaping, opening a socket from a spread
//! source address (with its reads counted, see `wire`), pulling a string field out of a frame without a full
//! parse, and waiting for acknowledgements at the end of a run.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::wire::{Counted, Role};
use super::{connect_spread, socket_addr, Publisher};

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

/// Opens a WebSocket to `url`, from source address number `spread`; its
/// reads count toward `role`'s wire bytes.
pub async fn open(url: &str, spread: usize, role: Role) -> Result<Ws> {
    let addr = socket_addr(url)?;
    let stream = connect_spread(addr, spread).await.with_context(|| format!("connecting to {addr}"))?;
    let (ws, _) = tokio_tungstenite::client_async(url, Counted::new(stream, role))
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

/// A client WebSocket as the adapters use it (reads counted by role).
pub type Ws = WebSocketStream<Counted<TcpStream>>;
/// Its sending half, shared by a publisher and the reader task that answers
/// the server's pings.
pub type Sink = Arc<Mutex<SplitSink<Ws, Message>>>;

/// Acknowledgement counters of one publisher, shared with its reader task.
#[derive(Clone, Default)]
pub struct Acks {
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
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

    /// Waits until every one of `sent` messages was acknowledged or refused,
    /// as long as answers keep coming (gives up after ten quiet seconds).
    pub async fn settle(&self, sent: u64) {
        let mut last = (u64::MAX, tokio::time::Instant::now());
        loop {
            let done = self.acked.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed);
            if done >= sent {
                return;
            }
            if done != last.0 {
                last = (done, tokio::time::Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(10) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Turns (publish number, counting from 1; probe content) into the frame a
/// system expects.
type Encode = Box<dyn Fn(u64, &str) -> String + Send + Sync>;

/// The publisher every adapter uses: frames made by the adapter's `encode`
/// go out, and a reader task over the receiving side counts the replies.
pub struct AckedSender {
    sink: Sink,
    acks: Acks,
    sent: u64,
    encode: Encode,
    reader: JoinHandle<()>,
}

impl AckedSender {
    /// Splits `ws` and spawns `read(stream, sink, acks)` to consume replies.
    pub fn spawn<F, Fut>(ws: Ws, read: F, encode: impl Fn(u64, &str) -> String + Send + Sync + 'static) -> Box<Self>
    where
        F: FnOnce(SplitStream<Ws>, Sink, Acks) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let sink = Arc::new(Mutex::new(sink));
        let acks = Acks::default();
        let reader = tokio::spawn(read(stream, sink.clone(), acks.clone()));
        Box::new(AckedSender { sink, acks, sent: 0, encode: Box::new(encode), reader })
    }
}

#[async_trait]
impl Publisher for AckedSender {
    async fn publish(&mut self, content: &str) -> Result<()> {
        self.sent += 1;
        let frame = (self.encode)(self.sent, content);
        self.sink.lock().await.send(Message::Text(frame)).await?;
        Ok(())
    }

    fn accepted(&self) -> u64 {
        self.acks.accepted()
    }

    /// Waits for outstanding acknowledgements, then closes.
    async fn settle(&mut self) {
        self.acks.settle(self.sent).await;
        let _ = self.sink.lock().await.close().await;
        self.reader.abort();
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

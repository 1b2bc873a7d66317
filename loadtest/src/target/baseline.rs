//! The fan-out ceiling, `confab-baseline` (src/bin/confab-baseline.rs): one
//! process, no Redis, no storage; each message is encoded once and the same
//! bytes are written to every socket of the room.
//!
//!   subscriber: `ws://HOST:PORT/?room=N`, ready at `{"type":"joined"}`,
//!               receives `{"type":"message","data":{"content":"…"}}`
//!   publisher:  `ws://HOST:PORT/?publish=N`, sends the content as a text
//!               frame, gets `{"type":"ack"}` for each

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use anyhow::{bail, Result};
use async_trait::async_trait;

use super::ws::{self, Acks};
use super::{Publisher, Subscriber, Target};

type Ws = WebSocketStream<TcpStream>;

pub struct Baseline {
    urls: Vec<String>,
}

impl Baseline {
    pub fn new(urls: Vec<String>) -> Self {
        Baseline { urls }
    }

    async fn socket(&self, idx: usize, query: &str) -> Result<Ws> {
        let base = ws::ws_url(&self.urls[idx % self.urls.len()], "/");
        let url = format!("{}/?{query}", base.trim_end_matches('/'));
        let mut ws = ws::open(&url, idx).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t == r#"{"type":"joined"}"# => return Ok(ws),
                Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended before joined"),
            }
        }
    }
}

#[async_trait]
impl Target for Baseline {
    fn name(&self) -> &str {
        "baseline"
    }

    async fn prepare(&mut self, _rooms: usize) -> Result<()> {
        Ok(())
    }

    async fn subscriber(&self, idx: usize, room: usize) -> Result<Box<dyn Subscriber>> {
        let ws = self.socket(idx, &format!("room={room}")).await?;
        Ok(Box::new(BaselineSubscriber { ws }))
    }

    async fn publisher(&self, idx: usize, room: usize) -> Result<Box<dyn Publisher>> {
        let ws = self.socket(idx + 1, &format!("publish={room}")).await?;
        let (sink, stream) = ws.split();
        let acks = Acks::default();
        let reader = tokio::spawn(count_acks(stream, acks.clone()));
        Ok(Box::new(BaselinePublisher { sink, sent: 0, acks, reader }))
    }
}

struct BaselineSubscriber {
    ws: Ws,
}

fn message_content(frame: &str) -> Option<String> {
    if !frame.starts_with("{\"type\":\"message\"") {
        return None;
    }
    ws::json_string_field(frame, "content")
}

#[async_trait]
impl Subscriber for BaselineSubscriber {
    async fn next(&mut self) -> Result<Option<String>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(c) = message_content(&t) {
                        return Ok(Some(c));
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

async fn count_acks(mut stream: SplitStream<Ws>, acks: Acks) {
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(t) = msg {
            if t == r#"{"type":"ack"}"# {
                acks.ack();
            }
        }
    }
}

struct BaselinePublisher {
    sink: SplitSink<Ws, Message>,
    sent: u64,
    acks: Acks,
    reader: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl Publisher for BaselinePublisher {
    async fn publish(&mut self, content: &str) -> Result<()> {
        self.sent += 1;
        self.sink.send(Message::Text(content.to_string())).await?;
        Ok(())
    }

    fn accepted(&self) -> u64 {
        self.acks.accepted()
    }

    async fn settle(&mut self) {
        self.acks.settle(self.sent).await;
        let _ = self.sink.close().await;
        self.reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_comes_from_message_frames_only() {
        assert_eq!(
            message_content(r#"{"type":"message","data":{"content":"LT|1|2|3|x"}}"#).as_deref(),
            Some("LT|1|2|3|x")
        );
        assert_eq!(message_content(r#"{"type":"ack"}"#), None);
    }
}

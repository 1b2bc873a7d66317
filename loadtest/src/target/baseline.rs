//! The fan-out ceiling, `confab-baseline` (src/bin/confab-baseline.rs): one
//! process, no Redis, no storage; each message is encoded once and the same
//! bytes are written to every socket of the room.
//!
//!   subscriber: `ws://HOST:PORT/?room=N`, ready at `{"type":"joined"}`,
//!               receives `{"type":"message","data":{"content":"…"}}`
//!   publisher:  `ws://HOST:PORT/?publish=N`, sends the content as a text
//!               frame, gets `{"type":"ack"}` for each

use futures::stream::SplitStream;
use futures::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use anyhow::{bail, Result};
use async_trait::async_trait;

use super::wire::Role;
use super::ws::{self, AckedSender, Acks, Sink, Ws};
use super::{Publisher, Subscriber, Target};

pub struct Baseline {
    urls: Vec<String>,
}

impl Baseline {
    pub fn new(urls: Vec<String>) -> Self {
        Baseline { urls }
    }

    async fn socket(&self, idx: usize, query: &str, role: Role) -> Result<Ws> {
        let base = ws::ws_url(&self.urls[idx % self.urls.len()], "/");
        let url = format!("{}/?{query}", base.trim_end_matches('/'));
        let mut ws = ws::open(&url, idx, role).await?;
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
        let ws = self.socket(idx, &format!("room={room}"), Role::Subscriber).await?;
        Ok(Box::new(BaselineSubscriber { ws }))
    }

    async fn publisher(&self, idx: usize, room: usize) -> Result<Box<dyn Publisher>> {
        let ws = self.socket(idx + 1, &format!("publish={room}"), Role::Other).await?;
        Ok(AckedSender::spawn(ws, count_acks, |_, content| content.to_string()))
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

async fn count_acks(mut stream: SplitStream<Ws>, _sink: Sink, acks: Acks) {
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(t) = msg {
            if t == r#"{"type":"ack"}"# {
                acks.ack();
            }
        }
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

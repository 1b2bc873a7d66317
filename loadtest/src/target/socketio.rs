//! Socket.IO v4 (Engine.IO v4, WebSocket transport only) against the peer
//! server in `loadtest/peers/socketio` (`join` and `msg` events, both
//! acknowledged; rooms shared across processes by the Redis adapter).
//!
//! Wire format (one Engine.IO packet per WebSocket frame):
//!   ← `0{"sid":…,"pingInterval":…}` (open)
//!   → `40`                          ← `40{"sid":…}` (namespace `/` joined)
//!   → `421["join","room0"]`         ← `431[{"ok":true,…}]`
//!   → `42N["msg",{"room":"room0","c":"…"}]` ← `43N[{"ok":true}]`
//!   ← `42["msg",{"c":"…"}]`
//!   ← `2` (ping), answered with → `3`

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::wire::Role;
use super::ws::{self, AckedSender, Acks, Sink, Ws};
use super::{Publisher, Subscriber, Target};

const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

pub struct SocketIo {
    urls: Vec<String>,
}

impl SocketIo {
    pub fn new(urls: Vec<String>) -> Self {
        SocketIo { urls }
    }

    /// A socket on node `idx % urls`, connected to the default namespace,
    /// its reads counted toward `role`.
    async fn client(&self, idx: usize, role: Role) -> Result<Ws> {
        let url = ws::ws_url(&self.urls[idx % self.urls.len()], PATH);
        let mut ws = ws::open(&url, idx, role).await?;
        let open = next_packet(&mut ws).await.context("waiting for the Engine.IO open packet")?;
        if !open.starts_with('0') {
            bail!("expected an Engine.IO open packet, got `{open}`");
        }
        ws.send(Message::Text("40".into())).await?;
        let connect = next_packet(&mut ws).await.context("waiting for the namespace connect")?;
        if !connect.starts_with("40") {
            bail!("namespace connect refused: `{connect}`");
        }
        Ok(ws)
    }
}

/// The next Engine.IO packet other than a ping (pings are answered).
async fn next_packet(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t == "2" => ws.send(Message::Text("3".into())).await?,
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

#[async_trait]
impl Target for SocketIo {
    fn name(&self) -> &str {
        "socketio"
    }

    async fn prepare(&mut self, _rooms: usize) -> Result<()> {
        let mut ws = self.client(0, Role::Other).await?;
        let _ = ws.close(None).await;
        Ok(())
    }

    async fn subscriber(&self, idx: usize, room: usize) -> Result<Box<dyn Subscriber>> {
        let mut ws = self.client(idx, Role::Subscriber).await?;
        ws.send(Message::Text(format!("421{}", json!(["join", format!("room{room}")])))).await?;
        loop {
            let p = next_packet(&mut ws).await.context("waiting for the join ack")?;
            if let Some(ack) = p.strip_prefix("431") {
                if ack.contains("\"error\"") {
                    bail!("join refused: {ack}");
                }
                break;
            }
            if p.starts_with("41") || p.starts_with("44") {
                bail!("disconnected while joining: `{p}`");
            }
        }
        Ok(Box::new(SocketIoSubscriber { ws }))
    }

    async fn publisher(&self, idx: usize, room: usize) -> Result<Box<dyn Publisher>> {
        // The node after the subscriber's, so traffic crosses Redis.
        let ws = self.client(idx + 1, Role::Other).await?;
        let room = format!("room{room}");
        // Ack ids start after the join's (1); any id works since the count is
        // what matters.
        Ok(AckedSender::spawn(ws, read_acks, move |n, content| {
            format!("42{}{}", n + 1, json!(["msg", {"room": room, "c": content}]))
        }))
    }
}

struct SocketIoSubscriber {
    ws: Ws,
}

/// The content of a `42["msg",{"c":"…"}]` event.
fn msg_content(packet: &str) -> Option<String> {
    let body = packet.strip_prefix("42[\"msg\",")?;
    ws::json_string_field(body, "c")
}

#[async_trait]
impl Subscriber for SocketIoSubscriber {
    async fn next(&mut self) -> Result<Option<String>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(c) = msg_content(&t) {
                        return Ok(Some(c));
                    }
                    if t == "2" {
                        self.ws.send(Message::Text("3".into())).await?;
                    } else if t == "1" || t.starts_with("41") {
                        return Ok(None);
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

async fn read_acks(mut stream: SplitStream<Ws>, sink: Sink, acks: Acks) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(t) = msg else { continue };
        if t == "2" {
            let _ = sink.lock().await.send(Message::Text("3".into())).await;
        } else if let Some(rest) = t.strip_prefix("43") {
            if rest.contains("\"error\"") {
                acks.fail();
            } else {
                acks.ack();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_events_yield_their_content() {
        assert_eq!(msg_content(r#"42["msg",{"c":"LT|0|1|2|xx"}]"#).as_deref(), Some("LT|0|1|2|xx"));
        assert_eq!(msg_content(r#"431[{"ok":true}]"#), None);
        assert_eq!(msg_content("2"), None);
    }
}

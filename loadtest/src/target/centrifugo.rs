//! Centrifugo v6: the JSON client protocol over WebSocket
//! (`/connection/websocket`). Clients connect with an HS256 JWT whose `sub`
//! is the user id, subscribe to the namespace-less channel `room{N}` and
//! publish from the client (`publish` command), so a message goes client →
//! node → Redis → every node → subscribers, as with Confab.
//!
//! Wire format (one JSON object per line; the server may put several lines
//! in one WebSocket frame):
//!   → `{"id":1,"connect":{"token":"…"}}`       ← `{"id":1,"connect":{…}}`
//!   → `{"id":2,"subscribe":{"channel":"room0"}}` ← `{"id":2,"subscribe":{…}}`
//!   → `{"id":N,"publish":{"channel":"room0","data":{"c":"…"}}}` ← `{"id":N,"publish":{}}`
//!   ← `{"push":{"channel":"room0","pub":{"data":{"c":"…"},…}}}`
//!   ← `{}` (ping), answered with → `{}`
//! Errors come back as `{"id":N,"error":{"code":…,"message":"…"}}`.
//!
//! Options: `--opt centrifugo_hmac_secret=S` (falls back to `--jwt-secret`).

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::wire::Role;
use super::ws::{self, AckedSender, Acks, Sink, Ws};
use super::{Options, Publisher, Subscriber, Target};

const PATH: &str = "/connection/websocket";

pub struct Centrifugo {
    urls: Vec<String>,
    secret: String,
    run_id: String,
}

impl Centrifugo {
    pub fn new(urls: Vec<String>, secret: Option<String>, opts: &Options) -> Result<Self> {
        let secret = opts
            .get("centrifugo_hmac_secret")
            .cloned()
            .or(secret)
            .ok_or_else(|| anyhow!("centrifugo needs --opt centrifugo_hmac_secret=S (or --jwt-secret S)"))?;
        Ok(Centrifugo { urls, secret, run_id: format!("{:08x}", rand::random::<u32>()) })
    }

    fn token(&self, user: &str) -> Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = json!({"sub": user, "iat": now, "exp": now + 86_400});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .context("signing a Centrifugo token")
    }

    /// A connected (authenticated) client on node `idx % urls`, its reads
    /// counted toward `role`.
    async fn client(&self, idx: usize, user: &str, role: Role) -> Result<Ws> {
        let url = ws::ws_url(&self.urls[idx % self.urls.len()], PATH);
        let mut ws = ws::open(&url, idx, role).await?;
        let token = self.token(user)?;
        ws.send(Message::Text(json!({"id": 1, "connect": {"token": token}}).to_string())).await?;
        let reply = await_reply(&mut ws, 1).await.context("centrifugo connect")?;
        if reply.get("connect").is_none() {
            bail!("unexpected connect reply: {reply}");
        }
        Ok(ws)
    }
}

/// Reads until the reply with `id`, answering pings; fails on an error reply.
async fn await_reply(ws: &mut Ws, id: u64) -> Result<Value> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        };
        for line in text.lines().filter(|l| !l.is_empty()) {
            if line == "{}" {
                ws.send(Message::Text("{}".into())).await?;
                continue;
            }
            let v: Value = serde_json::from_str(line).with_context(|| format!("bad reply `{line}`"))?;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(err) = v.get("error") {
                    bail!("error reply: {err}");
                }
                return Ok(v);
            }
        }
    }
}

#[async_trait]
impl Target for Centrifugo {
    fn name(&self) -> &str {
        "centrifugo"
    }

    async fn prepare(&mut self, _rooms: usize) -> Result<()> {
        // Channels need no creation; check that a client gets in.
        let mut ws = self.client(0, &format!("lt{}check", self.run_id), Role::Other).await?;
        let _ = ws.close(None).await;
        Ok(())
    }

    async fn subscriber(&self, idx: usize, room: usize) -> Result<Box<dyn Subscriber>> {
        let mut ws = self.client(idx, &format!("lt{}s{idx}", self.run_id), Role::Subscriber).await?;
        ws.send(Message::Text(json!({"id": 2, "subscribe": {"channel": format!("room{room}")}}).to_string())).await?;
        let reply = await_reply(&mut ws, 2).await.context("centrifugo subscribe")?;
        if reply.get("subscribe").is_none() {
            bail!("unexpected subscribe reply: {reply}");
        }
        Ok(Box::new(CentrifugoSubscriber { ws, pending: VecDeque::new() }))
    }

    async fn publisher(&self, idx: usize, room: usize) -> Result<Box<dyn Publisher>> {
        // The node after the subscriber's, so traffic crosses Redis.
        let ws = self.client(idx + 1, &format!("lt{}p{idx}", self.run_id), Role::Other).await?;
        let channel = format!("room{room}");
        // Command ids 1 and 2 were connect and subscribe; publishes follow.
        Ok(AckedSender::spawn(ws, read_replies, move |n, content| {
            json!({"id": 100 + n, "publish": {"channel": channel, "data": {"c": content}}}).to_string()
        }))
    }
}

struct CentrifugoSubscriber {
    ws: Ws,
    /// Contents already read (a frame can carry several pushes).
    pending: VecDeque<String>,
}

/// The `c` field of a publication push line.
fn push_content(line: &str) -> Option<String> {
    if !line.starts_with("{\"push\"") {
        return None;
    }
    let data = line.find("\"pub\":")?;
    ws::json_string_field(&line[data..], "c")
}

#[async_trait]
impl Subscriber for CentrifugoSubscriber {
    async fn next(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Ok(Some(c));
            }
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let mut ping = false;
                    for line in t.split('\n') {
                        if line == "{}" {
                            ping = true;
                        } else if let Some(c) = push_content(line) {
                            self.pending.push_back(c);
                        }
                    }
                    if ping {
                        self.ws.send(Message::Text("{}".into())).await?;
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

async fn read_replies(mut stream: SplitStream<Ws>, sink: Sink, acks: Acks) {
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(t) = msg else { continue };
        for line in t.split('\n').filter(|l| !l.is_empty()) {
            if line == "{}" {
                let _ = sink.lock().await.send(Message::Text("{}".into())).await;
            } else if line.starts_with("{\"id\":") {
                if line.contains("\"error\":") {
                    acks.fail();
                } else if line.contains("\"publish\":") {
                    acks.ack();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_yield_their_content() {
        let line = r#"{"push":{"channel":"room0","pub":{"data":{"c":"LT|0|1|2|xx"},"offset":3}}}"#;
        assert_eq!(push_content(line).as_deref(), Some("LT|0|1|2|xx"));
        assert_eq!(push_content(r#"{"id":3,"publish":{}}"#), None);
        assert_eq!(push_content("{}"), None);
    }
}

//! Confab: REST to prepare rooms and memberships, WebSocket to subscribe and
//! publish (`send_message`, acknowledged with the stored message).
//!
//! Options:
//! - `--opt deflate=true` (default false): subscribers and `idle`
//!   connections negotiate permessage-deflate (RFC 7692) through the small
//!   client in `rawws`, and fail unless the server accepts it (start Confab
//!   with `CONFAB_WS_DEFLATE=true`). Publishers stay uncompressed
//!   (tokio-tungstenite); the server compresses only toward clients that
//!   asked. Compare the fan-out's `wire_bytes_per_delivery` and
//!   `cpu_seconds_per_million` with and without it.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use futures::stream::SplitStream;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::rawws::RawWs;
use super::wire::{Counted, Role};
use super::ws::{AckedSender, Acks, Sink, Ws};
use super::{connect_spread, socket_addr, Options, Publisher, Subscriber, Target};

/// Identities for the run: minted locally with the cluster secret, or
/// registered over REST.
#[derive(Clone)]
struct Identity {
    token: String,
}

pub struct Confab {
    /// Base URLs of the nodes (or of nginx), e.g. http://127.0.0.1:8081.
    urls: Vec<String>,
    secret: Option<String>,
    http: reqwest::Client,
    rooms: Vec<String>,
    owner: Option<Identity>,
    run_id: String,
    /// Subscribers negotiate permessage-deflate (`--opt deflate=true`).
    deflate: bool,
}

impl Confab {
    pub fn new(urls: Vec<String>, secret: Option<String>, opts: &Options) -> Result<Self> {
        let deflate = match opts.get("deflate").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("false" | "0" | "no" | "off") => false,
            Some("true" | "1" | "yes" | "on") => true,
            Some(other) => bail!("--opt deflate={other}: expected true or false"),
        };
        Ok(Confab {
            urls,
            secret,
            http: reqwest::Client::new(),
            rooms: Vec::new(),
            owner: None,
            run_id: format!("{:08x}", rand::random::<u32>()),
            deflate,
        })
    }

    fn url(&self, idx: usize) -> &str {
        &self.urls[idx % self.urls.len()]
    }

    async fn identity(&self, name: &str) -> Result<Identity> {
        if let Some(secret) = &self.secret {
            let tokens = confab::auth::Tokens::new(secret, Duration::from_secs(86_400));
            let id = bson::oid::ObjectId::new();
            return Ok(Identity { token: tokens.issue(id, name, None).map_err(|e| anyhow!("{e}"))? });
        }
        let base = self.url(0);
        let password = "loadtest-password";
        let body = json!({"username": name, "email": format!("{name}@loadtest.invalid"), "password": password});
        let reg: Value = self.http.post(format!("{base}/register")).json(&body).send().await?.json().await?;
        reg["id"].as_str().ok_or_else(|| anyhow!("register failed: {reg}"))?;
        let login: Value = self
            .http
            .post(format!("{base}/login"))
            .json(&json!({"username": name, "password": password}))
            .send()
            .await?
            .json()
            .await?;
        let token = login["access_token"].as_str().ok_or_else(|| anyhow!("login failed: {login}"))?.to_string();
        Ok(Identity { token })
    }

    /// A tokio-tungstenite socket (no extensions), its reads counted toward
    /// `role`.
    async fn socket(&self, idx: usize, token: &str, role: Role) -> Result<Ws> {
        let base = self.url(idx);
        let addr = socket_addr(base)?;
        let stream = Counted::new(connect_spread(addr, idx).await?, role);
        let ws_url = format!("{}/ws?token={token}", base.replacen("http", "ws", 1));
        let (ws, _) = tokio_tungstenite::client_async(ws_url, stream).await.context("websocket handshake")?;
        Ok(ws)
    }

    /// A subscriber's socket with permessage-deflate negotiated.
    async fn deflate_socket(&self, idx: usize, token: &str) -> Result<RawWs<Counted<TcpStream>>> {
        let base = self.url(idx);
        let stream = Counted::new(connect_spread(socket_addr(base)?, idx).await?, Role::Subscriber);
        RawWs::connect(stream, base, &format!("/ws?token={token}")).await.context("websocket handshake (deflate)")
    }
}

#[async_trait]
impl Target for Confab {
    fn name(&self) -> &str {
        "confab"
    }

    async fn prepare(&mut self, rooms: usize) -> Result<()> {
        let owner = self.identity(&format!("lt{}owner", self.run_id)).await?;
        for r in 0..rooms {
            let name = format!("loadtest-{}-{r}", self.run_id);
            let resp: Value = self
                .http
                .post(format!("{}/rooms", self.url(0)))
                .bearer_auth(&owner.token)
                .json(&json!({"name": name, "type": "public"}))
                .send()
                .await?
                .json()
                .await?;
            let id = resp["id"].as_str().ok_or_else(|| anyhow!("creating a room failed: {resp}"))?;
            self.rooms.push(id.to_string());
        }
        self.owner = Some(owner);
        Ok(())
    }

    async fn subscriber(&self, idx: usize, room: usize) -> Result<Box<dyn Subscriber>> {
        let me = self.identity(&format!("lt{}s{idx}", self.run_id)).await?;
        let room_id = &self.rooms[room];
        let join = json!({"type": "join_channel", "channel": room_id, "ref": 1}).to_string();
        if self.deflate {
            let mut ws = self.deflate_socket(idx, &me.token).await?;
            ws.send_text(&join).await?;
            loop {
                match ws.next_text().await? {
                    Some(t) if t.contains("\"type\":\"ack\"") => break,
                    Some(t) if t.contains("\"type\":\"error\"") => bail!("join failed: {t}"),
                    Some(_) => continue,
                    None => bail!("closed while joining"),
                }
            }
            return Ok(Box::new(DeflateSubscriber { ws }));
        }
        let mut ws = self.socket(idx, &me.token, Role::Subscriber).await?;
        ws.send(Message::Text(join)).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"type\":\"ack\"") => break,
                Some(Ok(Message::Text(t))) if t.contains("\"type\":\"error\"") => bail!("join failed: {t}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed while joining"),
            }
        }
        Ok(Box::new(ConfabSubscriber { ws }))
    }

    async fn idle(&self, idx: usize) -> Result<Box<dyn Subscriber>> {
        let me = self.identity(&format!("lt{}i{idx}", self.run_id)).await?;
        if self.deflate {
            let ws = self.deflate_socket(idx, &me.token).await?;
            return Ok(Box::new(DeflateSubscriber { ws }));
        }
        let ws = self.socket(idx, &me.token, Role::Subscriber).await?;
        Ok(Box::new(ConfabSubscriber { ws }))
    }

    async fn publisher(&self, idx: usize, room: usize) -> Result<Box<dyn Publisher>> {
        let me = self.identity(&format!("lt{}p{idx}", self.run_id)).await?;
        let room_id = self.rooms[room].clone();
        let join =
            self.http.post(format!("{}/rooms/{room_id}/join", self.url(0))).bearer_auth(&me.token).send().await?;
        if !join.status().is_success() {
            bail!("publisher could not join the room: {}", join.status());
        }
        // Publishers connect to the node after the subscriber's, so traffic
        // crosses the bus.
        let ws = self.socket(idx + 1, &me.token, Role::Other).await?;
        Ok(AckedSender::spawn(ws, count_acks, move |n, content| {
            json!({"type": "send_message", "channel": room_id, "data": {"content": content}, "ref": n}).to_string()
        }))
    }
}

struct ConfabSubscriber {
    ws: Ws,
}

/// A subscriber over permessage-deflate (`--opt deflate=true`).
struct DeflateSubscriber {
    ws: RawWs<Counted<TcpStream>>,
}

/// The `content` of a `message` frame, without a full JSON parse (probe
/// contents never contain quotes or escapes).
pub fn message_content(frame: &str) -> Option<&str> {
    if !frame.starts_with("{\"type\":\"message\"") {
        return None;
    }
    let start = frame.find("\"content\":\"")? + 11;
    let len = frame[start..].find('"')?;
    Some(&frame[start..start + len])
}

#[async_trait]
impl Subscriber for ConfabSubscriber {
    async fn next(&mut self) -> Result<Option<String>> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if let Some(c) = message_content(&t) {
                        return Ok(Some(c.to_string()));
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Ok(None),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

#[async_trait]
impl Subscriber for DeflateSubscriber {
    async fn next(&mut self) -> Result<Option<String>> {
        while let Some(t) = self.ws.next_text().await? {
            if let Some(c) = message_content(&t) {
                return Ok(Some(c.to_string()));
            }
        }
        Ok(None)
    }
}

async fn count_acks(mut stream: SplitStream<Ws>, _sink: Sink, acks: Acks) {
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(t) = msg {
            if t.starts_with("{\"type\":\"ack\"") {
                acks.ack();
            } else if t.starts_with("{\"type\":\"error\"") {
                acks.fail();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_found_in_message_frames_only() {
        let f = r#"{"type":"message","channel":"r","data":{"id":"x","content":"LT|1|2|3|pad","seq":1}}"#;
        assert_eq!(message_content(f), Some("LT|1|2|3|pad"));
        assert_eq!(message_content(r#"{"type":"ack","data":{"content":"x"}}"#), None);
    }

    #[test]
    fn the_deflate_option_is_parsed() {
        let urls = vec!["http://127.0.0.1:8081".to_string()];
        let opts = |v: &str| Options::from([("deflate".to_string(), v.to_string())]);
        assert!(!Confab::new(urls.clone(), None, &Options::new()).unwrap().deflate);
        assert!(Confab::new(urls.clone(), None, &opts("true")).unwrap().deflate);
        assert!(!Confab::new(urls.clone(), None, &opts("false")).unwrap().deflate);
        assert!(Confab::new(urls, None, &opts("maybe")).is_err());
    }
}

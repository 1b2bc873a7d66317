//! A chaos client: one user on one WebSocket through the front, behaving as
//! the TypeScript SDK does. It reconnects with exponential backoff and full
//! jitter, joins each room again from the last seq it delivered
//! (`after_seq`), drops what it already has, fills a gap from history, and
//! resends every unacknowledged message with the same `client_msg_id` until
//! the server acknowledges it. What it hands the "application" is its log:
//! per room, the messages in the order it delivered them.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::{now_ms, Run};

/// A stored message as the client sees it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: String,
    pub seq: u64,
    pub client_msg_id: Option<String>,
    pub sent_ms: Option<u64>,
}

impl Msg {
    pub fn from_json(v: &Value) -> Option<Msg> {
        let content = v["content"].as_str().unwrap_or("");
        Some(Msg {
            id: v["id"].as_str()?.to_string(),
            seq: v["seq"].as_u64()?,
            client_msg_id: v["client_msg_id"].as_str().map(str::to_string),
            sent_ms: content.split_whitespace().find_map(|w| w.strip_prefix("t=")).and_then(|t| t.parse().ok()),
        })
    }
}

/// One room's messages: delivered once each, in seq order (the SDK's
/// `RoomStream`).
#[derive(Default)]
pub struct Stream {
    pub last_seq: u64,
    held: BTreeMap<u64, Msg>,
    held_since: Option<Instant>,
    /// When the open gap was last read from history.
    gap_read_at: Option<Instant>,
    pub log: Vec<(u64, String)>,
    pub joined: bool,
    /// Seqs skipped because history read past them (void for good).
    pub skipped: std::collections::HashSet<u64>,
}

impl Stream {
    /// A message from the socket; returns how many were delivered.
    fn push(&mut self, m: Msg, run: &Run) -> usize {
        if m.seq <= self.last_seq || self.held.contains_key(&m.seq) {
            run.counters.redelivered.fetch_add(1, Ordering::Relaxed);
            return 0;
        }
        if m.seq != self.last_seq + 1 {
            self.held.insert(m.seq, m);
            self.held_since.get_or_insert_with(Instant::now);
            return 0;
        }
        self.accept(m, run);
        1 + self.drain(run)
    }

    fn accept(&mut self, m: Msg, run: &Run) {
        self.last_seq = m.seq;
        if let Some(sent) = m.sent_ms {
            run.record_delivery(now_ms().saturating_sub(sent));
        } else {
            run.record_delivery(0);
        }
        self.log.push((m.seq, m.id));
    }

    fn drain(&mut self, run: &Run) -> usize {
        let mut n = 0;
        while let Some((&seq, _)) = self.held.first_key_value() {
            if seq <= self.last_seq {
                self.held.pop_first();
            } else if seq == self.last_seq + 1 {
                let (_, m) = self.held.pop_first().unwrap();
                self.accept(m, run);
                n += 1;
            } else {
                break;
            }
        }
        if self.held.is_empty() {
            self.held_since = None;
        }
        n
    }

    /// Messages from history after `last_seq` (one page, in seq order), as
    /// the SDK's `RoomStream` takes them. Such a page never shows a hole
    /// that may still fill (docs/api.md, "Seqs that skip"): seqs it lacks
    /// below its last message will never be stored and are skipped; if it
    /// stops short of the held messages, one is still being stored and the
    /// gap is read again later.
    fn fill(&mut self, page: &[Msg], run: &Run) {
        let Some(last) = page.last().map(|m| m.seq) else { return };
        for m in page {
            if m.seq > self.last_seq {
                self.held.entry(m.seq).or_insert_with(|| m.clone());
            }
        }
        while let Some((&seq, _)) = self.held.first_key_value() {
            if seq > last {
                break;
            }
            let m = self.held.pop_first().unwrap().1;
            if seq <= self.last_seq {
                continue;
            }
            if seq > self.last_seq + 1 {
                run.counters.skipped_seqs.fetch_add(seq - self.last_seq - 1, Ordering::Relaxed);
                self.skipped.extend(self.last_seq + 1..seq);
            }
            self.accept(m, run);
        }
        self.drain(run);
    }
}

/// A message sent and not yet acknowledged.
struct Pending {
    room: String,
    content: String,
    /// When to send it (again): at once if None (new, or after a reconnect);
    /// a second after an error reply.
    retry_at: Option<Instant>,
    /// Sent on this connection and waiting for its reply: not sent again
    /// until the reply is an error or the connection is new. As the SDK,
    /// never on a timer: resending what a slow server has not answered yet
    /// only adds to its load (the first release soak's clients resent every
    /// 15 s and turned a slow minute into a retry storm).
    awaiting: bool,
}

pub struct Client {
    pub name: String,
    password: String,
    pub token: String,
    pub rooms: Vec<String>,
    pub streams: HashMap<String, Stream>,
    pending: BTreeMap<String, Pending>,
    sent: u64,
    /// Reads only this much socket buffer (the slow client).
    pub slow: bool,
    /// Where its socket goes, if not through the front (the slow client
    /// goes to a node directly, so that nginx's buffers do not absorb what
    /// should fill the node's queue).
    pub socket_base: Option<String>,
}

/// What ended one connection.
enum Ended {
    Dropped,
    Reauth,
    Finished,
}

impl Client {
    pub fn new(name: String, password: String, token: String, rooms: Vec<String>) -> Client {
        let streams = rooms.iter().map(|r| (r.clone(), Stream::default())).collect();
        Client {
            name,
            password,
            token,
            rooms,
            streams,
            pending: BTreeMap::new(),
            sent: 0,
            slow: false,
            socket_base: None,
        }
    }

    /// Runs until the run stops sending and every message of this client is
    /// acknowledged (or the drain deadline passes); the final catch-up comes
    /// once every client is done.
    pub async fn run(mut self, run: Arc<Run>) -> Client {
        let mut attempt: u32 = 0;
        loop {
            if self.finished(&run) {
                break;
            }
            if attempt > 0 {
                // Full jitter: a random delay up to the exponential bound.
                let cap = (250u64 << attempt.min(5)).min(5_000);
                let delay = rand::thread_rng().gen_range(0..=cap);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            match self.connection(&run).await {
                Ok(Ended::Finished) => break,
                Ok(Ended::Reauth) => {
                    if let Err(e) = self.login(&run).await {
                        run.note_error(&format!("login: {e}"));
                    }
                    attempt += 1;
                }
                Ok(Ended::Dropped) => {
                    if self.slow {
                        run.counters.slow_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    attempt = 1
                }
                Err(e) => {
                    run.counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                    run.note_error(&format!("connect: {e}"));
                    attempt += 1;
                }
            }
        }
        self
    }

    fn finished(&self, run: &Run) -> bool {
        run.draining() && (self.pending.is_empty() || run.past_deadline())
    }

    async fn login(&mut self, run: &Run) -> Result<()> {
        self.token = login(run, &self.name, &self.password).await?;
        run.counters.relogins.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn socket(&self, run: &Run) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
        let socket = TcpSocket::new_v4()?;
        if self.slow {
            // A small window: the front's buffers fill, then the node's queue.
            socket.set_recv_buffer_size(4096)?;
        }
        let base = self.socket_base.as_deref().unwrap_or(&run.base);
        let stream = socket.connect(crate::target::socket_addr(base)?).await?;
        let url = format!("{}/ws?token={}", base.replacen("http", "ws", 1), self.token);
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        Ok(ws)
    }

    async fn connection(&mut self, run: &Run) -> Result<Ended> {
        let ws = match tokio::time::timeout(Duration::from_secs(10), self.socket(run)).await {
            Err(_) => bail!("connect timed out"),
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                if let Some(tokio_tungstenite::tungstenite::Error::Http(resp)) = e.downcast_ref() {
                    if resp.status() == 401 {
                        return Ok(Ended::Reauth);
                    }
                }
                return Err(e);
            }
        };
        run.counters.connects.fetch_add(1, Ordering::Relaxed);
        run.connected.fetch_add(1, Ordering::Relaxed);
        let ended = self.converse(ws, run).await;
        run.connected.fetch_sub(1, Ordering::Relaxed);
        for s in self.streams.values_mut() {
            s.joined = false;
        }
        ended
    }

    async fn converse(
        &mut self,
        ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        run: &Run,
    ) -> Result<Ended> {
        let (mut tx, mut rx) = ws.split();
        for room in self.rooms.clone() {
            let last = self.streams[&room].last_seq;
            let join = json!({"type": "join_channel", "channel": room, "data": {"after_seq": last}, "ref": format!("j:{room}")});
            tx.send(Message::Text(join.to_string())).await?;
        }
        for p in self.pending.values_mut() {
            p.retry_at = None;
            p.awaiting = false;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let send_every = run.send_interval();
        let mut next_send = Instant::now() + jitter(send_every);
        let next_churn = Instant::now() + run.churn_delay();
        let mut last_frame = Instant::now();
        let mut pinged = false;
        let mut rejoin_at: HashMap<String, Instant> = HashMap::new();
        loop {
            let paused = self.slow && run.slow_paused();
            tokio::select! {
                frame = rx.next(), if !paused => {
                    last_frame = Instant::now();
                    pinged = false;
                    match frame {
                        None => { run.counters.drops.fetch_add(1, Ordering::Relaxed); return Ok(Ended::Dropped) }
                        Some(Err(_)) => { run.counters.drops.fetch_add(1, Ordering::Relaxed); return Ok(Ended::Dropped) }
                        Some(Ok(Message::Close(frame))) => {
                            let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                            run.note_close(code);
                            return Ok(if matches!(code, 4001 | 4002) { Ended::Reauth } else { Ended::Dropped });
                        }
                        Some(Ok(Message::Text(text))) => {
                            let v: Value = match serde_json::from_str(&text) { Ok(v) => v, Err(_) => continue };
                            self.handle(&v, run, &mut rejoin_at);
                        }
                        Some(Ok(_)) => {}
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if self.finished(run) {
                        let _ = tx.send(Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame { code: CloseCode::Normal, reason: "".into() }))).await;
                        return Ok(Ended::Finished);
                    }
                    if !run.draining() && !paused && now >= next_send {
                        next_send = now + jitter(send_every);
                        self.new_message(run);
                    }
                    if !run.draining() && !self.slow && now >= next_churn {
                        run.counters.churned.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Message::Close(None)).await;
                        return Ok(Ended::Dropped);
                    }
                    // (Re)send what waits for an acknowledgement, as the SDK
                    // does: on each connection and after an error reply.
                    for (cmid, p) in self.pending.iter_mut() {
                        if !p.awaiting && p.retry_at.is_none_or(|t| now >= t) && self.streams[&p.room].joined {
                            if p.retry_at.is_some() {
                                run.counters.resends.fetch_add(1, Ordering::Relaxed);
                            }
                            p.awaiting = true;
                            let f = json!({"type": "send_message", "channel": p.room, "data": {"content": p.content, "client_msg_id": cmid}, "ref": format!("s:{cmid}")});
                            tx.send(Message::Text(f.to_string())).await?;
                        }
                    }
                    let due: Vec<String> = rejoin_at.iter().filter(|(_, t)| now >= **t).map(|(r, _)| r.clone()).collect();
                    for room in due {
                        rejoin_at.remove(&room);
                        let last = self.streams[&room].last_seq;
                        let join = json!({"type": "join_channel", "channel": room, "data": {"after_seq": last}, "ref": format!("j:{room}")});
                        tx.send(Message::Text(join.to_string())).await?;
                    }
                    // A gap the server did not fill within 2 s: read it,
                    // and again each second while it stays open (a message
                    // being stored late).
                    let due = |s: &Stream| {
                        s.held_since.is_some_and(|t| now - t > Duration::from_secs(2))
                            && s.gap_read_at.is_none_or(|t| now - t >= Duration::from_secs(1))
                    };
                    let gapped: Vec<String> = self.streams.iter().filter(|(_, s)| due(s)).map(|(r, _)| r.clone()).collect();
                    for room in gapped {
                        run.counters.gap_fills.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = self.fill_gap(&room, run).await {
                            run.note_error(&format!("gap fill: {e}"));
                        }
                    }
                    if !paused && now - last_frame > Duration::from_secs(10) && !pinged {
                        pinged = true;
                        tx.send(Message::Text(json!({"type": "ping"}).to_string())).await?;
                    }
                    if !paused && now - last_frame > Duration::from_secs(20) {
                        run.counters.drops.fetch_add(1, Ordering::Relaxed);
                        return Ok(Ended::Dropped);
                    }
                }
            }
        }
    }

    fn new_message(&mut self, run: &Run) {
        let room = self.rooms[rand::thread_rng().gen_range(0..self.rooms.len())].clone();
        self.sent += 1;
        let cmid = format!("{}-{}", self.name, self.sent);
        let content = format!("chaos {} #{} t={}", self.name, self.sent, now_ms());
        run.counters.sent.fetch_add(1, Ordering::Relaxed);
        self.pending.insert(cmid, Pending { room, content, retry_at: None, awaiting: false });
    }

    fn handle(&mut self, v: &Value, run: &Run, rejoin_at: &mut HashMap<String, Instant>) {
        let reference = v["ref"].as_str().unwrap_or("");
        match v["type"].as_str() {
            Some("message") => {
                let room = v["data"]["room_id"].as_str().unwrap_or("");
                if let (Some(s), Some(m)) = (self.streams.get_mut(room), Msg::from_json(&v["data"])) {
                    s.push(m, run);
                }
            }
            Some("ack") if reference.starts_with("j:") => {
                if let Some(s) = self.streams.get_mut(&reference[2..]) {
                    s.joined = true;
                }
            }
            Some("ack") if reference.starts_with("s:") => {
                let cmid = &reference[2..];
                if let Some(p) = self.pending.remove(cmid) {
                    if let Some(m) = Msg::from_json(&v["data"]) {
                        run.record_ack(&p.room, m);
                    }
                }
            }
            Some("error") if reference.starts_with("j:") => {
                // too_far_behind is caught up over REST on the next tick
                // (held_since); any other refusal is tried again shortly.
                run.counters.join_errors.fetch_add(1, Ordering::Relaxed);
                rejoin_at.insert(reference[2..].to_string(), Instant::now() + Duration::from_secs(1));
            }
            Some("error") if reference.starts_with("s:") => {
                run.counters.send_errors.fetch_add(1, Ordering::Relaxed);
                if let Some(p) = self.pending.get_mut(&reference[2..]) {
                    p.retry_at = Some(Instant::now() + Duration::from_secs(1));
                    p.awaiting = false;
                }
            }
            _ => {}
        }
    }

    async fn fill_gap(&mut self, room: &str, run: &Run) -> Result<()> {
        let after = self.streams[room].last_seq;
        let (page, _) = page_after(run, &self.token, room, after).await?;
        let stream = self.streams.get_mut(room).unwrap();
        stream.gap_read_at = Some(Instant::now());
        stream.fill(&page, run);
        Ok(())
    }

    /// The final catch-up: every room read from history after the last seq
    /// delivered, to its end (what a client does after its last reconnect).
    pub async fn final_catch_up(&mut self, run: &Run) {
        for room in self.rooms.clone() {
            let mut failures = 0;
            loop {
                let after = self.streams[&room].last_seq;
                match page_after(run, &self.token, &room, after).await {
                    Ok((page, more)) => {
                        // Past what the page lacks below its last message,
                        // as the SDK's catch-up does.
                        self.streams.get_mut(&room).unwrap().fill(&page, run);
                        if !more || page.is_empty() {
                            break;
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        run.note_error(&format!("catch-up: {e}"));
                        if failures > 20 {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }

    pub fn unacknowledged(&self) -> usize {
        self.pending.len()
    }
}

/// `POST /login`: a new access token for `name`.
pub async fn login(run: &Run, name: &str, password: &str) -> Result<String> {
    let resp = run
        .http
        .post(format!("{}/login", run.base))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let token = body["access_token"].as_str().ok_or_else(|| anyhow!("login {name} {status}: {body}"))?;
    Ok(token.to_string())
}

/// One page of a room's history after `after` (`GET /messages?after_seq=`,
/// 200 at most): the messages, and whether more follow.
pub async fn page_after(run: &Run, token: &str, room: &str, after: u64) -> Result<(Vec<Msg>, bool)> {
    let resp = run
        .http
        .get(format!("{}/messages", run.base))
        .query(&[("room_id", room), ("after_seq", &after.to_string()), ("limit", "200")])
        .bearer_auth(token)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("history {status}: {body}");
    }
    let msgs = body["messages"].as_array().map(|a| a.iter().filter_map(Msg::from_json).collect()).unwrap_or_default();
    Ok((msgs, body["has_more"].as_bool().unwrap_or(false)))
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Msg {
        Msg { id: format!("m{seq}"), seq, client_msg_id: None, sent_ms: None }
    }

    fn seqs(s: &Stream) -> Vec<u64> {
        s.log.iter().map(|(seq, _)| *seq).collect()
    }

    #[test]
    fn a_stream_drops_repeats_and_holds_what_follows_a_gap() {
        let run = Run::for_tests();
        let mut s = Stream::default();
        assert_eq!(s.push(msg(1), &run), 1);
        assert_eq!(s.push(msg(1), &run), 0);
        assert_eq!(s.push(msg(3), &run), 0);
        assert_eq!(seqs(&s), [1]);
        assert!(s.held_since.is_some());
        assert_eq!(s.push(msg(2), &run), 2);
        assert_eq!(seqs(&s), [1, 2, 3]);
        assert!(s.held_since.is_none());
        assert_eq!(run.counters.redelivered.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_gap_is_filled_from_history_and_what_history_reads_past_is_skipped() {
        let run = Run::for_tests();
        let mut s = Stream::default();
        s.push(msg(1), &run);
        s.push(msg(6), &run);
        // History has 2 and 4 and reads on to 6: 3 and 5 are void for good.
        s.fill(&[msg(2), msg(4), msg(6)], &run);
        assert_eq!(seqs(&s), [1, 2, 4, 6]);
        assert_eq!(run.counters.skipped_seqs.load(Ordering::Relaxed), 2);
        assert!(s.skipped.contains(&3) && s.skipped.contains(&5) && s.skipped.len() == 2);
        assert!(s.held_since.is_none());
    }

    #[test]
    fn a_page_that_stops_short_of_the_held_message_leaves_the_gap_open() {
        let run = Run::for_tests();
        let mut s = Stream::default();
        s.push(msg(1), &run);
        s.push(msg(5), &run);
        // 4 is still being stored: the page stops at 3 (or is empty).
        s.fill(&[msg(2), msg(3)], &run);
        s.fill(&[], &run);
        assert_eq!(seqs(&s), [1, 2, 3], "5 waits for 4");
        assert!(s.held_since.is_some(), "read again later");
        // Stored late: it comes, in order, nothing skipped.
        s.fill(&[msg(4), msg(5)], &run);
        assert_eq!(seqs(&s), [1, 2, 3, 4, 5]);
        assert!(s.skipped.is_empty() && s.held_since.is_none());
    }

    #[test]
    fn the_send_time_is_read_from_the_content() {
        let m = Msg::from_json(&json!({"id": "a", "seq": 3, "content": "chaos u1 #4 t=1234", "client_msg_id": "u1-4"}))
            .unwrap();
        assert_eq!(m.sent_ms, Some(1234));
        assert_eq!(m.client_msg_id.as_deref(), Some("u1-4"));
        assert!(Msg::from_json(&json!({"id": "a"})).is_none());
    }
}

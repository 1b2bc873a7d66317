//! permessage-deflate on chat connections, across two nodes: what the
//! handshake agrees to, compressed frames both ways, and the close codes for
//! compressed input that is refused. A hand-written client, since the test
//! suite's WebSocket client cannot negotiate extensions.

mod common;

use std::time::Duration;

use common::{config, unique_db, Node, User, WAIT};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// A client that offers permessage-deflate and keeps its compression
/// context across messages (unless it agreed not to).
struct Raw {
    io: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` of the handshake's response.
    agreed: Option<String>,
    inflate: Decompress,
    deflate: Compress,
    next_ref: u64,
}

/// A frame as received: RSV1, opcode, payload.
struct Frame {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl Raw {
    async fn connect(node: &Node, user: &User, offer: Option<&str>, window: u8) -> Raw {
        let mut io = TcpStream::connect(node.addr).await.unwrap();
        let offer = offer.map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n")).unwrap_or_default();
        let request = format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n",
            user.token, node.addr
        );
        io.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let agreed = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions")))
            .map(|(_, v)| v.trim().to_string());
        buf.drain(..head_end);
        Raw {
            io,
            buf,
            agreed,
            inflate: Decompress::new_with_window_bits(false, window),
            deflate: Compress::new(Compression::default(), false),
            next_ref: 0,
        }
    }

    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let (head, len7) = (self.buf[0], self.buf[1] & 0x7F);
                assert_eq!(self.buf[1] & 0x80, 0, "server frames are not masked");
                let (extra, len) = match len7 {
                    126 if self.buf.len() >= 4 => (2, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                    127 if self.buf.len() >= 10 => {
                        (8, u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (0, n as usize),
                };
                if extra != usize::MAX && self.buf.len() >= 2 + extra + len {
                    assert_eq!(head & 0x80, 0x80, "Confab does not fragment");
                    let payload = self.buf[2 + extra..2 + extra + len].to_vec();
                    self.buf.drain(..2 + extra + len);
                    return Some(Frame { rsv1: head & 0x40 != 0, opcode: head & 0x0F, payload });
                }
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(WAIT, self.io.read(&mut chunk)).await.expect("a frame in time") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next JSON frame, and whether it came compressed.
    async fn recv(&mut self) -> (bool, Value) {
        loop {
            let f = self.frame().await.expect("connection open");
            match f.opcode {
                0x1 => {
                    let text = if f.rsv1 { self.inflated(&f.payload) } else { f.payload };
                    return (f.rsv1, serde_json::from_slice(&text).unwrap());
                }
                0x9 => self.write(0x8A, &f.payload).await,
                0x8 => panic!("closed: {:?}", f.payload),
                _ => {}
            }
        }
    }

    async fn recv_type(&mut self, kind: &str) -> (bool, Value) {
        loop {
            let got = self.recv().await;
            if got.1["type"] == kind {
                return got;
            }
        }
    }

    fn inflated(&mut self, payload: &[u8]) -> Vec<u8> {
        let mut input = payload.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(64 * 1024);
        let before = self.inflate.total_in();
        self.inflate.decompress_vec(&input, &mut out, FlushDecompress::Sync).expect("inflates");
        assert_eq!((self.inflate.total_in() - before) as usize, input.len());
        out
    }

    fn compressed(&mut self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 64);
        self.deflate.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - TAIL.len());
        out
    }

    /// Writes one masked frame with first byte `head`.
    async fn write(&mut self, head: u8, payload: &[u8]) {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![head];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.io.write_all(&out).await.unwrap();
    }

    /// Sends a command compressed (RSV1) and returns its reply.
    async fn request(&mut self, mut frame: Value) -> Value {
        self.next_ref += 1;
        frame["ref"] = json!(self.next_ref);
        let packed = self.compressed(frame.to_string().as_bytes());
        self.write(0xC1, &packed).await;
        loop {
            let (_, v) = self.recv().await;
            if v["ref"] == json!(self.next_ref) {
                return v;
            }
        }
    }

    /// The close code the server ends the connection with.
    async fn close_code(&mut self) -> Option<u16> {
        while let Some(f) = self.frame().await {
            if f.opcode == 0x8 {
                return Some(u16::from_be_bytes([f.payload[0], f.payload[1]]));
            }
        }
        None
    }
}

fn deflating(db: &str) -> confab::config::Config {
    let mut c = config(db);
    c.ws_deflate = true;
    c
}

/// A message long enough to be compressed (default: from 256 bytes).
fn long(tag: &str) -> String {
    format!("{tag}: {}", "the quick brown fox jumps over the lazy dog ".repeat(10))
}

#[tokio::test]
async fn messages_travel_compressed_both_ways_across_nodes() {
    let db = unique_db();
    let (a, b) = (Node::start(deflating(&db)).await, Node::start(deflating(&db)).await);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = a.create_room(&alice, "deflated", "public").await;
    let (status, _) = b.call("POST", &format!("/rooms/{room}/join"), Some(&bob.token), None).await;
    assert_eq!(status, 200);

    // Chrome's offer: compression both ways, the client keeping its context.
    let mut raw = Raw::connect(&a, &alice, Some("permessage-deflate; client_max_window_bits"), 15).await;
    assert_eq!(raw.agreed.as_deref(), Some("permessage-deflate; server_no_context_takeover"));
    let joined = raw.request(json!({"type": "join_channel", "channel": room})).await;
    assert_eq!(joined["type"], "ack", "{joined}");
    let mut bob_ws = b.connect(&bob).await;
    bob_ws.join(&room).await;

    // From the other node: a message arrives compressed, a frame under the
    // threshold (256 bytes) not.
    bob_ws.say(&room, &long("from bob")).await;
    assert_eq!(bob_ws.recv_type("message").await["data"]["content"], long("from bob"), "his own, back");
    let (compressed, got) = raw.recv_type("message").await;
    assert!(compressed, "a message frame is compressed");
    assert_eq!(got["data"]["content"], long("from bob"));
    bob_ws.request(json!({"type": "user_typing", "channel": room})).await;
    let (compressed, got) = raw.recv_type("user_typing").await;
    assert!(!compressed, "a short frame is not");
    assert_eq!(got["channel"], json!(room));

    // Compressed commands, the second leaning on the first's context.
    for tag in ["one", "two"] {
        let ack = raw.request(json!({"type": "send_message", "channel": room, "data": {"content": long(tag)}})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
        let m = bob_ws.recv_type("message").await;
        assert_eq!(m["data"]["content"], long(tag));
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_smaller_window_and_fresh_client_messages_are_agreed_to() {
    let db = unique_db();
    let node = Node::start(deflating(&db)).await;
    let alice = node.register("alice").await;
    let room = node.create_room(&alice, "small-window", "public").await;
    let offer = "permessage-deflate; server_max_window_bits=8, \
                 permessage-deflate; server_max_window_bits=9; client_no_context_takeover";
    let mut raw = Raw::connect(&node, &alice, Some(offer), 9).await;
    assert_eq!(
        raw.agreed.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_no_context_takeover"),
        "the first offer (8 bits) is declined, the second taken"
    );
    raw.deflate = Compress::new(Compression::default(), false);
    raw.request(json!({"type": "join_channel", "channel": room})).await;
    // A long message: back-references reach no further than the 9-bit window.
    let content: String = (0..2000).map(|i| char::from(b'a' + (i * 7 % 26) as u8)).collect();
    node.post_message(&alice, &room, &content).await;
    let (compressed, got) = raw.recv_type("message").await;
    assert!(compressed);
    assert_eq!(got["data"]["content"], content);
    node.shutdown().await;
}

#[tokio::test]
async fn compressed_input_is_refused_where_not_agreed_or_not_valid() {
    let db = unique_db();
    let plain = Node::start(config(&db)).await;
    let deflate = Node::start(deflating(&db)).await;
    let alice = plain.register("alice").await;

    // Off (the default): the offer is ignored, and RSV1 is a protocol error.
    let mut raw = Raw::connect(&plain, &alice, Some("permessage-deflate"), 15).await;
    assert_eq!(raw.agreed, None);
    let packed = raw.compressed(br#"{"type":"ping"}"#);
    raw.write(0xC1, &packed).await;
    assert_eq!(raw.close_code().await, Some(1002));

    // On: data that does not inflate is 1007; more than the message cap once
    // inflated is 1009, however small it came.
    let mut raw = Raw::connect(&deflate, &alice, Some("permessage-deflate"), 15).await;
    raw.write(0xC1, &[0xFF, 0xFF, 0xFF, 0xFF]).await;
    assert_eq!(raw.close_code().await, Some(1007));
    let mut raw = Raw::connect(&deflate, &alice, Some("permessage-deflate"), 15).await;
    let bomb = raw.compressed(&vec![b' '; 1 << 20]);
    assert!(bomb.len() < 65_536 / 8);
    raw.write(0xC1, &bomb).await;
    assert_eq!(raw.close_code().await, Some(1009));
    // RSV1 on a continuation frame.
    let mut raw = Raw::connect(&deflate, &alice, Some("permessage-deflate"), 15).await;
    raw.write(0x01, b"{\"type\"").await;
    raw.write(0xC0, b":\"ping\"}").await;
    assert_eq!(raw.close_code().await, Some(1002));
    tokio::time::sleep(Duration::from_millis(50)).await;
    plain.shutdown().await;
    deflate.shutdown().await;
}

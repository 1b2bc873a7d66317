//! A minimal WebSocket client that negotiates permessage-deflate (RFC 7692),
//! which tokio-tungstenite cannot: enough for a subscriber that sends a few
//! text frames and reads messages.
//!
//! - The handshake offers `permessage-deflate; client_no_context_takeover;
//!   client_max_window_bits` and fails unless the server accepts it.
//! - Frames from the server: a data message whose first frame has RSV1 set is
//!   compressed; its fragments are joined, `00 00 ff ff` is appended and the
//!   result inflated with one raw-deflate `Decompress` kept for the
//!   connection's life (so servers that keep their context between messages
//!   work as well as those that do not). Messages with RSV1 clear (a server
//!   leaves small ones uncompressed) are taken as they are.
//! - Pings are answered with a pong carrying the same payload; a close ends
//!   the stream.
//! - Frames to the server are masked and never compressed (a client may
//!   send uncompressed messages on a permessage-deflate connection).
//!
//! `next_text` is cancel-safe (the fan-out polls it under a timeout): a
//! frame leaves the read buffer only once all of it is there, the message
//! being assembled lives in the client, and frames to send are queued and
//! drained as the socket takes them.

use anyhow::{bail, ensure, Context, Result};
use bytes::{Buf, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// What the client offers.
const OFFER: &str = "permessage-deflate; client_no_context_takeover; client_max_window_bits";
/// Largest response head read during the handshake.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message accepted (compressed or inflated).
const MAX_MESSAGE: usize = 64 << 20;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A client WebSocket over `S` with permessage-deflate negotiated.
pub struct RawWs<S> {
    io: S,
    /// Bytes read and not yet consumed (the handshake may read past the head).
    buf: BytesMut,
    inflate: Decompress,
    /// The data message being assembled: its opcode and whether it is
    /// compressed, with its payload so far in `message`.
    partial: Option<(u8, bool)>,
    message: Vec<u8>,
    inflated: Vec<u8>,
    /// Frames for the server not yet written (written first by every call).
    out: Vec<u8>,
}

/// One frame header, as parsed from the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: usize,
    /// Bytes the header itself takes.
    size: usize,
}

/// The header at the start of `buf`, or `None` if `buf` does not hold all of
/// it yet.
fn parse_header(buf: &[u8]) -> Result<Option<Header>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut size) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    ensure!(len <= MAX_MESSAGE as u64, "a {len}-byte frame is larger than the {MAX_MESSAGE} bytes accepted");
    let mask = if masked {
        if buf.len() < size + 4 {
            return Ok(None);
        }
        size += 4;
        Some(buf[size - 4..size].try_into().unwrap())
    } else {
        None
    };
    Ok(Some(Header { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode: b0 & 0x0f, mask, len: len as usize, size }))
}

fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// A final frame with `opcode` and `payload`, masked with a random key.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let key: [u8; 4] = rand::random();
    frame.extend_from_slice(&key);
    let start = frame.len();
    frame.extend_from_slice(payload);
    apply_mask(&mut frame[start..], key);
    frame
}

/// Whether a `Sec-WebSocket-Extensions` value accepts permessage-deflate.
fn accepts_deflate(extensions: &str) -> bool {
    extensions
        .split(',')
        .any(|ext| ext.split(';').next().is_some_and(|name| name.trim().eq_ignore_ascii_case("permessage-deflate")))
}

/// (Host header, resource prefix) of a base URL such as
/// `http://127.0.0.1:8081` or `ws://host:port/prefix`.
fn host_and_prefix(base: &str) -> Result<(&str, &str)> {
    let (scheme, rest) = base.split_once("://").context("URL without scheme")?;
    ensure!(scheme == "http" || scheme == "ws", "`{base}`: only http:// and ws:// are supported with deflate");
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    })
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// Opens a WebSocket to `path` (with its query) under the base URL `base`
    /// over the connected `io`, offering permessage-deflate; fails unless
    /// the server accepts it.
    pub async fn connect(mut io: S, base: &str, path: &str) -> Result<Self> {
        let (host, prefix) = host_and_prefix(base)?;
        let key = generate_key();
        let request = format!(
            "GET {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {OFFER}\r\n\r\n"
        );
        io.write_all(request.as_bytes()).await?;
        io.flush().await?;

        let mut buf = BytesMut::with_capacity(4096);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            ensure!(buf.len() <= MAX_HEAD, "handshake response head longer than {MAX_HEAD} bytes");
            if io.read_buf(&mut buf).await? == 0 {
                bail!("connection closed during the WebSocket handshake");
            }
        };
        let head = buf.split_to(end);
        let head = String::from_utf8_lossy(&head);
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if status.split_whitespace().nth(1) != Some("101") {
            bail!("WebSocket handshake refused: `{status}`");
        }
        let (mut accept, mut extensions) = (None, Vec::new());
        for line in lines {
            let Some((name, value)) = line.split_once(':') else { continue };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(value);
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                extensions.push(value);
            }
        }
        let expected = derive_accept_key(key.as_bytes());
        if accept != Some(expected.as_str()) {
            bail!("bad Sec-WebSocket-Accept {accept:?} (expected {expected})");
        }
        if !extensions.iter().any(|e| accepts_deflate(e)) {
            bail!("server did not accept permessage-deflate; start it with CONFAB_WS_DEFLATE=true");
        }
        Ok(Self::from_parts(io, buf))
    }

    /// A connection past its handshake, with `buf` the bytes already read.
    fn from_parts(io: S, buf: BytesMut) -> Self {
        RawWs {
            io,
            buf,
            inflate: Decompress::new(false),
            partial: None,
            message: Vec::new(),
            inflated: Vec::new(),
            out: Vec::new(),
        }
    }

    /// Sends `text` as one masked, uncompressed text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.out.extend(client_frame(OP_TEXT, text.as_bytes()));
        self.write_out().await
    }

    /// Writes the queued frames, dropping each byte from the queue as the
    /// socket takes it.
    async fn write_out(&mut self) -> Result<()> {
        while !self.out.is_empty() {
            let n = self.io.write(&self.out).await?;
            ensure!(n > 0, "connection closed while writing");
            self.out.drain(..n);
        }
        self.io.flush().await?;
        Ok(())
    }

    /// The next text message; binary messages are skipped, pings answered.
    /// `None` once the server closes (or the connection ends between frames).
    pub async fn next_text(&mut self) -> Result<Option<String>> {
        self.write_out().await?;
        loop {
            let Some((header, payload)) = self.next_frame().await? else { return Ok(None) };
            match header.opcode {
                OP_PING => {
                    self.out.extend(client_frame(OP_PONG, &payload));
                    self.write_out().await?;
                }
                OP_PONG => {}
                OP_CLOSE => {
                    // Echo the status code, as RFC 6455 asks; the server may
                    // already be gone.
                    let code = if payload.len() >= 2 { &payload[..2] } else { &[][..] };
                    self.out.extend(client_frame(OP_CLOSE, code));
                    let _ = self.write_out().await;
                    return Ok(None);
                }
                OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                    if header.opcode == OP_CONTINUATION {
                        ensure!(self.partial.is_some(), "continuation frame without a message");
                    } else {
                        ensure!(self.partial.is_none(), "new message before the previous one ended");
                        self.partial = Some((header.opcode, header.rsv1));
                        self.message.clear();
                    }
                    ensure!(
                        self.message.len() + payload.len() <= MAX_MESSAGE,
                        "message larger than {MAX_MESSAGE} bytes"
                    );
                    self.message.extend_from_slice(&payload);
                    if !header.fin {
                        continue;
                    }
                    let (opcode, compressed) = self.partial.take().expect("checked above");
                    let data = if compressed {
                        self.message.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
                        inflate(&mut self.inflate, &self.message, &mut self.inflated)?;
                        &self.inflated
                    } else {
                        &self.message
                    };
                    if opcode == OP_TEXT {
                        return Ok(Some(String::from_utf8(data.to_vec()).context("text message is not UTF-8")?));
                    }
                }
                other => bail!("unknown opcode {other:#x}"),
            }
        }
    }

    /// The next frame (header, unmasked payload), taken from the buffer
    /// only once all of it is there; `None` if the connection ends between
    /// frames.
    async fn next_frame(&mut self) -> Result<Option<(Header, BytesMut)>> {
        loop {
            match parse_header(&self.buf)? {
                Some(h) if self.buf.len() >= h.size + h.len => {
                    self.buf.advance(h.size);
                    let mut payload = self.buf.split_to(h.len);
                    if let Some(key) = h.mask {
                        apply_mask(&mut payload, key);
                    }
                    return Ok(Some((h, payload)));
                }
                Some(h) => self.buf.reserve(h.size + h.len - self.buf.len()),
                None => self.buf.reserve(4096),
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                bail!("connection ended inside a frame");
            }
        }
    }
}

/// Inflates `input` (a whole message with `00 00 ff ff` appended) into
/// `out`, keeping `d`'s window for the next message. A message that ends the
/// deflate stream (a final block) resets `d`.
fn inflate(d: &mut Decompress, mut input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.len().max(4096));
        }
        let (in0, out0) = (d.total_in(), d.total_out());
        let status = d.decompress_vec(input, out, FlushDecompress::Sync).context("inflating a message")?;
        let consumed = (d.total_in() - in0) as usize;
        let produced = (d.total_out() - out0) as usize;
        input = &input[consumed..];
        ensure!(out.len() <= MAX_MESSAGE, "inflated message larger than {MAX_MESSAGE} bytes");
        if status == Status::StreamEnd {
            d.reset(false);
            return Ok(());
        }
        // Done once all input is in and the output did not fill up (so
        // nothing is left pending).
        if input.is_empty() && out.len() < out.capacity() {
            return Ok(());
        }
        if consumed == 0 && produced == 0 {
            ensure!(input.is_empty(), "inflating a message made no progress");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};
    use tokio::io::DuplexStream;

    /// A server frame (unmasked) with the given first byte.
    fn server_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= u16::MAX as usize => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// `text` compressed as RFC 7692 §7.2.1 says: a sync flush, with the
    /// trailing `00 00 ff ff` removed.
    fn deflate(c: &mut Compress, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 64);
        let before = c.total_in();
        c.compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync).unwrap();
        assert_eq!((c.total_in() - before) as usize, text.len(), "all of the text went in");
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "sync flush ends with an empty stored block");
        out.truncate(out.len() - 4);
        out
    }

    /// Reads one client frame from `server`; returns (first byte, unmasked
    /// payload) and checks that it was masked.
    async fn read_client_frame(server: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        server.read_exact(&mut h).await.unwrap();
        assert!(h[1] & 0x80 != 0, "client frames must be masked");
        let len = match h[1] & 0x7f {
            126 => server.read_u16().await.unwrap() as usize,
            127 => server.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut key = [0u8; 4];
        server.read_exact(&mut key).await.unwrap();
        let mut payload = vec![0u8; len];
        server.read_exact(&mut payload).await.unwrap();
        apply_mask(&mut payload, key);
        (h[0], payload)
    }

    const MSG1: &str =
        r#"{"type":"message","channel":"r","data":{"id":"a","content":"LT|0|1|2|xxxxxxxxxxxxxxxxxxxx","seq":1}}"#;
    const MSG2: &str =
        r#"{"type":"message","channel":"r","data":{"id":"b","content":"LT|0|2|3|xxxxxxxxxxxxxxxxxxxx","seq":2}}"#;
    const MSG3: &str =
        r#"{"type":"message","channel":"r","data":{"id":"c","content":"LT|0|3|4|xxxxxxxxxxxxxxxxxxxx","seq":3}}"#;

    #[tokio::test]
    async fn reads_plain_compressed_and_fragmented_messages_and_answers_pings() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        // The server keeps its context: MSG2 and MSG3 refer back to MSG1, so
        // they inflate only if the client keeps its window too.
        let mut c = Compress::new(Compression::fast(), false);
        let mut wire = server_frame(0x81, b"{\"type\":\"ack\",\"ref\":1}");
        wire.extend(server_frame(0x80 | 0x40 | OP_TEXT, &deflate(&mut c, MSG1)));
        let second = deflate(&mut c, MSG2);
        assert!(second.len() < MSG2.len() / 2, "context takeover should shrink the repeat");
        let (a, b) = second.split_at(second.len() / 2);
        wire.extend(server_frame(0x40 | OP_TEXT, a)); // FIN=0, RSV1 on the first frame only
        wire.extend(server_frame(0x89, b"ping!")); // a control frame between fragments
        wire.extend(server_frame(0x80 | OP_CONTINUATION, b));
        // A message compressed with a fresh context (no context takeover).
        let mut fresh = Compress::new(Compression::fast(), false);
        wire.extend(server_frame(0x80 | 0x40 | OP_TEXT, &deflate(&mut fresh, MSG3)));
        wire.extend(server_frame(0x88, &1000u16.to_be_bytes()));
        server.write_all(&wire).await.unwrap();

        let mut ws = RawWs::from_parts(client, BytesMut::new());
        assert_eq!(ws.next_text().await.unwrap().as_deref(), Some("{\"type\":\"ack\",\"ref\":1}"));
        assert_eq!(ws.next_text().await.unwrap().as_deref(), Some(MSG1));
        assert_eq!(ws.next_text().await.unwrap().as_deref(), Some(MSG2));
        assert_eq!(read_client_frame(&mut server).await, (0x80 | OP_PONG, b"ping!".to_vec()));
        assert_eq!(ws.next_text().await.unwrap().as_deref(), Some(MSG3));
        assert_eq!(ws.next_text().await.unwrap(), None);
        assert_eq!(read_client_frame(&mut server).await, (0x80 | OP_CLOSE, 1000u16.to_be_bytes().to_vec()));
    }

    #[tokio::test]
    async fn a_read_cancelled_mid_message_loses_nothing() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut c = Compress::new(Compression::fast(), false);
        let compressed = deflate(&mut c, MSG1);
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let first = server_frame(0x40 | OP_TEXT, a);
        let second = server_frame(0x80 | OP_CONTINUATION, b);
        let mut ws = RawWs::from_parts(client, BytesMut::new());
        let wait = std::time::Duration::from_millis(20);
        // The first frame and half of the second's header, then a timeout.
        server.write_all(&first).await.unwrap();
        server.write_all(&second[..1]).await.unwrap();
        assert!(tokio::time::timeout(wait, ws.next_text()).await.is_err());
        // The header, half of the payload, and another timeout.
        let mid = 2 + (second.len() - 2) / 2;
        server.write_all(&second[1..mid]).await.unwrap();
        assert!(tokio::time::timeout(wait, ws.next_text()).await.is_err());
        server.write_all(&second[mid..]).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), ws.next_text()).await;
        assert_eq!(got.expect("a lost header leaves the reader waiting").unwrap().as_deref(), Some(MSG1));
    }

    #[tokio::test]
    async fn long_messages_use_extended_lengths() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let big = "y".repeat(70_000);
        let mid = "z".repeat(300);
        let mut wire = server_frame(0x81, big.as_bytes());
        wire.extend(server_frame(0x81, mid.as_bytes()));
        server.write_all(&wire).await.unwrap();
        drop(server);
        let mut ws = RawWs::from_parts(client, BytesMut::new());
        assert_eq!(ws.next_text().await.unwrap(), Some(big));
        assert_eq!(ws.next_text().await.unwrap(), Some(mid));
        assert_eq!(ws.next_text().await.unwrap(), None);
    }

    #[tokio::test]
    async fn client_frames_are_masked_text() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut ws = RawWs::from_parts(client, BytesMut::new());
        let join = r#"{"type":"join_channel","channel":"abc","ref":1}"#;
        ws.send_text(join).await.unwrap();
        let long = "q".repeat(1000);
        ws.send_text(&long).await.unwrap();
        assert_eq!(read_client_frame(&mut server).await, (0x81, join.as_bytes().to_vec()));
        assert_eq!(read_client_frame(&mut server).await, (0x81, long.into_bytes()));
    }

    /// Serves one handshake on `server`, answering with `extensions` (if
    /// any) and then a first frame in the same write; returns the request.
    async fn serve_handshake(mut server: DuplexStream, extensions: Option<&str>, accept_ok: bool) -> String {
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            req.push(server.read_u8().await.unwrap());
        }
        let req = String::from_utf8(req).unwrap();
        let key = req
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("the request carries a key")
            .trim()
            .to_string();
        let accept = if accept_ok { derive_accept_key(key.as_bytes()) } else { "bogus".into() };
        let mut resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\n"
        );
        if let Some(e) = extensions {
            resp.push_str(&format!("sec-websocket-extensions: {e}\r\n"));
        }
        resp.push_str("\r\n");
        let mut bytes = resp.into_bytes();
        bytes.extend(server_frame(0x81, b"hello"));
        server.write_all(&bytes).await.unwrap();
        req
    }

    #[tokio::test]
    async fn the_handshake_offers_deflate_and_keeps_bytes_past_the_head() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let srv = tokio::spawn(serve_handshake(server, Some("permessage-deflate; client_no_context_takeover"), true));
        let mut ws = RawWs::connect(client, "http://127.0.0.1:8081", "/ws?token=T").await.unwrap();
        let req = srv.await.unwrap();
        assert!(req.starts_with("GET /ws?token=T HTTP/1.1\r\n"), "{req}");
        for h in [
            "Host: 127.0.0.1:8081",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; client_max_window_bits",
        ] {
            assert!(req.contains(&format!("{h}\r\n")), "missing `{h}` in {req}");
        }
        assert_eq!(ws.next_text().await.unwrap().as_deref(), Some("hello"));
    }

    #[tokio::test]
    async fn the_handshake_fails_without_deflate_or_with_a_bad_accept() {
        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_handshake(server, None, true));
        let err = RawWs::connect(client, "http://127.0.0.1:8081", "/ws").await.err().expect("must fail");
        assert!(err.to_string().contains("CONFAB_WS_DEFLATE=true"), "{err}");

        let (client, server) = tokio::io::duplex(1 << 16);
        tokio::spawn(serve_handshake(server, Some("permessage-deflate"), false));
        let err = RawWs::connect(client, "http://127.0.0.1:8081", "/ws").await.err().expect("must fail");
        assert!(err.to_string().contains("Sec-WebSocket-Accept"), "{err}");
    }

    #[test]
    fn urls_and_extension_headers_are_read() {
        assert_eq!(host_and_prefix("http://127.0.0.1:8081").unwrap(), ("127.0.0.1:8081", ""));
        assert_eq!(host_and_prefix("ws://h:1/chat/").unwrap(), ("h:1", "/chat"));
        assert!(host_and_prefix("https://h:1").is_err());
        assert!(accepts_deflate("permessage-deflate"));
        assert!(accepts_deflate("x-foo, Permessage-Deflate; server_no_context_takeover"));
        assert!(!accepts_deflate("x-permessage-deflate-ish"));
        assert!(!accepts_deflate(""));
    }
}

//! permessage-deflate (RFC 7692), offered when `CONFAB_WS_DEFLATE` is on.
//!
//! What Confab accepts shapes what it costs (ADR 15):
//! - **Server to client, no context takeover, always.** Each message is
//!   compressed on its own, so a fan-out frame is compressed once per
//!   thread and the same compressed bytes go to every receiver that
//!   negotiated the extension (`shared`), and no connection keeps a
//!   compressor. The response always says `server_no_context_takeover`,
//!   which RFC 7692 §7.1.1.1 lets a server add unasked.
//! - **Client to server, as the client offers.** With
//!   `client_no_context_takeover` offered, it is accepted and messages are
//!   inflated by one reusable inflater per thread; without it, a connection
//!   keeps its own inflater (about 40 KiB) from its first compressed message.
//! - `server_max_window_bits` of 9 to 15 is honoured; an offer of 8, which
//!   raw deflate cannot do, or any parameter that is unknown, repeated or
//!   out of range, declines that offer, and the next one is tried.

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The tail a sync flush ends with, left off on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Smallest and largest LZ77 window (as a power of two) Confab compresses with.
const MIN_WINDOW: u8 = 9;
const MAX_WINDOW: u8 = 15;

/// What one connection agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The window Confab compresses with (`server_max_window_bits`).
    pub window: u8,
    /// The client starts each message afresh (`client_no_context_takeover`).
    pub client_fresh: bool,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the handshake's response.
    pub fn response(&self) -> String {
        let mut out = format!("{NAME}; server_no_context_takeover");
        if self.window < MAX_WINDOW {
            out.push_str(&format!("; server_max_window_bits={}", self.window));
        }
        if self.client_fresh {
            out.push_str("; client_no_context_takeover");
        }
        out
    }
}

/// The first acceptable permessage-deflate offer among the request's
/// `Sec-WebSocket-Extensions` values, if any.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    headers.into_iter().flat_map(|h| split_outside_quotes(h, ',')).find_map(accept)
}

/// One offer, accepted or declined (None).
fn accept(offer: &str) -> Option<Agreed> {
    let mut parts = split_outside_quotes(offer, ';').into_iter().map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut agreed = Agreed { window: MAX_WINDOW, client_fresh: false };
    let mut seen = Vec::new();
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let key = key.to_ascii_lowercase();
        if seen.contains(&key) {
            return None;
        }
        match (key.as_str(), value) {
            ("server_no_context_takeover", None) => {}
            ("client_no_context_takeover", None) => agreed.client_fresh = true,
            ("server_max_window_bits", Some(v)) => agreed.window = window_bits(v).filter(|w| *w >= MIN_WINDOW)?,
            // Confab inflates with the largest window, which takes any.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(key);
    }
    Some(agreed)
}

/// A window size parameter: 8 to 15, digits only.
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|w| (8..=MAX_WINDOW).contains(w))
}

/// Splits on `sep`, except inside quoted strings.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Compresses one whole message on its own (no context kept), without the
/// sync-flush tail.
pub fn compress(data: &[u8], window: u8) -> Bytes {
    let window = window.clamp(MIN_WINDOW, MAX_WINDOW);
    thread_local! {
        static COMPRESSORS: RefCell<Vec<(u8, Compress)>> = const { RefCell::new(Vec::new()) };
    }
    COMPRESSORS.with(|cs| {
        let mut cs = cs.borrow_mut();
        let at = match cs.iter().position(|(w, _)| *w == window) {
            Some(at) => at,
            None => {
                cs.push((window, Compress::new_with_window_bits(Compression::fast(), false, window)));
                cs.len() - 1
            }
        };
        let c = &mut cs[at].1;
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut taken = 0;
        loop {
            if out.capacity() - out.len() < 32 {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            // Compressing from memory into memory cannot fail.
            let _ = c.compress_vec(&data[taken..], &mut out, FlushCompress::Sync);
            taken += (c.total_in() - before) as usize;
            // A sync flush is complete once it stopped with room to spare.
            if taken == data.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Bytes::from(out)
    })
}

/// Frames most recently compressed on this thread, kept while a fan-out
/// offers them to one receiver after another.
const SHARED: usize = 8;

/// `compress`, once per thread for a frame many receivers get: the same
/// `Bytes` (the same allocation, held here, so it cannot be another frame's)
/// comes back compressed from the cache.
pub fn shared(frame: &Bytes, window: u8) -> Bytes {
    thread_local! {
        static RECENT: RefCell<VecDeque<(Bytes, u8, Bytes)>> = const { RefCell::new(VecDeque::new()) };
    }
    let same =
        |(src, w, _): &(Bytes, u8, Bytes)| *w == window && src.as_ptr() == frame.as_ptr() && src.len() == frame.len();
    if let Some(hit) = RECENT.with(|r| r.borrow().iter().find(|e| same(e)).map(|e| e.2.clone())) {
        return hit;
    }
    let out = compress(frame, window);
    RECENT.with(|r| {
        let mut r = r.borrow_mut();
        if r.len() == SHARED {
            r.pop_front();
        }
        r.push_back((frame.clone(), window, out.clone()));
    });
    out
}

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Inflated, it would pass the message cap.
    TooBig,
    /// Not a valid deflate stream.
    Corrupt,
}

/// Inflates one connection's compressed messages.
pub struct Inflater {
    /// The client starts each message afresh: a thread's shared inflater
    /// serves, reset for every message.
    fresh: bool,
    /// Otherwise the connection's own, made at its first compressed message.
    own: Option<Box<Decompress>>,
}

impl Inflater {
    pub fn new(agreed: Agreed) -> Self {
        Inflater { fresh: agreed.client_fresh, own: None }
    }

    /// The message `data` (its frames' payloads joined) inflated, at most
    /// `max` bytes.
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
        if self.fresh {
            thread_local! {
                static SHARED_INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
            }
            return SHARED_INFLATER.with(|d| {
                let mut d = d.borrow_mut();
                let d = d.get_or_insert_with(|| Decompress::new(false));
                d.reset(false);
                let out = run_inflate(d, data, max);
                d.reset(false);
                out
            });
        }
        let d = self.own.get_or_insert_with(|| Box::new(Decompress::new(false)));
        let out = run_inflate(d, data, max);
        if out.is_err() {
            d.reset(false);
        }
        out
    }
}

fn run_inflate(d: &mut Decompress, data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut out: Vec<u8> = Vec::with_capacity((data.len() * 3).max(64).min(max.saturating_add(1)));
    // The message, then the tail its sender left off.
    for input in [data, &TAIL[..]] {
        let mut taken = 0;
        loop {
            if out.len() == out.capacity() {
                // Never room for more than one byte past the cap.
                out.reserve_exact(out.len().max(64).min(max + 1 - out.len()));
            }
            let (before_in, before_out) = (d.total_in(), out.len());
            let status = d.decompress_vec(&input[taken..], &mut out, FlushDecompress::Sync);
            taken += (d.total_in() - before_in) as usize;
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            match status {
                Err(_) => return Err(InflateError::Corrupt),
                // A final block ended the stream: what follows it, the tail
                // included, is ignored, and the next message starts afresh.
                Ok(Status::StreamEnd) => {
                    d.reset(false);
                    return Ok(out);
                }
                Ok(_) => {}
            }
            if taken == input.len() && out.len() < out.capacity() {
                break;
            }
            if d.total_in() == before_in && out.len() == before_out && out.len() < out.capacity() {
                return Err(InflateError::Corrupt);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(window: u8, client_fresh: bool) -> Option<Agreed> {
        Some(Agreed { window, client_fresh })
    }

    #[test]
    fn offers_are_accepted_declined_or_passed_over() {
        assert_eq!(negotiate(["permessage-deflate"]), agreed(15, false));
        assert_eq!(negotiate(["permessage-deflate; client_max_window_bits"]), agreed(15, false), "Chrome's offer");
        assert_eq!(
            negotiate(["permessage-deflate; client_no_context_takeover; server_max_window_bits=9"]),
            agreed(9, true)
        );
        assert_eq!(negotiate(["Permessage-Deflate; SERVER_MAX_WINDOW_BITS=\"12\""]), agreed(12, false));
        assert_eq!(negotiate(["x-webkit-deflate-frame"]), None);
        assert_eq!(negotiate(Vec::<&str>::new()), None);
        for declined in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=0x9",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown",
        ] {
            assert_eq!(negotiate([declined]), None, "{declined}");
        }
        // A declined offer gives way to the next, in the same header or the next one.
        assert_eq!(
            negotiate(["permessage-deflate; server_max_window_bits=8, permessage-deflate; client_no_context_takeover"]),
            agreed(15, true)
        );
        assert_eq!(negotiate(["foo; a=\"x,y\"", "permessage-deflate; server_max_window_bits=10"]), agreed(10, false));
    }

    #[test]
    fn the_response_states_what_was_agreed() {
        let a = Agreed { window: 15, client_fresh: false };
        assert_eq!(a.response(), "permessage-deflate; server_no_context_takeover");
        let a = Agreed { window: 9, client_fresh: true };
        assert_eq!(
            a.response(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; client_no_context_takeover"
        );
    }

    /// What a client does with a message: append the tail, inflate with the
    /// agreed window.
    fn client_inflate(data: &[u8], window: u8) -> Vec<u8> {
        let mut d = Decompress::new_with_window_bits(false, window);
        let mut input = data.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
        assert_eq!(d.total_in() as usize, input.len());
        out
    }

    fn json(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| format!("{{\"type\":\"message\",\"seq\":{i},\"content\":\"hello there\"}}"))
            .collect::<String>()
            .into()
    }

    #[test]
    fn messages_compress_alone_and_inflate_with_the_agreed_window() {
        for window in [9, 12, 15] {
            for data in [Vec::new(), b"x".to_vec(), json(1), json(2000)] {
                let packed = compress(&data, window);
                assert!(!packed.ends_with(&TAIL));
                assert_eq!(client_inflate(&packed, window), data, "window {window}, {} bytes", data.len());
            }
        }
        assert!(compress(&json(100), 15).len() < json(100).len() / 5, "repetitive JSON compresses");
    }

    #[test]
    fn a_shared_frame_is_compressed_once_per_thread() {
        let frame = Bytes::from(json(10));
        let a = shared(&frame, 15);
        let b = shared(&frame.clone(), 15);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second receiver gets the same bytes");
        let other = Bytes::from(json(10));
        let c = shared(&other, 15);
        assert_ne!(c.as_ptr(), a.as_ptr(), "equal content in another allocation is compressed again");
        assert_eq!(client_inflate(&c, 15), json(10));
        let small = shared(&frame, 9);
        assert_eq!(client_inflate(&small, 9), json(10), "another window is another entry");
    }

    /// A client's message: compressed with or without context kept.
    fn client_messages(msgs: &[Vec<u8>], keep_context: bool) -> Vec<Vec<u8>> {
        let mut c = Compress::new(Compression::default(), false);
        msgs.iter()
            .map(|m| {
                if !keep_context {
                    c.reset();
                }
                let mut out = Vec::with_capacity(m.len() + 64);
                c.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
                assert!(out.ends_with(&TAIL));
                out.truncate(out.len() - 4);
                out
            })
            .collect()
    }

    #[test]
    fn client_messages_inflate_with_and_without_context_takeover() {
        let msgs = vec![json(3), json(3), b"short".to_vec(), json(500)];
        for fresh in [false, true] {
            let mut inflater = Inflater::new(Agreed { window: 15, client_fresh: fresh });
            for (packed, plain) in client_messages(&msgs, !fresh).iter().zip(&msgs) {
                assert_eq!(&inflater.inflate(packed, 1 << 20).unwrap()[..], &plain[..]);
            }
        }
    }

    #[test]
    fn a_final_block_ends_the_message_and_the_next_starts_afresh() {
        let mut inflater = Inflater::new(Agreed { window: 15, client_fresh: false });
        for _ in 0..2 {
            let mut c = Compress::new(Compression::default(), false);
            let mut out = Vec::with_capacity(1024);
            c.compress_vec(b"final", &mut out, FlushCompress::Finish).unwrap();
            assert_eq!(&inflater.inflate(&out, 100).unwrap()[..], b"final");
        }
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(&zeros, 15);
        assert!(bomb.len() < zeros.len() / 100, "{} bytes", bomb.len());
        for fresh in [false, true] {
            let mut inflater = Inflater::new(Agreed { window: 15, client_fresh: fresh });
            assert_eq!(inflater.inflate(&bomb, 65_536).unwrap_err(), InflateError::TooBig);
            assert_eq!(inflater.inflate(&[0xFF, 0xFF, 0xFF], 65_536).unwrap_err(), InflateError::Corrupt);
            let exact = compress(&zeros[..1000], 15);
            assert_eq!(inflater.inflate(&exact, 1000).unwrap().len(), 1000, "exactly the cap is fine");
            assert_eq!(inflater.inflate(&exact, 999).unwrap_err(), InflateError::TooBig);
            assert_eq!(&inflater.inflate(&compress(b"after", 15), 100).unwrap()[..], b"after", "usable after errors");
        }
    }
}

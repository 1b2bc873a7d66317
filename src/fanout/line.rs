//! The outbound side of one connection.
//!
//! Whoever has a frame for the connection writes it straight to the socket
//! when nothing is waiting ahead of it: a delivery costs one non-blocking
//! `writev`, with no queue hop and no task wake-up. Only what the socket does
//! not take at once waits, in a bounded backlog the connection's writer task
//! drains when the socket turns writable (several frames per system call).
//! A backlog that reaches its bound marks a slow consumer; the room never
//! waits for it.
//!
//! Control frames (pong, ping, close) go ahead of waiting data, at a frame
//! boundary. Nothing is written after a close frame. Where the connection
//! agreed to a compression extension, data frames from a size up are
//! written compressed, with RSV1 set ([`Compression`]).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;

/// WebSocket opcodes we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// One frame ready to go: its header and its (possibly shared) payload.
struct Frame {
    head: [u8; 10],
    head_len: u8,
    body: Bytes,
    /// Store time (Unix µs) of a room delivery, for the latency metric; 0 otherwise.
    stored_at_us: u64,
    control: bool,
}

impl Frame {
    fn new(op: Op, body: Bytes, stored_at_us: u64) -> Frame {
        Frame::with_rsv1(op, body, stored_at_us, false)
    }

    fn with_rsv1(op: Op, body: Bytes, stored_at_us: u64, rsv1: bool) -> Frame {
        let mut head = [0u8; 10];
        head[0] = 0x80 | u8::from(rsv1) << 6 | op as u8; // FIN, never fragmented
        let len = body.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if len <= u16::MAX as usize {
            head[1] = 126;
            head[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        let control = matches!(op, Op::Close | Op::Ping | Op::Pong);
        Frame { head, head_len, body, stored_at_us, control }
    }

    fn opcode(&self) -> u8 {
        self.head[0] & 0x0F
    }

    fn len(&self) -> usize {
        self.head_len as usize + self.body.len()
    }

    /// The unwritten rest of the frame, given `done` bytes already written.
    fn slices(&self, done: usize) -> [IoSlice<'_>; 2] {
        let head = &self.head[..self.head_len as usize];
        if done < head.len() {
            [IoSlice::new(&head[done..]), IoSlice::new(&self.body)]
        } else {
            [IoSlice::new(&[]), IoSlice::new(&self.body[done - head.len()..])]
        }
    }
}

/// The non-blocking socket a line writes to.
pub trait Wire: Send + Sync + 'static {
    /// Writes what the socket takes now; `WouldBlock` if nothing. A
    /// `WouldBlock` here arms `poll_writable`.
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Like `try_write_vectored`, for a first try while nothing waits: a
    /// `WouldBlock` need not arm `poll_writable`, because the frame then
    /// goes to the backlog and the writer task's flush tries again.
    fn try_write_first(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.try_write_vectored(bufs)
    }
    /// Ready when the socket may take bytes again.
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Wire for OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        OwnedWriteHalf::try_write_vectored(self, bufs)
    }
    /// Straight to the socket, past the runtime's readiness bookkeeping
    /// (the largest user-space cost of a delivery, ADR 9): the socket is
    /// non-blocking, and the runtime's view of it is only needed once a
    /// write would block.
    fn try_write_first(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        socket2::SockRef::from(self.as_ref()).send_vectored(bufs)
    }
    fn poll_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.as_ref().poll_write_ready(cx)
    }
}

/// A wire that takes every byte and keeps none: the fan-out path without
/// the kernel, for benchmarks.
pub struct Discard;

impl Wire for Discard {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn poll_writable(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// How a connection's data frames are compressed, once it agreed to
/// (permessage-deflate: see `ws::deflate`).
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// Smaller payloads go as they are.
    pub min_bytes: usize,
    /// The compressor's window, as agreed.
    pub window: u8,
    /// Compresses a whole payload; called for every receiver of a shared
    /// frame, so it should cache what many receivers get.
    pub compress: fn(&Bytes, u8) -> Bytes,
}

/// Why a frame was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The backlog is at its bound: the client does not read fast enough.
    Full,
    /// A close frame went ahead, or the socket failed: the line is done.
    Closed,
}

/// What a flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything waiting is written.
    All,
    /// The socket takes no more bytes now.
    Blocked,
    /// A close frame is fully written: nothing more will be. True if the
    /// peer's reply is awaited (see `Line::close`).
    Closed { await_reply: bool },
}

#[derive(Default)]
struct State {
    /// Frames not fully written, in order; the front may be partly written.
    backlog: VecDeque<Frame>,
    /// Bytes of the front frame already written.
    done: usize,
    /// Data frames in the backlog (control frames are not counted).
    data: usize,
    /// A close frame is queued or written: refuse everything else.
    closing: bool,
    /// A close frame is fully written.
    closed: bool,
    /// Writing failed: the socket is gone.
    failed: bool,
    /// The queued close starts the closing handshake (see `Line::close`).
    await_reply: bool,
}

/// Control frames waiting before pongs replace each other.
const MAX_CONTROL: usize = 16;

/// Most frames gathered into one `writev` when draining a backlog.
const GATHER: usize = 32;

/// The outbound side of one connection (see the module docs).
pub struct Line {
    state: Mutex<State>,
    /// Set once the socket is handed over; frames offered before that wait.
    wire: OnceLock<Box<dyn Wire>>,
    capacity: usize,
    /// Wakes the writer task: a backlog appeared.
    pending: Notify,
    /// Wakes senders waiting for room in the backlog.
    room: Notify,
    latency: OnceLock<metrics::Histogram>,
    compression: OnceLock<Compression>,
}

impl Line {
    /// A line whose backlog holds up to `capacity` data frames.
    pub fn new(capacity: usize) -> Self {
        Line {
            state: Mutex::new(State::default()),
            wire: OnceLock::new(),
            capacity: capacity.max(1),
            pending: Notify::new(),
            room: Notify::new(),
            latency: OnceLock::new(),
            compression: OnceLock::new(),
        }
    }

    /// Hands the socket over; frames offered so far are written by the
    /// writer task (it is woken).
    pub fn attach(&self, wire: impl Wire) {
        let _ = self.wire.set(Box::new(wire));
        self.pending.notify_one();
    }

    /// Compresses data frames from now on (set once, before the socket is
    /// attached).
    pub fn compress_with(&self, compression: Compression) {
        let _ = self.compression.set(compression);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers a data frame without waiting: written at once if the socket
    /// takes it, else kept in the backlog if it has room.
    pub fn offer(&self, op: Op, body: Bytes, stored_at_us: u64) -> Result<(), Refused> {
        let (body, rsv1) = match self.compression.get() {
            Some(c) if body.len() >= c.min_bytes && matches!(op, Op::Text | Op::Binary) => {
                ((c.compress)(&body, c.window), true)
            }
            _ => (body, false),
        };
        let mut st = self.lock();
        if st.closing || st.failed {
            return Err(Refused::Closed);
        }
        if st.data >= self.capacity {
            return Err(Refused::Full);
        }
        let frame = Frame::with_rsv1(op, body, stored_at_us, rsv1);
        if st.backlog.is_empty() {
            if let Some(wire) = self.wire.get() {
                match wire.try_write_first(&frame.slices(0)) {
                    Ok(n) if n == frame.len() => {
                        self.record(&frame);
                        return Ok(());
                    }
                    Ok(n) => st.done = n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
                    Err(_) => {
                        st.failed = true;
                        drop(st);
                        self.pending.notify_one();
                        return Err(Refused::Closed);
                    }
                }
            }
            st.data += 1;
            st.backlog.push_back(frame);
            drop(st);
            self.pending.notify_one();
            return Ok(());
        }
        st.data += 1;
        st.backlog.push_back(frame);
        Ok(())
    }

    /// Queues a data frame, waiting for room in the backlog (for replies to
    /// the client's own requests: waiting slows only this client). False
    /// once the line is closed.
    pub async fn send(&self, op: Op, body: Bytes) -> bool {
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            match self.offer(op, body.clone(), 0) {
                Ok(()) => return true,
                Err(Refused::Closed) => return false,
                Err(Refused::Full) => room.await,
            }
        }
    }

    /// Queues a ping or pong ahead of waiting data. Every ping is answered
    /// while few answers wait; past `MAX_CONTROL` waiting, a pong replaces
    /// the last one not yet started (RFC 6455 allows answering only the
    /// latest ping), so a client that pings without reading cannot grow the
    /// backlog. False if the line is closed.
    pub fn control(&self, op: Op, body: Bytes) -> bool {
        debug_assert!(matches!(op, Op::Ping | Op::Pong));
        self.queue_control(Frame::new(op, body, 0), None)
    }

    /// Queues a close frame ahead of waiting data; nothing is written after
    /// it. `await_reply`: we start the closing handshake, so the writer waits
    /// (briefly) for the peer's reply before the socket goes; an echo of the
    /// peer's close ends the connection once written. False if a close was
    /// already queued or the line is done.
    pub fn close(&self, body: Bytes, await_reply: bool) -> bool {
        self.queue_control(Frame::new(Op::Close, body, 0), Some(await_reply))
    }

    fn queue_control(&self, frame: Frame, close: Option<bool>) -> bool {
        let mut st = self.lock();
        if st.closing || st.failed {
            return false;
        }
        if let Some(await_reply) = close {
            st.closing = true;
            st.await_reply = await_reply;
        }
        let is_pong = frame.opcode() == Op::Pong as u8;
        // The first frame that has not started, past the controls already
        // waiting: controls keep their order and never split a frame.
        let mut at = usize::from(st.done > 0);
        let mut last_pong = None;
        while at < st.backlog.len() && st.backlog[at].control {
            if st.backlog[at].opcode() == Op::Pong as u8 {
                last_pong = Some(at);
            }
            at += 1;
        }
        let controls = at - usize::from(st.done > 0);
        if let Some(i) = last_pong.filter(|_| is_pong && controls >= MAX_CONTROL) {
            st.backlog[i] = frame;
            return true;
        }
        st.backlog.insert(at, frame);
        drop(st);
        self.pending.notify_one();
        true
    }

    /// Writes as much of the backlog as the socket takes now.
    pub fn flush(&self) -> io::Result<Flushed> {
        let Some(wire) = self.wire.get() else { return Ok(Flushed::Blocked) };
        let mut st = self.lock();
        let mut freed = false;
        let result = loop {
            if st.failed {
                break Err(io::Error::new(io::ErrorKind::BrokenPipe, "socket write failed"));
            }
            if st.backlog.is_empty() {
                break Ok(if st.closed { Flushed::Closed { await_reply: st.await_reply } } else { Flushed::All });
            }
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * GATHER.min(st.backlog.len()));
            let mut offset = st.done;
            for frame in st.backlog.iter().take(GATHER) {
                slices.extend(frame.slices(offset));
                offset = 0;
            }
            let written = match wire.try_write_vectored(&slices) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Blocked),
                Err(e) => {
                    st.failed = true;
                    break Err(e);
                }
            };
            drop(slices);
            // Retire the frames that are now complete.
            let mut left = st.done + written;
            st.done = 0;
            while let Some(front) = st.backlog.front() {
                if left < front.len() {
                    st.done = left;
                    break;
                }
                left -= front.len();
                let frame = st.backlog.pop_front().expect("front exists");
                if frame.control {
                    if frame.opcode() == Op::Close as u8 {
                        st.closed = true;
                        st.backlog.clear();
                        st.data = 0;
                        break;
                    }
                } else {
                    st.data -= 1;
                    freed = true;
                    self.record(&frame);
                }
            }
        };
        drop(st);
        if freed {
            self.room.notify_waiters();
        }
        result
    }

    /// Waits until the writer has something to do.
    pub async fn pending(&self) {
        self.pending.notified().await
    }

    /// Waits until the socket may take bytes again.
    pub async fn writable(&self) -> io::Result<()> {
        match self.wire.get() {
            Some(wire) => std::future::poll_fn(|cx| wire.poll_writable(cx)).await,
            None => std::future::pending().await,
        }
    }

    /// Whether nothing waits to be written, for tests.
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.lock().backlog.is_empty()
    }

    /// Ends the line: refuses frames from now on and wakes waiting senders.
    pub fn shut(&self) {
        self.lock().failed = true;
        self.room.notify_waiters();
    }

    fn record(&self, frame: &Frame) {
        if frame.stored_at_us > 0 {
            // Resolved once per connection: recording is then a few atomic adds.
            let latency = self.latency.get_or_init(|| metrics::histogram!("confab_message_delivery_latency_seconds"));
            latency.record(crate::clock::now_us().saturating_sub(frame.stored_at_us) as f64 / 1e6);
        }
    }

    /// The frames waiting, as (opcode, payload), for tests.
    #[cfg(test)]
    pub fn waiting(&self) -> Vec<(u8, Bytes)> {
        self.lock().backlog.iter().map(|f| (f.opcode(), f.body.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A line attached to one end of a real loopback TCP connection, and the
    /// other end, as a client would hold it.
    async fn connected(capacity: usize) -> (Line, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_read, write) = server.into_split();
        let line = Line::new(capacity);
        line.attach(write);
        std::mem::forget(_read); // keep the read half open for the test's life
        (line, client)
    }

    /// Reads one unmasked frame: (opcode, payload).
    async fn read_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0] & 0x80, 0x80, "FIN set");
        let len = match head[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                client.read_exact(&mut b).await.unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                client.read_exact(&mut b).await.unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut body = vec![0u8; len];
        client.read_exact(&mut body).await.unwrap();
        (head[0] & 0x0F, body)
    }

    #[tokio::test]
    async fn a_frame_the_socket_takes_is_written_at_once_with_no_backlog() {
        let (line, mut client) = connected(4).await;
        line.offer(Op::Text, Bytes::from_static(b"hello"), 0).unwrap();
        assert!(line.is_idle(), "nothing waits for the writer");
        assert_eq!(read_frame(&mut client).await, (0x1, b"hello".to_vec()));
        let big = Bytes::from(vec![7u8; 70_000]);
        line.offer(Op::Binary, big.clone(), 0).unwrap();
        line.flush().unwrap(); // whatever the socket did not take yet
        let reader = tokio::spawn(async move { read_frame(&mut client).await });
        while line.flush().unwrap() != Flushed::All {
            line.writable().await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), (0x2, big.to_vec()), "64-bit length, body intact");
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_fills_the_backlog_then_is_refused_and_frames_stay_whole() {
        let (line, mut client) = connected(8).await;
        let body = Bytes::from(vec![b'x'; 1000]);
        let mut sent = 0;
        // The kernel's buffers fill first, then the backlog's 8 frames.
        while line.offer(Op::Text, body.clone(), 0).is_ok() {
            sent += 1;
            assert!(sent < 100_000, "never refused");
        }
        assert_eq!(line.offer(Op::Text, body.clone(), 0), Err(Refused::Full));
        assert!(!line.is_idle());
        // Pongs jump the queue at a frame boundary; past a few waiting, the
        // latest replaces the last one.
        for i in 0..40u8 {
            assert!(line.control(Op::Pong, Bytes::from(vec![i])));
        }
        let waiting = line.waiting();
        let pongs: Vec<u8> = waiting.iter().filter(|(op, _)| *op == Op::Pong as u8).map(|(_, b)| b[0]).collect();
        let mut expected: Vec<u8> = (0..MAX_CONTROL as u8 - 1).collect();
        expected.push(39);
        assert_eq!(pongs, expected, "every ping answered until the bound, then only the latest");
        let first_pong = waiting.iter().position(|(op, _)| *op == Op::Pong as u8).unwrap();
        assert!(first_pong <= 1, "ahead of waiting data (behind a partly written frame only)");
        assert!(waiting[first_pong + MAX_CONTROL..].iter().all(|(op, _)| *op == Op::Text as u8));

        // The client reads everything: every frame arrives whole and in order.
        let drain = tokio::spawn(async move {
            let mut frames = Vec::new();
            for _ in 0..sent + MAX_CONTROL {
                frames.push(read_frame(&mut client).await);
            }
            frames
        });
        while line.flush().unwrap() != Flushed::All {
            line.writable().await.unwrap();
        }
        let frames = drain.await.unwrap();
        assert_eq!(frames.iter().filter(|(op, b)| *op == 0x1 && b[..] == body[..]).count(), sent);
        assert!(frames.contains(&(0xA, vec![39])));
    }

    /// A "compressor" that reverses the payload: enough to see what went through it.
    fn reversed(body: &Bytes, _window: u8) -> Bytes {
        body.iter().rev().copied().collect::<Vec<u8>>().into()
    }

    #[tokio::test]
    async fn data_frames_from_the_threshold_go_compressed_with_rsv1_and_control_frames_never() {
        let (line, mut client) = connected(8).await;
        line.compress_with(Compression { min_bytes: 4, window: 15, compress: reversed });
        line.offer(Op::Text, Bytes::from_static(b"abc"), 0).unwrap();
        line.offer(Op::Binary, Bytes::from_static(b"abcd"), 0).unwrap();
        assert!(line.control(Op::Pong, Bytes::from_static(b"ping-data")));
        assert_eq!(line.flush().unwrap(), Flushed::All, "the writer's part");
        let mut wire = vec![0u8; 2 + 3 + 2 + 4 + 2 + 9];
        client.read_exact(&mut wire).await.unwrap();
        assert_eq!(&wire[..5], b"\x81\x03abc", "under the threshold: as it is, RSV1 clear");
        assert_eq!(&wire[5..11], b"\xC2\x04dcba", "from it: through the compressor, RSV1 set");
        assert_eq!(&wire[11..], b"\x8A\x09ping-data", "a pong never");
    }

    #[tokio::test]
    async fn nothing_is_written_after_a_close_frame() {
        let (line, mut client) = connected(4).await;
        assert!(line.close(Bytes::from_static(&[0x03, 0xE8]), true));
        assert!(!line.close(Bytes::from_static(&[0x03, 0xE8]), true), "one close only");
        assert_eq!(line.offer(Op::Text, Bytes::from_static(b"late"), 0), Err(Refused::Closed));
        assert!(!line.control(Op::Pong, Bytes::new()));
        assert_eq!(line.flush().unwrap(), Flushed::Closed { await_reply: true });
        assert_eq!(read_frame(&mut client).await, (0x8, vec![0x03, 0xE8]));
    }

    #[tokio::test]
    async fn frames_offered_before_the_socket_is_attached_wait_for_the_writer() {
        let line = Line::new(4);
        line.offer(Op::Text, Bytes::from_static(b"early"), 0).unwrap();
        assert_eq!(line.flush().unwrap(), Flushed::Blocked);
        assert_eq!(line.waiting(), [(0x1, Bytes::from_static(b"early"))]);
        line.attach(Discard);
        assert_eq!(line.flush().unwrap(), Flushed::All);
        assert!(line.is_idle());
    }

    /// A line whose backlog is full, and a sender waiting for room in it.
    async fn full_with_a_waiting_sender() -> (std::sync::Arc<Line>, tokio::task::JoinHandle<bool>) {
        let line = std::sync::Arc::new(Line::new(1));
        line.offer(Op::Text, Bytes::from_static(b"1"), 0).unwrap();
        let waiting = tokio::spawn({
            let line = line.clone();
            async move { line.send(Op::Text, Bytes::from_static(b"2")).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the backlog is full");
        (line, waiting)
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_goes_on_once_the_backlog_drains_and_stops_when_shut() {
        let (line, waiting) = full_with_a_waiting_sender().await;
        line.attach(Discard);
        line.flush().unwrap();
        assert!(waiting.await.unwrap(), "sent once there was room");

        let (line, waiting) = full_with_a_waiting_sender().await;
        line.shut();
        assert!(!waiting.await.unwrap(), "refused once the connection ends");
    }
}

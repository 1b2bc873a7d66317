//! One WebSocket connection: a reader and a writer task over the split socket.
//!
//! The reader parses frames (`frames`), joins fragments under the message cap and hands
//! whole messages to a [`Handler`]; protocol violations fail the connection
//! with the RFC 6455 close code (1002 protocol, 1007 invalid UTF-8, 1009 too
//! big). The writer drains the connection's queues: control frames first,
//! then data, and pings the client every interval; a client that misses two
//! pings, or a socket that stops taking bytes, is dropped. Either side
//! cancelling the connection's token ends both.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{interval_at, timeout, Instant};

use super::assembler::{Assembler, DataMessage};
use super::frames::{FrameReader, ReadError};
use super::registry::{Control, Outbound, Outbox, OutboxReceivers};

/// What a connection does with whole messages.
#[async_trait]
pub trait Handler: Send + 'static {
    /// Handles one message; `Err((code, reason))` closes the connection.
    async fn on_message(&mut self, message: DataMessage) -> Result<(), (u16, String)>;
    /// Runs once when the connection ends, however it ends.
    async fn on_close(&mut self);
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
}

/// How the read side ended.
enum Exit {
    /// The peer sent a close frame (already echoed).
    PeerClosed,
    /// We fail the connection with this code.
    Fail(u16, String),
    /// The transport is gone or the connection was cancelled.
    Gone,
}

/// The two halves of a socket, each owned by one task.
pub type ReadSide = Box<dyn AsyncRead + Unpin + Send>;
pub type WriteSide = Box<dyn AsyncWrite + Unpin + Send>;

/// Splits an upgraded connection. When the upgraded stream is a plain TCP
/// stream (the usual case) each half owns its side of the socket; otherwise
/// the halves share the stream behind a lock (`tokio::io::split`), which
/// costs a lock on every read and write.
pub fn split(ws: WebSocket<TokioIo<Upgraded>>) -> (ReadSide, WebSocketWrite<WriteSide>) {
    let upgraded = ws.into_inner().into_inner();
    let (read, write): (ReadSide, WriteSide) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            metrics::counter!("confab_socket_splits_total", "kind" => "owned").increment(1);
            let (r, w) = parts.io.into_inner().into_split();
            // Bytes read past the handshake come first. They are a slice of
            // hyper's 8 KiB read buffer: copy them out, so that buffer is
            // freed now rather than kept for the connection's whole life.
            let read: ReadSide = if parts.read_buf.is_empty() {
                Box::new(r)
            } else {
                Box::new(std::io::Cursor::new(parts.read_buf.to_vec()).chain(r))
            };
            (read, Box::new(w))
        }
        Err(upgraded) => {
            metrics::counter!("confab_socket_splits_total", "kind" => "shared").increment(1);
            let (r, w) = tokio::io::split(TokioIo::new(upgraded));
            (Box::new(r), Box::new(w))
        }
    };
    // Frames are read by our own reader (`frames`); fastwebsockets writes.
    let (_, write) = fastwebsockets::after_handshake_split(tokio::io::empty(), write, fastwebsockets::Role::Server);
    (read, write)
}

/// Runs a connection to its end.
pub async fn drive<H: Handler>(
    (io, writer): (ReadSide, WebSocketWrite<WriteSide>),
    outbox: Arc<Outbox>,
    queues: OutboxReceivers,
    limits: Limits,
    mut handler: H,
) {
    let mut reader = Reader { io, frames: FrameReader::new(limits.max_message_bytes) };
    let missed = Arc::new(AtomicU32::new(0));
    let kill = outbox.kill.clone();
    let writer = tokio::spawn(write_loop(writer, queues, missed.clone(), limits.ping_interval, kill.clone()));

    let mut assembler = Assembler::new(limits.max_message_bytes);
    let exit = tokio::select! {
        exit = read_loop(&mut reader, &outbox, &missed, &mut assembler, &mut handler) => exit,
        _ = kill.cancelled() => Exit::Gone,
    };
    if let Exit::Fail(code, reason) = &exit {
        let _ = timeout(Duration::from_secs(1), outbox.control(Control::Close(*code, reason.as_str().into()))).await;
        // Give the peer a moment to answer our close, as RFC 6455 asks.
        let _ = timeout(Duration::from_secs(2), async {
            tokio::select! {
                _ = drain_until_close(&mut reader) => {},
                _ = kill.cancelled() => {},
            }
        })
        .await;
    }
    handler.on_close().await;
    let mut writer = writer;
    if matches!(exit, Exit::PeerClosed) {
        // Let the writer send the close echo before the socket goes away.
        let _ = timeout(Duration::from_secs(1), &mut writer).await;
    }
    kill.cancel();
    let _ = writer.await;
}

/// The read side: the socket and the frame parser reading it.
struct Reader {
    io: ReadSide,
    frames: FrameReader,
}

impl Reader {
    async fn frame(&mut self) -> Result<Frame<'static>, ReadError> {
        self.frames.next(&mut self.io).await
    }
}

type Writer = WebSocketWrite<WriteSide>;

async fn read_loop<H>(
    reader: &mut Reader,
    outbox: &Outbox,
    missed: &AtomicU32,
    assembler: &mut Assembler,
    handler: &mut H,
) -> Exit
where
    H: Handler,
{
    loop {
        let frame = match reader.frame().await {
            Ok(frame) => frame,
            Err(e) => return exit_for(e),
        };
        missed.store(0, Ordering::Relaxed);
        match frame.opcode {
            OpCode::Close => return answer_close(&frame.payload, outbox).await,
            OpCode::Ping => {
                if !outbox.control(Control::Pong(frame.payload.to_vec().into())).await {
                    return Exit::Gone;
                }
                continue;
            }
            OpCode::Pong => continue,
            _ => {}
        }
        match assembler.push(frame) {
            Err(v) => return Exit::Fail(v.close_code(), v.reason().into()),
            Ok(None) => {}
            Ok(Some(message)) => {
                if let Err((code, reason)) = handler.on_message(message).await {
                    return Exit::Fail(code, reason);
                }
            }
        }
    }
}

/// Echoes a valid close frame (its code only); fails a malformed one.
async fn answer_close(payload: &[u8], outbox: &Outbox) -> Exit {
    let echo = match payload.len() {
        0 => Vec::new(),
        1 => return Exit::Fail(1002, "malformed close frame".into()),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !fastwebsockets::CloseCode::from(code).is_allowed() || std::str::from_utf8(&payload[2..]).is_err() {
                return Exit::Fail(1002, "malformed close frame".into());
            }
            payload[..2].to_vec()
        }
    };
    let _ = outbox.control(Control::CloseEcho(echo.into())).await;
    Exit::PeerClosed
}

async fn drain_until_close(reader: &mut Reader) {
    loop {
        match reader.frame().await {
            Ok(frame) if frame.opcode == OpCode::Close => return,
            Ok(_) => {}
            Err(ReadError::Eof | ReadError::Io(_)) => return,
            // After a violation the byte stream may be out of step: stop
            // parsing but keep the socket open until the caller's deadline,
            // so that closing it with unread input (a TCP reset) cannot
            // destroy our close frame before the peer reads it.
            Err(_) => std::future::pending::<()>().await,
        }
    }
}

fn exit_for(e: ReadError) -> Exit {
    match e {
        ReadError::TooBig => Exit::Fail(1009, "message too big".into()),
        ReadError::Protocol(_) => Exit::Fail(1002, "protocol error".into()),
        ReadError::Eof | ReadError::Io(_) => Exit::Gone,
    }
}

async fn write_loop(
    mut w: Writer,
    mut queues: OutboxReceivers,
    missed: Arc<AtomicU32>,
    ping_interval: Duration,
    kill: tokio_util::sync::CancellationToken,
) {
    let mut ticker = interval_at(Instant::now() + ping_interval, ping_interval);
    // Resolved once per connection: recording is then a few atomic adds.
    let latency = metrics::histogram!("confab_message_delivery_latency_seconds");
    // Registered once, not on every loop turn: this loop runs per frame.
    let cancelled = kill.cancelled();
    tokio::pin!(cancelled);
    'frames: loop {
        let event = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            c = queues.control.recv() => match c { Some(c) => Event::Control(c), None => break },
            d = queues.data.recv() => match d { Some(d) => Event::Data(d), None => break },
            _ = ticker.tick() => Event::Tick,
        };
        let write = write_event(&mut w, &mut queues, event, &missed, &latency);
        tokio::pin!(write);
        // A socket that takes no bytes across two ping ticks is dead to us;
        // the ticker doubles as the watchdog, so no timer is set per write.
        let mut ticks = 0;
        let step = loop {
            tokio::select! {
                biased;
                _ = &mut cancelled => break 'frames,
                r = &mut write => break r,
                _ = ticker.tick() => {
                    ticks += 1;
                    if ticks == 2 {
                        break 'frames;
                    }
                }
            }
        };
        match step {
            Ok(Step::Continue) => {}
            Ok(Step::SentClose) => {
                // Wait (briefly) for the reader to see the peer's close reply.
                let _ = timeout(Duration::from_secs(2), &mut cancelled).await;
                break;
            }
            Ok(Step::Done) | Err(_) => break,
        }
    }
    kill.cancel();
}

enum Event {
    Control(Control),
    Data(Outbound),
    Tick,
}

enum Step {
    Continue,
    SentClose,
    Done,
}

/// Most frames written before one flush when a queue has a backlog.
const BATCH: usize = 256;

async fn write_event(
    w: &mut Writer,
    queues: &mut OutboxReceivers,
    event: Event,
    missed: &AtomicU32,
    latency: &metrics::Histogram,
) -> Result<Step, WebSocketError> {
    match event {
        Event::Control(Control::Pong(p)) => w.write_frame(Frame::pong(Payload::Owned(p.into()))).await?,
        Event::Control(Control::CloseEcho(p)) => {
            w.write_frame(Frame::close_raw(Payload::Owned(p.into()))).await?;
            w.flush().await?;
            return Ok(Step::Done);
        }
        Event::Control(Control::Close(code, reason)) => {
            w.write_frame(Frame::close(code, reason.as_bytes())).await?;
            w.flush().await?;
            return Ok(Step::SentClose);
        }
        Event::Data(first) => {
            write_data(w, first, latency).await?;
            for _ in 0..BATCH {
                match queues.data.try_recv() {
                    Ok(next) => write_data(w, next, latency).await?,
                    Err(_) => break,
                }
            }
        }
        Event::Tick => {
            if missed.fetch_add(1, Ordering::Relaxed) >= 2 {
                w.write_frame(Frame::close(1008, b"ping timeout")).await?;
                w.flush().await?;
                return Ok(Step::Done);
            }
            w.write_frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"confab"))).await?;
        }
    }
    w.flush().await?;
    Ok(Step::Continue)
}

async fn write_data(w: &mut Writer, frame: Outbound, latency: &metrics::Histogram) -> Result<(), WebSocketError> {
    match frame {
        Outbound::Delivery(b, stored_at_us) => {
            w.write_frame(Frame::text(Payload::Borrowed(&b))).await?;
            if stored_at_us > 0 {
                latency.record(crate::metrics::now_us().saturating_sub(stored_at_us) as f64 / 1e6);
            }
            Ok(())
        }
        Outbound::Text(b) => w.write_frame(Frame::text(Payload::Borrowed(&b))).await,
        Outbound::Binary(b) => w.write_frame(Frame::binary(Payload::Borrowed(&b))).await,
    }
}

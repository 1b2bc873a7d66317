//! One WebSocket connection: a reader and a writer task over the split socket.
//!
//! The reader parses frames (`frames`), joins fragments under the message cap and hands
//! whole messages to a [`Handler`]; protocol violations fail the connection
//! with the RFC 6455 close code (1002 protocol, 1007 invalid UTF-8, 1009 too
//! big). Frames are written through the connection's [`Line`] by whoever has
//! one; the writer task only drains what the socket did not take at once,
//! and pings the client every interval. A client that misses two pings, or a
//! socket that takes no bytes across two ping intervals, is dropped. Either
//! side cancelling the connection's token ends both.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, WebSocket};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::time::{interval_at, timeout, Instant};

use super::assembler::{Assembler, DataMessage};
use super::deflate::{Agreed, Inflater};
use super::frames::{FrameReader, ReadError};
use crate::fanout::line::{Flushed, Line, Op};
use crate::fanout::registry::Outbox;
use crate::http::serve::Watched;
use crate::protocol::{Close, CloseCode};

/// What a connection does with whole messages.
#[async_trait]
pub trait Handler: Send + 'static {
    /// Handles one message; `Err(close)` closes the connection.
    async fn on_message(&mut self, message: DataMessage) -> Result<(), Close>;
    /// Runs once when the connection ends, however it ends.
    async fn on_close(&mut self);
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub ping_interval: Duration,
}

/// What the handshake agreed to beyond RFC 6455.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extensions {
    /// permessage-deflate, with its parameters.
    pub deflate: Option<Agreed>,
}

/// How the read side ended.
enum Exit {
    /// The peer sent a close frame (already echoed).
    PeerClosed,
    /// We fail the connection with this code.
    Fail(Close),
    /// The transport is gone or the connection was cancelled.
    Gone,
}

/// The read side of a socket, owned by the connection's reader.
pub type ReadSide = Box<dyn AsyncRead + Unpin + Send>;

/// Splits an upgraded connection into its owned halves. None if the
/// upgraded stream is not a plain TCP stream: the node's own accept loop
/// always hands over one (TLS ends at the proxy in front).
pub fn split(ws: WebSocket<TokioIo<Upgraded>>) -> Option<(ReadSide, OwnedWriteHalf)> {
    let upgraded = ws.into_inner().into_inner();
    let parts = upgraded.downcast::<TokioIo<Watched>>().ok()?;
    let (r, w) = parts.io.into_inner().into_inner().into_split();
    // Bytes read past the handshake come first. They are a slice of hyper's
    // 8 KiB read buffer: copy them out, so that buffer is freed now rather
    // than kept for the connection's whole life.
    let read: ReadSide = if parts.read_buf.is_empty() {
        Box::new(r)
    } else {
        Box::new(std::io::Cursor::new(parts.read_buf.to_vec()).chain(r))
    };
    Some((read, w))
}

/// Runs a connection to its end.
pub async fn drive<H: Handler>(
    (io, write): (ReadSide, OwnedWriteHalf),
    outbox: Arc<Outbox>,
    limits: Limits,
    extensions: Extensions,
    mut handler: H,
) {
    outbox.line.attach(write);
    let deflate = extensions.deflate;
    let mut reader = Reader { io, frames: FrameReader::new(limits.max_message_bytes, deflate.is_some()) };
    let missed = Arc::new(AtomicU32::new(0));
    let kill = outbox.kill.clone();
    let writer = tokio::spawn(write_loop(outbox.clone(), missed.clone(), limits.ping_interval));

    let mut assembler = Assembler::new(limits.max_message_bytes, deflate.map(Inflater::new));
    let exit = tokio::select! {
        exit = read_loop(&mut reader, &outbox.line, &missed, &mut assembler, &mut handler) => exit,
        _ = kill.cancelled() => Exit::Gone,
        _ = outbox.cut_off() => Exit::Gone,
    };
    if let Exit::Fail(close) = &exit {
        outbox.close(close.code, &close.reason);
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
    // After the peer's close, let the writer send the echo before the socket
    // goes away. A finished task must not be awaited twice.
    let finished = matches!(exit, Exit::PeerClosed) && timeout(Duration::from_secs(1), &mut writer).await.is_ok();
    kill.cancel();
    if !finished {
        let _ = writer.await;
    }
}

/// The read side: the socket and the frame parser reading it.
struct Reader {
    io: ReadSide,
    frames: FrameReader,
}

impl Reader {
    /// The next frame, and whether it starts a compressed message.
    async fn frame(&mut self) -> Result<(Frame<'static>, bool), ReadError> {
        self.frames.next(&mut self.io).await
    }
}

async fn read_loop<H>(
    reader: &mut Reader,
    line: &Line,
    missed: &AtomicU32,
    assembler: &mut Assembler,
    handler: &mut H,
) -> Exit
where
    H: Handler,
{
    loop {
        let (frame, compressed) = match reader.frame().await {
            Ok(read) => read,
            Err(e) => return exit_for(e),
        };
        missed.store(0, Ordering::Relaxed);
        match frame.opcode {
            OpCode::Close => return answer_close(&frame.payload, line),
            OpCode::Ping => {
                if !line.control(Op::Pong, Bytes::copy_from_slice(&frame.payload)) {
                    return Exit::Gone;
                }
                continue;
            }
            OpCode::Pong => continue,
            _ => {}
        }
        match assembler.push(frame, compressed) {
            Err(v) => return Exit::Fail(Close::new(v.close_code(), v.reason())),
            Ok(None) => {}
            Ok(Some(message)) => {
                if let Err(close) = handler.on_message(message).await {
                    return Exit::Fail(close);
                }
            }
        }
    }
}

/// Echoes a valid close frame (its code only); fails a malformed one.
fn answer_close(payload: &[u8], line: &Line) -> Exit {
    let echo = match payload.len() {
        0 => Vec::new(),
        1 => return Exit::Fail(Close::new(CloseCode::ProtocolError, "malformed close frame")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !fastwebsockets::CloseCode::from(code).is_allowed() || std::str::from_utf8(&payload[2..]).is_err() {
                return Exit::Fail(Close::new(CloseCode::ProtocolError, "malformed close frame"));
            }
            payload[..2].to_vec()
        }
    };
    line.close(echo.into(), false);
    Exit::PeerClosed
}

async fn drain_until_close(reader: &mut Reader) {
    loop {
        match reader.frame().await {
            Ok((frame, _)) if frame.opcode == OpCode::Close => return,
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
        ReadError::TooBig => Exit::Fail(Close::new(CloseCode::TooBig, "message too big")),
        ReadError::Protocol(_) => Exit::Fail(Close::new(CloseCode::ProtocolError, "protocol error")),
        ReadError::Eof | ReadError::Io(_) => Exit::Gone,
    }
}

/// The writer task: drains what the socket did not take at once, and pings.
async fn write_loop(outbox: Arc<Outbox>, missed: Arc<AtomicU32>, ping_interval: Duration) {
    let line = &outbox.line;
    let mut ticker = interval_at(Instant::now() + ping_interval, ping_interval);
    // Registered once, not on every loop turn.
    let cancelled = outbox.kill.cancelled();
    tokio::pin!(cancelled);
    'conn: loop {
        // A socket that takes no bytes across two ping ticks is dead to us;
        // the ticker doubles as the watchdog, so no timer is set per write.
        let mut ticks = 0;
        loop {
            match line.flush() {
                Ok(Flushed::All) => break,
                Ok(Flushed::Closed { await_reply }) => {
                    if await_reply {
                        // Wait (briefly) for the reader to see the peer's reply.
                        let _ = timeout(Duration::from_secs(2), &mut cancelled).await;
                    }
                    break 'conn;
                }
                Ok(Flushed::Blocked) => {}
                Err(_) => break 'conn,
            }
            tokio::select! {
                biased;
                _ = &mut cancelled => break 'conn,
                ready = line.writable() => if ready.is_err() { break 'conn },
                _ = ticker.tick() => {
                    ticks += 1;
                    if ticks == 2 {
                        break 'conn;
                    }
                }
            }
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            _ = line.pending() => {}
            _ = ticker.tick() => {
                if missed.fetch_add(1, Ordering::Relaxed) >= 2 {
                    outbox.close(CloseCode::PolicyViolation, "ping timeout");
                } else {
                    line.control(Op::Ping, Bytes::from_static(b"confab"));
                }
            }
        }
    }
    line.shut();
    outbox.kill.cancel();
}

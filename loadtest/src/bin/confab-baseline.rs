//! confab-baseline: the ceiling for the fan-out comparison. A minimal tokio +
//! fastwebsockets server that, for each published message, encodes ONE
//! WebSocket frame and writes the same bytes to every socket of the room. No
//! Redis, no storage, no authentication, one process.
//!
//! Protocol:
//!   `ws://HOST:PORT/?room=N`     subscribe to room N (and publish into it)
//!   `ws://HOST:PORT/?publish=N`  publish into room N without subscribing
//!   ← `{"type":"joined"}`        once the socket is registered
//!   → any text frame             its text is the content of a message to the room
//!   ← `{"type":"message","data":{"content":"…"}}` to every subscriber
//!   ← `{"type":"ack"}`           to the publisher, once the frame was queued
//!                                for every subscriber
//!
//!   confab-baseline --listen 127.0.0.1:9000

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{Frame, OpCode, Role};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "Fan-out ceiling: one pre-encoded frame written to every socket of a room")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Frames queued per socket; a socket whose queue is full misses frames
    /// (counted and reported at exit).
    #[arg(long, default_value_t = 4096)]
    queue: usize,
}

/// One socket's outbound queue: pre-encoded frames, shared bytes.
struct Peer {
    id: u64,
    tx: mpsc::Sender<Bytes>,
}

#[derive(Default)]
struct Hub {
    rooms: RwLock<HashMap<String, Vec<Arc<Peer>>>>,
    next_id: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

impl Hub {
    fn join(&self, room: &str, peer: Arc<Peer>) {
        self.rooms.write().unwrap().entry(room.to_string()).or_default().push(peer);
    }

    fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms.write().unwrap();
        if let Some(peers) = rooms.get_mut(room) {
            peers.retain(|p| p.id != id);
            if peers.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// Encodes the message once and queues the same bytes for every peer.
    fn publish(&self, room: &str, content: &str) {
        let json = format!(
            "{{\"type\":\"message\",\"data\":{{\"content\":{}}}}}",
            serde_json::to_string(content).expect("a string always serializes")
        );
        let frame = encode_text_frame(json.as_bytes());
        self.published.fetch_add(1, Ordering::Relaxed);
        let rooms = self.rooms.read().unwrap();
        let Some(peers) = rooms.get(room) else { return };
        let mut delivered = 0;
        for peer in peers {
            match peer.tx.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
    }
}

/// A complete unmasked server frame (FIN, opcode), header and payload.
fn encode_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut buf = Vec::with_capacity(len + 10);
    buf.push(0x80 | opcode);
    if len < 126 {
        buf.push(len as u8);
    } else if len <= u16::MAX as usize {
        buf.push(126);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.push(127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
    buf.extend_from_slice(payload);
    Bytes::from(buf)
}

fn encode_text_frame(payload: &[u8]) -> Bytes {
    encode_frame(0x1, payload)
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
}

async fn handle(hub: Arc<Hub>, queue: usize, mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>> {
    let query = req.uri().query().unwrap_or("");
    let subscribe = query_param(query, "room").map(str::to_string);
    let publish_to = query_param(query, "publish").map(str::to_string).or_else(|| subscribe.clone());
    let Some(room) = publish_to else {
        return Ok(Response::builder().status(StatusCode::BAD_REQUEST).body(Empty::new())?);
    };
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Ok(Response::builder().status(StatusCode::UPGRADE_REQUIRED).body(Empty::new())?);
    }
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Err(e) = serve_socket(hub, queue, upgrade, subscribe, room).await {
            eprintln!("socket: {e:#}");
        }
    });
    Ok(response)
}

async fn serve_socket(
    hub: Arc<Hub>,
    queue: usize,
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    subscribe: Option<String>,
    room: String,
) -> Result<()> {
    let io = upgrade.await?.into_inner();
    let (read, write) = tokio::io::split(io);
    let (mut reader, _) = fastwebsockets::after_handshake_split(read, tokio::io::sink(), Role::Server);
    reader.set_auto_close(false);
    reader.set_auto_pong(false);
    reader.set_max_message_size(1 << 20);

    // The writer: drains the queue into a buffered socket, flushing when
    // the queue is empty.
    let (tx, mut rx) = mpsc::channel::<Bytes>(queue);
    let writer = tokio::spawn(async move {
        let mut out = BufWriter::with_capacity(64 * 1024, write);
        while let Some(frame) = rx.recv().await {
            if out.write_all(&frame).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if out.write_all(&frame).await.is_err() {
                    return;
                }
            }
            if out.flush().await.is_err() {
                return;
            }
        }
        let _ = out.shutdown().await;
    });

    let peer = Arc::new(Peer { id: hub.next_id.fetch_add(1, Ordering::Relaxed), tx: tx.clone() });
    if let Some(r) = &subscribe {
        hub.join(r, peer.clone());
    }
    let _ = tx.send(encode_text_frame(br#"{"type":"joined"}"#)).await;
    let ack = encode_text_frame(br#"{"type":"ack"}"#);

    let mut partial: Option<Vec<u8>> = None;
    let result: Result<()> = async {
        loop {
            let frame: Frame = reader
                .read_frame(&mut |_: Frame| async { Ok::<(), std::io::Error>(()) })
                .await
                .context("reading a frame")?;
            match frame.opcode {
                OpCode::Text | OpCode::Continuation => {
                    let mut data = match (frame.opcode, partial.take()) {
                        (OpCode::Continuation, Some(mut buf)) => {
                            buf.extend_from_slice(&frame.payload);
                            buf
                        }
                        (OpCode::Text, None) => frame.payload.to_vec(),
                        _ => anyhow::bail!("unexpected continuation frame"),
                    };
                    if !frame.fin {
                        partial = Some(std::mem::take(&mut data));
                        continue;
                    }
                    let content = String::from_utf8(data).context("text frame is not UTF-8")?;
                    hub.publish(&room, &content);
                    if tx.send(ack.clone()).await.is_err() {
                        break;
                    }
                }
                OpCode::Ping => {
                    let _ = tx.send(encode_frame(0xA, &frame.payload)).await;
                }
                OpCode::Close => {
                    let code: &[u8] = if frame.payload.len() >= 2 { &frame.payload[..2] } else { &[] };
                    let _ = tx.send(encode_frame(0x8, code)).await;
                    break;
                }
                OpCode::Binary | OpCode::Pong => {}
            }
        }
        Ok(())
    }
    .await;

    if let Some(r) = &subscribe {
        hub.leave(r, peer.id);
    }
    drop(peer);
    drop(tx);
    let _ = writer.await;
    match result {
        Err(e) if is_disconnect(&e) => Ok(()),
        other => other,
    }
}

/// Errors that only mean the client went away.
fn is_disconnect(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<fastwebsockets::WebSocketError>(),
            Some(fastwebsockets::WebSocketError::UnexpectedEOF | fastwebsockets::WebSocketError::IoError(_))
        )
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    eprintln!("confab-baseline listening on {} (pid {})", listener.local_addr()?, std::process::id());
    let hub = Arc::new(Hub::default());

    let stats = hub.clone();
    let shutdown = async move {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!(
            "confab-baseline: published {} delivered {} dropped {}",
            stats.published.load(Ordering::Relaxed),
            stats.delivered.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed)
        );
    };
    tokio::pin!(shutdown);

    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        let queue = args.queue;
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(hub.clone(), queue, req));
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).with_upgrades().await
            {
                if !e.is_incomplete_message() {
                    eprintln!("http: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_right_length_encoding() {
        assert_eq!(&encode_text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let f = encode_text_frame(&[b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let f = encode_text_frame(&vec![b'x'; 70_000]);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_010);
    }

    #[test]
    fn query_params_are_found() {
        assert_eq!(query_param("room=3", "room"), Some("3"));
        assert_eq!(query_param("a=1&publish=7", "publish"), Some("7"));
        assert_eq!(query_param("a=1", "room"), None);
    }
}

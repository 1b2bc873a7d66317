//! The HTTP listener: accepts connections and serves HTTP/1.1 with upgrades
//! on each, until stopped.
//!
//! Our own loop rather than `axum::serve`: it sets TCP_NODELAY (small
//! WebSocket frames must not wait for Nagle's algorithm), it serves plain
//! HTTP/1.1 so that an upgraded stream stays a bare TCP stream the WebSocket edge (`ws`)
//! can split into owned halves, and it bounds how long a connection may
//! hold the node without asking anything:
//! - `idle_timeout`: a connection waiting for its first or next request
//!   (keep-alive) is closed after this long. Longer than the front proxy's
//!   upstream keep-alive, so that the proxy closes first.
//! - `header_timeout`: once the first bytes of a request arrive, its whole
//!   head must arrive within this long (slowloris: a client that trickles
//!   its headers is cut off, whatever its idle allowance).
//!
//! An upgraded connection belongs to `ws`, which pings it; neither
//! timeout applies to it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long connections may wait (see the module doc), and how much the
/// kernel may hold unsent for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header: Duration,
    pub idle: Duration,
    /// The socket's send buffer (`SO_SNDBUF`), or the kernel's own sizing.
    /// A fixed buffer bounds the kernel memory a connection that does not
    /// read can hold, and makes a slow consumer's queue fill sooner.
    pub send_buffer: Option<usize>,
}

type Service = tower_http::normalize_path::NormalizePath<axum::Router>;

/// What the connection's stream and service tell its watchdog.
#[derive(Default)]
struct Watch {
    /// When the first bytes of a request head arrived, while one is arriving.
    head_started: Mutex<Option<Instant>>,
    /// A request is being served (its head is complete).
    serving: AtomicBool,
    started: Notify,
}

impl Watch {
    fn bytes_arrived(&self) {
        if self.serving.load(Ordering::Acquire) {
            return;
        }
        let mut started = self.head_started.lock().unwrap_or_else(|e| e.into_inner());
        if started.is_none() {
            *started = Some(Instant::now());
            self.started.notify_one();
        }
    }

    fn request_started(&self) {
        self.serving.store(true, Ordering::Release);
        *self.head_started.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn request_finished(&self) {
        self.serving.store(false, Ordering::Release);
    }

    /// Resolves when a request head has been arriving for longer than `limit`.
    async fn head_overdue(&self, limit: Duration) {
        loop {
            let started = *self.head_started.lock().unwrap_or_else(|e| e.into_inner());
            match started {
                Some(at) => {
                    tokio::time::sleep_until(at + limit).await;
                    let now = *self.head_started.lock().unwrap_or_else(|e| e.into_inner());
                    if now == Some(at) {
                        return;
                    }
                }
                None => self.started.notified().await,
            }
        }
    }
}

/// A TCP stream that tells its watch when bytes arrive.
pub struct Watched {
    tcp: TcpStream,
    watch: Arc<Watch>,
}

impl Watched {
    /// The TCP stream, for `ws` to split once the connection is upgraded.
    pub fn into_inner(self) -> TcpStream {
        self.tcp
    }
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Accepts connections and serves each until `stop`; then each connection
/// finishes its request in flight and closes (upgraded sockets are
/// `ws::Sockets`' to close), and the loop returns once all have.
pub async fn accept_loop(listener: TcpListener, service: Service, limits: Limits, stop: CancellationToken) {
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(tcp, peer, service.clone(), limits, stop.clone()));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// The address a connection came from (the proxy's, behind one), in every
/// request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

async fn serve_connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    service: Service,
    limits: Limits,
    stop: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    if let Some(bytes) = limits.send_buffer {
        if let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(bytes) {
            tracing::warn!(error = %e, bytes, "cannot set the socket's send buffer");
        }
    }
    let watch = Arc::new(Watch::default());
    let io = Watched { tcp, watch: watch.clone() };
    let watched = watch.clone();
    let service = tower::service_fn(move |mut req: axum::extract::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let watch = watched.clone();
        let mut service = service.clone();
        watch.request_started();
        async move {
            let response = tower::Service::call(&mut service, req).await;
            watch.request_finished();
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // hyper's header timer runs from when the connection is ready for a
        // request: that is the idle allowance. The head's own is below.
        .header_read_timeout(limits.idle)
        .serve_connection(TokioIo::new(io), hyper_util::service::TowerToHyperService::new(service))
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = watch.head_overdue(limits.header) => {
            tracing::debug!("request head not complete in time; connection closed");
            return;
        }
        _ = stop.cancelled() => {
            // Finish the request in flight, then close.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(Duration::from_secs(5), conn).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

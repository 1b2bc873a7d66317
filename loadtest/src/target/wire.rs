//! Bytes on the wire: `Counted` wraps a socket and adds what each read call
//! returns to a process-wide counter, so a scenario can report how many bytes
//! its subscribers received (framing, headers and compression included,
//! TCP/IP overhead not) whatever protocol the target speaks.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read, since the process started, by the sockets of subscribers
/// (`Target::subscriber` and `Target::idle` connections, the WebSocket
/// handshake included).
static SUBSCRIBER_BYTES: AtomicU64 = AtomicU64::new(0);

/// The running total of bytes read by subscriber sockets; scenarios take
/// differences of it.
pub fn subscriber_bytes() -> u64 {
    SUBSCRIBER_BYTES.load(Ordering::Relaxed)
}

/// Whose reads a socket counts toward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Counted in `subscriber_bytes`.
    Subscriber,
    /// Publishers, set-up connections: not counted.
    Other,
}

impl Role {
    fn counter(self) -> Option<&'static AtomicU64> {
        match self {
            Role::Subscriber => Some(&SUBSCRIBER_BYTES),
            Role::Other => None,
        }
    }
}

/// A stream whose reads are added to a counter: one relaxed `fetch_add` per
/// read call that returned data. Writes pass through.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counter: Option<&'static AtomicU64>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, role: Role) -> Self {
        Counted { inner, counter: role.counter() }
    }

    /// Counts into `counter` (tests use their own).
    #[cfg(test)]
    fn with_counter(inner: S, counter: &'static AtomicU64) -> Self {
        Counted { inner, counter: Some(counter) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(counter)) = (&poll, this.counter) {
            let n = buf.filled().len() - before;
            if n > 0 {
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_are_counted_and_writes_are_not() {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let (a, mut b) = tokio::io::duplex(64);
        let mut counted = Counted::with_counter(a, &COUNT);
        b.write_all(b"hello world").await.unwrap();
        let mut got = [0u8; 11];
        counted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        counted.write_all(b"not counted").await.unwrap();
        let mut echo = [0u8; 11];
        b.read_exact(&mut echo).await.unwrap();
        assert_eq!(&echo, b"not counted");
        assert_eq!(COUNT.load(Ordering::Relaxed), 11);
    }

    #[tokio::test]
    async fn other_sockets_count_nothing() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut counted = Counted::new(a, Role::Other);
        assert!(counted.counter.is_none());
        b.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        counted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abc");
    }
}

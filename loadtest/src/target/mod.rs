//! Protocol adapters: one per system under test. A scenario speaks only to
//! these traits, so Confab, its peers and the bare baseline are driven by the
//! same code with the same probes.

pub mod baseline;
pub mod centrifugo;
pub mod confab;
pub mod rawws;
pub mod socketio;
pub mod wire;
pub mod ws;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio::net::{TcpSocket, TcpStream};

/// A system under test, after `prepare`.
#[async_trait]
pub trait Target: Send + Sync {
    /// A short name for reports ("confab", "centrifugo", …).
    fn name(&self) -> &str;
    /// Creates what the run needs (users, rooms) for `rooms` rooms.
    async fn prepare(&mut self, rooms: usize) -> Result<()>;
    /// Opens subscriber number `idx`, subscribed to `room`, and returns once
    /// the subscription is confirmed (later publishes must reach it).
    async fn subscriber(&self, idx: usize, room: usize) -> Result<Box<dyn Subscriber>>;
    /// Opens publisher number `idx` for `room`.
    async fn publisher(&self, idx: usize, room: usize) -> Result<Box<dyn Publisher>>;
    /// Opens an authenticated connection that subscribes to nothing (for
    /// the connections scenario); by default a subscriber of room 0.
    async fn idle(&self, idx: usize) -> Result<Box<dyn Subscriber>> {
        self.subscriber(idx, 0).await
    }
}

#[async_trait]
pub trait Subscriber: Send {
    /// The content of the next chat message delivered to this subscriber;
    /// `None` when the connection ended.
    async fn next(&mut self) -> Result<Option<String>>;
}

#[async_trait]
pub trait Publisher: Send {
    /// Publishes one message into the publisher's room. Returns once it is
    /// written; acceptance is reported later through `accepted`.
    async fn publish(&mut self, content: &str) -> Result<()>;
    /// Messages the server acknowledged so far (for systems without acks:
    /// messages written).
    fn accepted(&self) -> u64;
    /// Waits (up to a grace period) for acknowledgements still in flight.
    async fn settle(&mut self) {}
}

/// Opens a TCP connection to a loopback target from source address
/// 127.0.0.(1 + spread % 250), so that one generator can hold more sockets
/// than one source address has ephemeral ports. Non-loopback targets use
/// the default source address.
pub async fn connect_spread(target: SocketAddr, spread: usize) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if target.ip().is_loopback() {
        let local = std::net::Ipv4Addr::new(127, 0, 0, 1 + (spread % 250) as u8);
        socket.bind(SocketAddr::new(local.into(), 0)).context("binding a loopback source address")?;
    }
    socket.set_nodelay(true)?;
    Ok(socket.connect(target).await?)
}

/// host:port of a ws:// or http:// URL.
pub fn socket_addr(url: &str) -> Result<SocketAddr> {
    let rest = url.split("://").nth(1).context("URL without scheme")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().with_context(|| format!("`{hostport}` is not ip:port"))
}

/// Adapter-specific settings from `--opt key=value`.
pub type Options = std::collections::HashMap<String, String>;

/// Builds the adapter for `--target NAME`.
pub fn build(name: &str, urls: Vec<String>, secret: Option<String>, opts: &Options) -> Result<Box<dyn Target>> {
    match name {
        "confab" => Ok(Box::new(confab::Confab::new(urls, secret, opts)?)),
        "centrifugo" => Ok(Box::new(centrifugo::Centrifugo::new(urls, secret, opts)?)),
        "socketio" => Ok(Box::new(socketio::SocketIo::new(urls))),
        "baseline" => Ok(Box::new(baseline::Baseline::new(urls))),
        other => anyhow::bail!("unknown target `{other}` (known: confab, centrifugo, socketio, baseline)"),
    }
}

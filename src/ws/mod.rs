//! The WebSocket edge of a node: upgraded connections, read and written
//! (`socket`, `frames`, `assembler`), and what a chat connection does with
//! each client frame (`session`). `echo` is the RFC 6455 conformance
//! endpoint, on the same socket code.
//!
//! - `socket`: one connection's reader and writer, limits, pings, close codes.
//! - `frames`: reads client frames with a buffer only while bytes arrive.
//! - `assembler`: joins fragmented messages under a size cap, checking UTF-8.
//! - `session`: applies each client [`Command`](crate::protocol::Command).

pub mod assembler;
pub mod echo;
pub mod frames;
pub mod session;
pub mod socket;

use std::sync::Arc;

use crate::bus::Topic;
use crate::fanout::Outbox;
use fastwebsockets::WebSocket;

use crate::auth::Caller;
use crate::node::App;

fn limits(app: &App) -> socket::Limits {
    socket::Limits { max_message_bytes: app.config.max_message_bytes, ping_interval: app.config.ping_interval }
}

/// An upgraded WebSocket, as the HTTP layer hands it over.
pub type Upgraded = WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// Serves one authenticated chat connection until it ends.
pub async fn run_chat(app: Arc<App>, caller: Caller, ws: Upgraded) {
    let Some(halves) = split(ws) else { return };
    let fanout = app.fanout.clone();
    let outbox = Outbox::new(Some(caller.user_id), app.config.outbound_queue, fanout.shutdown.child_token());
    fanout.registry.register(outbox.clone());
    // Receipts and presence reach a user through their own topic. Counting
    // the connection for presence goes alongside: with Redis down, each
    // waits out its own timeout, not one after the other.
    let (subscribed, ()) = tokio::join!(
        fanout.subscriptions.ensure(Topic::User(caller.user_id)),
        crate::presence::connected(&app, caller.user_id, outbox.id),
    );
    match subscribed {
        Ok(()) => outbox.mark_user_topic_subscribed(),
        Err(e) => tracing::warn!(error = %e, "user topic not subscribed; receipts reach this connection late"),
    }
    let session = session::ChatSession::new(app.clone(), caller, outbox.clone());
    socket::drive(halves, outbox, limits(&app), session).await;
}

/// Serves one conformance-echo connection until it ends.
pub async fn run_echo(app: Arc<App>, ws: Upgraded) {
    let Some(halves) = split(ws) else { return };
    let outbox = Outbox::new(None, app.config.outbound_queue, app.fanout.shutdown.child_token());
    let echo = echo::Echo { outbox: outbox.clone() };
    socket::drive(halves, outbox, limits(&app), echo).await;
}

/// The socket's halves; None (logged) if the upgrade is not a TCP stream.
fn split(ws: Upgraded) -> Option<(socket::ReadSide, tokio::net::tcp::OwnedWriteHalf)> {
    let halves = socket::split(ws);
    if halves.is_none() {
        tracing::error!("upgraded connection is not a TCP stream; dropped");
    }
    halves
}

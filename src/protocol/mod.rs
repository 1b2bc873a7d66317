//! The client protocol as types: what a client may send ([`Request`], a
//! [`Command`] read once), what the server sends ([`ServerEvent`], encoded
//! once, and the replies), and why a connection is closed ([`CloseCode`]).
//!
//! Nothing here does anything: the WebSocket session applies commands, the
//! domain describes events. This is the one place either becomes bytes or
//! comes from them, and it depends on nothing but the stored models.
//! `views` are the JSON shapes of stored things that REST answers share.

pub mod close;
pub mod command;
pub mod frames;
pub mod views;

pub use close::{Close, CloseCode};
pub use command::{Command, ReplayFrom, Request, Unreadable};
pub use frames::{ack, error, pong, token_expiring, ServerEvent};

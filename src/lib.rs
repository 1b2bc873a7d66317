//! Confab: a horizontally scaled real-time chat backend.
//!
//! The module tree mirrors the architecture: HTTP and WebSocket edges (`http`,
//! `gateway`) call the domain services (`users`, `rooms`, `messages`), which
//! talk to the backends only through the `Store` (MongoDB) and `Bus`
//! (Redis Pub/Sub) traits. `node` wires one running node together.

pub mod auth;
pub mod backend;
pub mod bus;
pub mod cache;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod error;
pub mod fanout;
pub mod health;
pub mod http;
pub mod jobs;
pub mod keyspace;
pub mod messages;
pub mod metrics;
pub mod node;
pub mod notifications;
pub mod presence;
pub mod protocol;
pub mod ratelimit;
pub mod receipts;
pub mod rooms;
pub mod search;
pub mod seq;
pub mod store;
pub mod typing;
pub mod users;
pub mod validate;
pub mod ws;

pub use error::{Error, Result};

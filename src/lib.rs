//! Confab: a horizontally scaled real-time chat backend.
//!
//! The module tree mirrors the architecture (docs/architecture.md): the
//! edges (`http`, `ws`) call the domain services (`users`, `rooms`,
//! `messages`, …), which use the fan-out (`fanout`), the client protocol
//! (`protocol`) and the backends (`store` for MongoDB, `bus` for Redis
//! Pub/Sub, `cache`, `seq`, `ratelimit`), all over the core (`error`,
//! `config`, `keyspace`, `backend`). `node` wires one running node together;
//! `tests/layers.rs` keeps every import pointing down.

pub mod audit;
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
pub mod sessions;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod typing;
pub mod users;
pub mod validate;
pub mod ws;

pub use error::{Error, Result};

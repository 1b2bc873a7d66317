//! Connections to the backends, made in one place for nodes, workers and
//! operator commands alike.
//!
//! - `mongo`: where the store is.
//! - `redis`: every Redis client (fred's, and the job queue's), from one
//!   [`redis::RedisConfig`]: the URL, and the CA a `rediss://` server's
//!   certificate is checked against.

pub mod mongo;
pub mod redis;

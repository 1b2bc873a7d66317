//! Typing indicators: `user_typing` from a connection in a room is relayed
//! to the room's other subscribers on every node, and never stored.
//!
//! Clients send it on every keystroke; the relay passes at most one per user
//! per room every [`WINDOW`]. The throttle is cluster-wide (a Redis key set
//! only if absent, expiring after the window), so a user typing from two
//! devices on two nodes is still relayed once per window. Without Redis each
//! node throttles on its own: the relay is then at most once per window per
//! node, and still works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::oid::ObjectId;
use dashmap::DashMap;
use fred::prelude::*;
use fred::types::{Expiration, SetOptions};

use crate::bus::{Bus, Event, Topic};
use crate::keyspace::Keyspace;
use crate::protocol::ServerEvent;

/// At most one relay per user per room within this window.
pub const WINDOW: Duration = Duration::from_secs(2);

/// Local entries kept before expired ones are pruned.
const LOCAL_PRUNE_AT: usize = 10_000;

/// Grants one pass per key per window, cluster-wide.
#[async_trait]
pub trait Throttle: Send + Sync + 'static {
    /// True if no pass was granted for `key` within the last `window`.
    async fn pass(&self, key: &str, window: Duration) -> Result<bool, String>;
}

/// [`Throttle`] on Redis: `SET key 1 NX PX window`.
pub struct RedisThrottle {
    client: Client,
}

impl RedisThrottle {
    pub fn new(client: Client) -> Self {
        RedisThrottle { client }
    }
}

#[async_trait]
impl Throttle for RedisThrottle {
    async fn pass(&self, key: &str, window: Duration) -> Result<bool, String> {
        let px = Expiration::PX(window.as_millis() as i64);
        let set: Option<String> =
            self.client.set(key, 1, Some(px), Some(SetOptions::NX), false).await.map_err(|e| e.to_string())?;
        Ok(set.is_some())
    }
}

/// The node's typing relay.
pub struct Typing {
    gate: Gate,
    bus: Arc<Bus>,
}

/// Whether a typing notice may go out: one per user and room per window,
/// cluster-wide through the throttle, or per node while it does not answer.
struct Gate {
    throttle: Arc<dyn Throttle>,
    keys: Keyspace,
    /// The fallback throttle while Redis does not answer: (room, user) →
    /// when a relay last passed on this node.
    local: DashMap<(ObjectId, ObjectId), Instant>,
}

impl Typing {
    pub fn new(throttle: Arc<dyn Throttle>, keys: Keyspace, bus: Arc<Bus>) -> Self {
        Typing { gate: Gate { throttle, keys, local: DashMap::new() }, bus }
    }

    /// Relays that `user` is typing in `room` (which the caller's connection has
    /// joined) unless they did within the window; true if relayed.
    pub async fn relay(&self, user: ObjectId, room: ObjectId) -> bool {
        if !self.gate.pass(room, user).await {
            metrics::counter!("confab_typing_throttled_total").increment(1);
            return false;
        }
        let frame = ServerEvent::Typing { room, user }.encode();
        if let Err(e) = self.bus.publish(Topic::Room(room), Event::Ephemeral { skip: Some(user), frame: &frame }).await
        {
            tracing::debug!(error = %e, "typing not relayed");
            return false;
        }
        metrics::counter!("confab_typing_relayed_total").increment(1);
        true
    }
}

impl Gate {
    async fn pass(&self, room: ObjectId, user: ObjectId) -> bool {
        let key = self.keys.typing(room, user);
        match self.throttle.pass(&key, WINDOW).await {
            Ok(pass) => pass,
            Err(e) => {
                metrics::counter!("confab_typing_throttle_fallbacks_total").increment(1);
                tracing::debug!(error = %e, "typing throttle falls back to this node");
                self.pass_locally(room, user, Instant::now())
            }
        }
    }

    fn pass_locally(&self, room: ObjectId, user: ObjectId, now: Instant) -> bool {
        if self.local.len() >= LOCAL_PRUNE_AT {
            self.local.retain(|_, at| now.duration_since(*at) < WINDOW);
        }
        match self.local.entry((room, user)) {
            dashmap::Entry::Occupied(mut last) if now.duration_since(*last.get()) >= WINDOW => {
                last.insert(now);
                true
            }
            dashmap::Entry::Occupied(_) => false,
            dashmap::Entry::Vacant(slot) => {
                slot.insert(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Down;

    #[async_trait]
    impl Throttle for Down {
        async fn pass(&self, _: &str, _: Duration) -> Result<bool, String> {
            Err("redis down".into())
        }
    }

    #[tokio::test]
    async fn without_redis_each_node_throttles_per_user_and_room() {
        let typing = Gate { throttle: Arc::new(Down), keys: Keyspace::default(), local: DashMap::new() };
        let (room, other, user) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        assert!(typing.pass(room, user).await);
        assert!(!typing.pass(room, user).await, "within the window");
        assert!(typing.pass(other, user).await, "another room has its own window");
        let later = Instant::now() + WINDOW;
        assert!(typing.pass_locally(room, user, later));
    }
}

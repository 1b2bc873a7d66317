//! Keeps this node subscribed to a room's bus topic exactly while the room has
//! local subscribers.
//!
//! One task owns the set of subscribed rooms and reconciles it with the
//! registry on request, so concurrent joins and leaves of the same room can
//! never leave it subscribed to nothing or to a room nobody here watches. The
//! fan-out path never waits on it; only a joining client waits for its own
//! subscription, so that its ack means "you will receive what follows".

use std::collections::HashSet;
use std::sync::Arc;

use bson::oid::ObjectId;
use tokio::sync::{mpsc, oneshot};

use super::Registry;
use crate::bus::{Bus, BusError};

type Reply = oneshot::Sender<Result<(), BusError>>;

#[derive(Clone)]
pub struct Subscriptions {
    tx: mpsc::UnboundedSender<(ObjectId, Option<Reply>)>,
}

impl Subscriptions {
    pub fn spawn(bus: Arc<dyn Bus>, registry: Arc<Registry>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(reconcile_loop(rx, bus, registry));
        Subscriptions { tx }
    }

    /// Waits until the node is subscribed to `room` (call after registering
    /// the local subscriber).
    pub async fn ensure(&self, room: ObjectId) -> Result<(), BusError> {
        let (reply, done) = oneshot::channel();
        self.tx.send((room, Some(reply))).map_err(|_| BusError("subscription keeper stopped".into()))?;
        done.await.map_err(|_| BusError("subscription keeper stopped".into()))?
    }

    /// Lets the keeper drop the subscription if nobody local is left.
    pub fn release(&self, room: ObjectId) {
        let _ = self.tx.send((room, None));
    }
}

async fn reconcile_loop(
    mut rx: mpsc::UnboundedReceiver<(ObjectId, Option<Reply>)>,
    bus: Arc<dyn Bus>,
    registry: Arc<Registry>,
) {
    let mut subscribed: HashSet<ObjectId> = HashSet::new();
    while let Some((room, reply)) = rx.recv().await {
        let wanted = registry.has_local(room);
        let result = match (wanted, subscribed.contains(&room)) {
            (true, false) => bus.subscribe(room).await.map(|_| {
                subscribed.insert(room);
            }),
            (false, true) => {
                subscribed.remove(&room);
                bus.unsubscribe(room).await
            }
            _ => Ok(()),
        };
        if let Err(e) = &result {
            tracing::warn!(room = %room, error = %e, "bus subscription change failed");
        }
        metrics::gauge!("confab_bus_subscriptions").set(subscribed.len() as f64);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

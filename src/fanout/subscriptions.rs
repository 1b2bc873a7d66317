//! Keeps this node subscribed to a bus topic (a room, a user) exactly while
//! it has local listeners.
//!
//! One task owns the set of subscribed rooms and reconciles it with the
//! registry on request, so concurrent joins and leaves of the same room can
//! never leave it subscribed to nothing or to a topic nobody here watches. The
//! fan-out path never waits on it; only a joining client waits for its own
//! subscription, so that its ack means "you will receive what follows".
//! A new room subscription also starts the room's order at its seq counter
//! (`sequencer`), before the joining client is answered.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Registry, Sequencer};
use crate::bus::{Bus, BusError, Topic};
use crate::seq::Seqs;

type Reply = oneshot::Sender<Result<(), BusError>>;

#[derive(Clone)]
pub struct Subscriptions {
    tx: mpsc::UnboundedSender<(Topic, Option<Reply>)>,
    stop: CancellationToken,
    task: TaskTracker,
}

/// The keeper's side, until the bus it subscribes on exists: the bus
/// delivers into the fan-out, which releases subscriptions, so the handle
/// comes first and the keeper starts second (requests made in between
/// wait in its queue).
pub struct Keeper {
    rx: mpsc::UnboundedReceiver<(Topic, Option<Reply>)>,
    subscriptions: Subscriptions,
    registry: Arc<Registry>,
    sequencer: Arc<Sequencer>,
}

impl Subscriptions {
    /// A handle, and the keeper to [`start`](Keeper::start) once the bus exists.
    pub fn new(registry: Arc<Registry>, sequencer: Arc<Sequencer>) -> (Subscriptions, Keeper) {
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriptions = Subscriptions { tx, stop: CancellationToken::new(), task: TaskTracker::new() };
        let keeper = Keeper { rx, subscriptions: subscriptions.clone(), registry, sequencer };
        (subscriptions, keeper)
    }

    /// Ends the keeper (subscriptions stay as they are: the bus goes with
    /// the node) and waits for it.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.task.close();
        self.task.wait().await;
    }

    /// Waits until the node is subscribed to `topic` (call after registering
    /// the local listener).
    pub async fn ensure(&self, topic: Topic) -> Result<(), BusError> {
        let (reply, done) = oneshot::channel();
        self.tx.send((topic, Some(reply))).map_err(|_| BusError::Stopped)?;
        done.await.map_err(|_| BusError::Stopped)?
    }

    /// Lets the keeper drop the subscription if nobody local is left.
    pub fn release(&self, topic: Topic) {
        let _ = self.tx.send((topic, None));
    }
}

impl Keeper {
    /// Starts the keeper on `bus`; it runs until [`Subscriptions::stop`].
    pub fn start(self, bus: Arc<Bus>, seqs: Seqs) {
        let Keeper { rx, subscriptions, registry, sequencer } = self;
        let stop = subscriptions.stop.clone();
        subscriptions.task.spawn(reconcile_loop(rx, stop, bus, registry, sequencer, seqs));
        subscriptions.task.close();
    }
}

async fn reconcile_loop(
    mut rx: mpsc::UnboundedReceiver<(Topic, Option<Reply>)>,
    stop: CancellationToken,
    bus: Arc<Bus>,
    registry: Arc<Registry>,
    sequencer: Arc<Sequencer>,
    seqs: Seqs,
) {
    let mut subscribed: HashSet<Topic> = HashSet::new();
    loop {
        let (topic, reply) = tokio::select! {
            _ = stop.cancelled() => return,
            next = rx.recv() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let wanted = registry.has_local(topic);
        let was = subscribed.contains(&topic);
        let result = match (wanted, was) {
            (true, false) => {
                let result = bus.subscribe(topic).await;
                if result.is_ok() {
                    subscribed.insert(topic);
                    if let Topic::Room(room) = topic {
                        // Read once subscribed: every seq above it reaches us.
                        if let Some(seq) = seqs.current(room).await {
                            sequencer.room(room).lock().begin_at(seq);
                        }
                    }
                }
                result
            }
            (false, true) => {
                subscribed.remove(&topic);
                if let Topic::Room(room) = topic {
                    // Listening again later starts from a fresh baseline.
                    sequencer.forget(room);
                }
                bus.unsubscribe(topic).await
            }
            _ => Ok(()),
        };
        match (&result, topic) {
            (Err(e), _) => tracing::warn!(topic = ?topic, error = %e, "bus subscription change failed"),
            // The nodes holding the user changed: dispatchers must not go
            // on with what they knew of them (`notifications::reach`).
            (Ok(()), Topic::User(user)) if wanted != was => registry.watching.holders_changed(user),
            _ => {}
        }
        metrics::gauge!("confab_bus_subscriptions").set(subscribed.len() as f64);
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }
}

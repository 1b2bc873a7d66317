//! Telling the people who care that a user's presence changed.
//!
//! A `presence` frame goes to the user's contacts (their user topics) and to
//! the subscribers of every room the user is a member of. Finding that
//! audience reads the store, so changes are announced in batches: one read
//! of memberships and one of contacts serve every user in a batch. When
//! changes trickle in, a batch is one change and goes out at once; when a
//! crowd connects together (a node restart behind the load balancer), the
//! queue gathers them, the store sees a few reads instead of thousands, and
//! message traffic is not starved by presence. Between two batches the
//! announcer pauses as long as the last one took (up to a second), so even
//! a long storm leaves the store at least half of its time.
//!
//! Before anything is published, each change passes the cluster-wide gate
//! (see [`super::Gate`]): a status that is the one last announced is not
//! announced again, and a user's changes reach others at most once per
//! [`super::ANNOUNCE_EVERY`]; a change the gate holds back is looked at
//! again when its window ends, with the status the user has by then. Each
//! announcement travels every topic under one id, and a receiving node
//! writes it once to each connection (see `Registry::presence`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use futures::StreamExt;

use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

use super::{Gate, Presence, PresenceView, State, Status, ANNOUNCE_EVERY};
use crate::bus::{Event, Topic};
use crate::clock::now_ms;
use crate::protocol::ServerEvent;

/// Most users one batch announces (bounds each store read's `$in`).
pub const MAX_BATCH: usize = 256;

/// Longest pause between two batches under a storm.
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// Publishes in flight at once for one batch.
const PUBLISH_CONCURRENCY: usize = 32;

/// Changes waiting to be announced, drained by one task at a time.
#[derive(Default)]
pub struct Announcer {
    queue: Mutex<Queue>,
    /// Users whose change the gate held back, and when to look again.
    later: Mutex<Later>,
}

#[derive(Default)]
struct Later {
    /// The trailing task's queue; none until the node started it.
    tx: Option<mpsc::UnboundedSender<(ObjectId, Duration)>>,
    /// Users already waiting there.
    waiting: HashSet<ObjectId>,
}

#[derive(Default)]
struct Queue {
    changes: Vec<(ObjectId, State)>,
    /// A task is draining the queue.
    draining: bool,
}

impl Announcer {
    /// Looks at `user`'s presence again after `wait` (once, however many
    /// held-back changes ask).
    fn again_after(&self, user: ObjectId, wait: Duration) {
        let mut later = self.later.lock().unwrap_or_else(|e| e.into_inner());
        if later.waiting.insert(user) {
            let sent = later.tx.as_ref().is_some_and(|tx| tx.send((user, wait)).is_ok());
            if !sent {
                later.waiting.remove(&user);
            }
        }
    }
}

impl Presence {
    /// Runs the announcer's looks again until the node stops.
    pub(super) async fn run_later(self: Arc<Self>) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.announcer.later.lock().unwrap_or_else(|e| e.into_inner()).tx = Some(tx);
        let mut due: DelayQueue<ObjectId> = DelayQueue::new();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                queued = rx.recv() => match queued {
                    Some((user, wait)) => { due.insert(user, wait); }
                    None => return,
                },
                Some(expired) = due.next(), if !due.is_empty() => {
                    let user = expired.into_inner();
                    self.announcer.later.lock().unwrap_or_else(|e| e.into_inner()).waiting.remove(&user);
                    match self.tracker.states(&[user]).await {
                        Ok(states) => self.announce(vec![user].into_iter().zip(states).collect()).await,
                        Err(e) => tracing::warn!(error = %e, "a held-back presence change was not announced"),
                    }
                }
            }
        }
    }

    /// Queues a change; starts a task to drain the queue if none runs.
    pub(super) fn push(self: &Arc<Self>, user: ObjectId, state: State) {
        let mut q = self.announcer.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.changes.push((user, state));
        if !q.draining {
            q.draining = true;
            let presence = self.clone();
            self.tasks.spawn(async move { presence.drain().await });
        }
    }

    async fn drain(&self) {
        let mut pause = Duration::ZERO;
        loop {
            // Under a storm, leave the store as much time for other work as
            // the last batch took (at most a second): batches grow instead
            // of the store's load. A lone change waits for nothing.
            tokio::time::sleep(pause).await;
            let batch = {
                let mut q = self.announcer.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.changes.is_empty() {
                    q.draining = false;
                    return;
                }
                let n = q.changes.len().min(MAX_BATCH);
                q.changes.drain(..n).collect::<Vec<_>>()
            };
            let started = Instant::now();
            self.announce(batch).await;
            pause = started.elapsed().min(MAX_PAUSE);
        }
    }

    /// Announces each change in `changes` that the gate lets through (in
    /// order; a user's later change supersedes an earlier one in the same batch).
    pub(super) async fn announce(&self, changes: Vec<(ObjectId, State)>) {
        let mut latest: HashMap<ObjectId, State> = HashMap::with_capacity(changes.len());
        for (user, state) in changes {
            latest.insert(user, state);
        }
        for chunk in latest.into_iter().collect::<Vec<_>>().chunks(MAX_BATCH) {
            let due = self.gate(chunk).await;
            self.announce_batch(&due).await;
        }
    }

    /// The changes the gate lets through now; those it holds back are looked
    /// at again later. Without Redis, every change goes through.
    async fn gate(&self, changes: &[(ObjectId, State)]) -> Vec<(ObjectId, State)> {
        let asked: Vec<(ObjectId, Status)> = changes.iter().map(|(u, s)| (*u, s.status())).collect();
        let verdicts = match self.tracker.gate(&asked, now_ms(), ANNOUNCE_EVERY).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "presence gate not asked; announcing");
                return changes.to_vec();
            }
        };
        let mut due = Vec::with_capacity(changes.len());
        for (change, verdict) in changes.iter().zip(verdicts) {
            match verdict {
                Gate::Now => due.push(*change),
                Gate::After(wait) => self.announcer.again_after(change.0, wait),
                Gate::Unchanged => {}
            }
        }
        due
    }

    async fn announce_batch(&self, changes: &[(ObjectId, State)]) {
        let users: Vec<ObjectId> = changes.iter().map(|(u, _)| *u).collect();
        let (owners, rooms) = tokio::join!(self.store.contact_owners_of(&users), self.store.rooms_of(&users));
        let owners = owners.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "presence not announced to contacts");
            Vec::new()
        });
        let rooms = rooms.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "presence not announced to rooms");
            Vec::new()
        });
        let mut audience: HashMap<ObjectId, Vec<Topic>> = HashMap::with_capacity(changes.len());
        for (user, owner) in owners {
            if owner != user {
                audience.entry(user).or_default().push(Topic::User(owner));
            }
        }
        for (user, room) in rooms {
            audience.entry(user).or_default().push(Topic::Room(room));
        }
        let publishes = changes.iter().flat_map(|(user, state)| {
            metrics::counter!("confab_presence_changes_total", "status" => state.status().as_str()).increment(1);
            let frame = ServerEvent::Presence { user: *user, view: &PresenceView::new(*user, state) }.encode();
            // One id for the change under every topic: each connection gets it once.
            let change = ObjectId::new();
            let topics = audience.remove(user).unwrap_or_default();
            topics.into_iter().map(move |topic| (change, *user, topic, frame.clone()))
        });
        futures::stream::iter(publishes)
            .for_each_concurrent(PUBLISH_CONCURRENCY, |(change, user, topic, frame)| async move {
                if let Err(e) = self.bus.publish(topic, Event::Presence { change, user, frame: &frame }).await {
                    metrics::counter!("confab_bus_publish_failures_total").increment(1);
                    tracing::debug!(error = %e, "presence frame not published");
                }
            })
            .await;
    }
}

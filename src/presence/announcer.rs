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

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use futures::StreamExt;

use super::{PresenceView, State};
use crate::bus::{Event, Topic};
use crate::gateway::protocol;
use crate::node::App;

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
}

#[derive(Default)]
struct Queue {
    changes: Vec<(ObjectId, State)>,
    /// A task is draining the queue.
    draining: bool,
}

impl Announcer {
    /// Queues a change; starts a task to drain the queue if none runs.
    pub fn push(&self, app: &std::sync::Arc<App>, user: ObjectId, state: State) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.changes.push((user, state));
        if !q.draining {
            q.draining = true;
            let app = app.clone();
            tokio::spawn(async move { app.presence.announcer.drain(&app).await });
        }
    }

    async fn drain(&self, app: &App) {
        let mut pause = Duration::ZERO;
        loop {
            // Under a storm, leave the store as much time for other work as
            // the last batch took (at most a second): batches grow instead
            // of the store's load. A lone change waits for nothing.
            tokio::time::sleep(pause).await;
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if q.changes.is_empty() {
                    q.draining = false;
                    return;
                }
                let n = q.changes.len().min(MAX_BATCH);
                q.changes.drain(..n).collect::<Vec<_>>()
            };
            let started = Instant::now();
            announce(app, batch).await;
            pause = started.elapsed().min(MAX_PAUSE);
        }
    }
}

/// Announces each change in `changes` (in order; a user's later change
/// supersedes an earlier one in the same batch).
pub async fn announce(app: &App, changes: Vec<(ObjectId, State)>) {
    let mut latest: HashMap<ObjectId, State> = HashMap::with_capacity(changes.len());
    for (user, state) in changes {
        latest.insert(user, state);
    }
    for chunk in latest.into_iter().collect::<Vec<_>>().chunks(MAX_BATCH) {
        announce_batch(app, chunk).await;
    }
}

async fn announce_batch(app: &App, changes: &[(ObjectId, State)]) {
    let users: Vec<ObjectId> = changes.iter().map(|(u, _)| *u).collect();
    let (owners, rooms) = tokio::join!(app.store.contact_owners_of(&users), app.store.rooms_of(&users));
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
        let user_hex = user.to_hex();
        let frame = protocol::event("presence", None, Some(&user_hex), PresenceView::new(*user, state));
        let topics = audience.remove(user).unwrap_or_default();
        topics.into_iter().map(move |topic| (*user, topic, frame.clone()))
    });
    futures::stream::iter(publishes)
        .for_each_concurrent(PUBLISH_CONCURRENCY, |(user, topic, frame)| async move {
            if let Err(e) = app.bus.publish(topic, Event::ephemeral(Some(user), &frame)).await {
                metrics::counter!("confab_bus_publish_failures_total").increment(1);
                tracing::debug!(error = %e, "presence frame not published");
            }
        })
        .await;
}

//! Redis Pub/Sub bus on fred.
//!
//! Two connections: a subscriber, whose channel set fred re-subscribes after
//! every reconnect, and a publisher. Known fred pitfalls handled here:
//! - Pub/Sub messages arrive through a broadcast channel (default capacity
//!   32): we size it from config, and a lagging reader is counted in
//!   `confab_pubsub_lagged_total` and logged, never dropped silently.
//! - fred re-sends in-flight commands after a reconnect, so a PUBLISH can
//!   arrive twice: events are de-duplicated by id before delivery.
//! - A subscriber connection can wedge: open, answering nothing, while
//!   publishes succeed, so messages are lost without an error anywhere. The
//!   bus sends itself a probe every [`PROBE_EVERY`] on a channel of its own;
//!   when none has come back for [`PROBE_DEADLINE`], the bus counts
//!   `confab_bus_probe_failures_total`, reports itself not ready, and forces
//!   the subscriber to reconnect (which subscribes to every channel again).
//!
//! On Redis Cluster, room and user channels (and the probe) are sharded
//! (`SPUBLISH` / `SSUBSCRIBE`): a message goes only to the master that owns
//! its channel's slot and to the nodes subscribed there, instead of being
//! copied to every master of the cluster. fred keeps one subscriber
//! connection per master and subscribes again, per slot, after a
//! reconnect. The probe travels one shard: it proves the connection to that
//! master, not to every one.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::Message as RedisMessage;
use tokio::sync::broadcast::error::RecvError;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{wire, BusError, Delivery, Event, Inbox, Topic};
use crate::backend::redis::RedisConfig;
use crate::keyspace::{Channel, Keyspace};

/// The bus: one connection to publish on, one to receive; the reader task
/// hands what arrives to the [`Inbox`].
pub struct Bus {
    links: Links,
    keys: Keyspace,
    probe: Arc<Probe>,
    /// The reader and the reconnect watcher; end at `shutdown`.
    tasks: TaskTracker,
    stop: CancellationToken,
    /// fred's task that subscribes again after a reconnect. It holds the
    /// subscriber, so the channel it waits on never closes: it is aborted
    /// at `shutdown`.
    resubscriber: tokio::task::AbortHandle,
}

/// The Redis channel of a topic.
pub fn channel(keys: &Keyspace, topic: Topic) -> String {
    match topic {
        Topic::Room(id) => keys.room_channel(id),
        Topic::User(id) => keys.user_channel(id),
    }
}

fn topic_of(keys: &Keyspace, channel: &str) -> Option<Topic> {
    Some(match keys.channel(channel)? {
        Channel::Room(id) => Topic::Room(id),
        Channel::User(id) => Topic::User(id),
    })
}

impl Bus {
    /// Starts both connections and the reader task that feeds `inbox`. A
    /// Redis that is down at start is not fatal: fred keeps reconnecting and
    /// `/readyz` reports the node not ready meanwhile.
    pub async fn connect(
        redis: &RedisConfig,
        keys: Keyspace,
        broadcast_capacity: usize,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Arc<Self>, BusError> {
        let b = redis.builder(broadcast_capacity)?;
        let publisher = b.build()?;
        let subscriber = b.build_subscriber_client()?;
        publisher.connect();
        subscriber.connect();
        for (name, client) in [("publisher", &publisher as &dyn ClientLikeExt), ("subscriber", &subscriber)] {
            if tokio::time::timeout(Duration::from_secs(5), client.wait()).await.is_err() {
                tracing::warn!(connection = name, "redis not reachable yet; will keep retrying");
            }
        }
        let resubscriber = subscriber.manage_subscriptions().abort_handle();
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let probe = Arc::new(Probe::new(keys.probe_channel(&hex::encode(rand::random::<[u8; 8]>()))));
        let rx = subscriber.message_rx();
        tasks.spawn(read_loop(rx, keys.clone(), inbox.clone(), probe.clone(), stop.clone()));
        let links = Links { publisher, subscriber: subscriber.clone(), sharded: redis.is_cluster() };
        tasks.spawn(probe_loop(links.clone(), probe.clone(), tasks.clone(), stop.clone()));
        let mut reconnects = subscriber.reconnect_rx();
        let resubscribed = inbox.clone();
        let stopped = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    reconnected = reconnects.recv() => if reconnected.is_err() { return },
                }
                metrics::counter!("confab_redis_reconnects_total").increment(1);
                tracing::info!("redis subscriber reconnected; channels resubscribed");
                resubscribed.resubscribed();
            }
        });
        tasks.close();
        Ok(Arc::new(Bus { links, keys, probe, tasks, stop, resubscriber }))
    }

    /// Publishes the live effect of something already stored or decided (a
    /// message, an edit, a membership change, a receipt): a failure is
    /// counted in `confab_bus_publish_failures_total` and logged, not
    /// returned, since clients find the change in the store when they catch
    /// up. False if it was not published.
    pub async fn publish_live(&self, topic: Topic, event: Event<'_>) -> bool {
        match self.publish(topic, event).await {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("confab_bus_publish_failures_total").increment(1);
                tracing::warn!(error = %e, ?topic, "stored change not published; readers catch up from the store");
                false
            }
        }
    }

    /// Stops delivering and closes both connections; the last step of a
    /// node's shutdown.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.tasks.wait().await;
        let _ = tokio::join!(self.links.subscriber.quit(), self.links.publisher.quit());
        self.resubscriber.abort();
    }
}

/// Lets the connect loop wait on either client type.
trait ClientLikeExt {
    fn wait(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

impl<T: ClientLike + Sync> ClientLikeExt for T {
    fn wait(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self.wait_for_connect().await;
        })
    }
}

impl Bus {
    /// Publishes an already-encoded client frame to every node subscribed to
    /// the topic. A message's id lets receivers drop re-deliveries.
    pub async fn publish(&self, topic: Topic, event: Event<'_>) -> Result<(), BusError> {
        self.publish_counted(topic, event).await.map(|_| ())
    }

    /// The event's bytes: with the publishing span's trace context while
    /// tracing is on (see `wire`).
    fn encode(event: Event<'_>) -> bytes::Bytes {
        if crate::telemetry::enabled() {
            wire::encode_traced(event, crate::telemetry::TraceParent::current().as_ref())
        } else {
            wire::encode(event)
        }
    }

    pub async fn subscribe(&self, topic: Topic) -> Result<(), BusError> {
        self.links.subscribe(channel(&self.keys, topic)).await.map_err(Into::into)
    }

    pub async fn unsubscribe(&self, topic: Topic) -> Result<(), BusError> {
        self.links.unsubscribe(channel(&self.keys, topic)).await.map_err(Into::into)
    }

    /// Whether both connections answer and the delivery probe comes back.
    pub async fn ping(&self) -> Result<(), BusError> {
        if self.probe.failing() {
            return Err(BusError::Reply("the delivery probe has not come back: subscriptions wedged".into()));
        }
        let _: String = self.links.publisher.ping(None).await?;
        let _: () = self.links.subscriber.ping(None).await?;
        Ok(())
    }

    /// PUBLISH answers with the number of subscribed connections; each node
    /// subscribes through one connection, so that is the number of nodes.
    /// Like `publish`, and says how many nodes received the event (0: no
    /// node is subscribed to the topic). Buses that cannot tell say 1.
    pub async fn publish_counted(&self, topic: Topic, event: Event<'_>) -> Result<usize, BusError> {
        let start = Instant::now();
        let out = self.links.publish(channel(&self.keys, topic), Self::encode(event)).await;
        metrics::histogram!("confab_redis_publish_seconds").record(start.elapsed().as_secs_f64());
        out.map(|n| n.max(0) as usize).map_err(Into::into)
    }

    /// One `PUBSUB NUMSUB` per thousand topics.
    /// How many nodes are subscribed to each topic, in the order given: for
    /// a user's topic, whether the user has a connection anywhere.
    pub async fn subscribers(&self, topics: &[Topic]) -> Result<Vec<usize>, BusError> {
        let mut counts = Vec::with_capacity(topics.len());
        for chunk in topics.chunks(1000) {
            let channels: Vec<String> = chunk.iter().map(|t| channel(&self.keys, *t)).collect();
            let reply: Vec<Value> = if self.links.sharded {
                // Each channel asked of the master that owns its slot.
                let pipeline = self.links.publisher.pipeline();
                for channel in channels {
                    let _: () = pipeline.pubsub_shardnumsub(channel).await?;
                }
                let replies: Vec<Value> = pipeline.all().await?;
                replies.into_iter().flat_map(Value::into_array).collect()
            } else {
                self.links.publisher.pubsub_numsub(channels).await?
            };
            // [channel, count, channel, count, ...] in the order asked.
            counts.extend(reply.iter().skip(1).step_by(2).map(|v| v.as_i64().unwrap_or(0).max(0) as usize));
        }
        if counts.len() != topics.len() {
            return Err(BusError::Reply(format!(
                "PUBSUB NUMSUB answered {} counts for {} topics",
                counts.len(),
                topics.len()
            )));
        }
        Ok(counts)
    }
}

/// How often the bus sends itself a probe.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long without a probe coming back before the bus counts as wedged.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(5);

/// The delivery probe's state: its channel, and when a probe last came back.
struct Probe {
    channel: String,
    started: Instant,
    /// Milliseconds after `started` when a probe last came back (0: never).
    seen_at: AtomicU64,
    failing: AtomicBool,
}

impl Probe {
    fn new(channel: String) -> Self {
        Probe { channel, started: Instant::now(), seen_at: AtomicU64::new(0), failing: AtomicBool::new(false) }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A probe came back, sent at `sent_ms`.
    fn seen(&self, sent_ms: Option<u64>) {
        let now = self.now_ms();
        self.seen_at.store(now.max(1), Ordering::Release);
        if let Some(sent) = sent_ms.filter(|s| *s <= now) {
            metrics::histogram!("confab_bus_probe_seconds").record((now - sent) as f64 / 1000.0);
        }
    }

    /// How long since a probe last came back (since the start, if none has).
    fn silent_for(&self) -> Duration {
        Duration::from_millis(self.now_ms().saturating_sub(self.seen_at.load(Ordering::Acquire)))
    }

    fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// Sends a probe every [`PROBE_EVERY`]; past [`PROBE_DEADLINE`] without
/// one back, counts a failure each round, marks the bus not ready, and,
/// if publishing still works (the subscriber alone is wedged), forces the
/// subscriber to reconnect (at most once per deadline).
/// The bus's two connections, and which Pub/Sub they speak: classic, or
/// sharded on a Redis Cluster. The bus and its probe both talk through it.
#[derive(Clone)]
struct Links {
    publisher: Client,
    subscriber: SubscriberClient,
    sharded: bool,
}

impl Links {
    /// PUBLISH, or SPUBLISH; the subscribed connections.
    async fn publish(&self, channel: String, payload: bytes::Bytes) -> Result<i64, fred::error::Error> {
        if self.sharded {
            self.publisher.spublish(channel, payload).await
        } else {
            self.publisher.publish(channel, payload).await
        }
    }

    async fn subscribe(&self, channel: String) -> Result<(), fred::error::Error> {
        if self.sharded {
            self.subscriber.ssubscribe(channel).await
        } else {
            self.subscriber.subscribe(channel).await
        }
    }

    async fn unsubscribe(&self, channel: String) -> Result<(), fred::error::Error> {
        if self.sharded {
            self.subscriber.sunsubscribe(channel).await
        } else {
            self.subscriber.unsubscribe(channel).await
        }
    }
}

async fn probe_loop(prober: Links, probe: Arc<Probe>, tasks: TaskTracker, stop: CancellationToken) {
    let mut subscribed = false;
    let mut forced: Option<Instant> = None;
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Checked first: a round takes about a tick, so the next is
            // always due by then and would otherwise win half the time,
            // keeping the loop (and the node's shutdown) going.
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !subscribed {
            // Once subscribed, fred subscribes again after every reconnect.
            let attempt = tokio::time::timeout(PROBE_EVERY, prober.subscribe(probe.channel.clone()));
            subscribed = matches!(attempt.await, Ok(Ok(())));
        }
        let sent = probe.now_ms().to_string();
        let publish = prober.publish(probe.channel.clone(), sent.into());
        let published = matches!(tokio::time::timeout(PROBE_EVERY, publish).await, Ok(Ok(_)));
        if probe.silent_for() <= PROBE_DEADLINE {
            if probe.failing.swap(false, Ordering::AcqRel) {
                tracing::info!("the bus's delivery probe comes back again");
            }
            continue;
        }
        metrics::counter!("confab_bus_probe_failures_total").increment(1);
        if !probe.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(
                silent_ms = probe.silent_for().as_millis() as u64,
                "the bus's delivery probe has not come back: subscriptions look wedged; reconnecting the subscriber"
            );
        }
        // Only a wedge is ours to mend: while Redis cannot be reached at
        // all, publishing fails too, and fred is reconnecting already.
        if published && forced.is_none_or(|at| at.elapsed() >= PROBE_DEADLINE) {
            forced = Some(Instant::now());
            let subscriber = prober.subscriber.clone();
            // Not awaited here: on a wedged connection it may take a while.
            tasks.spawn(async move {
                let _ = tokio::time::timeout(PROBE_DEADLINE, subscriber.force_reconnection()).await;
            });
        }
    }
}

async fn read_loop(
    mut rx: tokio::sync::broadcast::Receiver<RedisMessage>,
    keys: Keyspace,
    inbox: Arc<dyn Inbox>,
    probe: Arc<Probe>,
    stop: CancellationToken,
) {
    let mut seen = RecentIds::new(65_536);
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = rx.recv() => received,
        };
        let message = match received {
            Ok(m) => m,
            Err(RecvError::Lagged(n)) => {
                metrics::counter!("confab_pubsub_lagged_total").increment(n);
                tracing::warn!(lost = n, "pub/sub reader lagged; clients recover the gap from history");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if *message.channel == *probe.channel {
            probe.seen(message.value.as_string().and_then(|s| s.parse().ok()));
            continue;
        }
        let Some(topic) = topic_of(&keys, &message.channel) else {
            continue;
        };
        let Some(payload) =
            message.value.as_bytes().map(bytes::Bytes::copy_from_slice).or_else(|| match message.value {
                Value::Bytes(b) => Some(b),
                Value::String(s) => Some(s.into_inner()),
                _ => None,
            })
        else {
            continue;
        };
        let Some((delivery, trace)) = wire::decode_traced(topic, payload) else {
            metrics::counter!("confab_pubsub_malformed_total").increment(1);
            continue;
        };
        // A re-delivery is the same event on the same channel; one event may
        // also travel several channels on purpose (presence).
        if let Some(id) = delivery.id() {
            if !seen.insert((topic, id)) {
                metrics::counter!("confab_pubsub_duplicates_total").increment(1);
                continue;
            }
        }
        match (&delivery, topic) {
            (Delivery::Message { id, message }, Topic::Room(room)) if crate::telemetry::enabled() => {
                // One span per message per node, around its delivery to this
                // node's sockets, in the trace of the send when it came with one.
                let span = tracing::trace_span!(
                    target: crate::telemetry::TARGET,
                    "fanout.deliver",
                    otel.kind = "consumer",
                    messaging.system = "redis",
                    confab.room_id = %room,
                    confab.message_id = %id,
                    confab.seq = message.seq,
                );
                if let Some(trace) = trace {
                    trace.adopt(&span);
                }
                span.in_scope(|| inbox.deliver(topic, delivery));
            }
            _ => inbox.deliver(topic, delivery),
        }
    }
}

/// A bounded set of the most recent events (channel and id): old ones
/// fall out first.
struct RecentIds {
    set: HashSet<(Topic, ObjectId)>,
    order: VecDeque<(Topic, ObjectId)>,
    cap: usize,
}

impl RecentIds {
    fn new(cap: usize) -> Self {
        RecentIds { set: HashSet::with_capacity(cap), order: VecDeque::with_capacity(cap), cap }
    }

    /// False when `id` was seen recently.
    fn insert(&mut self, id: (Topic, ObjectId)) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        if self.order.len() == self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let (id, keys) = (ObjectId::new(), Keyspace::default());
        for topic in [Topic::Room(id), Topic::User(id)] {
            assert_eq!(topic_of(&keys, &channel(&keys, topic)), Some(topic));
        }
        assert_eq!(topic_of(&keys, "confab:room:nope"), None);
        assert_eq!(topic_of(&keys, "other"), None);
    }

    #[test]
    fn recent_ids_drop_repeats_and_forget_the_oldest() {
        let mut seen = RecentIds::new(2);
        let room = Topic::Room(ObjectId::new());
        let (a, b, c) = ((room, ObjectId::new()), (room, ObjectId::new()), (room, ObjectId::new()));
        assert!(seen.insert(a));
        assert!(!seen.insert(a));
        assert!(seen.insert(b));
        assert!(seen.insert(c));
        assert!(seen.insert(a), "a fell out of the window");
        let elsewhere = (Topic::User(ObjectId::new()), b.1);
        assert!(seen.insert(elsewhere), "the same id on another channel is another delivery");
    }
}

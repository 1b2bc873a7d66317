//! Fan-out lanes: one event written to many local connections on several
//! cores at once, each connection's frames still in order (ADR 12).
//!
//! Most of a fan-out is the kernel's work of sending to each socket. Done
//! one after another on the thread that took the event off the bus, the
//! last member of a big room waits for all the others. So a node has lanes,
//! one per core by default: connection `c` belongs to lane `c % lanes`.
//! Lane 0 is the caller's own thread; every other lane is a thread of its
//! own that takes its work in the order it was handed over. An event for at
//! least `split_at` connections is split by lane; a smaller one is written
//! by the caller alone.
//!
//! Order: a connection's frames from the bus are written either by the
//! caller or by the connection's own lane, in hand-over order. The caller
//! writes to another lane's connection only while no lane has work waiting,
//! so nothing it writes can overtake a frame handed over before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use super::line::Refused;
use super::registry::Outbox;

/// Offers one frame to one connection.
pub type Offer = Arc<dyn Fn(&Outbox) -> Result<(), Refused> + Send + Sync>;

/// What a fan-out adds to the metrics for the connections that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Stored messages: `confab_messages_delivered_total`.
    Messages,
    Nothing,
}

impl Tally {
    fn add(self, delivered: usize) {
        if self == Tally::Messages {
            metrics::counter!("confab_messages_delivered_total").increment(delivered as u64);
        }
    }
}

pub use crate::config::SPLIT_AT;

pub use crate::config::MAX_LANES;

struct Job {
    conns: Vec<Arc<Outbox>>,
    offer: Offer,
    tally: Tally,
}

/// A lane with a thread of its own.
struct Helper {
    queue: mpsc::Sender<Job>,
    /// Jobs handed over and not finished.
    waiting: Arc<AtomicUsize>,
}

/// A node's fan-out lanes (see the module docs).
pub struct Lanes {
    helpers: Vec<Helper>,
    split_at: usize,
}

impl Default for Lanes {
    fn default() -> Self {
        Lanes::single()
    }
}

impl Lanes {
    /// One lane: the caller writes everything.
    pub fn single() -> Lanes {
        Lanes { helpers: Vec::new(), split_at: usize::MAX }
    }

    /// `count` lanes (at most [`MAX_LANES`]); events for at least `split_at`
    /// connections are split. Each helper thread runs inside `runtime` (a
    /// connection cut off there schedules its drop on it) and ends when the
    /// lanes are dropped. A thread that cannot start leaves fewer lanes.
    pub fn new(count: usize, split_at: usize, runtime: tokio::runtime::Handle) -> Lanes {
        let mut helpers = Vec::new();
        for lane in 1..count.clamp(1, MAX_LANES) {
            let (queue, jobs) = mpsc::channel::<Job>();
            let waiting = Arc::new(AtomicUsize::new(0));
            let (done, runtime) = (waiting.clone(), runtime.clone());
            let started = std::thread::Builder::new().name(format!("confab-lane-{lane}")).spawn(move || {
                let _runtime = runtime.enter();
                for job in jobs {
                    let delivered = offer_all(job.conns.iter(), |o| (job.offer)(o));
                    job.tally.add(delivered);
                    drop(job);
                    done.fetch_sub(1, Ordering::Release);
                }
            });
            match started {
                Ok(_) => helpers.push(Helper { queue, waiting }),
                Err(e) => {
                    tracing::warn!(error = %e, lanes = lane, "could not start a fan-out lane; running with fewer");
                    break;
                }
            }
        }
        Lanes { helpers, split_at: split_at.max(1) }
    }

    /// How many lanes there are, the caller's included.
    pub fn count(&self) -> usize {
        self.helpers.len() + 1
    }

    fn idle(&self) -> bool {
        self.helpers.iter().all(|h| h.waiting.load(Ordering::Acquire) == 0)
    }

    /// Offers a frame to each of `conns` (about `receivers` of them): all by
    /// the caller while the event is small and no lane is busy, else split
    /// by lane. Returns how many took it, counting those handed to a lane.
    pub fn offer<'a>(
        &self,
        receivers: usize,
        conns: impl Iterator<Item = &'a Arc<Outbox>>,
        offer: impl Fn(&Outbox) -> Result<(), Refused> + Send + Sync + 'static,
        tally: Tally,
    ) -> usize {
        if self.helpers.is_empty() || (receivers < self.split_at && self.idle()) {
            let delivered = offer_all(conns, offer);
            tally.add(delivered);
            return delivered;
        }
        let lanes = self.count() as u64;
        let mut own = Vec::new();
        let mut parts: Vec<Vec<Arc<Outbox>>> = vec![Vec::new(); self.helpers.len()];
        for conn in conns {
            match (conn.id % lanes) as usize {
                0 => own.push(conn.clone()),
                lane => parts[lane - 1].push(conn.clone()),
            }
        }
        let offer: Offer = Arc::new(offer);
        let mut handed = 0;
        for (helper, conns) in self.helpers.iter().zip(parts) {
            if conns.is_empty() {
                continue;
            }
            let n = conns.len();
            helper.waiting.fetch_add(1, Ordering::AcqRel);
            match helper.queue.send(Job { conns, offer: offer.clone(), tally }) {
                Ok(()) => handed += n,
                Err(mpsc::SendError(job)) => {
                    // The lane's thread is gone (it panicked): write here.
                    helper.waiting.fetch_sub(1, Ordering::Release);
                    let delivered = offer_all(job.conns.iter(), |o| offer(o));
                    tally.add(delivered);
                    handed += delivered;
                }
            }
        }
        let delivered = offer_all(own.iter(), |o| offer(o));
        tally.add(delivered);
        delivered + handed
    }

    /// Waits until every lane has written what it was handed.
    #[cfg(test)]
    fn wait_idle(&self) {
        while !self.idle() {
            std::thread::yield_now();
        }
    }
}

/// Offers a frame to each connection; cuts off those that are full.
/// Returns how many took it.
pub(super) fn offer_all<'a>(
    conns: impl Iterator<Item = &'a Arc<Outbox>>,
    offer: impl Fn(&Outbox) -> Result<(), Refused>,
) -> usize {
    let mut slow: Vec<Arc<Outbox>> = Vec::new();
    let mut delivered = 0;
    for outbox in conns {
        match offer(outbox) {
            Ok(()) => delivered += 1,
            // Cut off outside any shard lock; a closing connection is not slow.
            Err(Refused::Full) => slow.push(outbox.clone()),
            Err(Refused::Closed) => {}
        }
    }
    for outbox in slow {
        outbox.cut_off_slow();
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fanout::registry::Outbound;
    use bytes::Bytes;
    use tokio_util::sync::CancellationToken;

    fn outboxes(n: usize, capacity: usize) -> Vec<Arc<Outbox>> {
        (0..n).map(|_| Outbox::new(None, capacity, CancellationToken::new())).collect()
    }

    fn text(n: usize) -> impl Fn(&Outbox) -> Result<(), Refused> + Send + Sync + 'static {
        move |o| o.offer(Outbound::Text(Bytes::from(n.to_string())))
    }

    fn frames(o: &Outbox) -> Vec<String> {
        o.line.waiting().into_iter().map(|(_, b)| String::from_utf8(b.to_vec()).unwrap()).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_connection_gets_each_frame_once_in_order_whatever_the_lane() {
        let lanes = Lanes::new(3, 8, tokio::runtime::Handle::current());
        assert_eq!(lanes.count(), 3);
        let all = outboxes(50, 1024);
        let few = &all[..5];
        for n in 0..200 {
            // Big events are split; small ones go inline only when no lane is busy.
            let group = if n % 3 == 0 { few } else { &all[..] };
            let took = lanes.offer(group.len(), group.iter(), text(n), Tally::Nothing);
            assert_eq!(took, group.len());
        }
        lanes.wait_idle();
        for (i, o) in all.iter().enumerate() {
            let want: Vec<String> = (0..200).filter(|n| i < 5 || n % 3 != 0).map(|n: usize| n.to_string()).collect();
            assert_eq!(frames(o), want, "connection {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_event_waits_behind_a_busy_lane() {
        let lanes = Lanes::new(2, 4, tokio::runtime::Handle::current());
        let all = outboxes(8, 64);
        let lane1: Vec<Arc<Outbox>> = all.iter().filter(|o| o.id % 2 == 1).cloned().collect();
        // Lane 1 is kept busy with the first event until `go`.
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let gate = std::sync::Mutex::new(gate);
        lanes.offer(
            all.len(),
            all.iter(),
            move |o| {
                if o.id % 2 == 1 {
                    let _ = gate.lock().unwrap().recv_timeout(std::time::Duration::from_secs(5));
                }
                o.offer(Outbound::Text(Bytes::from_static(b"first")))
            },
            Tally::Nothing,
        );
        // One receiver, below the split: it must still queue behind lane 1.
        lanes.offer(1, lane1[..1].iter(), text(2), Tally::Nothing);
        for _ in 0..lane1.len() {
            go.send(()).unwrap();
        }
        lanes.wait_idle();
        assert_eq!(frames(&lane1[0]), ["first", "2"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_connection_on_a_lane_is_cut_off_and_the_rest_still_get_the_frame() {
        let lanes = Lanes::new(2, 1, tokio::runtime::Handle::current());
        let mut all = outboxes(6, 64);
        let slow = loop {
            let o = Outbox::new(None, 1, CancellationToken::new());
            if o.id % 2 == 1 {
                break o; // on lane 1
            }
        };
        all.push(slow.clone());
        assert_eq!(lanes.offer(all.len(), all.iter(), text(1), Tally::Nothing), 7);
        lanes.offer(all.len(), all.iter(), text(2), Tally::Nothing);
        lanes.wait_idle();
        for o in &all[..6] {
            assert_eq!(frames(o), ["1", "2"]);
        }
        let (op, body) = slow.line.waiting().remove(0);
        assert_eq!((op, &body[..2]), (0x8, &crate::protocol::CloseCode::TryAgainLater.code().to_be_bytes()[..]));
    }

    #[test]
    fn one_lane_writes_everything_at_once() {
        let lanes = Lanes::single();
        let all = outboxes(100, 8);
        assert_eq!(lanes.offer(all.len(), all.iter(), text(7), Tally::Nothing), 100);
        assert!(all.iter().all(|o| frames(o) == ["7"]), "nothing left for later");
    }
}

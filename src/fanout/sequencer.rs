//! Keeps each room's live messages in seq order on this node, and fills gaps.
//!
//! Messages of one room can reach a node out of order (two nodes store seq 7
//! and 8 and publish at nearly the same moment) or not at all (the node was
//! cut off from Redis for a while). Before fan-out, every stored message
//! passes the room's sequencer: the next expected seq goes straight through;
//! a later one waits; if the gap is still open after a short wait
//! (`gap_wait`), the missing seqs are read from history and delivered, then
//! the waiting ones. A seq that is nowhere in history after the wait (seqs
//! can be skipped) is given up; should its message arrive later after all,
//! it is still delivered, late rather than never.
//!
//! Where a room's order starts: when the node subscribes to a room, the
//! subscription keeper reads the room's seq counter and starts the order
//! there (`begin_at`). Every seq above it is handed out, so published,
//! after the subscription took effect, and arrives here: two of them that
//! cross in flight are put back in order like any others. Without a
//! counter, the first message to arrive sets the baseline.
//!
//! The state machine here is pure; `FanoutInbox` drives it and does the
//! reads. Fan-out happens under the room's lock, so the reader task and a
//! gap fill can never interleave a room's frames.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bson::oid::ObjectId;
use dashmap::DashMap;

use crate::bus::Stored;

/// Most seqs remembered as given up, per room.
const SKIPPED_KEPT: usize = 1024;
/// Seqs below the first one seen that may still arrive (and are delivered).
const BASELINE_SLACK: i64 = 64;
/// Most messages waiting behind a gap, per room, before the gap is given up.
pub const MAX_WAITING: usize = 10_000;

#[derive(Default)]
pub struct RoomOrder {
    /// The last seq delivered; `None` until the first message after this
    /// node subscribed to the room, or its counter was read.
    last: Option<i64>,
    /// `last` came from the room's counter and no message above it has
    /// arrived yet.
    from_counter: bool,
    waiting: BTreeMap<i64, Stored>,
    /// Seqs given up on, in case their message turns up late.
    skipped: BTreeSet<i64>,
    /// A gap fill is scheduled or running.
    pub filling: bool,
}

/// What to do with a message that arrived.
#[derive(Debug)]
pub enum Accepted {
    /// Deliver these now, in this order.
    Deliver(Vec<Stored>),
    /// It waits behind a gap; schedule a fill unless one is on its way.
    Wait { schedule_fill: bool },
}

impl RoomOrder {
    /// Starts the order after `seq`, the last one the room's counter handed
    /// out once this node was subscribed; ignored once a message arrived.
    pub fn begin_at(&mut self, seq: i64) {
        if self.last.is_none() {
            self.set_baseline(seq + 1);
            self.last = Some(seq);
            self.from_counter = true;
        }
    }

    /// Seqs just below `first` may still be in flight from other nodes
    /// (published after we subscribed, so they are ours to deliver): they
    /// are let through late, once each.
    fn set_baseline(&mut self, first: i64) {
        for earlier in (first - BASELINE_SLACK).max(1)..first {
            self.skipped.insert(earlier);
        }
    }

    pub fn accept(&mut self, d: Stored) -> Accepted {
        if let (true, Some(last)) = (self.from_counter, self.last) {
            if d.seq > last {
                self.from_counter = false;
                if d.seq > last + BASELINE_SLACK {
                    // The counter was behind the messages (it fell behind
                    // the store while Redis was away, and nobody has sent
                    // since): waiting for the seqs between would deliver
                    // ones published before we listened. Start here.
                    self.last = None;
                }
            }
        }
        let Some(last) = self.last else {
            // The first message since this node subscribed sets the baseline.
            self.set_baseline(d.seq);
            self.last = Some(d.seq);
            return Accepted::Deliver(vec![d]);
        };
        if d.seq <= last {
            // Already delivered (a fill got there first) unless given up on.
            return Accepted::Deliver(if self.skipped.remove(&d.seq) { vec![d] } else { Vec::new() });
        }
        if d.seq == last + 1 {
            self.last = Some(d.seq);
            let mut out = vec![d];
            out.extend(self.drain(i64::MIN));
            return Accepted::Deliver(out);
        }
        self.waiting.insert(d.seq, d);
        if self.waiting.len() > MAX_WAITING {
            // Far too much behind one gap: stop waiting, deliver what we have.
            let floor = self.waiting.keys().next_back().copied().unwrap_or(last);
            return Accepted::Deliver(self.drain(floor));
        }
        let schedule_fill = !self.filling;
        self.filling = true;
        Accepted::Wait { schedule_fill }
    }

    /// The seqs a fill should read: after `last`, before the first waiting.
    pub fn gap(&self) -> Option<(i64, i64)> {
        let last = self.last?;
        let first = *self.waiting.keys().next()?;
        (first > last + 1).then_some((last, first))
    }

    /// Takes messages read from history for the gap below `floor`, and
    /// returns everything now deliverable, in order. Seqs below `floor` that
    /// history did not have are given up.
    pub fn filled(&mut self, found: Vec<Stored>, floor: i64) -> Vec<Stored> {
        let last = self.last.unwrap_or(i64::MIN);
        for d in found.into_iter().filter(|d| d.seq > last) {
            self.waiting.entry(d.seq).or_insert(d);
        }
        self.drain(floor)
    }

    /// Delivers waiting messages that are next in line, or at or below
    /// `floor` (giving up the holes before them).
    fn drain(&mut self, floor: i64) -> Vec<Stored> {
        let mut out = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            let seq = *entry.key();
            let last = self.last.unwrap_or(seq - 1);
            if seq != last + 1 && seq > floor {
                break;
            }
            for lost in (last + 1).max(seq - SKIPPED_KEPT as i64)..seq {
                self.skipped.insert(lost);
            }
            while self.skipped.len() > SKIPPED_KEPT {
                self.skipped.pop_first();
            }
            out.push(entry.remove());
            self.last = Some(seq);
        }
        out
    }
}

/// Every room's order state on this node.
#[derive(Default)]
pub struct Sequencer {
    rooms: DashMap<ObjectId, Arc<Mutex<RoomOrder>>>,
}

impl Sequencer {
    /// The room's state, locked.
    pub fn room(&self, room: ObjectId) -> RoomLock {
        RoomLock(self.rooms.entry(room).or_default().clone())
    }

    /// Forgets a room this node no longer listens to: when it listens again,
    /// it starts from whatever seq comes first.
    pub fn forget(&self, room: ObjectId) {
        self.rooms.remove(&room);
    }
}

/// A handle on one room's state; lock it to use it.
pub struct RoomLock(Arc<Mutex<RoomOrder>>);

impl RoomLock {
    pub fn lock(&self) -> MutexGuard<'_, RoomOrder> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn d(seq: i64) -> Stored {
        Stored::new(seq, Bytes::from(seq.to_string()))
    }

    fn seqs(v: &[Stored]) -> Vec<i64> {
        v.iter().map(|d| d.seq).collect()
    }

    fn delivered(a: Accepted) -> Vec<i64> {
        match a {
            Accepted::Deliver(v) => seqs(&v),
            Accepted::Wait { .. } => panic!("expected delivery"),
        }
    }

    #[test]
    fn in_order_passes_straight_through_and_repeats_are_dropped() {
        let mut r = RoomOrder::default();
        assert_eq!(delivered(r.accept(d(5))), [5], "the first seq sets the baseline");
        assert_eq!(delivered(r.accept(d(6))), [6]);
        assert_eq!(delivered(r.accept(d(6))), Vec::<i64>::new());
        assert_eq!(delivered(r.accept(d(5))), Vec::<i64>::new());
    }

    #[test]
    fn messages_just_below_the_baseline_still_arrive_once() {
        let mut r = RoomOrder::default();
        assert_eq!(delivered(r.accept(d(100))), [100]);
        // 99 was published before 100 but crossed it in flight.
        assert_eq!(delivered(r.accept(d(99))), [99]);
        assert_eq!(delivered(r.accept(d(99))), Vec::<i64>::new());
        assert_eq!(delivered(r.accept(d(101))), [101]);
    }

    #[test]
    fn an_order_begun_at_the_counter_puts_the_first_messages_in_order() {
        let mut r = RoomOrder::default();
        r.begin_at(10);
        // 12 crossed 11 in flight: it waits, then both go in order.
        assert!(matches!(r.accept(d(12)), Accepted::Wait { schedule_fill: true }));
        assert_eq!(delivered(r.accept(d(11))), [11, 12]);
        // 10 was handed out before we listened but published after: late, once.
        assert_eq!(delivered(r.accept(d(10))), [10]);
        assert_eq!(delivered(r.accept(d(10))), Vec::<i64>::new());
        assert_eq!(delivered(r.accept(d(13))), [13]);
    }

    #[test]
    fn a_counter_far_behind_the_messages_gives_way_to_the_first_one() {
        let mut r = RoomOrder::default();
        r.begin_at(10);
        assert_eq!(delivered(r.accept(d(500))), [500], "no wait for 11..499");
        assert!(r.gap().is_none());
        assert_eq!(delivered(r.accept(d(499))), [499], "just below: late, once");
        assert_eq!(delivered(r.accept(d(501))), [501]);
    }

    #[test]
    fn the_counter_is_ignored_once_a_message_has_arrived() {
        let mut r = RoomOrder::default();
        assert_eq!(delivered(r.accept(d(20))), [20]);
        r.begin_at(15);
        assert_eq!(delivered(r.accept(d(21))), [21]);
        assert_eq!(delivered(r.accept(d(16))), [16], "below the baseline: late, once, as before");
    }

    #[test]
    fn a_late_arrival_within_the_wait_restores_order() {
        let mut r = RoomOrder::default();
        r.accept(d(1));
        assert!(matches!(r.accept(d(3)), Accepted::Wait { schedule_fill: true }));
        assert!(matches!(r.accept(d(4)), Accepted::Wait { schedule_fill: false }));
        assert_eq!(delivered(r.accept(d(2))), [2, 3, 4]);
        assert!(r.gap().is_none());
    }

    #[test]
    fn a_fill_delivers_found_messages_and_gives_up_the_rest() {
        let mut r = RoomOrder::default();
        r.accept(d(1));
        r.accept(d(5));
        r.accept(d(8));
        assert_eq!(r.gap(), Some((1, 5)));
        // History has 2 and 4; 3 was never stored.
        assert_eq!(seqs(&r.filled(vec![d(2), d(4)], 5)), [2, 4, 5]);
        assert_eq!(r.gap(), Some((5, 8)));
        assert_eq!(seqs(&r.filled(vec![d(6), d(7)], 8)), [6, 7, 8]);
        // 3 turns up after all: late, but delivered once.
        assert_eq!(delivered(r.accept(d(3))), [3]);
        assert_eq!(delivered(r.accept(d(3))), Vec::<i64>::new());
    }

    #[test]
    fn a_fill_racing_live_arrivals_delivers_each_once() {
        let mut r = RoomOrder::default();
        r.accept(d(1));
        r.accept(d(3));
        assert_eq!(delivered(r.accept(d(2))), [2, 3], "arrived while the fill was reading");
        assert!(r.filled(vec![d(2)], 3).is_empty(), "the fill's copy is dropped");
    }

    #[test]
    fn the_sequencer_forgets_rooms_it_no_longer_listens_to() {
        let s = Sequencer::default();
        let room = ObjectId::new();
        s.room(room).lock().accept(d(10));
        s.forget(room);
        assert_eq!(delivered(s.room(room).lock().accept(d(50))), [50], "a fresh baseline, no gap");
    }
}

//! Where a room's members can be reached: how many nodes hold each one's
//! connections, and, for a member held by one other node, whether that node
//! says they watch the room on every connection (a watching hint, see
//! `watching`).
//!
//! Asking Redis for this on every message (`PUBSUB NUMSUB` over the
//! members' topics, `ZMSCORE` over their hints) costs more than the
//! message's own fan-out. So the dispatching node keeps what it read per
//! room, and forgets it for a member when:
//!
//! - a node took up or dropped the member's topic, or made or withdrew a
//!   hint for them: after the change, that node publishes the member's id on
//!   the reach channel (`Keyspace::reach_channel`), which every node listens to;
//! - the room's member list changed (a new audience);
//! - the earliest hint it relied on lapses, or [`MAX_AGE_MS`] passed;
//! - this node's subscription to the reach channel (`Keyspace::reach_channel`) broke: it forgets everything
//!   and keeps nothing until it listens again.
//!
//! What is read while a change is on its way is used for that message but
//! not kept. A node that dies publishes nothing, and needs not: a live
//! notification published to a user it held reaches no node and goes to the
//! external queue instead (`delivery`), and its hints lapse.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bson::oid::ObjectId;
use dashmap::DashMap;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::broadcast::error::RecvError;

use super::audience::{Audience, Candidate};
use super::Notifier;
use crate::clock::now_ms;

/// The longest a room's reach is kept, whatever happens.
pub const MAX_AGE_MS: i64 = 10_000;

/// Rooms whose reach is kept per node.
const KEPT_ROOMS: usize = 1024;

/// Where one user can be reached, as far as a message's notification cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reached {
    /// Nodes holding the user's connections (0: offline).
    pub nodes: usize,
    /// Held by one other node, which says they watch the room on every
    /// connection.
    pub watching_elsewhere: bool,
}

/// The reach this node keeps, per room.
pub struct Reach {
    subscriber: SubscriberClient,
    kept: DashMap<ObjectId, Slot>,
    /// Each user's rooms in `kept`, to forget them by user.
    rooms_of: DashMap<ObjectId, Vec<ObjectId>>,
    /// Hands out load tokens: a load keeps its result only if its token is
    /// still the room's when it ends.
    tokens: AtomicU64,
    listening: AtomicBool,
}

struct Slot {
    token: u64,
    audience: Arc<Audience>,
    known: Option<Known>,
}

struct Known {
    /// In the order of the audience's members.
    members: Arc<[Reached]>,
    until_ms: i64,
}

impl Reach {
    /// Closes the reach listener's connection.
    pub async fn shutdown(&self) {
        let _ = self.subscriber.quit().await;
    }

    pub fn new(subscriber: SubscriberClient) -> Self {
        Reach {
            subscriber,
            kept: DashMap::new(),
            rooms_of: DashMap::new(),
            tokens: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        }
    }

    /// Where each candidate for a message in `room` can be reached.
    pub async fn of(
        &self,
        notifier: &Notifier,
        room: ObjectId,
        audience: &Arc<Audience>,
        candidates: &[Candidate],
    ) -> Vec<Reached> {
        if audience.member_ids().is_none() || !self.listening() {
            let users: Vec<ObjectId> = candidates.iter().map(|c| c.user).collect();
            return notifier.read(room, &users).await.0;
        }
        let members = match self.known(room, audience) {
            Some(members) => {
                metrics::counter!("confab_notification_reach_total", "source" => "kept").increment(1);
                members
            }
            None => {
                metrics::counter!("confab_notification_reach_total", "source" => "redis").increment(1);
                let token = self.begin(room, audience);
                let ids: Vec<ObjectId> = audience.member_ids().into_iter().flatten().collect();
                let (reached, until_ms) = notifier.read(room, &ids).await;
                let members: Arc<[Reached]> = reached.into();
                if let Some(until_ms) = until_ms {
                    self.finish(room, token, Known { members: members.clone(), until_ms });
                }
                members
            }
        };
        candidates.iter().map(|c| c.member.and_then(|at| members.get(at).copied()).unwrap_or_default()).collect()
    }

    fn listening(&self) -> bool {
        self.listening.load(Ordering::Acquire) && self.subscriber.is_connected()
    }

    fn token(&self) -> u64 {
        self.tokens.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn known(&self, room: ObjectId, audience: &Arc<Audience>) -> Option<Arc<[Reached]>> {
        let slot = self.kept.get(&room)?;
        let known = slot.known.as_ref().filter(|k| Arc::ptr_eq(&slot.audience, audience) && now_ms() < k.until_ms)?;
        Some(known.members.clone())
    }

    /// Starts a load of `room`'s reach (before anything is read): changes
    /// announced from now on void it.
    fn begin(&self, room: ObjectId, audience: &Arc<Audience>) -> u64 {
        let token = self.token();
        if let Some((evicted, slot)) = super::make_room(&self.kept, KEPT_ROOMS, room) {
            self.unindex(evicted, &slot.audience);
        }
        match self.kept.entry(room) {
            dashmap::Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                if !Arc::ptr_eq(&slot.audience, audience) {
                    let old = std::mem::replace(&mut slot.audience, audience.clone());
                    self.unindex(room, &old);
                    self.index(room, audience);
                }
                slot.token = token;
                slot.known = None;
            }
            dashmap::Entry::Vacant(e) => {
                self.index(room, audience);
                e.insert(Slot { token, audience: audience.clone(), known: None });
            }
        }
        token
    }

    /// Keeps a load's result, unless a change voided it meanwhile.
    fn finish(&self, room: ObjectId, token: u64, known: Known) {
        if let Some(mut slot) = self.kept.get_mut(&room) {
            if slot.token == token {
                slot.known = Some(known);
            }
        }
    }

    fn index(&self, room: ObjectId, audience: &Audience) {
        for user in audience.member_ids().into_iter().flatten() {
            let mut rooms = self.rooms_of.entry(user).or_default();
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
    }

    fn unindex(&self, room: ObjectId, audience: &Audience) {
        for user in audience.member_ids().into_iter().flatten() {
            self.rooms_of.remove_if_mut(&user, |_, rooms| {
                rooms.retain(|r| *r != room);
                rooms.is_empty()
            });
        }
    }

    /// Forgets the reach of every room `user` is a member of.
    pub fn forget(&self, user: ObjectId) {
        // Copied out first: `begin` locks `kept` before `rooms_of`.
        let rooms = self.rooms_of.get(&user).map(|r| r.clone()).unwrap_or_default();
        if !rooms.is_empty() {
            metrics::counter!("confab_notification_reach_changes_total").increment(1);
        }
        for room in rooms {
            if let Some(mut slot) = self.kept.get_mut(&room) {
                slot.token = self.token();
                slot.known = None;
            }
        }
    }

    /// Forgets every room's reach.
    fn forget_all(&self) {
        for mut slot in self.kept.iter_mut() {
            slot.token = self.token();
            slot.known = None;
        }
    }
}

impl Notifier {
    /// Reads where `users` can be reached in `room`; with the moment until
    /// which the answer may be kept, `None` if part of it could not be read.
    async fn read(&self, room: ObjectId, users: &[ObjectId]) -> (Vec<Reached>, Option<i64>) {
        if users.is_empty() {
            return (Vec::new(), None);
        }
        let Some(nodes) = self.holders(users).await else {
            return (vec![Reached::default(); users.len()], None);
        };
        let mut out: Vec<Reached> =
            nodes.into_iter().map(|nodes| Reached { nodes, watching_elsewhere: false }).collect();
        // Hints count only for users held by one node, and this node knows its
        // own users without them.
        let registry = &self.registry;
        let asked: Vec<usize> =
            (0..users.len()).filter(|&i| out[i].nodes == 1 && !registry.user_topic_held(users[i])).collect();
        let now = now_ms();
        let mut until = Some(now + MAX_AGE_MS);
        if asked.is_empty() {
            return (out, until);
        }
        let hinted: Vec<ObjectId> = asked.iter().map(|&i| users[i]).collect();
        match self.lapses(room, &hinted).await {
            Some(lapses) => {
                for (i, lapse) in asked.into_iter().zip(lapses) {
                    if let Some(lapse) = lapse.filter(|&at| at > now) {
                        out[i].watching_elsewhere = true;
                        until = until.map(|u| u.min(lapse));
                    }
                }
            }
            // Nobody is left out, and nothing is kept.
            None => until = None,
        }
        (out, until)
    }
}

impl Notifier {
    /// Listens on the reach channel (`Keyspace::reach_channel`) and forgets
    /// what the announced changes void, until the node stops.
    pub(super) async fn listen_reach(self: Arc<Self>) {
        let reach = &self.reach;
        let mut messages = reach.subscriber.message_rx();
        let mut reconnects = reach.subscriber.reconnect_rx();
        let mut errors = reach.subscriber.error_rx();
        let channel = self.keys.reach_channel();
        loop {
            reach.listening.store(false, Ordering::Release);
            reach.forget_all();
            // Raced with the stop: a subscription asked of a client that is
            // shut down meanwhile would never be answered.
            let subscribed = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = reach.subscriber.subscribe(&channel) => r,
            };
            if let Err(e) = subscribed {
                tracing::debug!(error = %e, "reach changes not subscribed; retrying");
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            // Whatever was read before the subscription may be stale.
            reach.forget_all();
            reach.listening.store(true, Ordering::Release);
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    message = messages.recv() => match message {
                        Ok(m) if *m.channel == *channel => {
                            for user in users_of(m.value.as_bytes().unwrap_or_default()) {
                                reach.forget(user);
                            }
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => reach.forget_all(),
                        Err(RecvError::Closed) => return,
                    },
                    // Changes may have been missed: start over.
                    event = reconnects.recv() => match event {
                        Err(RecvError::Closed) => return,
                        _ => break,
                    },
                    event = errors.recv() => match event {
                        Err(RecvError::Closed) => return,
                        _ => break,
                    },
                }
            }
        }
    }
}

/// The payload announcing changes for `users` on the reach channel: their
/// ids, 12 bytes each.
pub(super) fn payload(users: &[ObjectId]) -> Vec<u8> {
    users.iter().flat_map(|u| u.bytes()).collect()
}

fn users_of(payload: &[u8]) -> impl Iterator<Item = ObjectId> + '_ {
    payload.chunks_exact(12).map(|b| ObjectId::from_bytes(b.try_into().expect("chunks of 12")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unconnected() -> Reach {
        Reach::new(Builder::default_centralized().build_subscriber_client().unwrap())
    }

    fn known(nodes: usize, until_ms: i64) -> Known {
        Known { members: vec![Reached { nodes, watching_elsewhere: false }; 2].into(), until_ms }
    }

    fn later() -> i64 {
        now_ms() + MAX_AGE_MS
    }

    #[test]
    fn a_kept_reach_lasts_until_a_member_changes_the_list_changes_or_it_lapses() {
        let reach = unconnected();
        let (room, u1, u2, u3) = (ObjectId::new(), ObjectId::new(), ObjectId::new(), ObjectId::new());
        let audience = Arc::new(Audience::of_members(&[u1, u2]));
        assert!(reach.known(room, &audience).is_none());
        let t = reach.begin(room, &audience);
        reach.finish(room, t, known(1, later()));
        assert_eq!(reach.known(room, &audience).unwrap()[1].nodes, 1);

        reach.forget(u3);
        assert!(reach.known(room, &audience).is_some(), "not a member: nothing to forget");
        reach.forget(u2);
        assert!(reach.known(room, &audience).is_none(), "a member's change voids the room's reach");

        let t = reach.begin(room, &audience);
        reach.finish(room, t, known(1, later()));
        let newer = Arc::new(Audience::of_members(&[u1, u2, u3]));
        assert!(reach.known(room, &newer).is_none(), "read for another member list");

        let t = reach.begin(room, &newer);
        reach.finish(room, t, known(1, now_ms() - 1));
        assert!(reach.known(room, &newer).is_none(), "lapsed");

        // The index follows the member list.
        let t = reach.begin(room, &newer);
        reach.finish(room, t, known(1, later()));
        reach.forget(u3);
        assert!(reach.known(room, &newer).is_none());

        let t = reach.begin(room, &newer);
        reach.finish(room, t, known(1, later()));
        reach.forget_all();
        assert!(reach.known(room, &newer).is_none());
    }

    #[test]
    fn a_change_during_a_load_voids_it_and_the_latest_load_wins() {
        let reach = unconnected();
        let (room, u1, u2) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let audience = Arc::new(Audience::of_members(&[u1, u2]));
        let t = reach.begin(room, &audience);
        reach.forget(u1);
        reach.finish(room, t, known(1, later()));
        assert!(reach.known(room, &audience).is_none(), "read before the change, kept after it");

        let first = reach.begin(room, &audience);
        let second = reach.begin(room, &audience);
        reach.finish(room, first, known(1, later()));
        assert!(reach.known(room, &audience).is_none());
        reach.finish(room, second, known(2, later()));
        assert_eq!(reach.known(room, &audience).unwrap()[0].nodes, 2);
    }

    #[test]
    fn kept_rooms_are_bounded_and_so_is_their_index() {
        let reach = unconnected();
        for _ in 0..KEPT_ROOMS + 10 {
            let audience = Arc::new(Audience::of_members(&[ObjectId::new()]));
            let room = ObjectId::new();
            let t = reach.begin(room, &audience);
            reach.finish(room, t, known(1, later()));
        }
        assert_eq!(reach.kept.len(), KEPT_ROOMS);
        assert_eq!(reach.rooms_of.len(), KEPT_ROOMS, "evicted rooms leave the index");
    }

    #[test]
    fn announced_users_round_trip_and_a_torn_tail_is_ignored() {
        let users = [ObjectId::new(), ObjectId::new()];
        let mut bytes = payload(&users);
        assert_eq!(users_of(&bytes).collect::<Vec<_>>(), users);
        bytes.extend_from_slice(b"torn");
        assert_eq!(users_of(&bytes).collect::<Vec<_>>(), users);
        assert_eq!(users_of(b"").count(), 0);
    }
}

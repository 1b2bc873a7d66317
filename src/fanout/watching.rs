//! Watching hints: what this node tells the cluster about users who watch a
//! room, so that the node dispatching a message's notifications can skip
//! users who would be shown nothing.
//!
//! When a notification about room R reaches this node for user U and every
//! local connection of U is subscribed to R, the node shows it to nobody
//! and notes "U watches R here"; the notifier writes that to Redis with a
//! short expiry. The note is withdrawn as soon as it may stop being true: U
//! opens another connection here, a connection of U leaves R or is evicted
//! from it, or U's last connection here closes. While it stands, the node
//! refreshes it well within its expiry. Dispatchers trust a hint only for a
//! user held by exactly one node, so a hint can never speak for connections
//! elsewhere; a withdrawal lost to a crash or a Redis error lasts at most
//! the expiry.
//!
//! The same ordered stream carries one more kind of change: this node took
//! up or dropped a user's bus topic, so the number of nodes holding the
//! user changed. Dispatchers keep what they learnt about where a room's
//! members can be reached (`notifications::reach`), and both kinds of
//! change tell them to forget it for that user.

use std::collections::HashSet;
use std::sync::OnceLock;

use bson::oid::ObjectId;
use dashmap::DashMap;
use tokio::sync::mpsc;

/// A note made, renewed or withdrawn, or a change of the nodes holding a
/// user, for the notifier to write to Redis in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new note.
    Watching {
        user: ObjectId,
        room: ObjectId,
    },
    /// A standing note, re-sent so that its hint does not lapse.
    Renewed {
        user: ObjectId,
        room: ObjectId,
    },
    Ended {
        user: ObjectId,
        room: ObjectId,
    },
    /// This node subscribed to or unsubscribed from the user's topic.
    Holders {
        user: ObjectId,
    },
}

#[derive(Default)]
pub struct Watching {
    noted: DashMap<ObjectId, HashSet<ObjectId>>,
    sink: OnceLock<mpsc::UnboundedSender<Change>>,
}

impl Watching {
    /// Starts reporting changes; without a reader nothing is noted.
    pub fn changes(&self) -> Option<mpsc::UnboundedReceiver<Change>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.sink.set(tx).ok().map(|()| rx)
    }

    fn send(&self, change: Change) {
        if let Some(sink) = self.sink.get() {
            let _ = sink.send(change);
        }
    }

    /// Every local connection of `user` watches `room`. A note already
    /// standing is left to the refresh.
    pub fn note(&self, user: ObjectId, room: ObjectId) {
        if self.sink.get().is_none() {
            return;
        }
        if self.noted.entry(user).or_default().insert(room) {
            self.send(Change::Watching { user, room });
        }
    }

    /// This node took up or dropped `user`'s topic (once the bus confirmed it).
    pub fn holders_changed(&self, user: ObjectId) {
        self.send(Change::Holders { user });
    }

    /// Re-sends every note still standing, so their hints outlive their
    /// expiry without another notification having to reach the user. A
    /// note ended meanwhile is either not re-sent or withdrawn after it (a
    /// shard is read-locked while its notes are sent).
    pub fn refresh(&self) {
        if self.sink.get().is_none() {
            return;
        }
        for entry in self.noted.iter() {
            for room in entry.value() {
                self.send(Change::Renewed { user: *entry.key(), room: *room });
            }
        }
    }

    /// `user` may no longer watch `room` with every local connection.
    pub fn ended(&self, user: ObjectId, room: ObjectId) {
        let mut was = false;
        self.noted.remove_if_mut(&user, |_, rooms| {
            was = rooms.remove(&room);
            rooms.is_empty()
        });
        if was {
            self.send(Change::Ended { user, room });
        }
    }

    /// `user` may no longer watch any room with every local connection.
    pub fn ended_all(&self, user: ObjectId) {
        if let Some((_, rooms)) = self.noted.remove(&user) {
            for room in rooms {
                self.send(Change::Ended { user, room });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_sent_once_and_withdrawn_only_when_made() {
        let w = Watching::default();
        let (user, room, other) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        w.note(user, room);
        assert!(w.noted.is_empty(), "nothing is noted without a reader");
        let mut rx = w.changes().unwrap();
        assert!(w.changes().is_none(), "one reader");
        w.note(user, room);
        w.note(user, room);
        w.note(user, other);
        w.ended(user, room);
        w.ended(user, room);
        w.ended(ObjectId::new(), room);
        w.ended_all(user);
        w.ended_all(user);
        let got: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(
            got,
            [
                Change::Watching { user, room },
                Change::Watching { user, room: other },
                Change::Ended { user, room },
                Change::Ended { user, room: other },
            ]
        );
        assert!(w.noted.is_empty());
    }

    #[test]
    fn a_refresh_re_sends_the_standing_notes_only() {
        let w = Watching::default();
        let mut rx = w.changes().unwrap();
        let (user, room, other) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        w.note(user, room);
        w.note(user, other);
        w.ended(user, other);
        let _: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        w.refresh();
        let got: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, [Change::Renewed { user, room }]);
        w.ended_all(user);
        w.refresh();
        let got: Vec<Change> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(got, [Change::Ended { user, room }], "nothing left to refresh");
    }
}

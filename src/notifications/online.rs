//! Whether a user has a connection on any node — the one place that
//! decides it, so a richer presence can take over here.
//!
//! A node subscribes to a user's bus topic while it holds at least one of
//! their connections (`ws::Sockets::spawn_chat`), so the topic's subscriber count
//! is the number of nodes holding the user: one `PUBSUB NUMSUB` answers for
//! a thousand users at a time.

use bson::oid::ObjectId;

use super::Notifier;
use crate::bus::{BusError, Topic};

impl Notifier {
    /// For each user, in order: connected somewhere.
    pub async fn online(&self, users: &[ObjectId]) -> Result<Vec<bool>, BusError> {
        Ok(self.nodes(users).await?.into_iter().map(|n| n > 0).collect())
    }

    /// For each user, in order: how many nodes hold their connections (0: offline).
    pub async fn nodes(&self, users: &[ObjectId]) -> Result<Vec<usize>, BusError> {
        let topics: Vec<Topic> = users.iter().map(|u| Topic::User(*u)).collect();
        self.bus.subscribers(&topics).await
    }
}

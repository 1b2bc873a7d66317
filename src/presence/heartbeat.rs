//! The node's presence housekeeping, one task per node, every heartbeat
//! interval until shutdown:
//!
//! 1. Heartbeat: refresh this node's key (it expires after `node_ttl`).
//!    Finding it expired means the other nodes may have swept this node's
//!    connections while it could not reach Redis, so it repairs.
//! 2. Repair, when needed: make Redis count exactly the connections this
//!    node has (adding what a failed connect missed, removing what a failed
//!    disconnect left, or what an earlier run under the same id left). Only
//!    after two heartbeats in a row have succeeded: right after Redis comes
//!    back the bus may not have resubscribed yet, and the repair's
//!    announcements would miss this node's own clients.
//! 3. Sweep: take out the connections of every node whose heartbeat has
//!    expired, and announce the users that went offline with them. Every
//!    node sweeps; the tracker makes sure each connection is removed once.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Presence, TrackerError};
use crate::clock::now_ms;

impl Presence {
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let presence = &self;
        let mut tick = tokio::time::interval(presence.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = true;
        let mut steady = false;
        loop {
            tokio::select! {
                _ = presence.stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            match presence.tracker.heartbeat(&presence.node, presence.ttl).await {
                Ok(true) => {}
                Ok(false) if first => {}
                Ok(false) => {
                    tracing::warn!(node = %presence.node, "this node's heartbeat had expired; repairing its presence");
                    presence.dirty.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    presence.failed("heartbeat", &e);
                    steady = false;
                    continue;
                }
            }
            first = false;
            let repair_now = steady;
            steady = true;
            // The bus must answer too: a PING on the subscriber connection
            // returns after the SUBSCRIBEs a reconnect re-sent, so the repair's
            // announcements can reach this node's own clients.
            let bus_ready = repair_now && presence.bus.ping().await.is_ok();
            if bus_ready && presence.dirty.swap(false, Ordering::Relaxed) {
                if let Err(e) = presence.repair().await {
                    presence.failed("repair", &e);
                }
            }
            if let Err(e) = presence.sweep().await {
                presence.failed("sweep", &e);
            }
        }
    }

    /// Makes the tracker count exactly this node's connections.
    async fn repair(&self) -> Result<(), TrackerError> {
        let presence = self;
        // Read Redis before the local map: a connection counted in Redis is
        // then either in the map or on its way out, never on its way in.
        let counted = presence.tracker.connections(&presence.node).await?;
        let local = presence.local().clone();
        let counted_ids: HashSet<_> = counted.iter().map(|(_, conn)| *conn).collect();
        let mut fixed = 0;
        // Announced together at the end, also when Redis fails half-way.
        let mut changes = Vec::new();
        let result = async {
            for (user, conn) in counted.into_iter().filter(|(_, conn)| !local.contains_key(conn)) {
                fixed += 1;
                if let Some(state) = presence.tracker.disconnect(presence.connection(conn, user), now_ms()).await? {
                    changes.push((user, state));
                }
            }
            // Every local connection is counted again (idempotent): one in
            // the node's set may have missed its count when Redis failed
            // between the two (see the tracker).
            for (conn, user) in local {
                if !presence.local().contains_key(&conn) {
                    continue; // closed meanwhile
                }
                if !counted_ids.contains(&conn) {
                    fixed += 1;
                }
                if let Some(state) = presence.tracker.connect(presence.connection(conn, user), now_ms()).await? {
                    changes.push((user, state));
                }
            }
            Ok::<(), TrackerError>(())
        }
        .await;
        presence.announce(changes).await;
        result?;
        if fixed > 0 {
            metrics::counter!("confab_presence_repaired_total").increment(fixed);
            tracing::info!(node = %presence.node, fixed, "presence repaired");
        }
        Ok(())
    }

    /// Sweeps the connections of nodes whose heartbeat has expired.
    async fn sweep(&self) -> Result<(), TrackerError> {
        let presence = self;
        for node in presence.tracker.dead_nodes().await? {
            if node == presence.node {
                continue;
            }
            let users = presence.tracker.sweep(&node, now_ms()).await?;
            metrics::counter!("confab_presence_swept_nodes_total").increment(1);
            tracing::info!(dead = %node, offline = users.len(), "swept a dead node's connections");
            presence.announce_offline(users).await;
        }
        Ok(())
    }
}

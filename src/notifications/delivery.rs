//! Getting notifications to users: stored for those without a connection
//! (and queued for external delivery), shown live to the others on the node
//! that holds them — through the bus, or directly when that node is this one
//! — and stored by whichever node shows them first.

use std::sync::Arc;

use bson::oid::ObjectId;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::Notifier;
use super::{count, json_of, Content, LiveView, Outcome, Route};
use crate::bus::{Event, Topic};
use crate::clock::rfc3339;
use crate::error::Result;
use crate::fanout::Shown;
use crate::protocol::ServerEvent;
use crate::store::Notification;

/// Live notifications published at once by one dispatch.
const PUBLISHING: usize = 64;

impl Notifier {
    /// Notifies each of `users` with `content`; see the module doc.
    pub async fn dispatch(&self, users: &[ObjectId], content: &Content, route: Route) -> Result<Outcome> {
        let holders = self.holders(users).await.unwrap_or_else(|| vec![0; users.len()]);
        self.deliver(users.iter().copied().zip(holders).collect(), content, route).await
    }

    /// How many nodes hold each user's connections; `None` (logged) when Redis
    /// cannot say, and then the notifications go to the external queue.
    pub(super) async fn holders(&self, users: &[ObjectId]) -> Option<Vec<usize>> {
        if users.is_empty() {
            return Some(Vec::new());
        }
        self.nodes(users)
            .await
            .inspect_err(
                |e| tracing::warn!(error = %e, "presence check failed; notifications go to the external queue"),
            )
            .ok()
    }

    /// Notifies users, each with the number of nodes holding them. A user held
    /// by this node alone is served here without the bus round trip.
    pub(super) async fn deliver(
        &self,
        users: Vec<(ObjectId, usize)>,
        content: &Content,
        route: Route,
    ) -> Result<Outcome> {
        if users.is_empty() {
            return Ok(Outcome::default());
        }
        let now = Utc::now();
        let frame = LiveFrame::new(content, now);
        let store_first = route == Route::Everywhere;
        let mut outcome = Outcome { notified: users.len(), ..Default::default() };
        let (mut to_store, mut external, mut remote) = (Vec::new(), Vec::new(), Vec::new());
        for (user, nodes) in users {
            let id = ObjectId::new();
            let n = || content.notification(user, id, now);
            match (route, nodes) {
                (_, 0) => {
                    to_store.push(Notification { external: Some("pending".into()), ..n() });
                    external.push(id);
                }
                (Route::OutsideRoom(room), 1) if self.registry.user_topic_held(user) => {
                    // The one node holding the user is this one.
                    if self.registry.send_to_user_except_room(user, Some(room), &frame.with_id(id)) > 0 {
                        count("realtime", 1);
                        outcome.delivered_realtime += 1;
                        to_store.push(Notification { delivered_realtime: true, ..n() });
                    }
                }
                _ => {
                    if store_first {
                        to_store.push(Notification { delivered_realtime: true, ..n() });
                    }
                    remote.push((user, id));
                }
            }
        }
        self.store.insert_notifications(&to_store).await?;
        count("stored", to_store.len());

        let stored_at_us = if store_first { now.timestamp_micros().max(1) as u64 } else { 0 };
        let published: Vec<(ObjectId, ObjectId, bool)> = futures::stream::iter(remote)
            .map(|(user, id)| {
                let frame = frame.with_id(id);
                async move {
                    let room = match route {
                        Route::OutsideRoom(room) => Some(room),
                        Route::Everywhere => None,
                    };
                    (user, id, self.publish(user, Event::Notify { id, room, stored_at_us, frame: &frame }).await)
                }
            })
            .buffer_unordered(PUBLISHING)
            .collect()
            .await;
        for (user, id, reached) in published {
            if reached {
                outcome.delivered_realtime += 1;
                continue;
            }
            // Their last connection closed after the check: deliver externally.
            let saved = if store_first {
                self.store.set_notification_delivery(id, false, Some("pending")).await
            } else {
                let n = Notification { external: Some("pending".into()), ..content.notification(user, id, now) };
                self.store.insert_notification_once(&n).await.inspect(|&stored| count("stored", usize::from(stored)))
            };
            match saved {
                Ok(_) => external.push(id),
                Err(e) => tracing::warn!(error = %e, "notification for a user who just went offline is lost"),
            }
        }
        outcome.queued_external = external.len();
        self.enqueue(&external).await;
        Ok(outcome)
    }

    /// Publishes one live notification on its user's topic; whether any node
    /// holding a connection of theirs received it.
    async fn publish(&self, user: ObjectId, event: Event<'_>) -> bool {
        match self.bus.publish_counted(Topic::User(user), event).await {
            Ok(nodes) => nodes > 0,
            Err(e) => {
                metrics::counter!("confab_bus_publish_failures_total").increment(1);
                tracing::warn!(error = %e, "live notification not published");
                false
            }
        }
    }
}

/// A dispatch's live frame, encoded once: each recipient's copy differs
/// only in the notification id, written over a placeholder.
struct LiveFrame {
    view: LiveView,
    bytes: Bytes,
    /// Where the id's 24 hex digits start, if the encoding put it first.
    id_at: Option<usize>,
}

/// How every live frame starts: the id is the first field of `data`.
const FRAME_START: &[u8] = br#"{"type":"notification","data":{"id":""#;

impl LiveFrame {
    fn new(content: &Content, at: DateTime<Utc>) -> Self {
        let view = LiveView {
            id: ObjectId::from_bytes([0; 12]).to_hex(),
            kind: content.kind.clone(),
            title: content.title.clone(),
            message: content.message.clone(),
            data: json_of(&content.data),
            timestamp: rfc3339(&at),
        };
        let bytes = ServerEvent::Notification { view: &view }.encode();
        let id_at = bytes.starts_with(FRAME_START).then_some(FRAME_START.len());
        LiveFrame { view, bytes, id_at }
    }

    fn with_id(&self, id: ObjectId) -> Bytes {
        match self.id_at {
            Some(at) => {
                let mut out = BytesMut::from(&self.bytes[..]);
                out[at..at + 24].copy_from_slice(id.to_hex().as_bytes());
                out.freeze()
            }
            None => {
                let view = LiveView { id: id.to_hex(), ..self.view.clone() };
                ServerEvent::Notification { view: &view }.encode()
            }
        }
    }
}

impl Notifier {
    /// Takes the notifications the fan-out showed here: counts each, and
    /// stores those nobody has stored yet (the id makes a second node's
    /// store a no-op). Runs until shutdown, then stores what is queued.
    pub(super) async fn store_shown(self: Arc<Self>, mut shown: mpsc::UnboundedReceiver<Shown>) {
        loop {
            let next = tokio::select! {
                next = shown.recv() => next,
                _ = self.stop.cancelled() => None,
            };
            let Some(next) = next.or_else(|| shown.try_recv().ok()) else { return };
            count("realtime", 1);
            if next.stored_at_us != 0 {
                continue;
            }
            let Some(n) = from_frame(next.user, &next.frame) else {
                tracing::warn!("a live notification frame could not be read back; not stored");
                continue;
            };
            let store = self.store.clone();
            self.tasks.spawn(async move {
                match store.insert_notification_once(&n).await {
                    Ok(true) => count("stored", 1),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "notification shown live but not stored"),
                }
            });
        }
    }
}

/// The notification a live frame carries, as its user's stored record.
fn from_frame(user: ObjectId, frame: &[u8]) -> Option<Notification> {
    #[derive(Deserialize)]
    struct Envelope {
        data: LiveView,
    }
    let live = serde_json::from_slice::<Envelope>(frame).ok()?.data;
    let Value::Object(data) = live.data else { return None };
    Some(Notification {
        id: ObjectId::parse_str(&live.id).ok()?,
        user_id: user,
        kind: live.kind,
        title: live.title,
        message: live.message,
        data: bson::Document::try_from(data).ok()?,
        created_at: DateTime::parse_from_rfc3339(&live.timestamp).ok()?.with_timezone(&Utc),
        read: false,
        read_at: None,
        delivered_realtime: true,
        external: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_frames_read_back_into_the_same_notification() {
        let content = Content {
            kind: "new_message".into(),
            title: "New message from alice in #general".into(),
            message: "hi @bob".into(),
            data: bson::doc! {"room_id": "r", "n": 3, "nested": {"ok": true}},
        };
        let user = ObjectId::new();
        let n = content.notification(user, ObjectId::new(), Utc::now());
        let frame = LiveFrame::new(&content, n.created_at).with_id(n.id);
        let encoded = ServerEvent::Notification { view: &LiveView::from(&n) }.encode();
        // The same but for the envelope's own send time (milliseconds apart).
        let without_send_time = |f: &[u8]| {
            let mut v: Value = serde_json::from_slice(f).unwrap();
            v.as_object_mut().unwrap().remove("timestamp");
            v
        };
        assert_eq!(without_send_time(&frame), without_send_time(&encoded), "patched = encoded");
        let v: Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v["type"], "notification");
        assert_eq!(v["data"]["type"], "new_message");
        assert_eq!(v["data"]["data"]["nested"]["ok"], true);
        let back = from_frame(user, &frame).unwrap();
        assert_eq!((back.id, back.user_id, &back.title, &back.data), (n.id, user, &n.title, &n.data));
        assert_eq!(back.created_at.timestamp_millis(), n.created_at.timestamp_millis());
        assert!(back.delivered_realtime && back.external.is_none() && !back.read);
        assert!(from_frame(user, b"{\"data\":{}}").is_none());
    }
}

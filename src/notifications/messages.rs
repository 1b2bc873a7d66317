//! From a message to its notifications: the room's audience, minus those
//! who would be shown nothing, filtered by each one's preferences.

use std::collections::HashMap;

use bson::oid::ObjectId;
use chrono::Utc;

use super::Notifier;
use super::{audience, preferences, Content, MessageJob, Outcome, Route};
use crate::error::Result;
use crate::store::{Message, RoomKind};

/// Longest preview of a message in its notification, in characters.
pub const PREVIEW_CHARS: usize = 140;

impl Notifier {
    /// Notifies the members of a message's room (see `audience` for which).
    pub(super) async fn for_message(&self, job: MessageJob) -> Result<Outcome> {
        let m = &job.message;
        let audience = self.audiences.of(self, m.room_id).await?;
        let mentions = audience::mentions(&m.content);
        let candidates = audience.candidates(self, m.room_id, m.sender_id, &mentions).await?;
        let reach = self.reach.of(self, m.room_id, &audience, &candidates).await;
        // Leave out first, before any preferences are read, whoever would be
        // shown nothing: every connection watches the room (busy rooms are
        // mostly watched).
        let registry = &self.registry;
        let (mut kept, mut watched) = (Vec::new(), 0);
        for (c, reached) in candidates.into_iter().zip(reach) {
            let held_here = || registry.user_topic_held(c.user);
            match reached.nodes {
                1 if reached.watching_elsewhere && !held_here() => watched += 1,
                1 if held_here() && registry.watches_here(c.user, m.room_id) => watched += 1,
                nodes => kept.push((c.user, c.addressed, nodes)),
            }
        }
        metrics::counter!("confab_notifications_suppressed_total", "reason" => "watching").increment(watched);
        let ids: Vec<ObjectId> = kept.iter().map(|(id, _, _)| *id).collect();
        let prefs = self.load_many(&ids).await?;
        let now = Utc::now();
        let mut recipients = Vec::with_capacity(kept.len());
        let mut suppressed: HashMap<&'static str, u64> = HashMap::new();
        for (user, addressed, nodes) in kept {
            let wants = prefs.get(&user).map_or(Ok(()), |p| preferences::check(p, m.room_id, addressed, now));
            match wants {
                Ok(()) => recipients.push((user, nodes)),
                Err(why) => *suppressed.entry(why.label()).or_default() += 1,
            }
        }
        for (reason, n) in suppressed {
            metrics::counter!("confab_notifications_suppressed_total", "reason" => reason).increment(n);
        }
        let content = message_content(m, &job.sender_name, &audience);
        self.deliver(recipients, &content, Route::OutsideRoom(m.room_id)).await
    }
}

fn message_content(m: &Message, sender_name: &str, audience: &audience::Audience) -> Content {
    let title = match audience.kind {
        RoomKind::Direct => sender_name.to_string(),
        _ => format!("New message from {sender_name} in #{}", audience.room_name),
    };
    Content {
        kind: "new_message".into(),
        title,
        message: preview(&m.content),
        data: bson::doc! {
            "room_id": m.room_id.to_hex(),
            "message_id": m.id.to_hex(),
            "sender_id": m.sender_id.to_hex(),
        },
    }
}

/// The first [`PREVIEW_CHARS`] characters, with an ellipsis if cut.
pub fn preview(content: &str) -> String {
    match content.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", content[..cut].trim_end()),
        None => content.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_cut_long_messages_at_a_character_boundary() {
        assert_eq!(preview("hello"), "hello");
        let exact = "é".repeat(PREVIEW_CHARS);
        assert_eq!(preview(&exact), exact);
        let long = format!("{} tail", "é".repeat(PREVIEW_CHARS));
        assert_eq!(preview(&long), format!("{exact}…"));
    }
}

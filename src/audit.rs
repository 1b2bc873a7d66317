//! The audit log: every security-relevant event, appended to the `audit`
//! collection with who did it, from where, and how it went. Never a
//! password, token or secret: callers pass ids, names and outcomes only.
//!
//! A failed append is logged and counted
//! (`confab_audit_write_failures_total`) but does not fail what was being
//! done: a login must not depend on the log being writable.

use std::sync::Arc;

use bson::oid::ObjectId;
use bson::Document;
use chrono::Utc;

use crate::error::Result;
use crate::store::{ActorKind, AuditEntry, AuditQuery, Store};

/// Longest user agent kept.
const MAX_USER_AGENT: usize = 256;

/// Where a request came from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl Source {
    pub fn new(ip: Option<String>, user_agent: Option<&str>) -> Source {
        let user_agent = user_agent.map(|ua| {
            let mut cut = ua.len().min(MAX_USER_AGENT);
            while !ua.is_char_boundary(cut) {
                cut -= 1;
            }
            ua[..cut].to_string()
        });
        Source { ip, user_agent }
    }

    /// An operator's command on this machine.
    pub fn command() -> Source {
        Source { ip: None, user_agent: Some("confab (command line)".into()) }
    }
}

/// Who acted.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    pub id: Option<ObjectId>,
    pub kind: ActorKind,
}

impl Actor {
    pub fn user(id: ObjectId) -> Actor {
        Actor { id: Some(id), kind: ActorKind::User }
    }
    pub fn unknown_user() -> Actor {
        Actor { id: None, kind: ActorKind::User }
    }
    pub fn system() -> Actor {
        Actor { id: None, kind: ActorKind::System }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: Actor,
    pub action: &'static str,
    pub target: Option<String>,
    pub outcome: &'static str,
    pub details: Document,
}

impl Event {
    pub fn new(actor: Actor, action: &'static str) -> Event {
        Event { actor, action, target: None, outcome: "ok", details: Document::new() }
    }
    pub fn target(mut self, target: String) -> Event {
        self.target = Some(target);
        self
    }
    pub fn outcome(mut self, outcome: &'static str) -> Event {
        self.outcome = outcome;
        self
    }
    pub fn details(mut self, details: Document) -> Event {
        self.details = details;
        self
    }
}

pub struct Audit {
    store: Arc<Store>,
}

impl Audit {
    pub fn new(store: Arc<Store>) -> Self {
        Audit { store }
    }

    /// Appends one event (see the module docs on failure).
    pub async fn record(&self, event: Event, from: &Source) {
        let entry = AuditEntry {
            id: ObjectId::new(),
            at: Utc::now(),
            actor_id: event.actor.id,
            actor_kind: event.actor.kind,
            action: event.action.to_string(),
            target: event.target,
            ip: from.ip.clone(),
            user_agent: from.user_agent.clone(),
            outcome: event.outcome.to_string(),
            details: event.details,
        };
        if let Err(e) = self.store.insert_audit(&entry).await {
            metrics::counter!("confab_audit_write_failures_total").increment(1);
            tracing::error!(error = %e, action = entry.action, "audit entry not written");
        }
    }

    /// A page of entries, newest first.
    pub async fn page(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        Ok(self.store.audit(q).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_user_agents_are_cut_at_a_character_boundary() {
        let ua = "é".repeat(200); // 400 bytes
        let s = Source::new(None, Some(&ua));
        let kept = s.user_agent.unwrap();
        assert!(kept.len() <= MAX_USER_AGENT && kept.len() >= MAX_USER_AGENT - 1);
        assert!(kept.chars().all(|c| c == 'é'));
    }
}

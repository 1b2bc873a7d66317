//! Notifications a backend sends through the server API: to a list of
//! users, or to every member of a room. They are the backend's decision, so
//! users' message preferences do not filter them; they are stored for every
//! recipient, shown live on every connection of those connected, and queued
//! for external delivery for the others.

use std::collections::HashSet;

use bson::oid::ObjectId;
use serde::Deserialize;
use serde_json::Value;

use super::Notifier;
use super::{Content, Outcome, Route};
use crate::error::{Error, Result};

/// Most user ids one `notify` call may name.
pub const MAX_USER_IDS: usize = 10_000;
/// Largest `data` object, serialized, in bytes.
pub const MAX_DATA_BYTES: usize = 16 * 1024;
/// Members read (and notified) per step of a broadcast.
const BROADCAST_PAGE: i64 = 1000;
/// How deep `data` may nest.
const MAX_DEPTH: usize = 16;

/// A notification as a backend writes it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationInput {
    /// 1–64 characters, no spaces or control characters.
    #[serde(rename = "type")]
    #[schema(min_length = 1, max_length = 64)]
    pub kind: String,
    /// 1–200 characters, not blank.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// At most 2000 characters.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub message: String,
    /// A JSON object of at most 16 KiB, nested at most 16 levels; no key
    /// starts with `$` or contains `.`; no array directly inside an array.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

fn text(field: &'static str, value: &str, min: usize, max: usize) -> Result<()> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(Error::invalid(field, format!("must be {min} to {max} characters")));
    }
    Ok(())
}

/// Checks a backend's notification: `type` 1–64 characters without spaces
/// or control characters, `title` 1–200 characters, `message` at most 2000,
/// `data` an object of at most 16 KiB whose keys neither start with `$` nor
/// contain `.` (MongoDB field rules), with no array directly in an array.
pub fn validate(input: NotificationInput) -> Result<Content> {
    text("notification.type", &input.kind, 1, 64)?;
    if input.kind.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid("notification.type", "must not contain spaces or control characters"));
    }
    text("notification.title", &input.title, 1, 200)?;
    if input.title.trim().is_empty() {
        return Err(Error::invalid("notification.title", "must not be blank"));
    }
    text("notification.message", &input.message, 0, 2000)?;
    let data = match input.data {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(Error::invalid("notification.data", "must be an object")),
    };
    let size = serde_json::to_vec(&data).map_or(usize::MAX, |b| b.len());
    if size > MAX_DATA_BYTES {
        return Err(Error::invalid("notification.data", format!("must be at most {MAX_DATA_BYTES} bytes as JSON")));
    }
    check_keys(&Value::Object(data.clone()), 0)?;
    let data = bson::Document::try_from(data).map_err(|e| Error::invalid("notification.data", e.to_string()))?;
    Ok(Content { kind: input.kind, title: input.title, message: input.message, data })
}

fn check_keys(value: &Value, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::invalid("notification.data", format!("must not nest deeper than {MAX_DEPTH} levels")));
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key.starts_with('$') || key.contains('.') || key.contains('\0') {
                    return Err(Error::invalid(
                        "notification.data",
                        format!("key `{key}`: keys must not start with `$` or contain `.`"),
                    ));
                }
                check_keys(v, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for v in items {
                // Not every MongoDB-compatible store keeps an array directly
                // inside an array (FerretDB does not): refused here, the
                // same on every store, rather than failing in the store.
                if v.is_array() {
                    return Err(Error::invalid(
                        "notification.data",
                        "an array must not hold an array directly: wrap the inner one in an object",
                    ));
                }
                check_keys(v, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// What `notify` did, and which ids named no user.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NotifyOutcome {
    #[serde(flatten)]
    pub outcome: Outcome,
    pub unknown_user_ids: Vec<String>,
}

impl Notifier {
    /// Notifies each named user once (duplicates count once; ids of no user are
    /// reported, not notified).
    pub async fn notify(&self, user_ids: &[ObjectId], content: &Content) -> Result<NotifyOutcome> {
        if user_ids.len() > MAX_USER_IDS {
            return Err(Error::invalid("user_ids", format!("at most {MAX_USER_IDS} per call")));
        }
        let mut seen = HashSet::with_capacity(user_ids.len());
        let distinct: Vec<ObjectId> = user_ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        let known: HashSet<ObjectId> = self.store.users(&distinct).await?.into_iter().map(|u| u.id).collect();
        let (users, unknown): (Vec<ObjectId>, Vec<ObjectId>) = distinct.into_iter().partition(|id| known.contains(id));
        let outcome = self.dispatch(&users, content, Route::Everywhere).await?;
        Ok(NotifyOutcome { outcome, unknown_user_ids: unknown.iter().map(|id| id.to_hex()).collect() })
    }

    /// Notifies every member of a room, a page of members at a time.
    pub async fn broadcast(&self, room: ObjectId, content: &Content) -> Result<Outcome> {
        self.store.room(room).await?.ok_or_else(|| Error::NotFound("room not found".into()))?;
        let mut total = Outcome::default();
        let mut after = None;
        loop {
            let page = self.store.room_members_page(room, after, BROADCAST_PAGE).await?;
            let users: Vec<ObjectId> = page.iter().map(|m| m.user_id).collect();
            total += self.dispatch(&users, content, Route::Everywhere).await?;
            if (page.len() as i64) < BROADCAST_PAGE {
                return Ok(total);
            }
            after = users.last().copied();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> NotificationInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_good_notification_passes_with_its_data() {
        let c =
            validate(input(json!({"type": "invoice.paid", "title": "Paid", "data": {"amount": 12, "tags": ["a"]}})))
                .unwrap();
        assert_eq!((c.kind.as_str(), c.title.as_str(), c.message.as_str()), ("invoice.paid", "Paid", ""));
        assert_eq!(c.data.get_i32("amount").ok(), Some(12));
        assert!(validate(input(json!({"type": "t", "title": "x", "data": null}))).unwrap().data.is_empty());
    }

    #[test]
    fn each_rule_names_its_field() {
        let cases = [
            (json!({"type": "", "title": "x"}), "notification.type"),
            (json!({"type": "a".repeat(65), "title": "x"}), "notification.type"),
            (json!({"type": "two words", "title": "x"}), "notification.type"),
            (json!({"type": "t", "title": ""}), "notification.title"),
            (json!({"type": "t", "title": "   "}), "notification.title"),
            (json!({"type": "t", "title": "x".repeat(201)}), "notification.title"),
            (json!({"type": "t", "title": "x", "message": "m".repeat(2001)}), "notification.message"),
            (json!({"type": "t", "title": "x", "data": [1]}), "notification.data"),
            (json!({"type": "t", "title": "x", "data": {"big": "x".repeat(MAX_DATA_BYTES)}}), "notification.data"),
            (json!({"type": "t", "title": "x", "data": {"$where": 1}}), "notification.data"),
            (json!({"type": "t", "title": "x", "data": {"a": [{"b.c": 1}]}}), "notification.data"),
            // Found by Schemathesis: the store refused it, and the caller got a 500.
            (json!({"type": "t", "title": "x", "data": {"a": [[], {}, null]}}), "notification.data"),
            (json!({"type": "t", "title": "x", "data": {"a": {"b": [1, [2]]}}}), "notification.data"),
        ];
        for (v, field) in cases {
            let err = validate(input(v.clone())).unwrap_err();
            assert_eq!(err.status().as_u16(), 422, "{v}");
            assert!(err.to_string().starts_with(field), "{v}: {err}");
        }
        assert!(validate(input(json!({"type": "t", "title": "x".repeat(200), "message": "m".repeat(2000)}))).is_ok());
        // An array inside an object inside an array is fine.
        assert!(validate(input(json!({"type": "t", "title": "x", "data": {"a": [{"b": [1, 2]}, null]}}))).is_ok());
    }
}

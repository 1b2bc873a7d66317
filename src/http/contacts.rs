//! `GET /contacts`, `PUT /contacts/{user_id}`, `DELETE /contacts/{user_id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};

use super::Auth;
use crate::clock::rfc3339;
use crate::contacts::Contacts;
use crate::contacts::Entry;
use crate::error::Result;
use crate::presence::PresenceView;
use crate::protocol::views::ProfileView;
use crate::validate;

/// A contact: their public profile, when they were added, their presence.
#[derive(Serialize)]
struct ContactView {
    #[serde(flatten)]
    profile: ProfileView,
    added_at: String,
    presence: PresenceView,
}

impl From<Entry> for ContactView {
    fn from(e: Entry) -> Self {
        ContactView {
            profile: ProfileView::from(&e.user),
            added_at: rfc3339(&e.contact.added_at),
            presence: e.presence,
        }
    }
}

pub async fn list(State(contacts): State<Arc<Contacts>>, Auth(caller): Auth) -> Result<Json<Value>> {
    let entries = contacts.list(&caller).await?;
    let views: Vec<ContactView> = entries.into_iter().map(ContactView::from).collect();
    Ok(Json(json!({ "contacts": views })))
}

pub async fn add(
    State(contacts): State<Arc<Contacts>>,
    Auth(caller): Auth,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, Json<Value>)> {
    let (entry, created) = contacts.add(&caller, validate::object_id("user_id", &user_id)?).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!(ContactView::from(entry)))))
}

pub async fn remove(
    State(contacts): State<Arc<Contacts>>,
    Auth(caller): Auth,
    Path(user_id): Path<String>,
) -> Result<StatusCode> {
    contacts.remove(&caller, validate::object_id("user_id", &user_id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

//! `GET /contacts`, `PUT /contacts/{user_id}`, `DELETE /contacts/{user_id}`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::openapi::{BadRequest, Internal, RateLimited, Unauthorized, Unavailable};
use super::{Auth, ErrorBody};
use crate::clock::rfc3339;
use crate::contacts::Contacts;
use crate::contacts::Entry;
use crate::error::Result;
use crate::presence::PresenceView;
use crate::protocol::views::ProfileView;
use crate::validate;

/// A contact: their public profile, when they were added, their presence.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Contact)]
pub struct ContactView {
    #[serde(flatten)]
    profile: ProfileView,
    #[schema(format = DateTime)]
    added_at: String,
    presence: PresenceView,
}

/// The caller's contacts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ContactList {
    /// Oldest first, each with its current presence.
    contacts: Vec<ContactView>,
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

/// The caller's contacts, each with its presence.
#[utoipa::path(
    get,
    path = "/contacts",
    tag = "contacts",
    operation_id = "list_contacts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's contacts", body = ContactList),
        (status = 401, response = Unauthorized),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn list(State(contacts): State<Arc<Contacts>>, Auth(caller): Auth) -> Result<Json<ContactList>> {
    let entries = contacts.list(&caller).await?;
    Ok(Json(ContactList { contacts: entries.into_iter().map(ContactView::from).collect() }))
}

/// Adds a user to the caller's contacts (idempotent).
#[utoipa::path(
    put,
    path = "/contacts/{user_id}",
    tag = "contacts",
    operation_id = "add_contact",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "A user id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 201, description = "The new contact", body = ContactView),
        (status = 200, description = "Already a contact: the original entry", body = ContactView),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: no such user", body = ErrorBody),
        (status = 422, description = "`validation_failed`: the caller themselves", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn add(
    State(contacts): State<Arc<Contacts>>,
    Auth(caller): Auth,
    Path(user_id): Path<String>,
) -> Result<(StatusCode, Json<ContactView>)> {
    let (entry, created) = contacts.add(&caller, validate::object_id("user_id", &user_id)?).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(ContactView::from(entry))))
}

/// Takes a user off the caller's contacts.
#[utoipa::path(
    delete,
    path = "/contacts/{user_id}",
    tag = "contacts",
    operation_id = "remove_contact",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "A user id", pattern = "^[0-9a-fA-F]{24}$")),
    responses(
        (status = 204, description = "No longer a contact"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, description = "`not_found`: not a contact", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn remove(
    State(contacts): State<Arc<Contacts>>,
    Auth(caller): Auth,
    Path(user_id): Path<String>,
) -> Result<StatusCode> {
    contacts.remove(&caller, validate::object_id("user_id", &user_id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

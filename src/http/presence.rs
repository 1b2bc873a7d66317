//! `GET /presence?user_ids=a,b,…`: many users' presence in one request (and
//! one Redis round trip).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::openapi::{BadRequest, Internal, RateLimited, Unauthorized, Unavailable};
use super::{Auth, ErrorBody, Params};
use crate::error::{Error, Result};
use crate::presence::MAX_LOOKUP;
use crate::presence::{Presence, PresenceView};
use crate::validate;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupParams {
    /// 1–500 user ids, comma-separated.
    #[param(required = true, pattern = "^[0-9a-fA-F]{24}(,[0-9a-fA-F]{24})*$")]
    user_ids: Option<String>,
}

/// Users' presence, in the order asked.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PresenceList {
    /// A repeated id is answered once; ids of no user come back `offline`.
    presence: Vec<PresenceView>,
}

/// Many users' presence in one request.
#[utoipa::path(
    get,
    path = "/presence",
    tag = "contacts",
    operation_id = "presence",
    security(("bearer" = [])),
    params(LookupParams),
    responses(
        (status = 200, description = "The users' presence", body = PresenceList),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 422, description = "`validation_failed`: no ids, or more than 500", body = ErrorBody),
        (status = 429, response = RateLimited),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    )
)]
pub async fn lookup(
    State(presence): State<Arc<Presence>>,
    Auth(_): Auth,
    Params(p): Params<LookupParams>,
) -> Result<Json<PresenceList>> {
    let raw = p.user_ids.unwrap_or_default();
    let wrong = || Error::invalid("user_ids", format!("give 1 to {MAX_LOOKUP} comma-separated user ids"));
    let parts: Vec<&str> = raw.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if parts.is_empty() || parts.len() > MAX_LOOKUP {
        return Err(wrong());
    }
    let mut seen = HashSet::new();
    let mut ids = Vec::with_capacity(parts.len());
    for part in parts {
        let id = validate::object_id("user_ids", part)?;
        if seen.insert(id) {
            ids.push(id);
        }
    }
    Ok(Json(PresenceList { presence: presence.lookup(&ids).await? }))
}

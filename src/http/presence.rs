//! `GET /presence?user_ids=a,b,…`: many users' presence in one request (and
//! one Redis round trip).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{Auth, Params};
use crate::error::{Error, Result};
use crate::presence::Presence;
use crate::presence::MAX_LOOKUP;
use crate::validate;

#[derive(Deserialize)]
pub struct LookupParams {
    user_ids: Option<String>,
}

pub async fn lookup(
    State(presence): State<Arc<Presence>>,
    Auth(_): Auth,
    Params(p): Params<LookupParams>,
) -> Result<Json<Value>> {
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
    let views = presence.lookup(&ids).await?;
    Ok(Json(json!({ "presence": views })))
}

//! The REST API's OpenAPI 3.1 document, made from the code: each handler's
//! `#[utoipa::path]` (method, path, parameters, body, every status it can
//! answer), the `ToSchema` of each type a body is read into or written
//! from, and the shared responses below. Served at `GET /openapi.json`;
//! `docs/openapi.json` is the same document, checked by tests/openapi.rs.

use std::sync::OnceLock;

use axum::response::IntoResponse;
use utoipa::openapi::schema::{
    AllOfBuilder, Array, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse};

use super::ErrorBody;
use super::{accounts, admin, contacts, health, messages, notifications, presence, rooms, server_api, sessions};
use super::{users, ws};

/// 400 `bad_request`: a body that is not JSON, an id that is not an
/// ObjectId, or a malformed query string.
#[derive(ToResponse)]
pub struct BadRequest(pub ErrorBody);

/// 401: no credentials, or credentials that are not (or no longer) good:
/// `unauthorized`, or `session_revoked` for a token of an ended session.
#[derive(ToResponse)]
#[response(headers(("WWW-Authenticate" = String, description = "`Bearer`")))]
pub struct Unauthorized(pub ErrorBody);

/// 413 `payload_too_large`: a body over the endpoint's limit (64 KiB; 1 MiB
/// for the server API).
#[derive(ToResponse)]
pub struct PayloadTooLarge(pub ErrorBody);

/// 429 `rate_limited`: over a rate limit; retry after `Retry-After` seconds.
#[derive(ToResponse)]
#[response(headers(("Retry-After" = u64, description = "Whole seconds to wait, at least 1.")))]
pub struct RateLimited(pub ErrorBody);

/// 500 `internal`: a bug; details are in the node's log.
#[derive(ToResponse)]
pub struct Internal(pub ErrorBody);

/// 503 `unavailable`: MongoDB or Redis cannot be reached now; retry.
#[derive(ToResponse)]
pub struct Unavailable(pub ErrorBody);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab",
        description = "The REST API of Confab, a real-time chat backend. JSON everywhere; ids are \
            24-hex-digit ObjectIds; times are RFC 3339 UTC. Every failure answers \
            `{\"error\": {\"code\", \"message\"}}`. The WebSocket protocol behind `GET /ws` is \
            described in docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        accounts::register,
        accounts::login,
        sessions::refresh,
        sessions::logout,
        sessions::logout_all,
        sessions::list,
        sessions::revoke,
        rooms::list,
        rooms::create,
        rooms::join,
        rooms::list_members,
        rooms::add_member,
        rooms::set_role,
        rooms::remove_member,
        rooms::read,
        messages::history,
        messages::create,
        messages::status,
        messages::search,
        messages::edit,
        messages::delete,
        users::me,
        users::update_me,
        users::change_password,
        users::search,
        users::profile,
        contacts::list,
        contacts::add,
        contacts::remove,
        presence::lookup,
        ws::chat,
        health::healthz,
        health::readyz,
        health::metrics,
        admin::users,
        admin::ban,
        admin::unban,
        admin::disconnect,
        admin::audit,
        admin::delete_message,
        notifications::history,
        notifications::read,
        notifications::unread_count,
        notifications::get_preferences,
        notifications::put_preferences,
        notifications::mute_room,
        server_api::notify,
        server_api::broadcast,
        server_api::history,
        server_api::publish,
        serve,
    ),
    components(responses(BadRequest, Unauthorized, PayloadTooLarge, RateLimited, Internal, Unavailable)),
    modifiers(&SecuritySchemes, &ExactlyOne),
    tags(
        (name = "accounts", description = "Registration, login, sessions and the caller's account"),
        (name = "rooms", description = "Rooms, members and read status"),
        (name = "messages", description = "Sending, reading, editing, deleting and searching messages"),
        (name = "users", description = "Profiles and user search"),
        (name = "contacts", description = "The caller's contact list and presence"),
        (name = "notifications", description = "The caller's notifications and their preferences"),
        (name = "admin", description = "For users with the `admin` role"),
        (name = "server", description = "The server API, for backends holding an API key"),
        (name = "operations", description = "Health, readiness, metrics, this document and the WebSocket upgrade"),
    )
)]
pub struct Document;

/// The two ways to authenticate: a user's access token, a backend's API key.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "`Authorization: Bearer <access_token>`, the token from `POST /login` or \
                         `POST /token/refresh`, of a live session.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apikey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Authorization: ApiKey <key>`: the header's whole value is `ApiKey ` and the key \
                 (`ck_<24 hex>_<64 hex>`) that `confab apikey create` printed.",
            ))),
        );
    }
}

/// Rules between a body's fields that the derives cannot state: exactly one
/// of these fields is given.
struct ExactlyOne;

impl Modify for ExactlyOne {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (schema, fields) in [("NewMessage", ["room_id", "to_user_id"]), ("ReadBody", ["ids", "all"])] {
            let own = components.schemas.remove(schema).unwrap_or_else(|| panic!("no schema {schema}"));
            let one = fields.iter().fold(OneOfBuilder::new(), |one, field| {
                one.item(ObjectBuilder::new().schema_type(SchemaType::AnyValue).required(*field))
            });
            let both = AllOfBuilder::new().item(own).item(one).build();
            components.schemas.insert(schema.to_owned(), Schema::AllOf(both).into());
        }
    }
}

/// The pattern of an id (an ObjectId in hex).
pub const ID_PATTERN: &str = "^[0-9a-fA-F]{24}$";

fn ids(min: Option<usize>, max: usize) -> Array {
    let id = ObjectBuilder::new().schema_type(Type::String).pattern(Some(ID_PATTERN));
    ArrayBuilder::new().items(id).min_items(min).max_items(Some(max)).build()
}

/// A list of at most 1000 ids.
pub fn ids_up_to_1000() -> Array {
    ids(None, 1000)
}

/// A list of 1 to 10,000 ids.
pub fn ids_1_to_10000() -> Array {
    ids(Some(1), 10_000)
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    Document::openapi()
}

/// The document as `docs/openapi.json` holds it: pretty-printed, with a
/// final newline.
pub fn json() -> String {
    let mut text = document().to_pretty_json().expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// This document, as JSON.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", body = Object),
        (status = 429, response = RateLimited),
    )
)]
pub async fn serve() -> impl IntoResponse {
    static JSON: OnceLock<String> = OnceLock::new();
    let text = JSON.get_or_init(json).as_str();
    ([(http::header::CONTENT_TYPE, "application/json")], text)
}

//! The main REST bodies, through their serde types and validation: never a
//! panic, and a body that validates holds what the rules promise.
#![no_main]

use confab::users::{Login, PasswordChange, ProfilePatch, Registration};
use confab::validate;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<Registration>(data) {
        if validate::username(&r.username).is_ok() {
            assert!((3..=32).contains(&r.username.chars().count()));
        }
        let _ = validate::email(&r.email);
        if validate::password(&r.password).is_ok() {
            assert!(r.password.chars().count() >= 8 && r.password.len() <= 1024);
        }
    }
    let _ = serde_json::from_slice::<Login>(data);
    if let Ok(change) = serde_json::from_slice::<PasswordChange>(data) {
        let _ = validate::password(&change.new_password);
    }
    if let Ok(patch) = serde_json::from_slice::<ProfilePatch>(data) {
        if let Some(Some(name)) = patch.display_name {
            let _ = validate::display_name(&name);
        }
        if let Some(Some(url)) = patch.avatar_url {
            if let Ok(url) = validate::avatar_url(&url) {
                assert!(url.starts_with("https://") || url.starts_with("http://"), "{url}");
            }
        }
    }
    // A message body's fields, as POST /messages and send_message check them.
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Some(content) = m.get("content").and_then(|c| c.as_str()) {
            if validate::content(content).is_ok() {
                assert!(!content.trim().is_empty());
            }
        }
        if let Some(id) = m.get("client_msg_id").and_then(|c| c.as_str()) {
            let _ = validate::client_msg_id(id);
        }
        if let Some(name) = m.get("name").and_then(|c| c.as_str()) {
            let _ = validate::room_name(name);
        }
        if let Some(room) = m.get("room_id").and_then(|c| c.as_str()) {
            if let Ok(id) = validate::object_id("room_id", room) {
                assert_eq!(id.to_hex(), room.to_ascii_lowercase());
            }
        }
    }
});

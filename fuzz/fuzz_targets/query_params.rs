//! Query parameters the REST edge parses by hand: ids, RFC 3339 dates,
//! audit cursors and limits. Never a panic; what is accepted is what the
//! rules say.
#![no_main]

use confab::http::admin::audit_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parts: Vec<&str> = text.splitn(5, '\u{1f}').collect();
    let at = |i: usize| parts.get(i).copied();
    let limit = at(4).and_then(|l| l.parse::<i64>().ok()).unwrap_or(50);
    if let Ok(query) = audit_query(at(0), at(1), at(2), at(3), limit) {
        if let Some(action) = &query.action {
            assert!(action.len() <= 64 && action.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'));
        }
        if let (Some(raw), Some(actor)) = (at(1).filter(|a| !a.trim().is_empty()), query.actor_id) {
            assert_eq!(actor.to_hex(), raw.trim().to_ascii_lowercase());
        }
    }
    let _ = confab::validate::object_id("id", text);
});

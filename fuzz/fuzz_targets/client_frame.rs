//! A client's text frame as the chat socket reads it. Never a panic; bytes
//! that are not UTF-8 are refused; an unreadable frame keeps the `ref` it
//! carried, so the error reaches the right request, and its error is a
//! client error. (Client frames are only read, never encoded: there is no
//! round trip to check.)
#![no_main]

use confab::protocol::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Request::parse(data) {
        Ok(request) => {
            assert!(std::str::from_utf8(data).is_ok(), "a frame that is not UTF-8 was read");
            let _ = request.command.label();
        }
        Err(unreadable) => {
            assert!(unreadable.error.status().is_client_error(), "{:?}", unreadable.error);
            if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(data) {
                assert_eq!(unreadable.reference.as_ref(), fields.get("ref"), "the ref is kept");
            }
            let _ = confab::protocol::error(
                unreadable.reference.as_ref(),
                unreadable.channel.as_deref(),
                &unreadable.error,
            );
        }
    }
});

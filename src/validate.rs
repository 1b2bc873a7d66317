//! Input rules shared by REST handlers and WebSocket frames, so that a rule
//! lives in one place and both edges reject the same input the same way.

use bson::oid::ObjectId;

use crate::error::{Error, Result};

/// Longest message content, in Unicode scalar values.
pub const MAX_CONTENT_CHARS: usize = 4000;

pub fn object_id(field: &'static str, raw: &str) -> Result<ObjectId> {
    ObjectId::parse_str(raw).map_err(|_| Error::BadRequest(format!("{field}: {} is not a valid id", quoted(raw))))
}

/// Longest reason an administrator gives for a ban or a moderation
/// delete, in characters.
pub const MAX_REASON: usize = 500;

/// An administrator's reason (ban, moderation delete).
pub fn reason(raw: &str) -> Result<()> {
    if raw.chars().count() > MAX_REASON {
        return Err(Error::invalid("reason", format!("must be at most {MAX_REASON} characters")));
    }
    Ok(())
}

/// Usernames nobody may register: the server API's system messages show as
/// "System", and these read as the service speaking.
pub const RESERVED_USERNAMES: &[&str] = &["system", "admin", "administrator", "root", "confab", "moderator", "support"];

pub fn username(raw: &str) -> Result<()> {
    let len = raw.chars().count();
    if !(3..=32).contains(&len) {
        return Err(Error::invalid("username", "must be 3 to 32 characters"));
    }
    if !raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(Error::invalid("username", "may contain only letters, digits, '_', '.' and '-'"));
    }
    if RESERVED_USERNAMES.iter().any(|r| r.eq_ignore_ascii_case(raw)) {
        return Err(Error::invalid("username", "is reserved"));
    }
    Ok(())
}

/// Characters that make a name look like something it is not: controls,
/// the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069),
/// and the zero-width ones.
fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}' | '\u{061C}')
}

/// Input shown back in an error message: quoted with escapes, at most 40
/// characters of it.
pub fn quoted(raw: &str) -> String {
    let cut = truncate(raw, 40);
    let more = if cut.len() < raw.len() { "…" } else { "" };
    format!("{:?}{more}", cut)
}

/// A pragmatic address check: one `@`, a non-empty local part, and a dotted
/// domain of letters, digits and hyphens. Deliverability is not our business.
pub fn email(raw: &str) -> Result<()> {
    let bad = || Error::invalid("email", "must be a valid email address");
    if raw.len() > 254 || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let (local, domain) = raw.split_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(bad());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty() && !l.starts_with('-') && !l.ends_with('-') && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    Ok(())
}

pub fn password(raw: &str) -> Result<()> {
    let len = raw.chars().count();
    if len < 8 {
        return Err(Error::invalid("password", "must be at least 8 characters"));
    }
    if raw.len() > 1024 {
        return Err(Error::invalid("password", "must be at most 1024 bytes"));
    }
    Ok(())
}

pub fn room_name(raw: &str) -> Result<()> {
    let len = raw.chars().count();
    if len == 0 || raw.trim().is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if len > 64 {
        return Err(Error::invalid("name", "must be at most 64 characters"));
    }
    if raw.trim() != raw || raw.chars().any(deceptive) {
        return Err(Error::invalid(
            "name",
            "must not start or end with spaces, nor contain control, direction-override or zero-width characters",
        ));
    }
    if raw.get(..3).is_some_and(|p| p.eq_ignore_ascii_case(crate::store::model::DIRECT_PREFIX)) {
        return Err(Error::invalid("name", "names starting with \"dm:\" are reserved for direct conversations"));
    }
    Ok(())
}

pub fn content(raw: &str) -> Result<()> {
    if raw.trim().is_empty() {
        return Err(Error::invalid("content", "must not be empty"));
    }
    if raw.chars().count() > MAX_CONTENT_CHARS {
        return Err(Error::invalid("content", format!("must be at most {MAX_CONTENT_CHARS} characters")));
    }
    Ok(())
}

pub fn client_msg_id(raw: &str) -> Result<()> {
    if raw.is_empty() || raw.len() > 64 || !raw.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Error::invalid("client_msg_id", "must be 1 to 64 printable ASCII characters"));
    }
    Ok(())
}

/// A display name, trimmed: 1 to 64 characters, no control characters.
pub fn display_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    let len = name.chars().count();
    if !(1..=64).contains(&len) {
        return Err(Error::invalid("display_name", "must be 1 to 64 characters (not counting surrounding spaces)"));
    }
    if name.chars().any(deceptive) {
        return Err(Error::invalid(
            "display_name",
            "must not contain control, direction-override or zero-width characters",
        ));
    }
    Ok(name.to_string())
}

/// An absolute https URL with a host, at most 2048 bytes, in its normalized
/// form (what is stored and shown). Quotes, spaces, angle brackets and
/// backslashes are refused rather than escaped: a value carrying them is an
/// attempt to break out of the HTML attribute it will be shown in.
pub fn avatar_url(raw: &str) -> Result<String> {
    let bad = || Error::invalid("avatar_url", "must be an https:// URL of at most 2048 characters");
    let unsafe_char = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '`' | '<' | '>' | '\\');
    if raw.len() > 2048 || raw.chars().any(unsafe_char) {
        return Err(bad());
    }
    let url = reqwest::Url::parse(raw).map_err(|_| bad())?;
    if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) || !url.username().is_empty() {
        return Err(bad());
    }
    let normalized = url.to_string();
    if normalized.len() > 2048 {
        return Err(bad());
    }
    Ok(normalized)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(username("bob").is_ok());
        assert!(username("a.b-c_9").is_ok());
        assert!(username("ab").is_err());
        assert!(username(&"a".repeat(33)).is_err());
        assert!(username("bob smith").is_err());
        assert!(username("bøb").is_err());
        for reserved in ["system", "Admin", "ROOT", "confab"] {
            assert_eq!(username(reserved).unwrap_err().public_message(), "username: is reserved");
        }
        assert!(username("systemd").is_ok() && username("rooted").is_ok());
    }

    #[test]
    fn emails() {
        assert!(email("bob@example.com").is_ok());
        assert!(email("b.o+b@mail.example.org").is_ok());
        for bad in [
            "bob",
            "@example.com",
            "bob@",
            "bob@example",
            "bob@@example.com",
            "bo b@example.com",
            "bob@-x.com",
            "bob@x..com",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_limits_count_characters_not_bytes() {
        assert!(content("hi").is_ok());
        assert!(content("").is_err());
        assert!(content("   \n").is_err());
        assert!(content(&"é".repeat(4000)).is_ok());
        assert!(content(&"é".repeat(4001)).is_err());
    }

    #[test]
    fn ids() {
        assert!(object_id("room_id", "507f1f77bcf86cd799439011").is_ok());
        let e = object_id("room_id", "nope").unwrap_err();
        assert_eq!(e.status().as_u16(), 400);
        let e = object_id("room_id", &format!("<img src=x onerror=alert(1)>\n{}", "x".repeat(100))).unwrap_err();
        let shown = e.public_message();
        assert!(shown.starts_with("room_id: \"<img src=x onerror=alert(1)>\\n") && shown.len() < 100, "{shown}");
    }

    #[test]
    fn profiles() {
        assert_eq!(display_name("  Bob Smith ").unwrap(), "Bob Smith");
        assert_eq!(display_name(&"é".repeat(64)).unwrap().chars().count(), 64);
        for bad in ["", "   ", "a\u{0}b", "tab\there"] {
            assert_eq!(display_name(bad).unwrap_err().status().as_u16(), 422, "{bad:?}");
        }
        assert!(display_name(&"x".repeat(65)).is_err());
        assert_eq!(avatar_url("https://cdn.example.com/a/b.png?s=64").unwrap(), "https://cdn.example.com/a/b.png?s=64");
        assert_eq!(avatar_url("HTTPS://CDN.Example.com/a/../b.png").unwrap(), "https://cdn.example.com/b.png");
        let long = format!("https://example.com/{}", "a".repeat(2048));
        for bad in [
            "ftp://example.com/a",
            "http://example.com/a.png",
            "javascript:alert(1)",
            "/relative.png",
            "https://",
            "https://a b",
            "https://evil.example/a.png\"onerror=\"alert(1)",
            "https://evil.example/a.png'x",
            "https://evil.example/<script>",
            "https://user:pw@example.com/a.png",
            &long,
        ] {
            assert_eq!(avatar_url(bad).unwrap_err().status().as_u16(), 422, "{bad}");
        }
        for bad in ["bob\u{202E}gnp.exe", "zero\u{200B}width", "bell\u{7}"] {
            assert!(display_name(bad).is_err(), "{bad:?}");
            assert!(room_name(bad).is_err(), "{bad:?}");
        }
        assert!(display_name("Zoë 🎉").is_ok() && room_name("café ☕").is_ok());
    }

    #[test]
    fn passwords_and_names() {
        assert!(password("12345678").is_ok());
        assert!(password("1234567").is_err());
        assert!(room_name("general").is_ok());
        assert!(room_name(" general").is_err());
        assert!(room_name("").is_err());
        assert!(room_name(&"r".repeat(65)).is_err());
        assert!(room_name("DM:alice").is_err(), "reserved for direct rooms");
        assert!(room_name("dms").is_ok());
    }
}

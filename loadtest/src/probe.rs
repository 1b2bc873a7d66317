//! The probe carried in every published message: who sent it, its number in
//! that publisher's sequence, and when (Unix ns), padded to the payload size.
//! `LT|<publisher>|<seq>|<sent_ns>|<padding>` — no quotes, no escapes, so
//! every system carries it verbatim.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub fn encode(publisher: u32, seq: u64, size: usize) -> String {
    let mut s = format!("LT|{publisher}|{seq}|{}|", now_ns());
    while s.len() < size {
        s.push('x');
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

pub fn decode(content: &str) -> Option<Probe> {
    let mut parts = content.split('|');
    if parts.next()? != "LT" {
        return None;
    }
    Some(Probe {
        publisher: parts.next()?.parse().ok()?,
        seq: parts.next()?.parse().ok()?,
        sent_ns: parts.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let s = encode(7, 42, 100);
        assert_eq!(s.len(), 100);
        let p = decode(&s).unwrap();
        assert_eq!((p.publisher, p.seq), (7, 42));
        assert!(p.sent_ns > 0);
        assert!(decode("hello").is_none());
    }
}

//! Message search across the rooms a caller may read.
//!
//! The only rule that matters for privacy lives here: the rooms searched are
//! exactly the readable ones — one room checked with [`rooms::readable`], or
//! every room [`Store::rooms_visible_to`](crate::store::Store) returns
//! (public rooms and the caller's memberships). The store never decides who
//! may read what.

use std::sync::Arc;

use bson::oid::ObjectId;

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::rooms::Rooms;
use crate::store::Store;
use crate::store::{Message, SearchQuery};

pub const DEFAULT_LIMIT: i64 = 20;
pub const MAX_LIMIT: i64 = 100;
/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;

#[derive(Debug, Clone)]
pub struct Search {
    /// Words separated by whitespace; every one must appear.
    pub q: String,
    /// Only this room; else every room the caller may read.
    pub room_id: Option<ObjectId>,
    /// Only messages older than this one (the last of the previous page).
    pub before: Option<ObjectId>,
    pub limit: i64,
}

/// The distinct words of a query.
pub fn words(q: &str) -> Result<Vec<String>> {
    if q.trim().is_empty() {
        return Err(Error::invalid("q", "must not be empty"));
    }
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err(Error::invalid("q", format!("must be at most {MAX_QUERY_CHARS} characters")));
    }
    let mut words: Vec<String> = Vec::new();
    for w in q.split_whitespace() {
        if !words.iter().any(|seen| seen == w) {
            words.push(w.to_string());
        }
    }
    Ok(words)
}

/// Message search, within the rooms a caller may read.
pub struct Searcher {
    store: Arc<Store>,
    rooms: Arc<Rooms>,
}

impl Searcher {
    pub fn new(store: Arc<Store>, rooms: Arc<Rooms>) -> Self {
        Searcher { store, rooms }
    }

    /// One page of matching messages, newest first, and whether more match.
    pub async fn search(&self, caller: &Caller, s: Search) -> Result<(Vec<Message>, bool)> {
        let words = words(&s.q)?;
        let rooms: Vec<ObjectId> = match s.room_id {
            Some(id) => vec![self.rooms.readable(caller, id).await?.id],
            None => self.store.rooms_visible_to(caller.user_id).await?.iter().map(|r| r.id).collect(),
        };
        let before = match s.before {
            None => None,
            // A cursor from a room the caller may not search is as unknown as
            // one that does not exist.
            Some(id) => match self.store.message(id).await? {
                Some(m) if rooms.contains(&m.room_id) => Some((m.timestamp, m.id)),
                _ => return Err(Error::NotFound("before: no such message in the rooms searched".into())),
            },
        };
        let query = SearchQuery { rooms, words, before, limit: s.limit };
        Ok(self.store.search_messages(&query).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_split_into_distinct_words() {
        assert_eq!(words("  hello   World hello\tx ").unwrap(), ["hello", "World", "x"]);
        assert_eq!(words("a.b*").unwrap(), ["a.b*"]);
    }

    #[test]
    fn empty_and_long_queries_are_refused() {
        for bad in ["", "   \n\t"] {
            assert_eq!(words(bad).unwrap_err().status().as_u16(), 422, "{bad:?}");
        }
        assert!(words(&"é".repeat(MAX_QUERY_CHARS)).is_ok());
        assert_eq!(words(&"é".repeat(MAX_QUERY_CHARS + 1)).unwrap_err().status().as_u16(), 422);
    }
}

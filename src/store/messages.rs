//! Messages: seqs, history (live and archived), edits, search.

use std::future::IntoFuture;
use std::time::Duration;

use bson::{doc, oid::ObjectId, Bson, Document};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use mongodb::Collection;

use super::mongo::{split_reads, timed};
use super::{HistoryQuery, Message, SearchQuery, Store, StoreError, StoreResult};

impl Store {
    /// Hands out the room's next seq from the room document's counter: the
    /// fallback while Redis cannot (`crate::seq`, ADR 11). `None` if the
    /// room does not exist.
    pub async fn next_seq(&self, room_id: ObjectId) -> StoreResult<Option<i64>> {
        let room = timed(
            "next_seq",
            self.rooms
                .find_one_and_update(doc! {"_id": room_id}, doc! {"$inc": {"last_seq": 1_i64}})
                .return_document(ReturnDocument::After),
        )
        .await?;
        Ok(room.map(|r| r.last_seq))
    }

    /// The highest seq the room has used as far as the store knows: its
    /// document's counter and its newest message, live or archived. What
    /// a seq counter starts from; `None` if the room does not exist.
    pub async fn highest_seq(&self, room_id: ObjectId) -> StoreResult<Option<i64>> {
        let Some(room) = timed("find_room", self.rooms.find_one(doc! {"_id": room_id})).await? else {
            return Ok(None);
        };
        let live = timed("highest_seq", newest_seq(self.messages.clone_with_type(), room_id));
        let archived = timed("highest_seq", newest_seq(self.archive.clone_with_type(), room_id));
        let (live, archived) = tokio::try_join!(live, archived)?;
        Ok(Some([live, archived].into_iter().flatten().fold(room.last_seq, i64::max)))
    }

    /// Raises the room document's counter to at least `seq` (never lowers it).
    pub async fn raise_seq(&self, room_id: ObjectId, seq: i64) -> StoreResult<()> {
        timed("raise_seq", self.rooms.update_one(doc! {"_id": room_id}, doc! {"$max": {"last_seq": seq}})).await?;
        Ok(())
    }

    /// Stores a new message; [`StoreError::Duplicate`](super::StoreError::Duplicate)
    /// if its (room, seq) or (sender, dedup key) is taken. Messages stored
    /// at the same moment go to the store together (`batch`).
    pub async fn insert_message(&self, message: &Message) -> StoreResult<()> {
        self.inserts.insert(&self.messages, message).await
    }

    pub async fn message(&self, id: ObjectId) -> StoreResult<Option<Message>> {
        timed("find_message", self.messages.find_one(doc! {"_id": id})).await
    }

    pub async fn message_by_client_id(&self, sender_id: ObjectId, client_msg_id: &str) -> StoreResult<Option<Message>> {
        timed("find_message", self.messages.find_one(doc! {"sender_id": sender_id, "dedup_key": client_msg_id})).await
    }

    /// The stored messages with these (room, seq) pairs, in no order; pairs
    /// with no stored message (or a void) are left out. One read however many pairs
    /// (on FerretDB one equality read per pair, timed as one operation:
    /// see [`Store::equality_only`]).
    pub async fn messages_at(&self, at: &[(ObjectId, i64)]) -> StoreResult<Vec<Message>> {
        if self.equality_only().await {
            let each: Vec<_> = at
                .iter()
                .map(|(room, seq)| self.messages.find_one(doc! {"room_id": room, "seq": seq}).into_future())
                .collect();
            let found: Vec<Option<Message>> = timed("messages_at", split_reads(each)).await?;
            return Ok(found.into_iter().flatten().filter(|m| !m.is_void()).collect());
        }
        let mut found = Vec::with_capacity(at.len());
        for chunk in at.chunks(500) {
            let any: Vec<Document> = chunk.iter().map(|(room, seq)| doc! {"room_id": room, "seq": seq}).collect();
            let page: Vec<Message> =
                timed("messages_at", async { self.messages.find(doc! {"$or": any}).await?.try_collect().await })
                    .await?;
            found.extend(page.into_iter().filter(|m| !m.is_void()));
        }
        Ok(found)
    }

    /// Up to `limit` messages in chronological order, and whether more match
    /// beyond the page (older when reading back, newer when reading forward).
    pub async fn history(&self, q: &HistoryQuery) -> StoreResult<(Vec<Message>, bool)> {
        history_page(&self.messages, q, "history").await
    }

    /// A forward page after `q.after_seq` with no open holes: every seq
    /// missing from it below its last message is void, never to be stored.
    /// What catch-up and gap filling read (join replays, `after_seq`).
    ///
    /// A seq is handed out before its message is stored, so a later seq can
    /// be stored first: a slow write, a store restart, a node killed between
    /// the two (then it is never stored). A hole below a message stored at
    /// least `void_after` ago is closed with a void (`Message::void`) in the
    /// hole's place; the unique (room, seq) index then refuses the late
    /// write, whose sender takes a new seq and stores its message there.
    /// A younger hole ends the page (`has_more` false): its message is
    /// probably on its way, and the reader asks again. Seqs at or below
    /// the archive's newest are never voided (the archive holds them).
    pub async fn history_after(&self, q: &HistoryQuery, void_after: Duration) -> StoreResult<(Vec<Message>, bool)> {
        let mut page = Vec::new();
        let mut from = q.after_seq.unwrap_or(0);
        // The archive's newest seq, read once if a hole is to be voided.
        let mut archived: Option<Option<i64>> = None;
        for _ in 0..READ_ROUNDS {
            let read =
                HistoryQuery { after_seq: Some(from), forward: true, limit: q.limit - page.len() as i64, ..q.clone() };
            let (mut raw, more) = raw_page(&self.messages, &read, "history").await?;
            let now = Utc::now();
            let mut plan = holes(from, &raw, now, void_after);
            let mut taken = false;
            if !plan.voids.is_empty() || plan.end != End::Open {
                let floor = match archived {
                    Some(floor) => floor,
                    None => *archived
                        .insert(timed("highest_seq", newest_seq(self.archive.clone_with_type(), q.room_id)).await?),
                };
                if let Some(floor) = floor.filter(|f| *f > from) {
                    // The archive holds what lies below its newest seq.
                    plan = holes(floor, &raw, now, void_after);
                }
                for &(seq, at) in &plan.voids {
                    match timed("void_seq", self.messages.insert_one(Message::void(q.room_id, seq, at))).await {
                        Ok(_) => metrics::counter!("confab_seq_voided_total").increment(1),
                        // A late message won the race for its seq.
                        Err(StoreError::Duplicate) => taken = true,
                        Err(e) => return Err(e),
                    }
                }
            }
            if taken || matches!(plan.end, End::Capped(_)) {
                // Read the same stretch again: it has changed.
                continue;
            }
            let young = match plan.end {
                End::Young(at) => {
                    raw.truncate(at);
                    true
                }
                _ => false,
            };
            if let Some(last) = raw.last() {
                from = last.seq;
            }
            page.extend(raw.into_iter().filter(|m| !m.is_void()));
            if young {
                return Ok((page, false));
            }
            if !more || page.len() as i64 >= q.limit {
                return Ok((page, more));
            }
            // Voids took places in the page: read on to fill it.
        }
        if page.is_empty() {
            return Err(StoreError::Other("history kept changing, or held only voids, for too long".into()));
        }
        Ok((page, true))
    }

    /// `history` over the archive: messages the archive job moved out of
    /// the live collection (`confab worker`, docs/architecture.md).
    pub async fn archived_history(&self, q: &HistoryQuery) -> StoreResult<(Vec<Message>, bool)> {
        history_page(&self.archive, q, "archived_history").await
    }

    /// An archived message by id.
    pub async fn archived_message(&self, id: ObjectId) -> StoreResult<Option<Message>> {
        timed("find_archived_message", self.archive.find_one(doc! {"_id": id})).await
    }

    /// Replaces a message's content and sets `edited_at`; returns the message
    /// as stored, or `None` if there is no such message that is not deleted.
    pub async fn edit_message(&self, id: ObjectId, content: &str, at: DateTime<Utc>) -> StoreResult<Option<Message>> {
        let update = doc! {"$set": {"content": content, "edited_at": bson::DateTime::from_chrono(at)}};
        timed(
            "edit_message",
            self.messages
                .find_one_and_update(doc! {"_id": id, "deleted": {"$ne": true}}, update)
                .return_document(ReturnDocument::After),
        )
        .await
    }

    /// Turns a message into a tombstone: content cleared (it must not linger
    /// in the store), `deleted` and `deleted_at` set. Returns the tombstone,
    /// or `None` if there is no such message that is not already deleted.
    pub async fn delete_message(&self, id: ObjectId, at: DateTime<Utc>) -> StoreResult<Option<Message>> {
        let update = doc! {
            "$set": {"content": "", "deleted": true, "deleted_at": bson::DateTime::from_chrono(at)},
            "$unset": {"edited_at": ""},
        };
        timed(
            "delete_message",
            self.messages
                .find_one_and_update(doc! {"_id": id, "deleted": {"$ne": true}}, update)
                .return_document(ReturnDocument::After),
        )
        .await
    }

    /// One query: every word as a case-insensitive `$regex` of its escaped
    /// text (FerretDB has no text indexes; it scans, which is acceptable
    /// for search), newest first with the id breaking timestamp ties.
    /// Up to `limit` messages matching the search, newest first, and whether
    /// more match beyond the page.
    pub async fn search_messages(&self, q: &SearchQuery) -> StoreResult<(Vec<Message>, bool)> {
        if q.rooms.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut all: Vec<Document> =
            q.words.iter().map(|w| doc! {"content": {"$regex": literal_pattern(w), "$options": "i"}}).collect();
        if let Some((at, id)) = q.before {
            let at = bson::DateTime::from_chrono(at);
            all.push(doc! {"$or": [{"timestamp": {"$lt": at}}, {"timestamp": at, "_id": {"$lt": id}}]});
        }
        let filter = |rooms: Bson| {
            let mut filter = doc! {"room_id": rooms, "deleted": {"$ne": true}};
            if !all.is_empty() {
                filter.insert("$and", all.clone());
            }
            filter
        };
        let page = |filter: Document| async move {
            self.messages
                .find(filter)
                .sort(doc! {"timestamp": -1, "_id": -1})
                .limit(q.limit + 1)
                .await?
                .try_collect::<Vec<Message>>()
                .await
        };
        let mut page = match q.rooms.as_slice() {
            // One room by equality, which FerretDB hands its database (`$in` it does not).
            [room] => timed("search_messages", page(filter(Bson::ObjectId(*room)))).await?,
            rooms if self.equality_only().await => {
                // Each room's newest matches, then the newest of those: the
                // same page as one query over every room (`equality_only`).
                let each: Vec<_> = rooms.iter().map(|room| page(filter(Bson::ObjectId(*room)))).collect();
                let pages: Vec<Vec<Message>> = timed("search_messages", split_reads(each)).await?;
                newest_of(pages, q.limit as usize + 1)
            }
            rooms => {
                let any = Bson::Array(rooms.iter().map(|r| Bson::ObjectId(*r)).collect());
                timed("search_messages", page(filter(doc! {"$in": any}.into()))).await?
            }
        };
        let has_more = page.len() as i64 > q.limit;
        page.truncate(q.limit as usize);
        Ok((page, has_more))
    }
}

/// The newest seq of a room in `c`, voids included; only the seq is read,
/// the newest by the unique (room_id, seq) index.
async fn newest_seq(c: Collection<Document>, room_id: ObjectId) -> mongodb::error::Result<Option<i64>> {
    let found = c.find_one(doc! {"room_id": room_id}).sort(doc! {"seq": -1}).projection(doc! {"seq": 1}).await?;
    Ok(found.and_then(|d| d.get_i64("seq").ok()))
}

/// Reads one `history_after` page may take: one, unless it voided a hole
/// wider than [`MAX_VOIDS`], lost a race to a late message, or met voids.
const READ_ROUNDS: usize = 32;
/// Most seqs one page voids; a wider hole is closed over several reads.
const MAX_VOIDS: usize = 256;

/// Where a forward page's holes leave it.
#[derive(Debug, PartialEq)]
enum End {
    /// No hole left open: the page stands as read.
    Open,
    /// A hole too young to void before the message at this index.
    Young(usize),
    /// [`MAX_VOIDS`] reached in the hole below the message at this index:
    /// the rest of it is voided by the next read.
    Capped(usize),
}

#[derive(Debug, PartialEq)]
struct Holes {
    /// Seqs to void, each with its later neighbour's store time.
    voids: Vec<(i64, DateTime<Utc>)>,
    end: End,
}

/// The holes in a forward page read after `after` (voids included, seq
/// order): those below a message stored at least `void_after` before `now`
/// are to be voided; the first younger one ends the page.
fn holes(after: i64, page: &[Message], now: DateTime<Utc>, void_after: Duration) -> Holes {
    let mut voids = Vec::new();
    let mut expected = after + 1;
    for (i, m) in page.iter().enumerate() {
        if m.seq > expected {
            let age = now.signed_duration_since(m.timestamp).to_std().unwrap_or_default();
            if age < void_after {
                return Holes { voids, end: End::Young(i) };
            }
            let room = MAX_VOIDS - voids.len();
            voids.extend((expected..m.seq).take(room).map(|seq| (seq, m.timestamp)));
            if (m.seq - expected) as usize > room {
                return Holes { voids, end: End::Capped(i) };
            }
        }
        expected = expected.max(m.seq + 1);
    }
    Holes { voids, end: End::Open }
}

/// One page of a room's history from `messages` or the archive: the same
/// query on either collection. Voids are left out.
async fn history_page(
    messages: &Collection<Message>,
    q: &HistoryQuery,
    op: &'static str,
) -> StoreResult<(Vec<Message>, bool)> {
    let (mut page, has_more) = raw_page(messages, q, op).await?;
    page.retain(|m| !m.is_void());
    Ok((page, has_more))
}

/// [`history_page`] with the voids.
async fn raw_page(
    messages: &Collection<Message>,
    q: &HistoryQuery,
    op: &'static str,
) -> StoreResult<(Vec<Message>, bool)> {
    let mut filter = doc! {"room_id": q.room_id};
    let mut seq = Document::new();
    if let Some(b) = q.before_seq {
        seq.insert("$lt", b);
    }
    if let Some(a) = q.after_seq {
        seq.insert("$gt", a);
    }
    if !seq.is_empty() {
        filter.insert("seq", seq);
    }
    let mut ts = Document::new();
    if let Some(s) = q.since {
        ts.insert("$gte", bson::DateTime::from_chrono(s));
    }
    if let Some(u) = q.until {
        ts.insert("$lte", bson::DateTime::from_chrono(u));
    }
    if !ts.is_empty() {
        filter.insert("timestamp", ts);
    }
    let order = if q.forward { 1 } else { -1 };
    let mut page: Vec<Message> = timed(op, async {
        messages.find(filter).sort(doc! {"seq": order}).limit(q.limit + 1).await?.try_collect().await
    })
    .await?;
    let has_more = page.len() as i64 > q.limit;
    page.truncate(q.limit as usize);
    if !q.forward {
        page.reverse();
    }
    Ok((page, has_more))
}

/// The `n` newest messages of several pages, newest first with the id
/// breaking timestamp ties: the order search reads in.
fn newest_of(pages: Vec<Vec<Message>>, n: usize) -> Vec<Message> {
    let mut all: Vec<Message> = pages.into_iter().flatten().collect();
    all.sort_by_key(|m| std::cmp::Reverse((m.timestamp, m.id.bytes())));
    all.truncate(n);
    all
}

/// A regular expression matching `text` literally: every ASCII character
/// that is not a letter or digit is escaped, which both PCRE (MongoDB) and
/// RE2 (FerretDB) read as the character itself.
pub(super) fn literal_pattern(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{holes, literal_pattern, newest_of, End, Holes, MAX_VOIDS};
    use crate::store::Message;
    use bson::oid::ObjectId;
    use chrono::{TimeZone, Utc};
    use std::time::Duration;

    #[test]
    fn split_search_pages_merge_newest_first_with_ids_breaking_ties() {
        let at = |secs: i64, id: u8| {
            let mut m = Message::sample();
            m.timestamp = Utc.timestamp_opt(secs, 0).unwrap();
            m.id = ObjectId::from_bytes([id; 12]);
            m
        };
        let one = vec![at(30, 1), at(10, 2)];
        let two = vec![at(30, 9), at(20, 3), at(5, 4)];
        let merged: Vec<(i64, u8)> =
            newest_of(vec![one, two], 4).iter().map(|m| (m.timestamp.timestamp(), m.id.bytes()[0])).collect();
        assert_eq!(merged, [(30, 9), (30, 1), (20, 3), (10, 2)]);
        assert!(newest_of(vec![vec![], vec![]], 3).is_empty());
    }

    fn stored(seq: i64, secs_ago: i64) -> Message {
        let mut m = Message::sample();
        m.seq = seq;
        m.timestamp = Utc::now() - chrono::Duration::seconds(secs_ago);
        m
    }

    fn seqs(h: &Holes) -> Vec<i64> {
        h.voids.iter().map(|(seq, _)| *seq).collect()
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_page_without_holes_stands_as_read() {
        let page = [stored(4, 1), stored(5, 0), stored(6, 0)];
        assert_eq!(holes(3, &page, Utc::now(), WAIT), Holes { voids: vec![], end: End::Open });
        assert_eq!(holes(3, &[], Utc::now(), WAIT), Holes { voids: vec![], end: End::Open });
    }

    #[test]
    fn holes_below_a_message_stored_long_enough_ago_are_voided_with_its_time() {
        // 4 and 6..=7 missing; 5 and 8 were stored 10 s ago.
        let page = [stored(5, 10), stored(8, 10), stored(9, 0)];
        let h = holes(3, &page, Utc::now(), WAIT);
        assert_eq!(seqs(&h), [4, 6, 7]);
        assert_eq!(h.voids[1].1, page[1].timestamp, "a void sorts with the message above it");
        assert_eq!(h.end, End::Open);
    }

    #[test]
    fn a_young_hole_ends_the_page_before_the_message_above_it() {
        // 5 missing below 6, stored a second ago: 6 and after are not shown yet.
        let page = [stored(3, 9), stored(4, 9), stored(6, 1), stored(7, 0)];
        let h = holes(2, &page, Utc::now(), WAIT);
        assert_eq!(h, Holes { voids: vec![], end: End::Young(2) });
        // Older holes before it are still voided.
        let page = [stored(4, 9), stored(6, 1)];
        let h = holes(2, &page, Utc::now(), WAIT);
        assert_eq!((seqs(&h), h.end), (vec![3], End::Young(1)));
        // At the very start of the page.
        assert_eq!(holes(0, &[stored(2, 0)], Utc::now(), WAIT).end, End::Young(0));
    }

    #[test]
    fn seqs_at_or_below_the_start_are_not_holes() {
        // Read from the archive's newest (12): live 10 and 11 are passed over.
        let page = [stored(10, 9), stored(11, 9), stored(13, 9), stored(15, 9)];
        let h = holes(12, &page, Utc::now(), WAIT);
        assert_eq!((seqs(&h), h.end), (vec![14], End::Open));
    }

    #[test]
    fn a_clock_ahead_of_the_reader_counts_as_young() {
        let page = [stored(3, -30)];
        assert_eq!(holes(1, &page, Utc::now(), WAIT).end, End::Young(0));
    }

    #[test]
    fn voids_in_the_page_are_not_holes() {
        let room = ObjectId::new();
        let mut void = Message::void(room, 4, Utc::now());
        void.room_id = room;
        let page = [stored(3, 0), void, stored(5, 0)];
        assert_eq!(holes(2, &page, Utc::now(), WAIT), Holes { voids: vec![], end: End::Open });
        assert!(page[1].is_void() && page[1].deleted && !page[0].is_void());
    }

    #[test]
    fn a_wide_hole_is_closed_over_several_reads() {
        let page = [stored(10, 9), stored(MAX_VOIDS as i64 + 20, 9)];
        let h = holes(0, &page, Utc::now(), WAIT);
        assert_eq!((h.voids.len(), &h.end), (MAX_VOIDS, &End::Capped(1)));
        assert_eq!(seqs(&h)[9..11], [11, 12]);
        let h = holes(500, &[stored(MAX_VOIDS as i64 * 3 + 501, 9)], Utc::now(), WAIT);
        assert_eq!((h.voids.len(), &h.end), (MAX_VOIDS, &End::Capped(0)));
        assert_eq!(h.voids.last().unwrap().0, 500 + MAX_VOIDS as i64);
    }

    #[test]
    fn patterns_escape_every_ascii_symbol_and_keep_the_rest() {
        assert_eq!(literal_pattern("a.b*c"), r"a\.b\*c");
        assert_eq!(literal_pattern("(x|y)+[z]{2}^$?"), r"\(x\|y\)\+\[z\]\{2\}\^\$\?");
        assert_eq!(literal_pattern(r"back\slash"), r"back\\slash");
        assert_eq!(literal_pattern("Grüße_1"), r"Grüße\_1");
    }
}

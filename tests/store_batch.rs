//! Message inserts that arrive together are written together: each message
//! still gets its own outcome, against the real store.

mod common;

use bson::oid::ObjectId;
use chrono::Utc;
use confab::store::{Message, Store, StoreError};

fn message(room: ObjectId, seq: i64) -> Message {
    let id = ObjectId::new();
    Message {
        id,
        room_id: room,
        seq,
        sender_id: ObjectId::new(),
        content: format!("message {seq}"),
        client_msg_id: None,
        dedup_key: id.to_hex(),
        timestamp: Utc::now(),
        edited_at: None,
        deleted: false,
        deleted_at: None,
    }
}

async fn store() -> Store {
    let store = Store::connect(&common::mongo_url(), &common::unique_db()).await.unwrap();
    store.ensure_indexes().await.unwrap();
    store
}

/// Many sends at once, some of them for a (room, seq) already taken: every
/// new one is stored once, and only the ones whose seq was taken are
/// refused, as duplicates, even when they share a write with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_stored_together_each_get_their_own_outcome() {
    let store = store().await;
    let rooms: Vec<ObjectId> = (0..4).map(|_| ObjectId::new()).collect();
    let mut fresh = Vec::new();
    let mut clashing = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for seq in 1..=50 {
            fresh.push(message(*room, seq));
            if seq % 10 == r as i64 {
                clashing.push(message(*room, seq));
            }
        }
    }
    // Interleaved, so clashes land in the same writes as the messages they
    // clash with.
    let mut all: Vec<(bool, Message)> = Vec::new();
    let mut clashes = clashing.iter().cloned();
    for (i, m) in fresh.iter().cloned().enumerate() {
        all.push((true, m));
        if i % 10 == 9 {
            if let Some(c) = clashes.next() {
                all.push((false, c));
            }
        }
    }
    all.extend(clashes.map(|c| (false, c)));
    let outcomes = futures::future::join_all(all.iter().map(|(_, m)| store.insert_message(m))).await;

    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for ((_, m), outcome) in all.iter().zip(outcomes) {
        match outcome {
            Ok(()) => stored.push(m.clone()),
            Err(StoreError::Duplicate) => refused.push(m.clone()),
            Err(e) => panic!("unexpected error for seq {}: {e}", m.seq),
        }
    }
    assert_eq!(stored.len(), fresh.len(), "one message stored per (room, seq)");
    assert_eq!(refused.len(), clashing.len(), "every clash refused as a duplicate");
    for room in &rooms {
        let mut seqs: Vec<i64> = stored.iter().filter(|m| m.room_id == *room).map(|m| m.seq).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    }
    for m in &stored {
        let found = store.message(m.id).await.unwrap().expect("an accepted message is stored");
        assert_eq!((found.room_id, found.seq, found.content.as_str()), (m.room_id, m.seq, m.content.as_str()));
    }
    for m in &refused {
        assert!(store.message(m.id).await.unwrap().is_none(), "a refused message is not stored");
    }
}

/// Senders that go away mid-insert (their connection closed) may have been
/// writing others' messages: those are still stored, and their senders are
/// told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_going_away_mid_write_lose_nobody_elses_message() {
    let store = store().await;
    let room = ObjectId::new();
    let messages: Vec<Message> = (1..=120).map(|seq| message(room, seq)).collect();
    let mut tasks = Vec::new();
    for m in &messages {
        let (store, m) = (store.clone(), m.clone());
        tasks.push(tokio::spawn(async move { store.insert_message(&m).await }));
    }
    // Every third sender goes away while writes are in flight.
    tokio::task::yield_now().await;
    for t in tasks.iter().step_by(3) {
        t.abort();
    }
    let mut kept = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await {
            Ok(outcome) => {
                outcome.unwrap_or_else(|e| panic!("message {} refused: {e}", i + 1));
                assert!(store.message(messages[i].id).await.unwrap().is_some(), "message {} acknowledged", i + 1);
                kept += 1;
            }
            Err(e) => assert!(e.is_cancelled()),
        }
    }
    assert!(kept >= 80, "the senders that stayed were answered");
}

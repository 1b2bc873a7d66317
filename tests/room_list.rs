//! `GET /rooms`: pages in order of activity, and a cold list costs a few
//! store reads however many rooms it shows, not one per room. A binary of
//! its own: it counts store operations with the process-wide metrics.

mod common;

use common::{assert_error, Node};
use serde_json::{json, Value};

fn ids(page: &Value) -> Vec<String> {
    page["rooms"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_list_pages_by_activity_and_reads_the_store_a_few_times() {
    let mut cfg = common::config(&common::unique_db());
    cfg.cache_ttl = std::time::Duration::ZERO; // every list is cold
    let n = Node::start(cfg).await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;

    // Thirty public rooms with a message each, in order; bob belongs to none.
    let mut rooms = Vec::new();
    for i in 0..30 {
        let room = n.create_room(&alice, &format!("room-{i:02}"), "public").await;
        n.post_message(&alice, &room, &format!("hello {i}")).await;
        rooms.push(room);
    }
    // A room that never had a message shows its creation as its activity.
    let quiet = n.create_room(&alice, "quiet", "public").await;
    // Bob joins room 3 and alice posts again there: it is now the most active.
    let (s, body) = n.call("POST", &format!("/rooms/{}/join", rooms[3]), Some(&bob.token), None).await;
    assert_eq!(s, 200, "{body}");
    n.post_message(&alice, &rooms[3], "news").await;
    n.post_message(&alice, &rooms[3], "more news").await;

    let history = "confab_mongo_op_seconds_count{op=\"history\"}";
    let (before, reads_before) = (n.metric(history).await, n.metric("confab_mongo_op_seconds_count").await);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/rooms?limit=7&cursor={c}"),
            None => "/rooms?limit=7".to_string(),
        };
        let (s, page) = n.call("GET", &path, Some(&bob.token), None).await;
        assert_eq!(s, 200, "{page}");
        pages += 1;
        seen.extend(ids(&page));
        if pages == 1 {
            let first = &page["rooms"][0];
            assert_eq!(first["id"], rooms[3].as_str(), "the most recently active first: {page}");
            assert_eq!(first["last_message"]["content"], "more news");
            assert_eq!((&first["role"], &first["unread_count"]), (&json!("member"), &json!(3)));
            assert_eq!(page["rooms"][1]["last_message"], Value::Null, "the quiet room");
            assert_eq!(page["rooms"][2]["last_message"]["content"], "hello 29");
            assert_eq!(page["rooms"][2]["unread_count"], Value::Null, "not a member");
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 5, "31 rooms in pages of 7");
    let mut expected: Vec<String> = vec![rooms[3].clone(), quiet.clone()];
    expected.extend(rooms.iter().enumerate().rev().filter(|(i, _)| *i != 3).map(|(_, r)| r.clone()));
    assert_eq!(seen, expected, "each room once, most recently active first");

    // Five cold pages of 31 rooms: no history read per room, and a handful
    // of store operations per page (memberships, rooms, last messages,
    // users, the page's unread counts). On FerretDB, which cannot serve
    // `$or` and `$in` from an index, the rooms and last messages are each
    // one operation made of equality reads (`Store::equality_only`).
    assert_eq!(n.metric(history).await - before, 0.0);
    let reads = n.metric("confab_mongo_op_seconds_count").await - reads_before;
    assert!(reads <= 5.0 * 5.0 + 1.0, "{reads} store reads for 5 pages");

    let (s, body) = n.call("GET", "/rooms?limit=0", Some(&bob.token), None).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = n.call("GET", "/rooms?limit=201", Some(&bob.token), None).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = n.call("GET", "/rooms?cursor=nonsense", Some(&bob.token), None).await;
    assert_error(s, &body, 422, "validation_failed");
    n.shutdown().await;
}

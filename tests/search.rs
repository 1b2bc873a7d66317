//! `GET /messages/search` (docs/api.md, "Search"): matching, order, pages,
//! and above all that no room the caller cannot read ever shows up.

mod common;

use bson::oid::ObjectId;
use common::{assert_error, Node, User};
use serde_json::{json, Value};

async fn node() -> Node {
    Node::start(common::config(&common::unique_db())).await
}

async fn search(n: &Node, user: &User, query: &str) -> (u16, Value) {
    n.call("GET", &format!("/messages/search?{query}"), Some(&user.token), None).await
}

/// The contents found, in order, and `has_more`.
async fn found(n: &Node, user: &User, query: &str) -> (Vec<String>, bool) {
    let (s, body) = search(n, user, query).await;
    assert_eq!(s, 200, "{query}: {body}");
    let contents = body["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().into()).collect();
    (contents, body["has_more"].as_bool().unwrap())
}

#[tokio::test]
async fn every_word_in_any_order_ignoring_case_newest_first() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let general = n.create_room(&alice, "general", "public").await;
    let random = n.create_room(&bob, "random", "public").await;
    for (user, room, content) in [
        (&alice, &general, "The quick brown fox"),
        (&alice, &general, "a lazy dog"),
        (&bob, &random, "QUICK dogs are Brown"),
        (&alice, &general, "brown bread"),
        (&alice, &general, "pattern a.b*c here"),
        (&alice, &general, "pattern aXbbbc there"),
        (&alice, &general, "Grüße aus Köln"),
    ] {
        n.post_message(user, room, content).await;
    }
    // Every room the caller can read, newest first; words in any order.
    assert_eq!(
        found(&n, &alice, "q=brown+quick").await,
        (vec!["QUICK dogs are Brown".into(), "The quick brown fox".into()], false)
    );
    assert_eq!(found(&n, &alice, "q=DOG").await.0, ["QUICK dogs are Brown", "a lazy dog"]);
    assert_eq!(found(&n, &alice, "q=brown%20%20fox%20quick").await.0, ["The quick brown fox"]);
    assert_eq!(found(&n, &alice, "q=brown+cat").await.0, Vec::<String>::new());
    // Words are text, not patterns.
    assert_eq!(found(&n, &alice, "q=a.b*c").await.0, ["pattern a.b*c here"]);
    assert_eq!(found(&n, &alice, "q=%5E").await.0, Vec::<String>::new());
    assert_eq!(found(&n, &alice, "q=gr%C3%BC%C3%9Fe+K%C3%96LN").await.0, ["Grüße aus Köln"]);
    // One room only.
    assert_eq!(
        found(&n, &alice, &format!("q=brown&room_id={general}")).await.0,
        ["brown bread", "The quick brown fox"]
    );
    assert_eq!(found(&n, &alice, &format!("q=brown&room_id={random}")).await.0, ["QUICK dogs are Brown"]);

    // The view is the message view.
    let (_, body) = search(&n, &alice, "q=lazy").await;
    let m = &body["messages"][0];
    assert_eq!((m["room_id"].as_str(), m["sender_id"].as_str()), (Some(general.as_str()), Some(alice.id.as_str())));
    assert_eq!((m["seq"].as_i64(), m["deleted"].as_bool()), (Some(2), Some(false)));
    n.shutdown().await;
}

#[tokio::test]
async fn pages_walk_back_with_before_and_skip_tombstones() {
    let n = node().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, "general", "public").await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(n.post_message(&alice, &room, &format!("page {i}")).await["id"].as_str().unwrap().to_string());
    }
    n.post_message(&alice, &room, "unrelated").await;

    let (s, first) = search(&n, &alice, "q=page&limit=2").await;
    assert_eq!(s, 200, "{first}");
    let contents = |body: &Value| -> Vec<String> {
        body["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().into()).collect()
    };
    assert_eq!((contents(&first), first["has_more"].as_bool()), (vec!["page 5".into(), "page 4".into()], Some(true)));
    let last = first["messages"][1]["id"].as_str().unwrap();
    assert_eq!(
        found(&n, &alice, &format!("q=page&limit=2&before={last}")).await,
        (vec!["page 3".into(), "page 2".into()], true)
    );
    assert_eq!(found(&n, &alice, &format!("q=page&limit=2&before={}", ids[1])).await, (vec!["page 1".into()], false));
    assert_eq!(found(&n, &alice, "q=page").await.0.len(), 5, "default limit is 20");

    // Deleted messages never match, edited ones match their new content.
    let (s, _) = n.call("DELETE", &format!("/messages/{}", ids[2]), Some(&alice.token), None).await;
    assert_eq!(s, 200);
    let (s, _) = n
        .call("PATCH", &format!("/messages/{}", ids[3]), Some(&alice.token), Some(json!({"content": "renamed"})))
        .await;
    assert_eq!(s, 200);
    assert_eq!(found(&n, &alice, "q=page").await.0, ["page 5", "page 2", "page 1"]);
    assert_eq!(found(&n, &alice, "q=RENAMED").await.0, ["renamed"]);
    // A deleted message still works as a cursor.
    assert_eq!(found(&n, &alice, &format!("q=page&before={}", ids[2])).await.0, ["page 2", "page 1"]);
    n.shutdown().await;
}

#[tokio::test]
async fn rooms_the_caller_cannot_read_never_show_up() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let public = n.create_room(&alice, "general", "public").await;
    let secret = n.create_room(&alice, "secret", "private").await;
    n.post_message(&alice, &public, "launch party at noon").await;
    let hidden = n.post_message(&alice, &secret, "launch codes are 1234").await;
    let hidden = hidden["id"].as_str().unwrap();

    assert_eq!(found(&n, &bob, "q=launch").await.0, ["launch party at noon"]);
    assert_eq!(found(&n, &bob, "q=codes").await, (vec![], false));
    let (s, body) = search(&n, &bob, &format!("q=launch&room_id={secret}")).await;
    assert_error(s, &body, 403, "forbidden");
    let (s, body) = search(&n, &bob, &format!("q=launch&before={hidden}")).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = search(&n, &bob, &format!("q=launch&room_id={public}&before={hidden}")).await;
    assert_error(s, &body, 404, "not_found");
    // A member finds both.
    assert_eq!(found(&n, &alice, "q=launch").await.0, ["launch codes are 1234", "launch party at noon"]);
    n.shutdown().await;
}

#[tokio::test]
async fn bad_queries_are_refused() {
    let n = node().await;
    let alice = n.register("alice").await;
    let room = n.create_room(&alice, "general", "public").await;
    let long = "x".repeat(201);
    for q in ["", "q=", "q=%20%20", &format!("q={long}"), "q=a&limit=0", "q=a&limit=101", "q=a&limit=ten"] {
        let (s, body) = search(&n, &alice, q).await;
        assert_error(s, &body, 422, "validation_failed");
    }
    assert_eq!(found(&n, &alice, &format!("q={}&limit=100", "x".repeat(200))).await.0.len(), 0);
    for q in ["q=a&room_id=nope", "q=a&before=nope"] {
        let (s, body) = search(&n, &alice, q).await;
        assert_error(s, &body, 400, "bad_request");
    }
    let missing = ObjectId::new().to_hex();
    let (s, body) = search(&n, &alice, &format!("q=a&room_id={missing}")).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = search(&n, &alice, &format!("q=a&room_id={room}&before={missing}")).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = n.call("GET", "/messages/search?q=a", None, None).await;
    assert_error(s, &body, 401, "unauthorized");
    n.shutdown().await;
}

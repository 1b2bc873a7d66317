//! Profiles, user search and contacts over REST, against a real node.

mod common;

use common::{assert_error, Node};
use serde_json::{json, Value};

async fn node() -> Node {
    Node::start(common::config(&common::unique_db())).await
}

/// Asserts a 422 whose message names `field`.
fn assert_invalid(status: u16, body: &Value, field: &str) {
    assert_error(status, body, 422, "validation_failed");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("{field}:")), "{message}");
}

#[tokio::test]
async fn profiles_are_read_and_edited_and_only_their_owner_sees_the_email() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;

    let (s, me) = n.call("GET", "/users/me", Some(&alice.token), None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!((me["id"].as_str(), me["username"].as_str()), (Some(alice.id.as_str()), Some("alice")));
    assert_eq!(me["email"], "alice@example.com");
    assert_eq!((me["display_name"].clone(), me["avatar_url"].clone()), (Value::Null, Value::Null));

    let patch = json!({"display_name": "  Alice Liddell ", "avatar_url": "https://cdn.example.com/a.png"});
    let (s, me) = n.call("PATCH", "/users/me", Some(&alice.token), Some(patch)).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["display_name"], "Alice Liddell", "trimmed");
    assert_eq!(me["avatar_url"], "https://cdn.example.com/a.png");
    assert_eq!(me["email"], "alice@example.com");

    // Others see the profile, never the email.
    let (s, seen) = n.call("GET", &format!("/users/{}", alice.id), Some(&bob.token), None).await;
    assert_eq!(s, 200, "{seen}");
    assert_eq!(seen["display_name"], "Alice Liddell");
    assert_eq!(seen["avatar_url"], "https://cdn.example.com/a.png");
    assert!(seen["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(seen.get("email").is_none() && seen.get("password_hash").is_none(), "{seen}");

    // A field left out stays; null clears.
    let (s, me) = n.call("PATCH", "/users/me", Some(&alice.token), Some(json!({"avatar_url": null}))).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!((me["display_name"].as_str(), me["avatar_url"].clone()), (Some("Alice Liddell"), Value::Null));
    let (s, me) = n.call("PATCH", "/users/me", Some(&alice.token), Some(json!({}))).await;
    assert_eq!((s, me["display_name"].as_str()), (200, Some("Alice Liddell")));
    let (_, me) = n.call("PATCH", "/users/me", Some(&alice.token), Some(json!({"display_name": null}))).await;
    assert_eq!(me["display_name"], Value::Null);
    let (_, me) = n.call("GET", "/users/me", Some(&alice.token), None).await;
    assert_eq!((me["display_name"].clone(), me["avatar_url"].clone()), (Value::Null, Value::Null));

    // Every rule names its field.
    let long_url = format!("https://example.com/{}", "a".repeat(2048));
    let cases = [
        (json!({"display_name": ""}), "display_name"),
        (json!({"display_name": "   "}), "display_name"),
        (json!({"display_name": "x".repeat(65)}), "display_name"),
        (json!({"display_name": "bell\u{7}"}), "display_name"),
        (json!({"display_name": 42}), "display_name"),
        (json!({"avatar_url": "ftp://example.com/a.png"}), "avatar_url"),
        (json!({"avatar_url": "javascript:alert(1)"}), "avatar_url"),
        (json!({"avatar_url": "not a url"}), "avatar_url"),
        (json!({"avatar_url": long_url}), "avatar_url"),
        (json!({"avatar_url": "http://example.com/a.png"}), "avatar_url"),
        (json!({"avatar_url": "https://evil.example/a.png\"onerror=\"alert(1)"}), "avatar_url"),
        (json!({"display_name": "alice\u{202E}gnp.exe"}), "display_name"),
        (json!({"display_name": "zero\u{200B}width"}), "display_name"),
        (json!({"email": "new@example.com"}), "email"),
    ];
    for (body, field) in cases {
        let (s, b) = n.call("PATCH", "/users/me", Some(&alice.token), Some(body.clone())).await;
        assert_invalid(s, &b, field);
    }
    let (s, b) = n.call("PATCH", "/users/me", Some(&alice.token), Some(json!({"display_name": "x".repeat(64)}))).await;
    assert_eq!(s, 200, "{b}");
    // Stored in its normalized form.
    let patch = json!({"avatar_url": "HTTPS://CDN.Example.com/u/../a%20b.png"});
    let (s, b) = n.call("PATCH", "/users/me", Some(&alice.token), Some(patch)).await;
    assert_eq!((s, &b["avatar_url"]), (200, &json!("https://cdn.example.com/a%20b.png")), "{b}");

    // Ids: malformed → 400, unknown → 404; no token → 401.
    let (s, b) = n.call("GET", "/users/nope", Some(&bob.token), None).await;
    assert_error(s, &b, 400, "bad_request");
    let unknown = bson::oid::ObjectId::new().to_hex();
    let (s, b) = n.call("GET", &format!("/users/{unknown}"), Some(&bob.token), None).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = n.call("GET", "/users/me", None, None).await;
    assert_error(s, &b, 401, "unauthorized");
    n.shutdown().await;
}

/// The usernames of a search result.
fn names(page: &Value) -> Vec<&str> {
    page["users"].as_array().unwrap().iter().map(|u| u["username"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn search_finds_username_and_display_name_prefixes_ignoring_case_page_by_page() {
    let n = node().await;
    let alice = n.register("alice").await;
    for name in ["Alfred", "albert", "bob", "carol", "x.y", "xzy"] {
        n.register(name).await;
    }
    let bob = n.register("bobby").await;
    n.call("PATCH", "/users/me", Some(&bob.token), Some(json!({"display_name": "Alchemist"}))).await;
    let search = |q: &str| format!("/users/search?q={q}");

    let (s, page) = n.call("GET", &search("AL"), Some(&alice.token), None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(names(&page), ["albert", "Alfred", "alice", "bobby"], "by username, ignoring case");
    assert_eq!(page["next_cursor"], Value::Null);
    assert!(page["users"].as_array().unwrap().iter().all(|u| u.get("email").is_none()), "{page}");
    assert_eq!(page["users"][3]["display_name"], "Alchemist");

    // Page by page.
    let (_, first) = n.call("GET", &format!("{}&limit=2", search("al")), Some(&alice.token), None).await;
    assert_eq!(names(&first), ["albert", "Alfred"]);
    let cursor = first["next_cursor"].as_str().expect("a cursor to the next page");
    let (_, second) =
        n.call("GET", &format!("{}&limit=2&after={cursor}", search("al")), Some(&alice.token), None).await;
    assert_eq!(names(&second), ["alice", "bobby"]);
    assert_eq!(second["next_cursor"], Value::Null);

    // Display names only, case-insensitively; regex metacharacters are literal.
    let (_, page) = n.call("GET", &search("aLcH"), Some(&alice.token), None).await;
    assert_eq!(names(&page), ["bobby"]);
    let (_, page) = n.call("GET", &search("x.y"), Some(&alice.token), None).await;
    assert_eq!(names(&page), ["x.y"]);
    for q in ["(", "%5B", ".%2A", "%5E", "zz"] {
        let (s, page) = n.call("GET", &search(q), Some(&alice.token), None).await;
        assert_eq!((s, names(&page).len()), (200, 0), "{q}: {page}");
    }

    // Rules.
    let long = "a".repeat(65);
    for (query, field) in [
        ("/users/search", "q"),
        ("/users/search?q=", "q"),
        ("/users/search?q=%20%20", "q"),
        (&search(&long) as &str, "q"),
        ("/users/search?q=al&limit=0", "limit"),
        ("/users/search?q=al&limit=101", "limit"),
        ("/users/search?q=al&limit=ten", "limit"),
        (&format!("/users/search?q=al&after={long}"), "after"),
    ] {
        let (s, b) = n.call("GET", query, Some(&alice.token), None).await;
        assert_invalid(s, &b, field);
    }
    let (s, b) = n.call("GET", &search("al"), None, None).await;
    assert_error(s, &b, 401, "unauthorized");
    n.shutdown().await;
}

#[tokio::test]
async fn contacts_are_added_once_listed_with_presence_and_removed() {
    let n = node().await;
    let alice = n.register("alice").await;
    let bob = n.register("bob").await;
    let carol = n.register("carol").await;
    let path = |id: &str| format!("/contacts/{id}");

    let (s, added) = n.call("PUT", &path(&bob.id), Some(&alice.token), None).await;
    assert_eq!(s, 201, "{added}");
    assert_eq!((added["id"].as_str(), added["username"].as_str()), (Some(bob.id.as_str()), Some("bob")));
    assert!(added.get("email").is_none(), "{added}");
    assert_eq!(added["presence"], json!({"user_id": bob.id, "status": "offline", "last_seen": null}));
    let (s, again) = n.call("PUT", &path(&bob.id), Some(&alice.token), None).await;
    assert_eq!(s, 200, "idempotent: {again}");
    assert_eq!(again["added_at"], added["added_at"], "the original entry");
    let (s, _) = n.call("PUT", &path(&carol.id), Some(&alice.token), None).await;
    assert_eq!(s, 201);

    // Errors.
    let (s, b) = n.call("PUT", &path(&alice.id), Some(&alice.token), None).await;
    assert_invalid(s, &b, "user_id");
    let unknown = bson::oid::ObjectId::new().to_hex();
    let (s, b) = n.call("PUT", &path(&unknown), Some(&alice.token), None).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = n.call("PUT", &path("nope"), Some(&alice.token), None).await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = n.call("GET", "/contacts", None, None).await;
    assert_error(s, &b, 401, "unauthorized");

    // Listed oldest first, with presence: bob comes online.
    let mut on_bob = n.connect(&bob).await;
    on_bob.request(json!({"type": "ping"})).await; // the session runs: bob is counted
    let (s, list) = n.call("GET", "/contacts", Some(&alice.token), None).await;
    assert_eq!(s, 200, "{list}");
    let contacts = list["contacts"].as_array().unwrap();
    let listed: Vec<&str> = contacts.iter().map(|c| c["username"].as_str().unwrap()).collect();
    assert_eq!(listed, ["bob", "carol"]);
    assert_eq!(contacts[0]["presence"]["status"], "online");
    assert!(contacts[0]["presence"]["last_seen"].as_str().unwrap().ends_with('Z'));
    assert_eq!(contacts[1]["presence"]["status"], "offline");
    assert_eq!(contacts[0]["added_at"], added["added_at"]);
    // Contact lists are private to their owner.
    let (_, theirs) = n.call("GET", "/contacts", Some(&bob.token), None).await;
    assert_eq!(theirs["contacts"], json!([]));

    let (s, b) = n.call("DELETE", &path(&bob.id), Some(&alice.token), None).await;
    assert_eq!((s, b), (204, Value::Null));
    let (s, b) = n.call("DELETE", &path(&bob.id), Some(&alice.token), None).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = n.call("DELETE", &path("nope"), Some(&alice.token), None).await;
    assert_error(s, &b, 400, "bad_request");
    let (_, list) = n.call("GET", "/contacts", Some(&alice.token), None).await;
    assert_eq!(list["contacts"].as_array().unwrap().len(), 1);
    assert_eq!(list["contacts"][0]["username"], "carol");
    n.shutdown().await;
}

//! Administrators and the audit log, on two nodes: `confab user promote`
//! and `demote`, `/admin` refused (403) to everyone else, and an audit entry
//! for each security-relevant action, with who, from where and the outcome,
//! and never a password or token.

mod common;

use common::{assert_error, config, unique_db, Node, User};
use serde_json::{json, Value};

use common::confab_command as confab;

/// The audit entries an admin sees with `query`.
async fn entries(node: &Node, admin: &User, query: &str) -> Value {
    let (s, body) = node.call("GET", &format!("/admin/audit{query}"), Some(&admin.token), None).await;
    assert_eq!(s, 200, "{body}");
    body
}

#[tokio::test]
async fn admins_are_made_by_the_command_line_and_only_they_use_the_admin_api() {
    let db = unique_db();
    let (a, b) = (Node::start(config(&db)).await, Node::start(config(&db)).await);
    let root = a.register("olga").await;
    let alice = b.register("alice").await;

    // Nobody is an admin yet: every /admin route is 403, without a token 401.
    for path in ["/admin/users", "/admin/users?q=ali", "/admin/audit", "/admin/audit?action=login.ok"] {
        let (s, body) = a.call("GET", path, Some(&root.token), None).await;
        assert_error(s, &body, 403, "forbidden");
        let (s, body) = b.call("GET", path, None, None).await;
        assert_error(s, &body, 401, "unauthorized");
    }
    let (code, out, err) = confab(&db, &["user", "promote", "OLGA"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "olga is now admin");
    let (code, out, _) = confab(&db, &["user", "promote", "olga"]);
    assert_eq!((code, out.trim()), (0, "olga is already admin"));
    let (code, _, err) = confab(&db, &["user", "promote", "nobody"]);
    assert_eq!(code, 2);
    assert!(err.contains("no user named `nobody`"), "{err}");

    // Now on either node, with the token root already had.
    let (s, body) = b.call("GET", "/admin/users?q=ali", Some(&root.token), None).await;
    assert_eq!(s, 200, "{body}");
    let users = body["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!((users[0]["username"].as_str(), users[0]["role"].as_str()), (Some("alice"), Some("user")));
    assert_eq!(users[0]["email"], "alice@example.com");
    let (s, body) = a.call("GET", "/admin/users?limit=1", Some(&root.token), None).await;
    assert_eq!(s, 200);
    assert_eq!(body["users"][0]["username"], "alice");
    let next = body["next_cursor"].as_str().unwrap();
    let (_, body) = a.call("GET", &format!("/admin/users?limit=1&after={next}"), Some(&root.token), None).await;
    assert_eq!(body["users"][0]["username"], "olga");
    assert_eq!(body["users"][0]["role"], "admin");
    let (_, me) = a.call("GET", "/users/me", Some(&root.token), None).await;
    assert_eq!(me["role"], "admin");
    let (s, body) = a.call("GET", "/admin/users?limit=0", Some(&root.token), None).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = a.call("GET", "/admin/users", Some(&alice.token), None).await;
    assert_error(s, &body, 403, "forbidden");

    // A demotion takes effect at once, token or not.
    let (code, out, _) = confab(&db, &["user", "demote", "olga"]);
    assert_eq!((code, out.trim()), (0, "olga is now user"));
    let (s, body) = b.call("GET", "/admin/audit", Some(&root.token), None).await;
    assert_error(s, &body, 403, "forbidden");
    confab(&db, &["user", "promote", "olga"]);
    let got = entries(&a, &root, "?action=user.role_changed").await;
    let changes: Vec<(&str, &str)> = got["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["details"]["from"].as_str().unwrap(), e["details"]["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [("user", "admin"), ("admin", "user"), ("user", "admin")].iter().rev().copied().collect::<Vec<_>>()
    );
    assert!(got["entries"].as_array().unwrap().iter().all(|e| e["actor_kind"] == "system"));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn security_events_are_audited_without_secrets() {
    let db = unique_db();
    let (a, b) = (Node::start(config(&db)).await, Node::start(config(&db)).await);
    let root = a.register("olga").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    assert_eq!(confab(&db, &["user", "promote", "olga"]).0, 0);

    // Logins, good and bad, through both nodes.
    let (s, ok) = a.login_as("alice", "correct horse", "agent-ok/1.0").await;
    assert_eq!(s, 200);
    let (s, _) = b.login_as("alice", "wrong password!", "agent-bad/2.0").await;
    assert_eq!(s, 401);
    let (s, _) = b.login_as("nobody-here", "whatever pass", "agent-bad/2.0").await;
    assert_eq!(s, 401);

    // Membership: a role change and a removal, on different nodes.
    let room = a.create_room(&alice, "audited", "public").await;
    let (s, _) = b.call("POST", &format!("/rooms/{room}/join"), Some(&bob.token), None).await;
    assert_eq!(s, 200);
    let path = format!("/rooms/{room}/members/{}", bob.id);
    let (s, body) = a.call("PATCH", &path, Some(&alice.token), Some(json!({"role": "moderator"}))).await;
    assert_eq!(s, 200, "{body}");
    let (s, _) = b.call("DELETE", &path, Some(&alice.token), None).await;
    assert_eq!(s, 204);

    // API keys, by the command line.
    let (code, key, err) = confab(&db, &["apikey", "create", "--name", "billing"]);
    assert_eq!(code, 0, "{err}");
    let key = key.trim().to_string();
    assert_eq!(confab(&db, &["apikey", "revoke", &key]).0, 0);

    let all = entries(&b, &root, "?limit=200").await;
    let list = all["entries"].as_array().unwrap();
    let find = |action: &str| list.iter().filter(|e| e["action"] == action).cloned().collect::<Vec<_>>();

    let good = find("login.ok");
    let good = good.iter().find(|e| e["user_agent"] == "agent-ok/1.0").expect("alice's login");
    assert_eq!(good["actor_id"], alice.id.as_str());
    assert_eq!(good["actor_kind"], "user");
    assert_eq!(good["outcome"], "ok");
    assert_eq!(good["ip"], "127.0.0.1");
    assert_eq!(good["target"], format!("user:{}", alice.id));
    let failed = find("login.failed");
    let outcomes: Vec<&str> = failed.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["unknown_user", "bad_password"], "newest first");
    assert_eq!(failed[1]["actor_id"], alice.id.as_str());
    assert!(failed[0]["actor_id"].is_null());
    assert_eq!(failed[0]["details"]["login"], "nobody-here");
    assert!(failed.iter().all(|e| e["user_agent"] == "agent-bad/2.0"));

    let role = &find("member.role_changed")[0];
    assert_eq!(role["actor_id"], alice.id.as_str());
    assert_eq!(role["target"], format!("room:{room}/user:{}", bob.id));
    assert_eq!((role["details"]["from"].as_str(), role["details"]["to"].as_str()), (Some("member"), Some("moderator")));
    let removed = &find("member.removed")[0];
    assert_eq!(removed["target"], format!("room:{room}/user:{}", bob.id));
    assert_eq!(removed["details"]["left"], false);
    let created = &find("apikey.created")[0];
    assert_eq!(
        (created["actor_kind"].as_str(), created["details"]["name"].as_str()),
        (Some("system"), Some("billing"))
    );
    let id = key.strip_prefix("ck_").unwrap().split('_').next().unwrap();
    assert_eq!(find("apikey.revoked")[0]["target"], format!("apikey:{id}"), "{key}");

    // No secret anywhere: passwords, access tokens, the API key.
    let text = all.to_string();
    for secret in ["correct horse", "wrong password!", "whatever pass", ok["access_token"].as_str().unwrap(), &key] {
        assert!(!text.contains(secret), "{secret} in the audit log");
    }
    let secret_part = key.rsplit('_').next().unwrap();
    assert!(!text.contains(secret_part));

    // Filters and keyset pages.
    let by_alice = entries(&a, &root, &format!("?actor={}", alice.id)).await;
    assert!(by_alice["entries"].as_array().unwrap().iter().all(|e| e["actor_id"] == alice.id.as_str()));
    assert!(by_alice["entries"].as_array().unwrap().len() >= 3);
    let mut seen = Vec::new();
    let mut before = String::new();
    loop {
        let page = entries(&a, &root, &format!("?limit=2{before}")).await;
        for e in page["entries"].as_array().unwrap() {
            seen.push(e["id"].as_str().unwrap().to_string());
        }
        match page["next_before"].as_str() {
            Some(next) => before = format!("&before={next}"),
            None => break,
        }
    }
    let ids: Vec<String> = list.iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(seen, ids, "pages of two walk the same entries, once each");
    let future = entries(&a, &root, "?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["entries"], json!([]));
    for bad in ["?since=yesterday", "?before=nope", "?before=1_x", "?action=DROP%20TABLE", "?limit=1000"] {
        let (s, body) = a.call("GET", &format!("/admin/audit{bad}"), Some(&root.token), None).await;
        assert_error(s, &body, 422, "validation_failed");
    }
    let (s, body) = a.call("GET", "/admin/audit?actor=x", Some(&root.token), None).await;
    assert_error(s, &body, 400, "bad_request");

    // The command line prints the same log.
    let (code, out, err) = confab(&db, &["audit", "--action", "login.failed"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].contains("\tlogin.failed\tunknown_user\tuser\t-\t127.0.0.1"), "{out}");
    assert!(lines[1].contains(&format!("\tbad_password\tuser:{}\tuser:{}", alice.id, alice.id)), "{out}");
    let (code, _, err) = confab(&db, &["audit", "--since", "last week"]);
    assert_eq!(code, 2);
    assert!(err.contains("since"), "{err}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_admin_deletes_any_message_and_the_room_sees_it_on_every_node() {
    let db = unique_db();
    let (a, b) = (Node::start(config(&db)).await, Node::start(config(&db)).await);
    let olga = a.register("olga").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    assert_eq!(confab(&db, &["user", "promote", "olga"]).0, 0);
    let room = a.create_room(&alice, "moderated", "private").await;
    let (s, _) =
        a.call("POST", &format!("/rooms/{room}/members"), Some(&alice.token), Some(json!({"user_id": bob.id}))).await;
    assert_eq!(s, 201);
    let mut watcher = b.connect(&bob).await;
    watcher.join(&room).await;
    let posted = a.post_message(&alice, &room, "something to take down").await;
    let id = posted["id"].as_str().unwrap().to_string();
    assert_eq!(watcher.recv_type("message").await["data"]["id"], id.as_str());

    // Not an admin (even the room's owner goes through DELETE /messages): 403.
    let (s, body) = a.call("DELETE", &format!("/admin/messages/{id}"), Some(&bob.token), None).await;
    assert_error(s, &body, 403, "forbidden");
    // Bad input.
    let (s, body) = a.call("DELETE", "/admin/messages/nope", Some(&olga.token), None).await;
    assert_error(s, &body, 400, "bad_request");
    let (s, body) =
        a.call("DELETE", &format!("/admin/messages/{}", bson::oid::ObjectId::new()), Some(&olga.token), None).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = a
        .call("DELETE", &format!("/admin/messages/{id}"), Some(&olga.token), Some(json!({"reason": "x".repeat(501)})))
        .await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) =
        a.call("DELETE", &format!("/admin/messages/{id}"), Some(&olga.token), Some(json!({"why": 1}))).await;
    assert_error(s, &body, 400, "bad_request");

    // An admin who is not in the room deletes it: a tombstone, live on the other node.
    let (s, tomb) =
        a.call("DELETE", &format!("/admin/messages/{id}"), Some(&olga.token), Some(json!({"reason": "spam"}))).await;
    assert_eq!(s, 200, "{tomb}");
    assert_eq!((tomb["deleted"].as_bool(), tomb["content"].is_null()), (Some(true), true));
    let frame = watcher.recv_type("message_deleted").await;
    assert_eq!(frame["data"]["id"], id.as_str());
    assert_eq!(frame["user_id"], olga.id.as_str());
    // Idempotent: the same tombstone, no second frame, no second entry.
    let (s, again) = b.call("DELETE", &format!("/admin/messages/{id}"), Some(&olga.token), None).await;
    assert_eq!((s, &again), (200, &tomb));
    watcher.assert_silent(std::time::Duration::from_millis(300)).await;
    let (_, page) = b.call("GET", &format!("/messages?room_id={room}"), Some(&alice.token), None).await;
    assert_eq!(page["messages"][0]["deleted"], true);

    let got = entries(&b, &olga, "?action=message.moderated").await;
    let list = got["entries"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["actor_id"], olga.id.as_str());
    assert_eq!(list[0]["target"], format!("message:{id}"));
    assert_eq!(list[0]["details"]["reason"], "spam");
    assert_eq!(list[0]["details"]["sender_id"], alice.id.as_str());
    assert_eq!(list[0]["details"]["room_id"], room.as_str());
    assert!(!got.to_string().contains("something to take down"), "the content is not kept in the log");
    a.shutdown().await;
    b.shutdown().await;
}

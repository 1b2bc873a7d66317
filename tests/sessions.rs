//! Login sessions on two nodes sharing Redis: refresh rotation and reuse
//! detection, logout, session lists, password changes, bans and
//! disconnects, each closing the sockets it must on whichever node holds
//! them; and sockets whose token runs out.

mod common;

use std::time::{Duration, Instant};

use common::{assert_error, config, unique_db, Client, Ended, Node, User, SECRET};
use serde_json::{json, Value};

use common::confab_command as confab;

const PASSWORD: &str = "correct horse";

/// Logs `username` in on `node` with a user agent; the whole answer.
async fn session(node: &Node, username: &str, agent: &str) -> Value {
    let (s, grant) = node.login_as(username, PASSWORD, agent).await;
    assert_eq!(s, 200, "{grant}");
    grant
}

fn token(grant: &Value) -> &str {
    grant["access_token"].as_str().unwrap()
}

async fn refresh(node: &Node, refresh_token: &str) -> (u16, Value) {
    node.call("POST", "/token/refresh", None, Some(json!({"refresh_token": refresh_token}))).await
}

async fn connect(node: &Node, token: &str) -> Client {
    Client::connect(&format!("ws://{}/ws?token={token}", node.addr)).await
}

/// Waits (up to `within`) for `token` to be refused by `node` with 401
/// `session_revoked`; how long it took.
async fn refused_within(node: &Node, token: &str, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (s, body) = node.call("GET", "/users/me", Some(token), None).await;
        if s == 401 {
            assert_error(s, &body, 401, "session_revoked");
            return start.elapsed();
        }
        assert_eq!(s, 200, "{body}");
        assert!(start.elapsed() < within, "the token was still accepted after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn promote(db: &str, node: &Node, username: &str) -> User {
    let user = node.register(username).await;
    let (code, _, err) = confab(db, &["user", "promote", username]);
    assert_eq!(code, 0, "{err}");
    user
}

async fn audit(node: &Node, admin: &User, action: &str) -> Vec<Value> {
    let (s, body) = node.call("GET", &format!("/admin/audit?action={action}"), Some(&admin.token), None).await;
    assert_eq!(s, 200, "{body}");
    body["entries"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_refresh_rotates_the_pair_and_a_reused_token_revokes_the_session_everywhere() {
    let db = unique_db();
    let (a, b) = (Node::start(config(&db)).await, Node::start(config(&db)).await);
    let root = promote(&db, &a, "olga").await;
    a.register("alice").await;

    let grant = session(&a, "alice", "phone/1.0").await;
    assert_eq!(grant["token_type"], "Bearer");
    assert_eq!(grant["expires_in"], 900, "15 minutes by default");
    assert_eq!(grant["refresh_expires_in"], 30 * 86_400, "30 days by default");
    let session_id = grant["session_id"].as_str().unwrap().to_string();
    let tokens = confab::auth::Tokens::new(SECRET, Duration::from_secs(60));
    let caller = tokens.verify(token(&grant)).unwrap();
    assert_eq!(caller.session.map(|s| s.to_hex()), Some(session_id.clone()), "the access token names its session");
    let first_refresh = grant["refresh_token"].as_str().unwrap().to_string();
    assert!(!first_refresh.contains(&token(&grant)[..20]), "opaque, not a JWT");

    // A socket on node b, opened with the first access token.
    let mut socket = connect(&b, token(&grant)).await;
    socket.request(json!({"type": "ping"})).await;

    // Refreshing on the other node: a new pair of the same session.
    let (s, second) = refresh(&b, &first_refresh).await;
    assert_eq!(s, 200, "{second}");
    assert_eq!(second["session_id"], session_id.as_str());
    assert_ne!(second["refresh_token"], first_refresh.as_str());
    assert_ne!(second["access_token"], grant["access_token"]);
    let (s, _) = a.call("GET", "/users/me", Some(token(&second)), None).await;
    assert_eq!(s, 200);
    let (s, third) = refresh(&a, second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 200, "{third}");

    // The first refresh token again: stolen. The whole session ends, on
    // both nodes, its socket included.
    let (s, body) = refresh(&a, &first_refresh).await;
    assert_error(s, &body, 401, "refresh_reused");
    let waited = refused_within(&b, token(&third), Duration::from_secs(1)).await;
    assert!(waited <= Duration::from_secs(1));
    refused_within(&a, token(&grant), Duration::from_secs(1)).await;
    assert_eq!(socket.ended().await, Ended::Close(Some(4001)));
    let (s, body) = refresh(&b, third["refresh_token"].as_str().unwrap()).await;
    assert_error(s, &body, 401, "invalid_refresh_token");
    let (s, _) = b.call("GET", "/ws", Some(token(&third)), None).await;
    assert_eq!(s, 401, "no new socket either");

    // Bad refresh requests.
    for bad in ["", "garbage", &format!("{}.{}.{}", "0".repeat(24), "0".repeat(24), "0".repeat(64))] {
        let (s, body) = refresh(&a, bad).await;
        assert_error(s, &body, 401, "invalid_refresh_token");
    }
    let (s, body) = a.call("POST", "/token/refresh", None, Some(json!({}))).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = a.call("POST", "/token/refresh", None, Some(json!({"refresh_token": 7}))).await;
    assert_error(s, &body, 422, "validation_failed");

    // The audit log has the refreshes and the reuse, and no token.
    let refreshes = audit(&a, &root, "token.refresh").await;
    assert_eq!(refreshes.len(), 2);
    let reuse = audit(&b, &root, "token.reuse_detected").await;
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["target"], format!("session:{session_id}"));
    assert_eq!(reuse[0]["outcome"], "revoked");
    let all = a.call("GET", "/admin/audit?limit=200", Some(&root.token), None).await.1.to_string();
    assert!(!all.contains(&first_refresh[50..]) && !all.contains(&token(&grant)[40..]), "no token in the log");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn logout_ends_one_session_or_all_and_the_list_shows_what_is_left() {
    let db = unique_db();
    let (a, b) = (Node::start(config(&db)).await, Node::start(config(&db)).await);
    let root = promote(&db, &a, "olga").await;
    let bob = a.register("bob").await;
    let phone = session(&a, "bob", "phone/2.0").await;
    let laptop = session(&b, "bob", "laptop/3.0").await;

    let (s, body) = a.call("GET", "/sessions", Some(token(&phone)), None).await;
    assert_eq!(s, 200, "{body}");
    let list = body["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 3, "the registration's login, the phone and the laptop: {body}");
    let mine = list.iter().find(|s| s["current"] == true).unwrap();
    assert_eq!(mine["id"], phone["session_id"]);
    assert_eq!(mine["user_agent"], "phone/2.0");
    assert_eq!(mine["ip"], "127.0.0.1");
    for field in ["created_at", "last_used_at"] {
        assert!(mine[field].as_str().unwrap().ends_with('Z'), "{mine}");
    }
    assert_eq!(list.iter().filter(|s| s["current"] == true).count(), 1);

    // The laptop's session ends from the phone: its socket on node b closes.
    let mut laptop_socket = connect(&b, token(&laptop)).await;
    let mut phone_socket = connect(&b, token(&phone)).await;
    laptop_socket.request(json!({"type": "ping"})).await;
    let path = format!("/sessions/{}", laptop["session_id"].as_str().unwrap());
    let (s, _) = a.call("DELETE", &path, Some(token(&phone)), None).await;
    assert_eq!(s, 204);
    assert_eq!(laptop_socket.ended().await, Ended::Close(Some(4001)));
    refused_within(&b, token(&laptop), Duration::from_secs(1)).await;
    phone_socket.request(json!({"type": "ping"})).await;
    let (s, body) = a.call("DELETE", &path, Some(token(&phone)), None).await;
    assert_error(s, &body, 404, "not_found");

    // Nobody ends another user's session, nor one that is not an id.
    let carol = a.register("carol").await;
    let phone_path = format!("/sessions/{}", phone["session_id"].as_str().unwrap());
    let (s, body) = a.call("DELETE", &phone_path, Some(&carol.token), None).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = a.call("DELETE", "/sessions/nope", Some(&carol.token), None).await;
    assert_eq!(s / 100, 4, "{body}");
    assert!(body["error"]["code"].is_string());
    let (s, body) = a.call("GET", "/sessions", None, None).await;
    assert_error(s, &body, 401, "unauthorized");

    // Logout on node a: the phone's session ends, and its socket on node b
    // closes within a second.
    let (s, _) = a.call("POST", "/logout", Some(token(&phone)), None).await;
    assert_eq!(s, 204);
    let closed = tokio::time::timeout(Duration::from_secs(1), phone_socket.ended()).await;
    assert_eq!(closed.expect("closed within a second"), Ended::Close(Some(4001)));
    refused_within(&a, token(&phone), Duration::from_secs(1)).await;
    let (s, body) = refresh(&a, phone["refresh_token"].as_str().unwrap()).await;
    assert_error(s, &body, 401, "invalid_refresh_token");

    // Logout everywhere, from the registration's session.
    let tablet = session(&a, "bob", "tablet").await;
    let (s, _) = a.call("POST", "/logout/all", Some(&bob.token), None).await;
    assert_eq!(s, 204);
    refused_within(&b, token(&tablet), Duration::from_secs(1)).await;
    refused_within(&b, &bob.token, Duration::from_secs(1)).await;
    let fresh = session(&a, "bob", "again").await;
    let (s, body) = a.call("GET", "/sessions", Some(token(&fresh)), None).await;
    assert_eq!((s, body["sessions"].as_array().unwrap().len()), (200, 1), "{body}");

    let revoked = audit(&b, &root, "session.revoked").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["target"], format!("session:{}", laptop["session_id"].as_str().unwrap()));
    assert_eq!(revoked[0]["actor_id"], bob.id.as_str());
    assert_eq!(revoked[0]["user_agent"], Value::Null, "the call carried no user agent");
    let logouts = audit(&b, &root, "logout").await;
    assert_eq!(logouts.len(), 2, "one logout, one everywhere: {logouts:?}");
    assert_eq!(logouts[0]["details"]["all"], true);
    assert_eq!(logouts[1]["target"], format!("session:{}", phone["session_id"].as_str().unwrap()));

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_password_change_keeps_this_session_and_ends_the_others() {
    let db = unique_db();
    let (a, b) = (Node::start(config(&db)).await, Node::start(config(&db)).await);
    let root = promote(&db, &a, "olga").await;
    let dana = a.register("dana").await;
    let other = session(&b, "dana", "other").await;
    let mut other_socket = connect(&b, token(&other)).await;
    other_socket.request(json!({"type": "ping"})).await;

    let change = |current: &str, new: &str| json!({"current_password": current, "new_password": new});
    let (s, body) =
        a.call("PATCH", "/users/me/password", Some(&dana.token), Some(change("wrong one", "n3w passw0rd"))).await;
    assert_error(s, &body, 403, "wrong_password");
    let (s, body) = a.call("PATCH", "/users/me/password", Some(&dana.token), Some(change(PASSWORD, "short"))).await;
    assert_error(s, &body, 422, "validation_failed");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("new_password"), "{body}");
    let (s, body) = a.call("PATCH", "/users/me/password", Some(&dana.token), Some(json!({"new_password": "x"}))).await;
    assert_error(s, &body, 422, "validation_failed");
    let (s, body) = a.call("PATCH", "/users/me/password", None, Some(change(PASSWORD, "n3w passw0rd"))).await;
    assert_error(s, &body, 401, "unauthorized");
    // Nothing changed so far.
    other_socket.request(json!({"type": "ping"})).await;

    let (s, _) = a.call("PATCH", "/users/me/password", Some(&dana.token), Some(change(PASSWORD, "n3w passw0rd"))).await;
    assert_eq!(s, 204);
    assert_eq!(other_socket.ended().await, Ended::Close(Some(4001)));
    refused_within(&a, token(&other), Duration::from_secs(1)).await;
    let (s, _) = b.call("GET", "/users/me", Some(&dana.token), None).await;
    assert_eq!(s, 200, "the session that changed it goes on");
    let (s, body) = a.login_as("dana", PASSWORD, "x").await;
    assert_error(s, &body, 401, "unauthorized");
    let (s, _) = b.login_as("dana", "n3w passw0rd", "x").await;
    assert_eq!(s, 200);

    let changes = audit(&a, &root, "password.changed").await;
    assert_eq!(changes.len(), 2, "the refused attempt and the change: {changes:?}");
    assert_eq!(changes[0]["details"]["sessions_revoked"], 1);
    assert_eq!(changes[1]["outcome"], "wrong_password");
    let all = a.call("GET", "/admin/audit?limit=200", Some(&root.token), None).await.1.to_string();
    assert!(!all.contains("n3w passw0rd") && !all.contains("wrong one"), "no password in the log");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_ban_ends_every_session_and_refuses_logins_until_lifted_and_a_disconnect_only_closes_sockets() {
    let db = unique_db();
    let (a, b) = (Node::start(config(&db)).await, Node::start(config(&db)).await);
    let root = promote(&db, &a, "olga").await;
    let erin = b.register("erin").await;
    let phone = session(&b, "erin", "phone").await;
    let mut socket = connect(&b, &erin.token).await;
    let mut phone_socket = connect(&a, token(&phone)).await;
    socket.request(json!({"type": "ping"})).await;
    phone_socket.request(json!({"type": "ping"})).await;
    let ban_path = format!("/admin/users/{}/ban", erin.id);

    // Only administrators; not themselves; not nobody.
    for action in ["ban", "unban", "disconnect"] {
        let path = format!("/admin/users/{}/{action}", root.id);
        let (s, body) = b.call("POST", &path, Some(&erin.token), None).await;
        assert_error(s, &body, 403, "forbidden");
        let (s, body) = b.call("POST", &path, None, None).await;
        assert_error(s, &body, 401, "unauthorized");
    }
    let (s, body) = a.call("POST", &format!("/admin/users/{}/ban", root.id), Some(&root.token), None).await;
    assert_error(s, &body, 422, "validation_failed");
    let nobody = bson::oid::ObjectId::new().to_hex();
    let (s, body) = a.call("POST", &format!("/admin/users/{nobody}/ban"), Some(&root.token), None).await;
    assert_error(s, &body, 404, "not_found");
    let (s, body) = a.call("POST", &ban_path, Some(&root.token), Some(json!({"reason": "x".repeat(501)}))).await;
    assert_error(s, &body, 422, "validation_failed");

    let (s, body) = a.call("POST", &ban_path, Some(&root.token), Some(json!({"reason": "spam"}))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["banned"]["reason"], "spam");
    assert_eq!(body["banned"]["by"], root.id.as_str());
    assert_eq!(socket.ended().await, Ended::Close(Some(4001)));
    assert_eq!(phone_socket.ended().await, Ended::Close(Some(4001)));
    refused_within(&a, &erin.token, Duration::from_secs(1)).await;
    refused_within(&b, token(&phone), Duration::from_secs(1)).await;
    let (s, body) = a.login_as("erin", PASSWORD, "x").await;
    assert_error(s, &body, 403, "banned");
    let (s, body) = a.login_as("erin", "not her password", "x").await;
    assert_error(s, &body, 401, "unauthorized");
    let (s, body) = refresh(&b, phone["refresh_token"].as_str().unwrap()).await;
    assert_error(s, &body, 401, "invalid_refresh_token");
    let (s, body) = a.call("GET", "/admin/users?q=erin", Some(&root.token), None).await;
    assert_eq!(s, 200);
    assert_eq!(body["users"][0]["banned"]["reason"], "spam", "{body}");

    // Lifted: she logs in again.
    let (s, body) = b.call("POST", &format!("/admin/users/{}/unban", erin.id), Some(&root.token), None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body.get("banned").is_none(), "{body}");
    let again = session(&a, "erin", "x").await;

    // A disconnect closes her sockets (4003) but her session goes on.
    let mut socket = connect(&b, token(&again)).await;
    socket.request(json!({"type": "ping"})).await;
    let (s, _) = a.call("POST", &format!("/admin/users/{}/disconnect", erin.id), Some(&root.token), None).await;
    assert_eq!(s, 204);
    assert_eq!(socket.ended().await, Ended::Close(Some(4003)));
    let (s, _) = b.call("GET", "/users/me", Some(token(&again)), None).await;
    assert_eq!(s, 200);
    let mut socket = connect(&b, token(&again)).await;
    socket.request(json!({"type": "ping"})).await;
    let (s, body) = a.call("POST", &format!("/admin/users/{nobody}/disconnect"), Some(&root.token), None).await;
    assert_error(s, &body, 404, "not_found");

    for (action, n) in [("user.banned", 1), ("user.unbanned", 1), ("user.disconnected", 1)] {
        let entries = audit(&a, &root, action).await;
        assert_eq!(entries.len(), n, "{action}: {entries:?}");
        assert_eq!(entries[0]["actor_id"], root.id.as_str());
        assert_eq!(entries[0]["target"], format!("user:{}", erin.id));
    }
    let failed = audit(&a, &root, "login.failed").await;
    assert!(failed.iter().any(|e| e["outcome"] == "banned"), "{failed:?}");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_socket_is_warned_before_its_token_expires_and_closed_when_it_does() {
    let db = unique_db();
    let mut short = config(&db);
    short.token_ttl = Duration::from_secs(4);
    let a = Node::start(short).await;
    a.register("fay").await;
    let gus = a.register("gus").await;
    let grant = session(&a, "fay", "x").await;
    let mut socket = connect(&a, token(&grant)).await;

    // Warned half-way through a 4 s token.
    let warning = socket.recv_type("token_expiring").await;
    let left = warning["data"]["expires_in"].as_u64().unwrap();
    assert!((1..=2).contains(&left), "{warning}");

    // Refresh frames that do not do: a stranger's token, garbage, none.
    let reply = socket.request(json!({"type": "refresh", "data": {"access_token": gus.token}})).await;
    assert_eq!((reply["type"].as_str(), reply["data"]["code"].as_str()), (Some("error"), Some("forbidden")), "{reply}");
    let reply = socket.request(json!({"type": "refresh", "data": {"access_token": "nope"}})).await;
    assert_eq!(reply["data"]["code"], "unauthorized", "{reply}");
    let reply = socket.request(json!({"type": "refresh", "data": {}})).await;
    assert_eq!(reply["data"]["code"], "validation_failed", "{reply}");
    assert!(reply["ref"].is_string(), "the error carries the ref");

    // A fresh token of the same session carries the socket on.
    let (s, fresh) = refresh(&a, grant["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 200, "{fresh}");
    let reply = socket.request(json!({"type": "refresh", "data": {"access_token": fresh["access_token"]}})).await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert!(reply["data"]["expires_in"].as_u64().unwrap() >= 3, "{reply}");
    // Past the first token's expiry, still open; then warned again, and closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    socket.request(json!({"type": "ping"})).await;
    socket.recv_type("token_expiring").await;
    assert_eq!(socket.ended().await, Ended::Close(Some(4002)));

    a.shutdown().await;
}

#[tokio::test]
async fn tokens_without_a_session_are_refused_unless_the_node_accepts_them() {
    let db = unique_db();
    let strict = Node::start(config(&db)).await;
    let mut open = config(&db);
    open.sessionless_tokens = true;
    let lenient = Node::start(open).await;
    let user = strict.register("hank").await;
    let id = bson::oid::ObjectId::parse_str(&user.id).unwrap();
    let minted = confab::auth::Tokens::new(SECRET, Duration::from_secs(60)).issue(id, "hank", None).unwrap();
    let (s, body) = strict.call("GET", "/users/me", Some(&minted), None).await;
    assert_error(s, &body, 401, "unauthorized");
    let (s, _) = strict.call("GET", "/ws", Some(&minted), None).await;
    assert_eq!(s, 401);
    let (s, body) = lenient.call("GET", "/users/me", Some(&minted), None).await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = lenient.call("POST", "/logout", Some(&minted), None).await;
    assert_error(s, &body, 422, "validation_failed");
    strict.shutdown().await;
    lenient.shutdown().await;
}

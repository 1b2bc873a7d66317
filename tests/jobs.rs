//! Background jobs against real Redis and a MongoDB-compatible server: the
//! archive (the N-day boundary, re-runs, a crash between copy and delete,
//! paging across it), daily summaries of a seeded day, scheduled ticks with
//! two workers, and webhook delivery with retries and dead letters.
//!
//! Each test has its own database and its own Redis key prefix, so they run
//! in parallel on one Redis without seeing each other's queues.

mod common;

use confab::backend::redis::RedisConfig;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::oid::ObjectId;
use bson::{doc, Document};
use chrono::{DateTime, Utc};
use confab::jobs::config::WorkerConfig;
use confab::jobs::runner::{Run, RunningWorker, Shared};
use confab::jobs::sink::SinkConfig;
use confab::jobs::{archive, delivery, status, summary, JobKind, Queues};
use confab::store::Notification;
use confab::store::{Member, Message, Role, Room, RoomKind, Store, User};
use fred::prelude::*;
use futures::TryStreamExt;
use mongodb::{Collection, Database};
use serde_json::json;

fn prefix() -> String {
    format!("confab-test-{:08x}", rand::random::<u32>())
}

fn worker_config(db: &str, prefix: &str) -> WorkerConfig {
    common::worker_config(db, RedisConfig::new(common::redis_url()), common::keys(prefix))
}

/// The raw database, for what a test seeds or inspects behind the store.
async fn database(db: &str) -> Database {
    mongodb::Client::with_uri_str(common::mongo_url()).await.unwrap().database(db)
}

async fn store(db: &str) -> Store {
    Store::connect(&common::mongo_url(), db).await.unwrap()
}

async fn redis() -> Client {
    confab::jobs::redis_client(&RedisConfig::new(common::redis_url())).await.unwrap()
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn message(room: ObjectId, seq: i64, sender: ObjectId, at: DateTime<Utc>) -> Message {
    let id = ObjectId::new();
    Message {
        id,
        room_id: room,
        seq,
        sender_id: sender,
        content: format!("message {seq}"),
        client_msg_id: None,
        dedup_key: id.to_hex(),
        timestamp: at,
        edited_at: None,
        deleted: false,
        deleted_at: None,
    }
}

async fn ids_in(db: &Database, collection: &str) -> Vec<ObjectId> {
    let c: Collection<Document> = db.collection(collection);
    let docs: Vec<Document> = c.find(doc! {}).sort(doc! {"_id": 1}).await.unwrap().try_collect().await.unwrap();
    docs.iter().map(|d| d.get_object_id("_id").unwrap()).collect()
}

/// Polls `check` until it holds, failing the test after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------- archive

#[tokio::test]
async fn archive_moves_exactly_the_messages_older_than_n_days() {
    let name = common::unique_db();
    let db = database(&name).await;
    let store = store(&name).await;
    archive::ensure_indexes(&store).await.unwrap();
    let now = t("2026-03-31T03:00:00Z");
    let cutoff = now - chrono::Duration::days(30);
    let (room, sender) = (ObjectId::new(), ObjectId::new());
    let older = message(room, 1, sender, cutoff - chrono::Duration::days(10));
    let just_older = message(room, 2, sender, cutoff - chrono::Duration::milliseconds(1));
    let exactly = message(room, 3, sender, cutoff);
    let newer = message(room, 4, sender, cutoff + chrono::Duration::seconds(1));
    let messages: Collection<Message> = db.collection("messages");
    messages.insert_many([&older, &just_older, &exactly, &newer]).await.unwrap();

    // A batch of one: the loop must go round until nothing is due.
    let moved = archive::run(&store, now, 30, 1).await.unwrap();
    assert_eq!(moved.messages, 2);
    assert_eq!(moved.rooms.into_iter().collect::<Vec<_>>(), vec![room]);
    assert_eq!(ids_in(&db, "messages_archive").await, vec![older.id, just_older.id]);
    assert_eq!(ids_in(&db, "messages").await, vec![exactly.id, newer.id], "exactly N days old stays");

    // What moved is the whole document.
    let archived: Collection<Message> = db.collection("messages_archive");
    let copy = archived.find_one(doc! {"_id": just_older.id}).await.unwrap().unwrap();
    assert_eq!((copy.seq, copy.content.as_str(), copy.timestamp), (2, "message 2", just_older.timestamp));

    // A re-run finds nothing more to do and changes nothing.
    assert_eq!(archive::run(&store, now, 30, 1).await.unwrap().messages, 0);
    assert_eq!(ids_in(&db, "messages_archive").await, vec![older.id, just_older.id]);
    assert_eq!(ids_in(&db, "messages").await, vec![exactly.id, newer.id]);
    // A day later the boundary message is due.
    assert_eq!(archive::run(&store, now + chrono::Duration::days(1), 30, 500).await.unwrap().messages, 2);
    assert!(ids_in(&db, "messages").await.is_empty());
}

#[tokio::test]
async fn archive_after_a_crash_between_copy_and_delete_loses_and_doubles_nothing() {
    let name = common::unique_db();
    let db = database(&name).await;
    let store = store(&name).await;
    archive::ensure_indexes(&store).await.unwrap();
    let now = t("2026-03-31T03:00:00Z");
    let room = ObjectId::new();
    let old: Vec<Message> =
        (1..=5).map(|seq| message(room, seq, ObjectId::new(), now - chrono::Duration::days(40 + seq))).collect();
    let live = message(room, 6, ObjectId::new(), now);
    let messages: Collection<Message> = db.collection("messages");
    messages.insert_many(old.iter().chain([&live])).await.unwrap();

    // The first step of a batch of three, then the "crash": no delete.
    let batch = archive::next_batch(&store, now, 30, 3).await.unwrap();
    assert_eq!(batch.len(), 3);
    archive::copy(&store, &batch).await.unwrap();
    assert_eq!(ids_in(&db, "messages_archive").await.len(), 3);
    assert_eq!(ids_in(&db, "messages").await.len(), 6, "the crash left the batch in both");
    // Meanwhile one of them is deleted by its sender: the live copy wins.
    let tombstoned = batch[0].get_object_id("_id").unwrap();
    messages.update_one(doc! {"_id": tombstoned}, doc! {"$set": {"content": "", "deleted": true}}).await.unwrap();

    // The whole job again.
    let moved = archive::run(&store, now, 30, 3).await.unwrap();
    assert_eq!(moved.messages, 5);
    let mut want: Vec<ObjectId> = old.iter().map(|m| m.id).collect();
    want.sort();
    assert_eq!(ids_in(&db, "messages_archive").await, want, "each old message once");
    assert_eq!(ids_in(&db, "messages").await, vec![live.id]);
    let archived: Collection<Message> = db.collection("messages_archive");
    let copy = archived.find_one(doc! {"_id": tombstoned}).await.unwrap().unwrap();
    assert!(copy.deleted && copy.content.is_empty(), "the archive holds the newer copy");
    assert_eq!(archived.count_documents(doc! {"room_id": room}).await.unwrap(), 5);
}

#[tokio::test]
async fn history_pages_across_live_and_archived_messages() {
    let name = common::unique_db();
    let node = common::Node::start(common::config(&name)).await;
    let alice = node.register("alice").await;
    let mallory = node.register("mallory").await;
    let room = node.create_room(&alice, "archive-room", "private").await;
    let mut ids = Vec::new();
    for i in 1..=6 {
        ids.push(node.post_message(&alice, &room, &format!("m{i}")).await["id"].as_str().unwrap().to_string());
    }
    // The first four are two months old, and get archived.
    let db = database(&name).await;
    let store = store(&name).await;
    let messages: Collection<Document> = db.collection("messages");
    let old = Utc::now() - chrono::Duration::days(60);
    for id in &ids[..4] {
        let oid = ObjectId::parse_str(id).unwrap();
        messages.update_one(doc! {"_id": oid}, doc! {"$set": {"timestamp": old}}).await.unwrap();
    }
    let moved = archive::run(&store, Utc::now(), 30, 500).await.unwrap();
    assert_eq!(moved.messages, 4);

    let page = |query: String| {
        let (node, token, room) = (&node, alice.token.clone(), room.clone());
        async move {
            let url = format!("/messages?room_id={room}&{query}");
            let (status, body) = node.call("GET", &url, Some(&token), None).await;
            assert_eq!(status, 200, "{body}");
            let seqs: Vec<i64> =
                body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
            (seqs, body["has_more"].as_bool().unwrap())
        }
    };
    // Without the flag: only live history.
    assert_eq!(page("limit=10".into()).await, (vec![5, 6], false));
    // With it: newest first, a page straddling the boundary, then back.
    assert_eq!(page("limit=4&include_archived=true".into()).await, (vec![3, 4, 5, 6], true));
    assert_eq!(page(format!("limit=4&include_archived=true&before={}", ids[2])).await, (vec![1, 2], false));
    // Forward from the start, and from an archived cursor.
    assert_eq!(page("limit=3&include_archived=true&after_seq=0".into()).await, (vec![1, 2, 3], true));
    assert_eq!(page(format!("limit=3&include_archived=true&after={}", ids[2])).await, (vec![4, 5, 6], false));
    // An archived cursor without the flag is unknown.
    let (status, _) =
        node.call("GET", &format!("/messages?room_id={room}&before={}", ids[2]), Some(&alice.token), None).await;
    assert_eq!(status, 404);
    // Who may read is unchanged: not a member of a private room.
    let (status, body) =
        node.call("GET", &format!("/messages?room_id={room}&include_archived=true"), Some(&mallory.token), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")));
    let (status, body) =
        node.call("GET", &format!("/messages?room_id={room}&include_archived=yes"), Some(&alice.token), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("validation_failed")));
    node.shutdown().await;
}

/// A catch-up read that starts below the archive reads live history from
/// where it begins: the archived seqs are not holes, and nothing is voided
/// in their place, however many they are.
#[tokio::test]
async fn a_catch_up_read_below_the_archive_voids_nothing() {
    let name = common::unique_db();
    let node = common::Node::start(common::config(&name)).await;
    let alice = node.register("alice").await;
    let room = node.create_room(&alice, "long-ago", "public").await;
    let room_id = ObjectId::parse_str(&room).unwrap();
    let db = database(&name).await;
    let store = store(&name).await;
    let old = Utc::now() - chrono::Duration::days(60);
    let sender = ObjectId::parse_str(&alice.id).unwrap();
    let messages: Collection<Message> = db.collection("messages");
    messages.insert_many((1..=300).map(|seq| message(room_id, seq, sender, old))).await.unwrap();
    assert_eq!(archive::run(&store, Utc::now(), 30, 500).await.unwrap().messages, 300);
    // The room's counter, as 300 sends would have left it.
    let redis = redis().await;
    let _: () = redis.set(common::keys(&name).room_seq(room_id), 300, None, None, false).await.unwrap();
    for i in 0..3 {
        node.post_message(&alice, &room, &format!("new {i}")).await;
    }
    let url = format!("/messages?room_id={room}&after_seq=0");
    let (status, body) = node.call("GET", &url, Some(&alice.token), None).await;
    assert_eq!(status, 200, "{body}");
    let seqs: Vec<i64> = body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!((seqs, &body["has_more"]), (vec![301, 302, 303], &serde_json::json!(false)));
    assert_eq!(messages.count_documents(doc! {"room_id": room_id}).await.unwrap(), 3, "no voids");
    node.shutdown().await;
}

// --------------------------------------------------------------- summaries

fn user(name: &str) -> User {
    User {
        id: ObjectId::new(),
        username: name.into(),
        username_key: name.into(),
        email: format!("{name}@example.com"),
        password_hash: "x".into(),
        created_at: t("2026-01-01T00:00:00Z"),
        display_name: None,
        display_name_key: None,
        avatar_url: None,
        role: Default::default(),
        banned: None,
    }
}

fn room(name: &str, kind: RoomKind, by: ObjectId) -> Room {
    Room { created_at: t("2026-01-01T00:00:00Z"), ..Room::new(name.into(), kind, by, Vec::new()) }
}

fn member(room: &Room, user: &User, joined: DateTime<Utc>, read_seq: i64) -> Member {
    Member { read_seq, ..Member::new(room.id, user.id, Role::Member, joined) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_summary_of_a_seeded_day() {
    let name = common::unique_db();
    let db = database(&name).await;
    let store = store(&name).await;
    let config = worker_config(&name, &prefix());
    let shared = Shared::connect(&config).await.unwrap();

    // The day: (07:00 on the 1st, 07:00 on the 2nd].
    let since = t("2026-03-01T07:00:00Z");
    let now = t("2026-03-02T07:00:00Z");
    let h = |hours: i64| since + chrono::Duration::hours(hours);
    let joined = t("2026-02-01T00:00:00Z");
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let (general, team, noisy, quiet) = (
        room("general", RoomKind::Public, alice.id),
        room("team", RoomKind::Private, alice.id),
        room("noisy", RoomKind::Public, bob.id),
        room("quiet", RoomKind::Public, dave.id),
    );
    let users: Collection<User> = db.collection("users");
    users.insert_many([&alice, &bob, &carol, &dave]).await.unwrap();
    let rooms: Collection<Room> = db.collection("rooms");
    rooms.insert_many([&general, &team, &noisy, &quiet]).await.unwrap();
    let members: Collection<Member> = db.collection("room_members");
    members
        .insert_many([
            member(&general, &alice, joined, 1),
            member(&team, &alice, joined, 0),
            member(&noisy, &alice, joined, 0),
            member(&general, &bob, joined, 0),
            member(&team, &bob, joined, 0),
            // Carol joined mid-day: what came before is not new to her.
            member(&general, &carol, h(4), 0),
            member(&quiet, &dave, joined, 0),
        ])
        .await
        .unwrap();
    let mut deleted = message(general.id, 6, bob.id, h(4));
    deleted.deleted = true;
    let messages: Collection<Message> = db.collection("messages");
    messages
        .insert_many([
            message(general.id, 1, bob.id, h(-1)), // before the day; alice read it
            message(general.id, 2, bob.id, h(0)),  // exactly at the start: not new, still unread
            message(general.id, 3, bob.id, h(1)),
            message(general.id, 4, bob.id, h(2)),
            message(general.id, 5, alice.id, h(3)), // her own
            deleted,                                // a tombstone
            message(general.id, 7, carol.id, h(5)),
            message(team.id, 1, bob.id, h(24)),  // exactly at the end: new
            message(team.id, 2, bob.id, h(25)),  // after the run's now
            message(noisy.id, 1, bob.id, h(7)),  // muted by alice
            message(quiet.id, 1, dave.id, h(8)), // dave's own only
        ])
        .await
        .unwrap();
    let prefs: Collection<Document> = db.collection("notification_preferences");
    prefs
        .insert_many([
            doc! {"_id": alice.id, "enabled": true, "muted_rooms": [noisy.id], "mentions_only": false},
            doc! {"_id": bob.id, "enabled": false, "muted_rooms": []},
        ])
        .await
        .unwrap();
    let state: Collection<Document> = db.collection("summary_state");
    state.insert_one(doc! {"_id": alice.id, "last_summary_at": since}).await.unwrap();

    let report = summary::run(&store, &shared.queues, now).await.unwrap();
    assert_eq!((report.items, report.failures), (1, 0));

    let notifications: Collection<Notification> = db.collection("notifications");
    let all: Vec<Notification> = notifications.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(all.len(), 1, "only alice has anything new: {all:?}");
    let n = &all[0];
    assert_eq!((n.user_id, n.kind.as_str(), n.read, n.created_at), (alice.id, "daily_summary", false, now));
    assert_eq!(n.title, "Your daily summary");
    assert_eq!(n.message, "4 new messages in 2 rooms since 2026-03-01 07:00 UTC; 5 unread");
    let data = n.to_json()["data"].clone();
    assert_eq!(
        data,
        json!({
            "since": "2026-03-01T07:00:00.000Z",
            "until": "2026-03-02T07:00:00.000Z",
            "total_new": 4,
            "total_unread": 5,
            "rooms": [
                {"room_id": general.id.to_hex(), "name": "general", "new_messages": 3, "unread": 4},
                {"room_id": team.id.to_hex(), "name": "team", "new_messages": 1, "unread": 1},
            ],
        })
    );
    // Handed to the delivery queue.
    let keys = config.keys.clone();
    let (ready, scheduled) = status::queued(&shared.redis, &keys, "delivery").await.unwrap();
    assert_eq!(ready + scheduled, 1);
    // Markers: moved for those looked at, not for the disabled user.
    let marker = |id: ObjectId| {
        let state = state.clone();
        async move {
            state
                .find_one(doc! {"_id": id})
                .await
                .unwrap()
                .map(|d| d.get_datetime("last_summary_at").unwrap().to_chrono())
        }
    };
    assert_eq!(marker(alice.id).await, Some(now));
    assert_eq!(marker(carol.id).await, Some(now));
    assert_eq!(marker(bob.id).await, None);

    // The same run again (its worker died) doubles nothing; a later one has nothing new.
    state.delete_one(doc! {"_id": alice.id}).await.unwrap();
    state.insert_one(doc! {"_id": alice.id, "last_summary_at": since}).await.unwrap();
    summary::run(&store, &shared.queues, now).await.unwrap();
    let report = summary::run(&store, &shared.queues, now + chrono::Duration::minutes(1)).await.unwrap();
    assert_eq!(report.items, 0);
    assert_eq!(notifications.count_documents(doc! {}).await.unwrap(), 1);
    let (ready, scheduled) = status::queued(&shared.redis, &keys, "delivery").await.unwrap();
    assert_eq!(ready + scheduled, 1, "the second push of the same summary was dropped");
}

// --------------------------------------------------------------- schedule

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_cron_tick_runs_once_with_two_workers() {
    let name = common::unique_db();
    let prefix = prefix();
    let mut a = worker_config(&name, &prefix);
    a.archive_cron = "* * * * * *".into();
    let b = WorkerConfig { worker_id: format!("{}-b", a.worker_id), ..a.clone() };
    let (a, b) = (RunningWorker::start(a).await.unwrap(), RunningWorker::start(b).await.unwrap());
    tokio::time::sleep(Duration::from_millis(4500)).await;
    a.shutdown().await;
    b.shutdown().await;

    let redis = redis().await;
    let keys = common::keys(&prefix);
    let runs = status::history(&redis, &keys, JobKind::Archive).await.unwrap();
    let mut ticks: Vec<u64> = runs.iter().map(|r| r.tick.expect("a scheduled run")).collect();
    ticks.sort();
    let mut distinct = ticks.clone();
    distinct.dedup();
    assert_eq!(ticks, distinct, "a tick ran twice: {runs:?}");
    assert!(ticks.len() >= 3, "about one run a second: {runs:?}");
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "no tick skipped: {ticks:?}");
    let s = status::read(&redis, &keys, "archive").await.unwrap();
    assert_eq!(s["runs"].parse::<usize>().unwrap(), ticks.len());
}

// --------------------------------------------------------------- delivery

/// A webhook receiver on 127.0.0.1 that answers 500 until told otherwise
/// and checks every signature.
#[derive(Clone, Default)]
struct Receiver {
    healthy: Arc<AtomicBool>,
    /// Never answer the first request (a delivery in progress when its worker dies).
    hang_first: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    delivered: Arc<Mutex<Vec<serde_json::Value>>>,
    bad_signatures: Arc<AtomicUsize>,
}

const SECRET: &str = "webhook-secret-0123456789";

impl Receiver {
    async fn start(&self) -> String {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode};
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    let hit = me.hits.fetch_add(1, Ordering::SeqCst);
                    if hit == 0 && me.hang_first.load(Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    let header = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    let ok = confab::jobs::sink::verify(
                        SECRET,
                        &header("x-confab-timestamp"),
                        &body,
                        &header("x-confab-signature"),
                        Duration::from_secs(300),
                    );
                    if !ok {
                        me.bad_signatures.fetch_add(1, Ordering::SeqCst);
                    }
                    if !me.healthy.load(Ordering::SeqCst) {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    me.delivered.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/hook")
    }
}

fn notification_for(user: ObjectId) -> Notification {
    Notification {
        id: ObjectId::new(),
        user_id: user,
        kind: "new_message".into(),
        title: "New message from bob".into(),
        message: "hello".into(),
        data: doc! {"room_id": ObjectId::new().to_hex()},
        created_at: Utc::now(),
        read: false,
        read_at: None,
        delivered_realtime: false,
        external: None,
    }
}

/// What `confab jobs <args>` prints (run in-process: the binary in a shared
/// build directory may be another checkout's; `src/main.rs` tests the parsing).
async fn jobs_cli(prefix: &str, args: &[&str]) -> String {
    use confab::jobs::admin::{self, Command};
    let command = match args {
        ["run", job] => Command::Run(job.parse().unwrap()),
        ["status"] => Command::Status,
        ["dead"] => Command::Dead,
        ["retry-dead"] => Command::RetryDead(None),
        ["retry-dead", "--id", id] => Command::RetryDead(Some(id.to_string())),
        other => panic!("not a jobs command: {other:?}"),
    };
    let config =
        confab::jobs::config::JobsConfig { redis: RedisConfig::new(common::redis_url()), keys: common::keys(prefix) };
    admin::execute(&config, command).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_retries_dead_letters_and_retry_dead_delivers() {
    let receiver = Receiver::default();
    let url = receiver.start().await;
    let name = common::unique_db();
    let prefix = prefix();
    let mut config = worker_config(&name, &prefix);
    config.sink = SinkConfig::webhook(&url, SECRET, Duration::from_secs(2));
    let worker = RunningWorker::start(config).await.unwrap();
    let db = database(&name).await;
    let n = notification_for(ObjectId::new());
    let notifications: Collection<Notification> = db.collection("notifications");
    notifications.insert_one(&n).await.unwrap();

    // A node hands the notification over the way the contract says.
    let redis = redis().await;
    let keys = common::keys(&prefix);
    let _: i64 = redis.lpush(keys.external_notifications(), n.id.to_hex()).await.unwrap();

    // Three attempts (the configured maximum), each a 500, then the dead-letter list.
    eventually(Duration::from_secs(20), "the delivery is dead-lettered", || async {
        !delivery::dead_letters(&redis, &keys).await.unwrap().is_empty()
    })
    .await;
    assert_eq!(receiver.hits.load(Ordering::SeqCst), 3);
    let dead = delivery::dead_letters(&redis, &keys).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].notification_id.as_str(), dead[0].attempts), (n.id.to_hex().as_str(), 3));
    assert!(dead[0].error.contains("500"), "{:?}", dead[0]);
    let listed = jobs_cli(&prefix, &["dead"]).await;
    assert!(listed.contains(&dead[0].id) && listed.contains(&n.id.to_hex()), "{listed}");
    let s = status::read(&redis, &keys, "delivery").await.unwrap();
    assert_eq!((s["failures"].as_str(), s.get("items")), ("3", None));

    // The receiver recovers; an operator re-queues the dead letters.
    receiver.healthy.store(true, Ordering::SeqCst);
    let out = jobs_cli(&prefix, &["retry-dead"]).await;
    assert!(out.contains("queued 1"), "{out}");
    eventually(Duration::from_secs(10), "the delivery succeeds", || async {
        !receiver.delivered.lock().unwrap().is_empty()
    })
    .await;
    assert!(delivery::dead_letters(&redis, &keys).await.unwrap().is_empty());
    assert_eq!(receiver.hits.load(Ordering::SeqCst), 4);
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0, "every request was signed");
    let body = receiver.delivered.lock().unwrap()[0].clone();
    assert_eq!(body["id"], n.id.to_hex());
    assert_eq!((body["type"].as_str(), body["title"].as_str()), (Some("new_message"), Some("New message from bob")));
    let s = status::read(&redis, &keys, "delivery").await.unwrap();
    assert_eq!(s["items"], "1");
    let text = jobs_cli(&prefix, &["status"]).await;
    assert!(text.contains("dead letters: 0"), "{text}");
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_run_queues_a_run_that_status_then_shows() {
    let name = common::unique_db();
    let prefix = prefix();
    let mut config = worker_config(&name, &prefix);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let worker = RunningWorker::start(config).await.unwrap();
    let db = database(&name).await;
    let messages: Collection<Message> = db.collection("messages");
    let old = message(ObjectId::new(), 1, ObjectId::new(), Utc::now() - chrono::Duration::days(31));
    messages.insert_one(&old).await.unwrap();

    let before = jobs_cli(&prefix, &["status"]).await;
    assert!(before.contains("archive    never ran"), "{before}");
    assert!(jobs_cli(&prefix, &["run", "archive"]).await.contains("queued a run of archive"));
    let redis = redis().await;
    let keys = common::keys(&prefix);
    eventually(Duration::from_secs(10), "the archive ran", || async {
        status::read(&redis, &keys, "archive").await.unwrap().contains_key("runs")
    })
    .await;
    let after = jobs_cli(&prefix, &["status"]).await;
    assert!(after.contains("archive    last run") && after.contains("items 1  failures 0  runs 1"), "{after}");
    assert_eq!(ids_in(&db, "messages_archive").await, vec![old.id]);
    let history = status::history(&redis, &keys, JobKind::Archive).await.unwrap();
    assert_eq!((history.len(), history[0].tick), (1, None));
    // The worker's own metrics listener.
    let text =
        reqwest::get(format!("http://{}/metrics", worker.metrics_addr.unwrap())).await.unwrap().text().await.unwrap();
    for name in [
        "confab_job_runs_total{job=\"archive\"}",
        "confab_job_items_total{job=\"archive\"}",
        "confab_job_duration_seconds_bucket{job=\"archive\",le=\"3600\"}",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    worker.shutdown().await;

    // A run queued while no worker runs waits for one.
    let queues = Queues::connect(&RedisConfig::new(common::redis_url()), &keys, Duration::from_secs(1)).await.unwrap();
    queues.push_run(Run::now(JobKind::Summaries)).await.unwrap();
    let (ready, scheduled) = status::queued(&redis, &keys, "runs").await.unwrap();
    assert_eq!(ready + scheduled, 1);
}

/// The intake's wait on an empty list ends with nothing, not with an error:
/// an idle worker has nothing to log. An id pushed meanwhile is taken and
/// parked on the moving list until it is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_waits_on_an_empty_list_without_failing() {
    let keys = common::keys(&prefix());
    let redis = redis().await;
    let waited = std::time::Instant::now();
    assert_eq!(confab::jobs::intake::take(&redis, &keys).await.unwrap(), None);
    assert!(waited.elapsed() >= Duration::from_millis(900), "it blocked for its second");
    let id = ObjectId::new().to_hex();
    let _: i64 = redis.lpush(keys.external_notifications(), id.as_str()).await.unwrap();
    assert_eq!(confab::jobs::intake::take(&redis, &keys).await.unwrap(), Some(id.clone()));
    let moving: Vec<String> = redis.lrange(keys.external_notifications_moving(), 0, -1).await.unwrap();
    assert_eq!(moving, [id]);
}

/// A worker on a thread and runtime of its own, as a separate process would
/// be, that can be killed: its runtime is dropped mid-flight, nothing shut
/// down cleanly.
struct Process {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    async fn start(config: WorkerConfig) -> Process {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let worker = RunningWorker::start(config).await.unwrap();
                let _ = ready_tx.send(());
                let _ = killed.await;
                std::mem::forget(worker);
            });
            runtime.shutdown_background();
        });
        ready_rx.await.unwrap();
        Process { kill: Some(kill), thread: Some(thread) }
    }

    async fn kill(mut self) {
        let _ = self.kill.take().unwrap().send(());
        let thread = self.thread.take().unwrap();
        tokio::task::spawn_blocking(move || thread.join()).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_cut_off_by_a_killed_worker_is_made_by_another() {
    let receiver = Receiver { healthy: Arc::new(AtomicBool::new(true)), ..Default::default() };
    receiver.hang_first.store(true, Ordering::SeqCst);
    let url = receiver.start().await;
    let name = common::unique_db();
    let prefix = prefix();
    let mut config = worker_config(&name, &prefix);
    config.sink = SinkConfig::webhook(&url, SECRET, Duration::from_secs(60));
    let db = database(&name).await;
    let n = notification_for(ObjectId::new());
    let notifications: Collection<Notification> = db.collection("notifications");
    notifications.insert_one(&n).await.unwrap();
    let first = Process::start(config.clone()).await;
    let redis = redis().await;
    let keys = common::keys(&prefix);
    let _: i64 = redis.lpush(keys.external_notifications(), n.id.to_hex()).await.unwrap();
    eventually(Duration::from_secs(10), "the first worker is delivering", || async {
        receiver.hits.load(Ordering::SeqCst) == 1
    })
    .await;
    first.kill().await;

    // Another replica takes the job over once the dead one misses three heartbeats.
    let second =
        RunningWorker::start(WorkerConfig { worker_id: format!("{}-2", config.worker_id), ..config }).await.unwrap();
    eventually(Duration::from_secs(15), "the second worker delivers", || async {
        !receiver.delivered.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(receiver.delivered.lock().unwrap()[0]["id"], n.id.to_hex());
    assert!(delivery::dead_letters(&redis, &keys).await.unwrap().is_empty());
    second.shutdown().await;
}

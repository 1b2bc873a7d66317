//! Volume: a store holding a long history, and the reads that must not slow
//! down with it. Confab only.
//!
//! `seed` writes users, rooms, memberships and messages straight to the
//! store, serialised by Confab's own types, and each room's seq counter to
//! Redis, so that the next message sent to a room gets the next seq. Every
//! id, time, cursor and word is a function of the sizes and of the instant
//! the history starts (kept in the first room's id), so `volume` knows what
//! to read without reading it back: deep and newest history pages, the room
//! list with its unread counts, one unread count alone (a store call: no
//! route serves it alone) and search. `--explain` first prints the store's
//! plan for every query behind those reads, as Confab's store sends them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bson::{doc, oid::ObjectId, Bson, Document};
use chrono::{DateTime, Utc};
use confab::store::{collections, HistoryQuery, Member, Message, Role, Room, RoomKind, SearchQuery, Store, User};
use futures::{StreamExt, TryStreamExt};
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::options::ClientOptions;
use serde::Serialize;

use crate::stats::{Latencies, Percentiles};

/// How long the seeded history lasts; it ends a day before seeding.
const SPAN_MS: i64 = 30 * 86_400_000;

/// The password of every seeded user.
pub const PASSWORD: &str = "volume-password";

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct Sizes {
    /// Rooms (all private).
    #[arg(long, default_value_t = 10_000)]
    pub rooms: u32,
    /// Messages, spread evenly over the rooms.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Users.
    #[arg(long, default_value_t = 1_000)]
    pub users: u32,
    /// Members of each room: a user is in rooms × members / users rooms.
    #[arg(long, default_value_t = 10)]
    pub members: u32,
}

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct StoreArgs {
    /// The store Confab's nodes use.
    #[arg(long)]
    pub mongo_url: String,
    #[arg(long, default_value = "confab")]
    pub mongo_db: String,
}

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct SeedParams {
    #[command(flatten)]
    pub sizes: Sizes,
    #[command(flatten)]
    pub store: StoreArgs,
    /// The Redis Confab's nodes use (seq counters).
    #[arg(long)]
    pub redis_url: String,
    /// Confab's `key_prefix`.
    #[arg(long, default_value = "confab")]
    pub key_prefix: String,
    /// Documents per insert_many.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// insert_many calls in flight.
    #[arg(long, default_value_t = 4)]
    pub inflight: usize,
}

#[derive(Debug, Clone, Serialize, clap::Args)]
pub struct VolumeParams {
    /// The sizes the store was seeded with.
    #[command(flatten)]
    pub sizes: Sizes,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Concurrent readers.
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Seconds of each read.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Requests of each read, at most.
    #[arg(long, default_value_t = 5000)]
    pub max_requests: u64,
    /// The reads, comma-separated (default: all): history_deep,
    /// history_newest, rooms, unread, search, search_room.
    #[arg(long, value_delimiter = ',')]
    pub reads: Vec<String>,
    /// Print the store's plan for each query behind the reads first.
    #[arg(long)]
    pub explain: bool,
    /// Only print the plans; read nothing over REST.
    #[arg(long)]
    pub explain_only: bool,
}

/// Where everything seeded is: a pure function of the sizes and the start.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    rooms: u32,
    messages: u64,
    users: u32,
    members: u32,
    /// When the history starts (seconds since the epoch).
    start_secs: u32,
}

/// Words of seeded messages; earlier ones are drawn more often.
const WORDS: &[&str] = &[
    "the",
    "a",
    "to",
    "and",
    "is",
    "it",
    "we",
    "you",
    "i",
    "that",
    "on",
    "for",
    "this",
    "ok",
    "yes",
    "no",
    "just",
    "can",
    "will",
    "now",
    "so",
    "what",
    "be",
    "with",
    "do",
    "not",
    "have",
    "are",
    "at",
    "but",
    "lunch",
    "meeting",
    "deploy",
    "review",
    "today",
    "tomorrow",
    "later",
    "thanks",
    "please",
    "build",
    "test",
    "release",
    "merge",
    "branch",
    "ticket",
    "bug",
    "fix",
    "issue",
    "server",
    "client",
    "cache",
    "index",
    "query",
    "latency",
    "schedule",
    "coffee",
    "weekend",
    "budget",
    "design",
    "draft",
    "report",
    "customer",
    "invoice",
    "shipment",
    "warehouse",
    "forecast",
    "roadmap",
    "sprint",
    "standup",
    "retro",
    "backlog",
    "migration",
    "rollback",
    "incident",
    "pager",
    "dashboard",
    "metrics",
    "alert",
    "kubernetes",
    "postgres",
    "redis",
    "mongo",
    "websocket",
    "gateway",
    "firewall",
    "certificate",
    "payroll",
    "offsite",
    "hackathon",
    "quarterly",
    "onboarding",
    "benchmark",
    "keynote",
    "whiteboard",
    "lighthouse",
    "zeppelin",
];

/// splitmix64: a well-mixed number from two.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An id made of a time, a kind, an index and a number: unique per
/// (kind, index, number), in time order like any ObjectId.
fn oid(secs: u32, kind: u8, index: u32, n: u32) -> ObjectId {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&secs.to_be_bytes());
    b[4] = kind;
    b[5..8].copy_from_slice(&index.to_be_bytes()[1..]);
    b[8..12].copy_from_slice(&n.to_be_bytes());
    ObjectId::from_bytes(b)
}

fn at(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl Layout {
    pub fn new(s: &Sizes, start_secs: u32) -> Result<Layout> {
        if s.rooms == 0 || s.users == 0 || s.members == 0 {
            bail!("rooms, users and members must be at least 1");
        }
        if s.rooms >= 1 << 24 || s.users >= 1 << 24 {
            bail!("at most {} rooms and users", (1 << 24) - 1);
        }
        if s.members > s.users {
            bail!("a room cannot have more members ({}) than there are users ({})", s.members, s.users);
        }
        if s.messages / s.rooms as u64 >= u32::MAX as u64 {
            bail!("too many messages per room");
        }
        Ok(Layout { rooms: s.rooms, messages: s.messages, users: s.users, members: s.members, start_secs })
    }

    fn start_ms(&self) -> i64 {
        self.start_secs as i64 * 1000
    }

    pub fn room(&self, r: u32) -> ObjectId {
        oid(self.start_secs, b'R', r, 0)
    }

    pub fn room_name(r: u32) -> String {
        format!("volume-{r:07}")
    }

    pub fn user(&self, u: u32) -> ObjectId {
        oid(self.start_secs, b'U', u, 0)
    }

    pub fn username(u: u32) -> String {
        format!("volume-user-{u:07}")
    }

    /// Messages in room `r`: seqs 1 to this.
    pub fn messages_in(&self, r: u32) -> u64 {
        let rooms = self.rooms as u64;
        self.messages / rooms + u64::from((r as u64) < self.messages % rooms)
    }

    /// When message `s` of room `r` was sent: spread over the span, later
    /// seqs later.
    pub fn message_ms(&self, r: u32, s: u64) -> i64 {
        let n = self.messages_in(r).max(1) as i64;
        self.start_ms() + SPAN_MS * (s as i64 - 1) / n + (r % 1000) as i64
    }

    pub fn message(&self, r: u32, s: u64) -> ObjectId {
        oid((self.message_ms(r, s) / 1000) as u32, b'M', r, s as u32)
    }

    /// Room `r`'s members, the first its owner.
    pub fn members_of(&self, r: u32) -> impl Iterator<Item = u32> {
        let (m, users) = (self.members as u64, self.users as u64);
        (0..m).map(move |j| ((r as u64 * m + j) % users) as u32)
    }

    /// Each user's rooms.
    pub fn rooms_of_users(&self) -> Vec<Vec<u32>> {
        let mut of = vec![Vec::new(); self.users as usize];
        for r in 0..self.rooms {
            for u in self.members_of(r) {
                of[u as usize].push(r);
            }
        }
        of
    }

    pub fn sender(&self, r: u32, s: u64) -> u32 {
        let j = mix(r as u64, s) % self.members as u64;
        self.members_of(r).nth(j as usize).unwrap_or(0)
    }

    /// User `u`'s read cursor in room `r`: 0 to 20 messages behind.
    pub fn read_seq(&self, r: u32, u: u32) -> u64 {
        let n = self.messages_in(r);
        n - (mix(r as u64, (1 << 40) | u as u64) % 21).min(n)
    }

    /// 5 to 16 words, most of them common.
    pub fn content(&self, r: u32, s: u64) -> String {
        let seed = mix(r as u64, s ^ (1 << 50));
        let count = 5 + seed % 12;
        let words: Vec<&str> = (0..count).map(|i| WORDS[word_index(mix(seed, i))]).collect();
        words.join(" ")
    }

    /// A word for a search: one of the rarer half.
    pub fn search_word(seed: u64) -> &'static str {
        let half = WORDS.len() / 2;
        WORDS[half + (seed % (WORDS.len() - half) as u64) as usize]
    }

    pub fn user_doc(&self, u: u32, password_hash: &str) -> User {
        let username = Layout::username(u);
        let display = format!("Volume User {u}");
        User {
            id: self.user(u),
            username_key: username.to_lowercase(),
            email: format!("{username}@volume.invalid"),
            username,
            password_hash: password_hash.to_string(),
            created_at: at(self.start_ms()),
            display_name_key: Some(display.to_lowercase()),
            display_name: Some(display),
            avatar_url: None,
            role: Default::default(),
            banned: None,
        }
    }

    pub fn room_doc(&self, r: u32) -> Room {
        let name = Layout::room_name(r);
        Room {
            id: self.room(r),
            name_key: Room::key_of(&name),
            name,
            kind: RoomKind::Private,
            created_by: self.user(self.members_of(r).next().unwrap_or(0)),
            created_at: at(self.start_ms()),
            last_seq: self.messages_in(r) as i64,
            peers: Vec::new(),
        }
    }

    pub fn member_docs(&self, r: u32) -> impl Iterator<Item = Member> + '_ {
        let n = self.messages_in(r);
        self.members_of(r).enumerate().map(move |(j, u)| {
            let role = if j == 0 { Role::Owner } else { Role::Member };
            let mut m = Member::new(self.room(r), self.user(u), role, at(self.start_ms()));
            let read = self.read_seq(r, u);
            m.delivered_seq = n as i64;
            m.delivered_up_to = (n > 0).then(|| self.message(r, n));
            m.read_seq = read as i64;
            m.read_up_to = (read > 0).then(|| self.message(r, read));
            m
        })
    }

    pub fn message_doc(&self, r: u32, s: u64) -> Message {
        let id = self.message(r, s);
        Message {
            id,
            room_id: self.room(r),
            seq: s as i64,
            sender_id: self.user(self.sender(r, s)),
            content: self.content(r, s),
            client_msg_id: None,
            dedup_key: id.to_hex(),
            timestamp: at(self.message_ms(r, s)),
            edited_at: None,
            deleted: false,
            deleted_at: None,
        }
    }

    /// Every message, in the order they were sent: the rooms' histories
    /// interleaved, as a store fills in use.
    pub fn messages_in_send_order(self) -> impl Iterator<Item = Message> + Send {
        // Room 0 has the most: the remainder goes to the first rooms.
        let longest = self.messages_in(0);
        (1..=longest).flat_map(move |s| {
            (0..self.rooms).filter(move |r| self.messages_in(*r) >= s).map(move |r| self.message_doc(r, s))
        })
    }
}

/// An index into `WORDS`, low indexes likelier (the square of a uniform draw).
fn word_index(x: u64) -> usize {
    let u = (x >> 11) as f64 / (1u64 << 53) as f64;
    ((u * u * WORDS.len() as f64) as usize).min(WORDS.len() - 1)
}

// ---------------------------------------------------------------------------
// Seeding

#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub scenario: &'static str,
    pub params: SeedParams,
    pub users: u64,
    pub rooms: u64,
    pub memberships: u64,
    pub messages: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
}

pub async fn seed(p: &SeedParams) -> Result<SeedResult> {
    let client = mongodb::Client::with_uri_str(&p.store.mongo_url).await.context("connecting to the store")?;
    let db = client.database(&p.store.mongo_db);
    for name in [collections::USERS, collections::ROOMS, collections::MEMBERS, collections::MESSAGES] {
        if db.collection::<Document>(name).find_one(doc! {}).await?.is_some() {
            bail!(
                "database `{}` already holds documents in `{name}`: seed an empty database (drop it first)",
                p.store.mongo_db
            );
        }
    }
    let store = Store::with_client(client.clone(), &p.store.mongo_db);
    store.ensure_indexes().await.map_err(|e| anyhow!("creating Confab's indexes: {e}"))?;
    let now_secs = Utc::now().timestamp();
    let start = (now_secs - SPAN_MS / 1000 - 86_400) / 60 * 60;
    let layout = Layout::new(&p.sizes, start as u32)?;
    let hash = confab::auth::hash_password(PASSWORD.into()).await.map_err(|e| anyhow!("{e}"))?;
    let started = Instant::now();

    let users = (0..layout.users).map(|u| layout.user_doc(u, &hash));
    let n_users = insert_all(&db, collections::USERS, users, layout.users as u64, p).await?;
    // Room 0 last: its presence tells `volume` the rooms are all there.
    let rooms = (1..layout.rooms).chain([0]).map(|r| layout.room_doc(r));
    let n_rooms = insert_all(&db, collections::ROOMS, rooms, layout.rooms as u64, p).await?;
    let members = (0..layout.rooms).flat_map(|r| layout.member_docs(r).collect::<Vec<_>>());
    let total_members = layout.rooms as u64 * layout.members as u64;
    let n_members = insert_all(&db, collections::MEMBERS, members, total_members, p).await?;
    let messages = layout.messages_in_send_order();
    let n_messages = insert_all(&db, collections::MESSAGES, messages, layout.messages, p).await?;
    let stored = started.elapsed().as_secs_f64();

    // Each room's counter at its last seq, as a node leaves it after a send.
    let redis = confab::backend::redis::RedisConfig::new(p.redis_url.clone());
    let mut conn = redis.queue_connection().await.map_err(|e| anyhow!("connecting to Redis: {e}"))?;
    let keys = confab::keyspace::Keyspace::new(&p.key_prefix);
    for chunk in (0..layout.rooms).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for r in chunk {
            pipe.cmd("SET")
                .arg(keys.room_seq(layout.room(*r)))
                .arg(layout.messages_in(*r))
                .arg("PX")
                .arg(confab::seq::COUNTER_TTL_MS)
                .ignore();
        }
        let _: () = pipe.query_async(&mut conn).await.context("setting seq counters")?;
    }
    Ok(SeedResult {
        scenario: "seed",
        params: p.clone(),
        users: n_users,
        rooms: n_rooms,
        memberships: n_members,
        messages: n_messages,
        seconds: started.elapsed().as_secs_f64(),
        messages_per_sec: n_messages as f64 / stored.max(1e-9),
    })
}

/// Inserts `docs` in batches, several in flight; returns how many.
async fn insert_all<T>(
    db: &mongodb::Database,
    name: &str,
    docs: impl Iterator<Item = T> + Send,
    total: u64,
    p: &SeedParams,
) -> Result<u64>
where
    T: Serialize + Send + Sync + 'static,
{
    let collection = db.collection::<T>(name);
    let bar = super::count_bar(total, name);
    let mut docs = docs;
    let batch = p.batch.max(1);
    let batches = futures::stream::iter(std::iter::from_fn(move || {
        let chunk: Vec<T> = docs.by_ref().take(batch).collect();
        (!chunk.is_empty()).then_some(chunk)
    }));
    let mut inserted = 0u64;
    let mut done = batches
        .map(|chunk| {
            let collection = collection.clone();
            async move {
                let n = chunk.len() as u64;
                collection.insert_many(chunk).ordered(false).await.map(|_| n)
            }
        })
        .buffer_unordered(p.inflight.max(1));
    while let Some(n) = done.try_next().await.with_context(|| format!("inserting into {name}"))? {
        inserted += n;
        bar.inc(n);
    }
    bar.finish_and_clear();
    eprintln!("{name}: {inserted}");
    Ok(inserted)
}

pub fn seed_markdown(r: &SeedResult) -> String {
    format!(
        "# seed\n\n| users | rooms | memberships | messages | seconds | messages/s |\n|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.0} | {:.0} |\n",
        r.users, r.rooms, r.memberships, r.messages, r.seconds, r.messages_per_sec
    )
}

// ---------------------------------------------------------------------------
// Reading

/// The reads, in the order they run.
pub const READS: &[(&str, &str)] = &[
    ("history_deep", "GET /messages?room_id&before&limit=50, cursor in the older half"),
    ("history_newest", "GET /messages?room_id&limit=49 (the cache serves only limit=50)"),
    ("rooms", "GET /rooms?limit=49 (not cached; unread counts for 49 rooms)"),
    ("unread", "one room's unread count (store call; no route serves it alone)"),
    ("search", "GET /messages/search?q (every room of the user)"),
    ("search_room", "GET /messages/search?q&room_id"),
];

#[derive(Debug, Clone, Serialize)]
pub struct ReadResult {
    pub read: String,
    pub what: String,
    pub requests: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub latency: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub read: String,
    pub command: String,
    pub shape: String,
    /// FerretDB's `filterPushdown`/`sortPushdown`/`limitPushdown`, when given.
    pub pushdown: Option<String>,
    pub plan: String,
    pub index: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeResult {
    pub target: String,
    pub scenario: &'static str,
    pub params: VolumeParams,
    pub store_version: String,
    pub plans: Vec<PlanRow>,
    pub reads: Vec<ReadResult>,
}

/// Commands the store sends while capturing is on.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Option<Vec<Document>>>>);

impl Capture {
    fn start(&self) {
        *self.0.lock().unwrap() = Some(Vec::new());
    }

    fn take(&self) -> Vec<Document> {
        self.0.lock().unwrap().take().unwrap_or_default()
    }

    fn handler(&self) -> EventHandler<CommandEvent> {
        let slot = self.0.clone();
        EventHandler::callback(move |event| {
            if let CommandEvent::Started(started) = event {
                if matches!(started.command_name.as_str(), "find" | "aggregate" | "count" | "distinct") {
                    if let Some(seen) = slot.lock().unwrap().as_mut() {
                        seen.push(started.command);
                    }
                }
            }
        })
    }
}

pub async fn run(urls: &[String], secret: &str, p: &VolumeParams) -> Result<VolumeResult> {
    let capture = Capture::default();
    let mut options = ClientOptions::parse(&p.store.mongo_url).await.context("the store's URL")?;
    options.app_name = Some("confab-loadtest".into());
    options.command_event_handler = Some(capture.handler());
    let client = mongodb::Client::with_options(options)?;
    let db = client.database(&p.store.mongo_db);
    let store = Store::with_client(client.clone(), &p.store.mongo_db);
    let layout = find_layout(&db, &p.sizes).await?;
    let info = db.run_command(doc! {"buildInfo": 1}).await?;
    let store_version = match info.get_str("ferretdbVersion") {
        Ok(v) => format!("FerretDB {v}"),
        Err(_) => format!("MongoDB {}", info.get_str("version").unwrap_or("?")),
    };
    let plans = match p.explain || p.explain_only {
        true => explain(&store, &db, &capture, &layout).await?,
        false => Vec::new(),
    };
    let mut reads = Vec::new();
    if !p.explain_only {
        let ctx = Arc::new(Ctx::new(urls, secret, layout, store)?);
        for (name, what) in READS {
            if !p.reads.is_empty() && !p.reads.iter().any(|r| r == name) {
                continue;
            }
            reads.push(measure(&ctx, name, what, p).await);
        }
    }
    Ok(VolumeResult { target: "confab".into(), scenario: "volume", params: p.clone(), store_version, plans, reads })
}

/// The layout of the seeded store: the start from the first room's id, the
/// sizes checked against the first and last rooms.
async fn find_layout(db: &mongodb::Database, sizes: &Sizes) -> Result<Layout> {
    let rooms = db.collection::<Room>(collections::ROOMS);
    let first = rooms.find_one(doc! {"name": Layout::room_name(0)}).await?.ok_or_else(|| {
        anyhow!("the store holds no seeded rooms (or is still being seeded): run `confab-loadtest seed` first")
    })?;
    let layout = Layout::new(sizes, first.id.timestamp().timestamp_millis().div_euclid(1000) as u32)?;
    let last = layout.rooms - 1;
    let found = rooms.find_one(doc! {"_id": layout.room(last)}).await?;
    let fits = first.id == layout.room(0)
        && first.last_seq == layout.messages_in(0) as i64
        && found.is_some_and(|room| room.last_seq == layout.messages_in(last) as i64)
        && rooms.find_one(doc! {"_id": layout.room(last + 1)}).await?.is_none();
    if !fits {
        bail!("the store was seeded with other sizes: give `volume` the --rooms, --messages, --users and --members `seed` had");
    }
    Ok(layout)
}

/// What every reader shares.
struct Ctx {
    urls: Vec<String>,
    http: reqwest::Client,
    tokens: Vec<String>,
    layout: Layout,
    rooms_of: Vec<Vec<u32>>,
    /// Users with at least one room.
    readers: Vec<u32>,
    store: Store,
}

impl Ctx {
    fn new(urls: &[String], secret: &str, layout: Layout, store: Store) -> Result<Ctx> {
        let tokens = confab::auth::Tokens::new(secret, Duration::from_secs(86_400));
        let tokens = (0..layout.users)
            .map(|u| tokens.issue(layout.user(u), &Layout::username(u), None).map_err(|e| anyhow!("{e}")))
            .collect::<Result<Vec<_>>>()?;
        let rooms_of = layout.rooms_of_users();
        let readers = (0..layout.users).filter(|u| !rooms_of[*u as usize].is_empty()).collect();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Ctx { urls: urls.to_vec(), http, tokens, layout, rooms_of, readers, store })
    }

    /// A user and one of their rooms, drawn from `seed`.
    fn pick(&self, seed: u64) -> (u32, u32) {
        let u = self.readers[(seed % self.readers.len() as u64) as usize];
        let rooms = &self.rooms_of[u as usize];
        (u, rooms[(mix(seed, 7) % rooms.len() as u64) as usize])
    }

    async fn get(&self, seed: u64, u: u32, path_and_query: String) -> Result<()> {
        let base = &self.urls[(seed % self.urls.len() as u64) as usize];
        let resp =
            self.http.get(format!("{base}{path_and_query}")).bearer_auth(&self.tokens[u as usize]).send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(200)]));
        }
        Ok(())
    }

    async fn read(&self, name: &str, seed: u64) -> Result<()> {
        let (u, r) = self.pick(seed);
        let l = &self.layout;
        let room = l.room(r).to_hex();
        match name {
            "history_deep" => {
                let n = l.messages_in(r);
                let before = 2 + mix(seed, 11) % (n / 2).max(1);
                let before = l.message(r, before.min(n.max(1))).to_hex();
                self.get(seed, u, format!("/messages?room_id={room}&before={before}&limit=50")).await
            }
            "history_newest" => self.get(seed, u, format!("/messages?room_id={room}&limit=49")).await,
            "rooms" => self.get(seed, u, "/rooms?limit=49".into()).await,
            "unread" => {
                let read = l.read_seq(r, u) as i64;
                let cap = confab::rooms::list::UNREAD_CAP;
                self.store.count_unread(l.room(r), l.user(u), read, cap).await.map_err(|e| anyhow!("{e}"))?;
                Ok(())
            }
            "search" => self.get(seed, u, format!("/messages/search?q={}", Layout::search_word(seed))).await,
            "search_room" => {
                let q = Layout::search_word(seed);
                self.get(seed, u, format!("/messages/search?q={q}&room_id={room}")).await
            }
            other => bail!("no read called {other}"),
        }
    }
}

async fn measure(ctx: &Arc<Ctx>, name: &str, what: &str, p: &VolumeParams) -> ReadResult {
    let latencies = Arc::new(Latencies::new());
    let issued = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let bar = super::timed_bar(Duration::from_secs(p.duration), name);
    let end = Instant::now() + Duration::from_secs(p.duration);
    let salt = mix(Utc::now().timestamp_millis() as u64, 3);
    let mut tasks = tokio::task::JoinSet::new();
    for reader in 0..p.readers.max(1) {
        let (ctx, latencies, issued, first_error) =
            (ctx.clone(), latencies.clone(), issued.clone(), first_error.clone());
        let (name, max) = (name.to_string(), p.max_requests);
        tasks.spawn(async move {
            let (mut errors, mut batch) = (0u64, Vec::new());
            while Instant::now() < end {
                let i = issued.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let t = Instant::now();
                match ctx.read(&name, mix(salt, i)).await {
                    Ok(()) => batch.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        errors += 1;
                        first_error.lock().unwrap().get_or_insert_with(|| format!("{e:#}"));
                    }
                }
                if batch.len() == 64 {
                    latencies.record(reader, &batch);
                    batch.clear();
                }
            }
            latencies.record(reader, &batch);
            errors
        });
    }
    let started = Instant::now();
    let mut errors = 0;
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            bar.set_position(started.elapsed().as_secs());
        }
    };
    let joined = async {
        while let Some(r) = tasks.join_next().await {
            errors += r.unwrap_or(1);
        }
    };
    tokio::select! {
        _ = ticker => {}
        _ = joined => {}
    }
    bar.finish_and_clear();
    let latency = Percentiles::of(&latencies.merged());
    let first_error = first_error.lock().unwrap().clone();
    ReadResult { read: name.into(), what: what.into(), requests: latency.count, errors, first_error, latency }
}

fn store_err(e: confab::store::StoreError) -> anyhow::Error {
    anyhow!("{e}")
}

/// Runs what each read asks of the store, as a node does, capturing the
/// commands; then asks the store to explain each.
async fn explain(store: &Store, db: &mongodb::Database, capture: &Capture, l: &Layout) -> Result<Vec<PlanRow>> {
    let rooms_of = l.rooms_of_users();
    let u = (0..l.users).find(|u| !rooms_of[*u as usize].is_empty()).unwrap_or(0);
    let r = rooms_of[u as usize].first().copied().unwrap_or(0);
    let (room, user, n) = (l.room(r), l.user(u), l.messages_in(r));
    let ids: Vec<ObjectId> = rooms_of[u as usize].iter().map(|r| l.room(*r)).collect();
    let word = Layout::search_word(1).to_string();
    let mut rows = Vec::new();
    for (name, _) in READS {
        capture.start();
        match *name {
            "history_deep" => {
                store.room(room).await.map_err(store_err)?;
                store.member(room, user).await.map_err(store_err)?;
                store.message(l.message(r, n.div_ceil(2).max(1))).await.map_err(store_err)?;
                let q = HistoryQuery {
                    room_id: room,
                    before_seq: Some(n.div_ceil(2) as i64),
                    limit: 50,
                    ..Default::default()
                };
                store.history(&q).await.map_err(store_err)?;
            }
            "history_newest" => {
                store.room(room).await.map_err(store_err)?;
                store.member(room, user).await.map_err(store_err)?;
                store
                    .history(&HistoryQuery { room_id: room, limit: 49, ..Default::default() })
                    .await
                    .map_err(store_err)?;
            }
            "rooms" => {
                store.memberships(user).await.map_err(store_err)?;
                store.rooms_listed(&ids).await.map_err(store_err)?;
                let at: Vec<(ObjectId, i64)> =
                    rooms_of[u as usize].iter().map(|r| (l.room(*r), l.messages_in(*r) as i64)).collect();
                store.messages_at(&at).await.map_err(store_err)?;
            }
            "unread" => {
                let cap = confab::rooms::list::UNREAD_CAP;
                store.count_unread(room, user, l.read_seq(r, u) as i64, cap).await.map_err(store_err)?;
            }
            "search" => {
                store.rooms_visible_to(user).await.map_err(store_err)?;
                let q = SearchQuery { rooms: ids.clone(), words: vec![word.clone()], before: None, limit: 21 };
                store.search_messages(&q).await.map_err(store_err)?;
            }
            "search_room" => {
                let q = SearchQuery { rooms: vec![room], words: vec![word.clone()], before: None, limit: 21 };
                store.search_messages(&q).await.map_err(store_err)?;
            }
            _ => {}
        }
        let mut seen = Vec::new();
        for command in capture.take() {
            let command = clean_command(command);
            let shape = command_shape(&command);
            let key = (command_name(&command), shape.clone());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let out = db.run_command(doc! {"explain": command.clone(), "verbosity": "queryPlanner"}).await;
            let row = match out {
                Ok(out) => {
                    let (plan, index) = plan_summary(&out);
                    PlanRow {
                        read: name.to_string(),
                        command: command_name(&command),
                        shape,
                        pushdown: pushdown(&out),
                        plan,
                        index,
                    }
                }
                Err(e) => PlanRow {
                    read: name.to_string(),
                    command: command_name(&command),
                    shape,
                    pushdown: None,
                    plan: format!("explain failed: {e}"),
                    index: false,
                },
            };
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The command without what the driver adds for the session and routing.
fn clean_command(mut command: Document) -> Document {
    for key in ["$db", "lsid", "$clusterTime", "$readPreference", "txnNumber", "readConcern", "$readConcern"] {
        command.remove(key);
    }
    command
}

fn command_name(command: &Document) -> String {
    match command.iter().next() {
        Some((name, Bson::String(collection))) => format!("{name} {collection}"),
        Some((name, _)) => name.clone(),
        None => String::new(),
    }
}

/// The command's filter (or pipeline), sort and limit with values left out:
/// `{room_id: ?, seq: {$lt: ?}} sort {seq: -1} limit 51`.
pub fn command_shape(command: &Document) -> String {
    let mut parts = Vec::new();
    if let Ok(filter) = command.get_document("filter") {
        parts.push(shape(&Bson::Document(filter.clone())));
    }
    if let Ok(pipeline) = command.get_array("pipeline") {
        let stages: Vec<String> = pipeline.iter().map(shape).collect();
        parts.push(format!("[{}]", stages.join(", ")));
    }
    if let Ok(sort) = command.get_document("sort") {
        parts.push(format!("sort {}", literal(&Bson::Document(sort.clone()))));
    }
    if let Some(limit) = command.get("limit") {
        parts.push(format!("limit {}", literal(limit)));
    }
    parts.join(" ")
}

fn literal(b: &Bson) -> String {
    match b {
        Bson::Document(d) => {
            let inner: Vec<String> = d.iter().map(|(k, v)| format!("{k}: {}", literal(v))).collect();
            format!("{{{}}}", inner.join(", "))
        }
        Bson::Int32(n) => n.to_string(),
        Bson::Int64(n) => n.to_string(),
        Bson::Double(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// A filter with its values replaced by `?`; arrays of like items shown
/// once with their count.
fn shape(b: &Bson) -> String {
    match b {
        Bson::Document(d) => {
            let inner: Vec<String> = d
                .iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    // Stages that shape the output, not the read: as written.
                    ("$group" | "$sort" | "$limit" | "$skip" | "$project", _) => format!("{k}: {}", literal(v)),
                    _ => format!("{k}: {}", shape(v)),
                })
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        Bson::Array(items) => match items.first() {
            None => "[]".into(),
            Some(first) => {
                let first = shape(first);
                if items.len() > 1 && items.iter().all(|i| shape(i) == first) {
                    format!("[{first} ×{}]", items.len())
                } else {
                    format!("[{}]", items.iter().map(shape).collect::<Vec<_>>().join(", "))
                }
            }
        },
        _ => "?".into(),
    }
}

fn pushdown(out: &Document) -> Option<String> {
    let flag = |k: &str| out.get_bool(k).ok();
    let (f, s, l) = (flag("filterPushdown")?, flag("sortPushdown")?, flag("limitPushdown")?);
    let yes = |b: bool| if b { "yes" } else { "no" };
    Some(format!("filter {}, sort {}, limit {}", yes(f), yes(s), yes(l)))
}

/// The scans an explain names, and whether any of them reads an index.
/// Knows MongoDB's stages, PostgreSQL's plan nodes (FerretDB on
/// PostgreSQL) and SQLite's query plan lines (FerretDB on SQLite); plans
/// MongoDB rejected are left out.
pub fn plan_summary(out: &Document) -> (String, bool) {
    fn walk(b: &Bson, scans: &mut Vec<String>, index: &mut bool) {
        match b {
            Bson::Document(d) => {
                if let Ok(node) = d.get_str("Node Type") {
                    let name = match d.get_str("Index Name") {
                        Ok(ix) => format!("{node} ({ix})"),
                        Err(_) => node.to_string(),
                    };
                    *index |= node.contains("Index");
                    if node.contains("Scan") {
                        scans.push(name);
                    }
                }
                if let Ok(stage) = d.get_str("stage") {
                    let uses = matches!(
                        stage,
                        "IXSCAN" | "IDHACK" | "EXPRESS_IXSCAN" | "EXPRESS_IDHACK" | "COUNT_SCAN" | "DISTINCT_SCAN"
                    );
                    *index |= uses;
                    if uses || stage == "COLLSCAN" {
                        scans.push(match d.get_str("indexName") {
                            Ok(ix) => format!("{stage} ({ix})"),
                            Err(_) => stage.to_string(),
                        });
                    }
                }
                for (k, v) in d {
                    if k != "rejectedPlans" {
                        walk(v, scans, index);
                    }
                }
            }
            Bson::Array(items) => items.iter().for_each(|i| walk(i, scans, index)),
            Bson::String(s) => {
                if let Some(detail) = s.split_once("detail=").map(|(_, d)| d) {
                    *index |= detail.contains("USING") && (detail.contains("INDEX") || detail.contains("PRIMARY KEY"));
                    scans.push(detail.to_string());
                }
            }
            _ => {}
        }
    }
    let (mut scans, mut index) = (Vec::new(), false);
    walk(
        &Bson::Document(out.get_document("queryPlanner").cloned().unwrap_or_else(|_| out.clone())),
        &mut scans,
        &mut index,
    );
    if scans.is_empty() {
        scans.push("(no plan given)".into());
    }
    (scans.join("; "), index)
}

pub fn plans_markdown(store: &str, plans: &[PlanRow]) -> String {
    let mut md = format!("## Plans ({store})\n\n| read | command | filter, sort, limit | pushed down | plan | index |\n|---|---|---|---|---|---|\n");
    for p in plans {
        let shape = if p.shape.chars().count() > 160 {
            format!("{}…", p.shape.chars().take(160).collect::<String>())
        } else {
            p.shape.clone()
        };
        md.push_str(&format!(
            "| {} | {} | `{}` | {} | {} | {} |\n",
            p.read,
            p.command,
            shape.replace('|', "\\|"),
            p.pushdown.as_deref().unwrap_or("-"),
            p.plan.replace('|', "\\|"),
            if p.index { "yes" } else { "no" }
        ));
    }
    md
}

pub fn markdown(r: &VolumeResult) -> String {
    let s = &r.params.sizes;
    let mut md = format!(
        "# volume: {} messages in {} rooms, {} users, {} members a room ({})\n\n",
        s.messages, s.rooms, s.users, s.members, r.store_version
    );
    if !r.reads.is_empty() {
        md.push_str(&format!(
            "{} readers, {} s per read\n\n| read | what | requests | errors | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|\n",
            r.params.readers, r.params.duration
        ));
    }
    for x in &r.reads {
        let l = &x.latency;
        md.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} |\n",
            x.read, x.what, x.requests, x.errors, l.p50_ms, l.p99_ms, l.max_ms
        ));
    }
    for x in r.reads.iter().filter(|x| x.first_error.is_some()) {
        md.push_str(&format!("\n{}: first error: {}\n", x.read, x.first_error.as_deref().unwrap_or("")));
    }
    if !r.plans.is_empty() {
        md.push('\n');
        md.push_str(&plans_markdown(&r.store_version, &r.plans));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(rooms: u32, messages: u64, users: u32, members: u32) -> Layout {
        Layout::new(&Sizes { rooms, messages, users, members }, 1_700_000_000).unwrap()
    }

    #[test]
    fn messages_are_spread_over_rooms_and_all_sent_once() {
        let l = layout(7, 100, 5, 3);
        assert_eq!((0..7).map(|r| l.messages_in(r)).sum::<u64>(), 100);
        assert_eq!((l.messages_in(0), l.messages_in(1), l.messages_in(6)), (15, 15, 14));
        let sent: Vec<Message> = l.messages_in_send_order().collect();
        assert_eq!(sent.len(), 100);
        let mut ids: Vec<ObjectId> = sent.iter().map(|m| m.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 100, "ids are unique");
        // Each room's seqs run 1..=n in send order, with time going forward.
        for r in 0..7 {
            let mine: Vec<&Message> = sent.iter().filter(|m| m.room_id == l.room(r)).collect();
            let seqs: Vec<i64> = mine.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=l.messages_in(r) as i64).collect::<Vec<_>>());
            assert!(mine.windows(2).all(|w| w[0].timestamp < w[1].timestamp && w[0].id < w[1].id));
        }
    }

    #[test]
    fn documents_are_what_confab_stores() {
        let l = layout(10, 1000, 20, 4);
        let m = l.message_doc(3, 42);
        let doc = bson::to_document(&m).unwrap();
        for field in ["_id", "room_id", "seq", "sender_id", "content", "dedup_key", "timestamp", "deleted"] {
            assert!(doc.contains_key(field), "{field} missing from {doc}");
        }
        assert!(matches!(doc.get("timestamp"), Some(Bson::DateTime(_))));
        assert_eq!(doc.get_i64("seq").unwrap(), 42);
        assert_eq!(m.dedup_key, m.id.to_hex());
        assert_eq!(m.id.timestamp().timestamp_millis() / 1000, l.message_ms(3, 42) / 1000);
        // The sender is a member of the room.
        assert!(l.members_of(3).any(|u| l.user(u) == m.sender_id));
        let room = bson::to_document(&l.room_doc(3)).unwrap();
        assert_eq!(room.get_str("type").unwrap(), "private");
        assert_eq!(room.get_i64("last_seq").unwrap(), 100);
        assert_eq!(room.get_str("name_key").unwrap(), "volume-0000003");
    }

    #[test]
    fn members_are_distinct_and_cursors_point_at_their_messages() {
        let l = layout(1000, 50_000, 100, 10);
        for r in [0, 9, 10, 999] {
            let mut members: Vec<u32> = l.members_of(r).collect();
            members.sort();
            members.dedup();
            assert_eq!(members.len(), 10);
            let docs: Vec<Member> = l.member_docs(r).collect();
            assert_eq!(docs[0].role, Role::Owner);
            assert!(docs[1..].iter().all(|m| m.role == Role::Member));
            for m in docs {
                assert_eq!(m.key, Member::key(m.room_id, m.user_id));
                assert!(m.read_seq <= m.delivered_seq && m.delivered_seq == 50);
                assert!(m.delivered_seq - m.read_seq <= 20);
                if m.read_seq > 0 {
                    assert_eq!(m.read_up_to, Some(l.message(r, m.read_seq as u64)));
                }
            }
        }
        // Every user in rooms × members / users rooms, and some unread.
        let of = l.rooms_of_users();
        assert!(of.iter().all(|rooms| rooms.len() == 100));
        let unread: u64 = of[5].iter().map(|r| l.messages_in(*r) - l.read_seq(*r, 5)).sum();
        assert!(unread > 100, "{unread}");
    }

    #[test]
    fn content_is_common_words_with_rarer_ones_to_search_for() {
        let l = layout(100, 10_000, 10, 2);
        let all: Vec<String> =
            (0..100).flat_map(|r| (1..=100).map(move |s| (r, s))).map(|(r, s)| l.content(r, s)).collect();
        assert!(all.iter().all(|c| (5..=16).contains(&c.split(' ').count())));
        let with = |w: &str| all.iter().filter(|c| c.split(' ').any(|x| x == w)).count();
        assert!(with("the") > 2_000, "{}", with("the"));
        let rare = Layout::search_word(WORDS.len() as u64 - 1);
        let n = with(rare);
        assert!(n > 0 && n < 1_000, "{rare}: {n}");
        assert_eq!(l.content(4, 7), l.content(4, 7));
    }

    #[test]
    fn sizes_that_do_not_fit_are_refused() {
        let bad = |rooms, messages, users, members| Layout::new(&Sizes { rooms, messages, users, members }, 0).is_err();
        assert!(bad(0, 1, 1, 1));
        assert!(bad(1, 1, 5, 6));
        assert!(bad(1 << 24, 1, 1, 1));
        assert!(!bad(10_000, 1_000_000, 1_000, 10));
    }

    #[test]
    fn shapes_hide_values_and_fold_repeats() {
        let room = ObjectId::new();
        let cmd = doc! {
            "find": "messages",
            "filter": {"room_id": room, "seq": {"$lt": 10_i64}},
            "sort": {"seq": -1},
            "limit": 51_i64,
            "$db": "x",
        };
        assert_eq!(command_name(&cmd), "find messages");
        assert_eq!(command_shape(&cmd), "{room_id: ?, seq: {$lt: ?}} sort {seq: -1} limit 51");
        let or =
            doc! {"find": "messages", "filter": {"$or": [{"room_id": room, "seq": 1}, {"room_id": room, "seq": 2}]}};
        assert_eq!(command_shape(&or), "{$or: [{room_id: ?, seq: ?} ×2]}");
        let agg = doc! {"aggregate": "messages", "pipeline": [{"$match": {"room_id": room}}, {"$group": {"_id": 1, "n": {"$sum": 1}}}]};
        assert_eq!(command_shape(&agg), "[{$match: {room_id: ?}}, {$group: {_id: 1, n: {$sum: 1}}}]");
    }

    #[test]
    fn plans_tell_index_reads_from_scans_on_each_store() {
        let pg_seq = doc! {"queryPlanner": {"Plan": {"Node Type": "Gather", "Plans": [
        {"Node Type": "Seq Scan", "Relation Name": "messages_1", "Filter": "x"}]}}};
        assert_eq!(plan_summary(&pg_seq), ("Seq Scan".to_string(), false));
        let pg_ix = doc! {"queryPlanner": {"Plan": {"Node Type": "Bitmap Heap Scan", "Plans": [
        {"Node Type": "Bitmap Index Scan", "Index Name": "messages_room_gin"}]}}};
        assert_eq!(plan_summary(&pg_ix), ("Bitmap Heap Scan; Bitmap Index Scan (messages_room_gin)".to_string(), true));
        let sqlite = doc! {"queryPlanner": {"Plan": ["id=2 parent=0 notused=0 detail=SCAN messages_c00385b5"]}};
        assert_eq!(plan_summary(&sqlite), ("SCAN messages_c00385b5".to_string(), false));
        let sqlite_ix =
            doc! {"queryPlanner": {"Plan": ["id=2 parent=0 notused=0 detail=SEARCH m USING INDEX m_rs (a=?)"]}};
        assert!(plan_summary(&sqlite_ix).1);
        let mongod = doc! {"queryPlanner": {
            "winningPlan": {"stage": "LIMIT", "inputStage": {"stage": "FETCH", "inputStage": {"stage": "IXSCAN", "indexName": "messages_room_seq_unique"}}},
            "rejectedPlans": [{"stage": "COLLSCAN"}],
        }};
        assert_eq!(plan_summary(&mongod), ("IXSCAN (messages_room_seq_unique)".to_string(), true));
        let pushed = doc! {"filterPushdown": true, "sortPushdown": false, "limitPushdown": false};
        assert_eq!(pushdown(&pushed).as_deref(), Some("filter yes, sort no, limit no"));
        assert_eq!(pushdown(&doc! {}), None);
    }
}

//! The store's connection, collections and indexes, and what every query
//! shares (error mapping, timing). The queries themselves live beside it,
//! one file per aggregate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, Document};
use futures::{StreamExt, TryStreamExt};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Collection, Database, IndexModel};
use tokio::sync::OnceCell;

use super::{ApiKey, AuditEntry, Notification, NotificationPreferences};
use super::{Contact, Member, Message, Room, StoreError, StoreResult, User};

/// The names of the collections that tools outside the store write to
/// directly (the load generator's seeding).
pub mod collections {
    pub const USERS: &str = "users";
    pub const ROOMS: &str = "rooms";
    pub const MEMBERS: &str = "room_members";
    pub const MESSAGES: &str = "messages";
}

/// The store: one MongoDB database and its collections. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(super) db: Database,
    pub(super) users: Collection<User>,
    pub(super) rooms: Collection<Room>,
    pub(super) members: Collection<Member>,
    pub(super) messages: Collection<Message>,
    pub(super) contacts: Collection<Contact>,
    /// Old messages, moved out of `messages` by the archive job.
    pub(super) archive: Collection<Message>,
    pub(super) notifications: Collection<Notification>,
    pub(super) preferences: Collection<NotificationPreferences>,
    pub(super) api_keys: Collection<ApiKey>,
    /// Security-relevant events, newest read first.
    pub(super) audit: Collection<AuditEntry>,
    /// Whether the server is FerretDB (see [`Store::equality_only`]), asked once.
    ferretdb: Arc<OnceCell<bool>>,
    /// Message inserts, grouped when they come together.
    pub(super) inserts: Arc<super::batch::Inserts>,
}

impl Store {
    /// Connects lazily: the driver dials on first use, so a node can start
    /// (and report not-ready) while MongoDB is still coming up.
    pub async fn connect(url: &str, db_name: &str) -> StoreResult<Self> {
        Store::connect_as(url, db_name, "confab").await
    }

    /// Like [`connect`](Self::connect), naming the program to the server.
    pub async fn connect_as(url: &str, db_name: &str, app_name: &str) -> StoreResult<Self> {
        let mut options = ClientOptions::parse(url).await.map_err(|e| StoreError::Other(Box::new(e)))?;
        options.app_name = Some(app_name.into());
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(5));
        let client = mongodb::Client::with_options(options).map_err(map_err)?;
        Ok(Store::with_client(client, db_name))
    }

    /// The store on a client made elsewhere (tools that load or inspect a
    /// database, with options of their own).
    pub fn with_client(client: mongodb::Client, db_name: &str) -> Self {
        let db = client.database(db_name);
        Store {
            users: db.collection(collections::USERS),
            rooms: db.collection(collections::ROOMS),
            members: db.collection(collections::MEMBERS),
            messages: db.collection(collections::MESSAGES),
            contacts: db.collection("contacts"),
            archive: db.collection("messages_archive"),
            notifications: db.collection("notifications"),
            preferences: db.collection("notification_preferences"),
            api_keys: db.collection("api_keys"),
            audit: db.collection("audit"),
            ferretdb: Arc::new(OnceCell::new()),
            inserts: Arc::default(),
            db,
        }
    }

    /// Whether the server hands its database only the equality conditions
    /// of a filter, as FerretDB 1.x does (on PostgreSQL and SQLite alike):
    /// there a read that selects by `$or` or `$in` fetches and decodes the
    /// whole collection, so the few reads that would are split into
    /// equality reads giving the same documents. MongoDB gets the one query.
    /// Asked once (`buildInfo`); if the server cannot be asked, `false`.
    pub(super) async fn equality_only(&self) -> bool {
        let asked = self
            .ferretdb
            .get_or_try_init(|| async {
                let info = timed("build_info", self.db.run_command(doc! {"buildInfo": 1})).await?;
                Ok::<_, StoreError>(info.contains_key("ferretdbVersion"))
            })
            .await;
        asked.is_ok_and(|ferretdb| *ferretdb)
    }

    /// Closes the driver's connections and ends its background tasks,
    /// without waiting for operations still in flight.
    pub async fn shutdown(&self) {
        self.db.client().clone().shutdown().immediate(true).await;
    }
}

/// Equality reads in flight at once when one read is split (`equality_only`).
const SPLIT_READS_IN_FLIGHT: usize = 16;

/// Runs the equality reads one read was split into (`equality_only`), a
/// few at a time; their results in the order given. The reads come
/// collected: a stream over borrowing closures is not `Send` for every
/// lifetime, which axum's handlers need.
pub(super) async fn split_reads<T, F>(reads: Vec<F>) -> mongodb::error::Result<Vec<T>>
where
    F: std::future::Future<Output = mongodb::error::Result<T>>,
{
    futures::stream::iter(reads).buffered(SPLIT_READS_IN_FLIGHT).try_collect().await
}

pub(super) fn map_err(e: mongodb::error::Error) -> StoreError {
    match *e.kind {
        ErrorKind::Write(WriteFailure::WriteError(ref w)) if w.code == 11000 => StoreError::Duplicate,
        ErrorKind::Command(ref c) if c.code == 11000 => StoreError::Duplicate,
        ErrorKind::ServerSelection { .. } | ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => {
            StoreError::Unavailable(e)
        }
        _ => StoreError::Other(Box::new(e)),
    }
}

/// Times one store operation into `confab_mongo_op_seconds{op}`.
pub(super) async fn timed<T>(
    op: &'static str,
    fut: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
) -> StoreResult<T> {
    let start = Instant::now();
    let out = fut.into_future().await.map_err(map_err);
    metrics::histogram!("confab_mongo_op_seconds", "op" => op).record(start.elapsed().as_secs_f64());
    out
}

/// For the documents whose `key` is one of `keys`, the (`key`, `other`)
/// id pairs: one `$in` read, only the two fields decoded.
pub(super) async fn id_pairs<T: Send + Sync>(
    collection: &Collection<T>,
    op: &'static str,
    key: &str,
    keys: &[ObjectId],
    other: &str,
) -> StoreResult<Vec<(ObjectId, ObjectId)>> {
    let found: Vec<Document> = timed(op, async {
        collection
            .clone_with_type::<Document>()
            .find(doc! {key: {"$in": keys}})
            .projection(doc! {"_id": 0, key: 1, other: 1})
            .await?
            .try_collect()
            .await
    })
    .await?;
    Ok(found.iter().filter_map(|d| Some((d.get_object_id(key).ok()?, d.get_object_id(other).ok()?))).collect())
}

impl Store {
    /// Gives each room stored before names were unique ignoring case its
    /// `name_key`, so the unique index can be built. Two old rooms whose
    /// names differ only in case keep their names; the later one's key
    /// gets its id appended, and no new room can take either name.
    async fn key_room_names(&self) -> StoreResult<()> {
        let unkeyed: Vec<Room> = timed("find_rooms", async {
            self.rooms.find(doc! {"name_key": {"$exists": false}}).sort(doc! {"_id": 1}).await?.try_collect().await
        })
        .await?;
        for room in unkeyed {
            let mut key = Room::key_of(&room.name);
            let taken = self.rooms.find_one(doc! {"name_key": &key, "_id": {"$ne": room.id}});
            if timed("find_room", taken).await?.is_some() {
                key = format!("{key}~{}", room.id.to_hex());
            }
            let set = self.rooms.update_one(doc! {"_id": room.id}, doc! {"$set": {"name_key": key}});
            timed("update_room", set).await?;
        }
        Ok(())
    }
}

pub(super) fn index(keys: Document, name: &str, unique: bool) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_string()).unique(unique).build())
        .build()
}

impl Store {
    /// Creates the indexes the queries rely on; safe to run on every start.
    pub async fn ensure_indexes(&self) -> StoreResult<()> {
        // One index per command: FerretDB 1.x fails a multi-index
        // createIndexes when the indexes already exist, and a node must be
        // able to restart against its own database.
        let users = [
            index(doc! {"username": 1}, "users_username_unique", true),
            index(doc! {"username_key": 1}, "users_username_key_unique", true),
            index(doc! {"email": 1}, "users_email_unique", true),
        ];
        for model in users {
            timed("create_index", self.users.create_index(model)).await?;
        }
        timed("create_index", self.rooms.create_index(index(doc! {"name": 1}, "rooms_name_unique", true))).await?;
        self.key_room_names().await?;
        let by_key = index(doc! {"name_key": 1}, "rooms_name_key_unique", true);
        timed("create_index", self.rooms.create_index(by_key)).await?;
        let members = [
            index(doc! {"room_id": 1, "user_id": 1}, "members_room_user_unique", true),
            index(doc! {"user_id": 1}, "members_user", false),
        ];
        for model in members {
            timed("create_index", self.members.create_index(model)).await?;
        }
        let messages = [
            index(doc! {"room_id": 1, "_id": 1}, "messages_room_id", false),
            index(doc! {"room_id": 1, "seq": 1}, "messages_room_seq_unique", true),
            index(doc! {"sender_id": 1, "dedup_key": 1}, "messages_sender_client_msg_id_unique", true),
        ];
        for model in messages {
            timed("create_index", self.messages.create_index(model)).await?;
        }
        let search = index(doc! {"display_name_key": 1}, "users_display_name_key", false);
        timed("create_index", self.users.create_index(search)).await?;
        let contacts = [
            index(doc! {"owner_id": 1, "added_at": 1}, "contacts_owner", false),
            index(doc! {"contact_id": 1}, "contacts_contact", false),
        ];
        for model in contacts {
            timed("create_index", self.contacts.create_index(model)).await?;
        }
        let by_user = index(doc! {"user_id": 1, "_id": -1}, "notifications_user_newest", false);
        timed("create_index", self.notifications.create_index(by_user)).await?;
        let audit = [
            index(doc! {"at": -1, "_id": -1}, "audit_newest", false),
            index(doc! {"actor_id": 1, "at": -1, "_id": -1}, "audit_actor_newest", false),
            index(doc! {"action": 1, "at": -1, "_id": -1}, "audit_action_newest", false),
        ];
        for model in audit {
            timed("create_index", self.audit.create_index(model)).await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> StoreResult<()> {
        timed("ping", self.db.run_command(doc! {"ping": 1})).await.map(|_| ())
    }
}

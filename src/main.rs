//! The `confab` command: `confab serve` runs a node, `confab worker` runs
//! background jobs, `confab jobs` operates their queues, `confab token`
//! mints access tokens, `confab apikey` manages server API keys.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use confab::config::{Config, MongoConfig, Parsed};
use confab::jobs::config::{JobsConfig, WorkerConfig};
use confab::node::RunningNode;
use confab::telemetry::Traces;

#[derive(Parser)]
#[command(name = "confab", version, about = "Confab: a horizontally scaled real-time chat backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: HTTP API, WebSocket gateway, Redis fan-out.
    Serve(Box<Serve>),
    /// Mint access tokens with the cluster's secret, for load tests: they
    /// belong to no session, so nodes accept them only with
    /// CONFAB_SESSIONLESS_TOKENS=true. Prints `user_id username token`,
    /// one line per token.
    Token(TokenArgs),
    /// Run a background worker: notification delivery, archive, daily summaries.
    Worker(Box<Worker>),
    /// Operate the job queues: run a job now, show status, dead letters.
    Jobs(JobsCli),
    /// Manage server API keys (kept in MongoDB): create one (the key is
    /// printed once), revoke one, list them.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Manage users' roles: `promote NAME` makes an administrator (the
    /// /admin API), `demote NAME` a user again.
    #[command(subcommand)]
    User(UserCommand),
    /// Print the audit log, newest first: time, action, outcome, actor,
    /// target, address (tab-separated).
    Audit(AuditArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    Promote {
        username: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    Demote {
        username: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
struct AuditArgs {
    /// Only entries at or after this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
    #[arg(long)]
    since: Option<String>,
    /// Only this action, e.g. login.failed.
    #[arg(long)]
    action: Option<String>,
    /// Only entries by this user id.
    #[arg(long)]
    actor: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 100)]
    limit: i64,
    #[command(flatten)]
    store: StoreArgs,
}

/// A TOML file with any of a command's settings; keys are the flag names
/// with `_` (flags and variables win over it).
#[derive(clap::Args, Clone)]
struct ConfigFile {
    #[arg(long, env = "CONFAB_CONFIG", global = true)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct Serve {
    #[command(flatten)]
    file: ConfigFile,
    #[command(flatten)]
    settings: Config,
}

#[derive(clap::Args)]
struct Worker {
    #[command(flatten)]
    file: ConfigFile,
    #[command(flatten)]
    settings: WorkerConfig,
}

#[derive(clap::Args)]
struct JobsCli {
    /// The worker's TOML file; only its Redis settings are read.
    #[command(flatten)]
    file: ConfigFile,
    #[command(flatten)]
    settings: JobsConfig,
    #[command(subcommand)]
    command: JobsCommand,
}

/// The store's settings, and the node's file they may come from.
#[derive(clap::Args, Clone)]
struct StoreArgs {
    #[command(flatten)]
    file: ConfigFile,
    #[command(flatten)]
    mongo: MongoConfig,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Queue a run of a scheduled job now: `archive` or `summaries`.
    Run { job: String },
    /// Last run, duration, items and failures of each job; queue sizes.
    Status,
    /// List the deliveries that used up their attempts.
    Dead,
    /// Queue dead deliveries again: all, or the one entry `--id`.
    RetryDead {
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Makes a key and prints it on stdout, this once: only its hash is kept.
    Create {
        /// What the key is for (1-64 characters), shown by `list`.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revokes a key, given by id or as the whole key: requests carrying it
    /// are refused (401) from now on, on every node.
    Revoke {
        key: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Lists keys, oldest first: id, state, creation time, name. Never secrets.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The secret the nodes sign tokens with.
    #[arg(long, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// How many tokens (each for a fresh user id).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Usernames are this prefix plus a number.
    #[arg(long, default_value = "loadtest")]
    username_prefix: String,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl_secs: u64,
    /// Mint for this existing user id instead of fresh ones (with --count 1).
    #[arg(long)]
    user_id: Option<String>,
    /// The `iss` claim, as the nodes are configured.
    #[arg(long, env = "CONFAB_JWT_ISSUER", default_value = confab::auth::DEFAULT_ISSUER)]
    jwt_issuer: String,
    /// The `aud` claim, as the nodes are configured.
    #[arg(long, env = "CONFAB_JWT_AUDIENCE", default_value = confab::auth::DEFAULT_AUDIENCE)]
    jwt_audience: String,
}

/// Subcommands that read another command's file and skip keys they do not know.
const LENIENT: &[&str] = &["jobs", "apikey", "user", "audit"];

/// Logs to stdout, filtered by `CONFAB_LOG` (default `info`): lines of
/// text, or with `CONFAB_LOG_FORMAT=json` one JSON object per line (for log
/// collectors), with the span fields of each event. With `traces` (an OTLP
/// endpoint and the node's id), message spans also go out over OTLP; the
/// returned handle sends what is left at shutdown.
fn init_logs(format: Option<&str>, traces: Option<(&str, &str)>) -> Result<Option<Traces>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = EnvFilter::try_from_env("CONFAB_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or("text");
    if !matches!(format, "text" | "json") {
        return Err(format!("invalid setting CONFAB_LOG_FORMAT: `{format}` (expected text or json)"));
    }
    let Some((endpoint, instance)) = traces else {
        // No traces: the subscriber as always, so the message spans stay
        // disabled at their call sites.
        let logs = tracing_subscriber::fmt().with_env_filter(filter);
        match format {
            "json" => logs.json().flatten_event(true).with_current_span(true).init(),
            _ => logs.init(),
        }
        return Ok(None);
    };
    let traces = Traces::start(endpoint, instance)?;
    // The log filter applies to the logs alone: the traces take their spans
    // whatever CONFAB_LOG says.
    let logs = match format {
        "json" => tracing_subscriber::fmt::layer().json().flatten_event(true).with_current_span(true).boxed(),
        _ => tracing_subscriber::fmt::layer().boxed(),
    };
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(traces.layer()).init();
    Ok(Some(traces))
}

fn main() {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(Parsed::Ok(cli)) => cli,
        Ok(Parsed::Shown(output)) => output.exit(),
        Err(e) => {
            eprintln!("confab: {e}");
            std::process::exit(2);
        }
    };
    // Only a node traces: the other commands have no message spans.
    let traced = match &cli.command {
        Command::Serve(args) if !args.settings.otlp_endpoint.is_empty() => {
            Some((args.settings.otlp_endpoint.as_str(), args.settings.node_id.as_str()))
        }
        _ => None,
    };
    let traces = match init_logs(std::env::var("CONFAB_LOG_FORMAT").ok().as_deref(), traced) {
        Ok(traces) => traces,
        Err(message) => {
            eprintln!("confab: {message}");
            std::process::exit(2);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(args) => token(args),
        Command::Worker(args) => worker(*args),
        Command::Jobs(cli) => jobs(cli),
        Command::Apikey(command) => apikey(command),
        Command::User(command) => user(command),
        Command::Audit(args) => audit(args),
    };
    if let Some(traces) = traces {
        traces.shutdown();
    }
    if let Err(message) = result {
        eprintln!("confab: {message}");
        std::process::exit(2);
    }
}

/// The command line, with `confab jobs`' settings taken before or after its
/// own subcommand.
fn parse(args: Vec<std::ffi::OsString>) -> Result<Parsed<Cli>, confab::config::ConfigError> {
    use clap::CommandFactory;
    let command = Cli::command().mut_subcommand("jobs", |jobs| {
        let ids: Vec<clap::Id> = jobs.get_arguments().map(|a| a.get_id().clone()).collect();
        // Global arguments cannot be required: a missing one is named when
        // the settings are read.
        ids.into_iter().fold(jobs, |jobs, id| jobs.mut_arg(id, |a| a.global(true).required(false)))
    });
    confab::config::parse_with::<Cli>(args, LENIENT, command)
}

fn serve(args: Serve) -> Result<(), String> {
    let config = args.settings;
    config.validate().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let node = RunningNode::start(config).await.map_err(|e| e.to_string())?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}

fn worker(args: Worker) -> Result<(), String> {
    let config = args.settings;
    config.validate().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let worker = confab::jobs::runner::RunningWorker::start(config).await.map_err(|e| e.to_string())?;
        shutdown_signal().await;
        tracing::info!("shutting down: finishing the jobs in hand");
        worker.shutdown().await;
        Ok(())
    })
}

fn jobs(cli: JobsCli) -> Result<(), String> {
    use confab::jobs::admin::Command as Admin;
    let command = match cli.command {
        JobsCommand::Run { job } => Admin::Run(job.parse()?),
        JobsCommand::Status => Admin::Status,
        JobsCommand::Dead => Admin::Dead,
        JobsCommand::RetryDead { id } => Admin::RetryDead(id),
    };
    let config = cli.settings;
    config.redis.validate().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    let out = runtime.block_on(confab::jobs::admin::execute(&config, command)).map_err(|e| e.to_string())?;
    print!("{out}");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn token(args: TokenArgs) -> Result<(), String> {
    if args.jwt_secret.len() < 32 {
        return Err("invalid setting --jwt-secret (CONFAB_JWT_SECRET): must be at least 32 bytes".into());
    }
    let ttl = std::time::Duration::from_secs(args.ttl_secs);
    let tokens = confab::auth::Tokens::with(&args.jwt_secret, &[], &args.jwt_issuer, &args.jwt_audience, ttl);
    let fixed = match &args.user_id {
        Some(id) => {
            Some(bson::oid::ObjectId::parse_str(id).map_err(|_| format!("--user-id: `{id}` is not a valid id"))?)
        }
        None => None,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..args.count {
        let user_id = fixed.unwrap_or_else(bson::oid::ObjectId::new);
        let username = format!("{}{i}", args.username_prefix);
        let token = tokens.issue(user_id, &username, None).map_err(|e| e.to_string())?;
        use std::io::Write;
        writeln!(out, "{} {username} {token}", user_id.to_hex()).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn apikey(command: ApikeyCommand) -> Result<(), String> {
    use confab::audit::{Actor, Audit, Event, Source};
    use confab::auth::ApiKeys;
    use confab::clock::rfc3339;

    let store_args = match &command {
        ApikeyCommand::Create { store, .. } | ApikeyCommand::Revoke { store, .. } | ApikeyCommand::List { store } => {
            store.clone()
        }
    };
    with_store(store_args, |store| async move {
        let keys = ApiKeys::new(store.clone());
        let audit = Audit::new(store);
        match command {
            ApikeyCommand::Create { name, .. } => {
                let minted = keys.create(&name).await.map_err(|e| e.to_string())?;
                let event = Event::new(Actor::system(), "apikey.created")
                    .target(format!("apikey:{}", minted.key.id.to_hex()))
                    .details(bson::doc! {"name": &minted.key.name});
                audit.record(event, &Source::command()).await;
                println!("{}", minted.plaintext);
                eprintln!(
                    "created API key {} ({}); it is shown only this once: keep it secret",
                    minted.key.id.to_hex(),
                    minted.key.name
                );
            }
            ApikeyCommand::Revoke { key, .. } => {
                let (id, revoked) = keys.revoke(&key).await.map_err(|e| e.to_string())?;
                if revoked {
                    let event = Event::new(Actor::system(), "apikey.revoked").target(format!("apikey:{}", id.to_hex()));
                    audit.record(event, &Source::command()).await;
                    println!("revoked {}", id.to_hex());
                } else {
                    println!("{} was already revoked", id.to_hex());
                }
            }
            ApikeyCommand::List { .. } => {
                for key in keys.list().await.map_err(|e| e.to_string())? {
                    let state = key.revoked_at.map_or("active".to_string(), |t| format!("revoked {}", rfc3339(&t)));
                    println!("{}\t{state}\t{}\t{}", key.id.to_hex(), rfc3339(&key.created_at), key.name);
                }
            }
        }
        Ok(())
    })
}

/// Runs `work` against the store named by `store` on a one-thread runtime.
fn with_store<F, Fut>(store: StoreArgs, work: F) -> Result<(), String>
where
    F: FnOnce(std::sync::Arc<confab::store::Store>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mongo = store.mongo;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let store =
            confab::store::Store::connect(&mongo.mongo_url, &mongo.mongo_db).await.map_err(|e| e.to_string())?;
        work(std::sync::Arc::new(store)).await
    })
}

fn user(command: UserCommand) -> Result<(), String> {
    use confab::audit::{Actor, Audit, Event, Source};
    use confab::store::UserRole;

    let (username, role, store) = match command {
        UserCommand::Promote { username, store } => (username, UserRole::Admin, store),
        UserCommand::Demote { username, store } => (username, UserRole::User, store),
    };
    with_store(store, |store| async move {
        let before = store.set_user_role(&username.to_lowercase(), role).await.map_err(|e| e.to_string())?;
        let Some(before) = before else {
            return Err(format!("no user named `{username}`"));
        };
        if before.role == role {
            println!("{} is already {}", before.username, role.as_str());
            return Ok(());
        }
        let event = Event::new(Actor::system(), "user.role_changed")
            .target(format!("user:{}", before.id.to_hex()))
            .details(bson::doc! {"from": before.role.as_str(), "to": role.as_str()});
        Audit::new(store).record(event, &Source::command()).await;
        println!("{} is now {}", before.username, role.as_str());
        Ok(())
    })
}

fn audit(args: AuditArgs) -> Result<(), String> {
    use confab::clock::rfc3339;

    if !(1..=10_000).contains(&args.limit) {
        return Err("--limit: must be from 1 to 10000".into());
    }
    let q = confab::http::admin::audit_query(
        args.action.as_deref(),
        args.actor.as_deref(),
        args.since.as_deref(),
        None,
        args.limit,
    )
    .map_err(|e| e.to_string())?;
    with_store(args.store, |store| async move {
        let entries = confab::audit::Audit::new(store).page(&q).await.map_err(|e| e.to_string())?;
        for e in entries {
            let actor = match e.actor_id {
                Some(id) => format!("{}:{}", e.actor_kind.as_str(), id.to_hex()),
                None => e.actor_kind.as_str().to_string(),
            };
            println!(
                "{}\t{}\t{}\t{actor}\t{}\t{}",
                rfc3339(&e.at),
                e.action,
                e.outcome,
                e.target.as_deref().unwrap_or("-"),
                e.ip.as_deref().unwrap_or("-"),
            );
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        let args = std::iter::once("confab").chain(args.iter().copied()).map(Into::into).collect();
        match super::parse(args) {
            Ok(Parsed::Ok(cli)) => Ok(cli),
            Ok(Parsed::Shown(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn jobs_commands_parse_with_their_settings_anywhere() {
        let cli = parse(&["jobs", "--redis-url", "redis://r:1", "retry-dead", "--id", "abc"]).unwrap();
        let Command::Jobs(jobs) = cli.command else { panic!("not jobs") };
        assert!(matches!(jobs.command, JobsCommand::RetryDead { id: Some(ref id) } if id == "abc"));
        assert_eq!(jobs.settings.redis.url, "redis://r:1");
        let cli = parse(&["jobs", "status", "--redis-url", "redis://r:1", "--key-prefix", "staging"]).unwrap();
        let Command::Jobs(jobs) = cli.command else { panic!("not jobs") };
        assert_eq!(jobs.settings.keys.prefix(), "staging");
        let with = ["--redis-url", "redis://r:1", "--mongo-url", "mongodb://m:2"];
        assert!(matches!(
            parse(&[&["jobs", "run", "archive"], &with[..2]].concat()).unwrap().command,
            Command::Jobs(_)
        ));
        assert!(parse(&[&["jobs", "explode"], &with[..2]].concat()).is_err());
        let worker = [&["worker", "--archive-cron", "0 0 3 * * *", "--sink", "log"], &with[..]].concat();
        assert!(parse(&worker).is_ok());
    }

    #[test]
    fn an_unknown_job_is_refused_before_anything_connects() {
        let cli = parse(&["jobs", "--redis-url", "redis://127.0.0.1:1", "run", "reindex"]).unwrap();
        let Command::Jobs(jobs) = cli.command else { panic!("not jobs") };
        let err = self::jobs(jobs).unwrap_err();
        assert!(err.contains("unknown job `reindex`"), "{err}");
    }
}

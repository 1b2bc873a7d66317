//! The `confab` command: `confab serve` runs a node.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use confab::config::ServeArgs;
use confab::node::RunningNode;

#[derive(Parser)]
#[command(name = "confab", version, about = "Confab: a horizontally scaled real-time chat backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: HTTP API, WebSocket gateway, Redis fan-out.
    Serve(ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("CONFAB_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    if let Err(message) = result {
        eprintln!("confab: {message}");
        std::process::exit(2);
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let config = args.resolve().map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let node = RunningNode::start(config).await.map_err(|e| e.to_string())?;
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
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

//! A node's configuration file: any bytes give a node configuration or one
//! clear error, never a panic. The bytes go to the loader as the file's
//! contents, read as `std::fs::read_to_string` reads a file (invalid UTF-8
//! included), without a file on disk.
#![no_main]

use std::ffi::OsString;
use std::sync::OnceLock;

use clap::{CommandFactory, Parser, Subcommand};
use confab::config::{parse_reading, Config, Parsed};
use libfuzzer_sys::fuzz_target;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        settings: Box<Config>,
    },
}

/// The command is built once: building it is a fair share of the loader's
/// work per input, and the same for every input.
static COMMAND: OnceLock<clap::Command> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let command = COMMAND.get_or_init(Cli::command).clone();
    let args: Vec<OsString> = ["confab", "serve", "--config", "node.toml"].iter().map(OsString::from).collect();
    match parse_reading::<Cli>(args, &[], command, |_| std::io::read_to_string(data)) {
        Ok(Parsed::Ok(_)) | Ok(Parsed::Shown(_)) => {}
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty() && !message.contains('\n'), "one line: {message:?}");
        }
    }
});

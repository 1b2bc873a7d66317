//! A node's configuration file: any bytes give a node configuration or one
//! clear error, never a panic. The bytes go to the loader as the file's
//! contents, read as `std::fs::read_to_string` reads a file (invalid UTF-8
//! included), without a file on disk.
#![no_main]

use std::ffi::OsString;

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

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = ["confab", "serve", "--config", "node.toml"].iter().map(OsString::from).collect();
    match parse_reading::<Cli>(args, &[], Cli::command(), |_| std::io::read_to_string(data)) {
        Ok(Parsed::Ok(_)) | Ok(Parsed::Shown(_)) => {}
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty() && !message.contains('\n'), "one line: {message:?}");
        }
    }
});

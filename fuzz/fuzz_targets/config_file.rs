//! A node's configuration file: any bytes give a node configuration or one
//! clear error, never a panic.
#![no_main]

use std::ffi::OsString;
use std::io::Write;

use clap::{Parser, Subcommand};
use confab::config::{parse, Config, Parsed};
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
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(data).unwrap();
    let args: Vec<OsString> = ["confab", "serve", "--config"].iter().map(OsString::from).chain([file.path().into()]).collect();
    match parse::<Cli>(args, &[]) {
        Ok(Parsed::Ok(_)) | Ok(Parsed::Shown(_)) => {}
        Err(e) => {
            let message = e.to_string();
            assert!(!message.is_empty() && !message.contains('\n'), "one line: {message:?}");
        }
    }
});

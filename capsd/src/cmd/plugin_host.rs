//! `capsd plugin-host` (hidden): the helper process one plugin runs in. capsd starts it with
//! the vetted file's path and identity and a socket on descriptor 3; it is not meant to be
//! run by hand. See `capsd_plugin::hosted`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Result};
use capsd_plugin::hosted::helper;
use capsd_plugin::FileIdentity;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin library capsd checked.
    #[arg(long, value_name = "FILE")]
    plugin: PathBuf,
    /// Device number of the file as capsd checked it.
    #[arg(long, value_name = "DEV")]
    plugin_dev: u64,
    /// Inode number of the file as capsd checked it.
    #[arg(long, value_name = "INO")]
    plugin_ino: u64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let sock = helper::inherited_socket()?;
    let identity = FileIdentity { dev: args.plugin_dev, ino: args.plugin_ino };
    match helper::serve_contained(sock, &args.plugin, identity) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // Already sent to capsd, which reports it with the plugin's name.
        Err(helper::HelperError::Load(_)) => Ok(ExitCode::FAILURE),
        // The error's text holds its causes: no chain to print again.
        Err(e) => Err(anyhow!("plugin helper for {}: {e}", args.plugin.display())),
    }
}

//! The subcommands, one module each.

use std::path::PathBuf;

pub mod assets;
pub mod baseline;
pub mod check;
pub mod diff;
pub mod domcaps;
pub mod drivers;
pub mod explain;
pub mod fleet;
pub mod fleet_serve;
pub mod fmt;
pub mod labels;
pub mod plugin_host;
pub mod probe;
pub mod serve;

/// Options shared by every subcommand.
#[derive(Debug, Clone)]
pub struct Context {
    pub plugin_dir: Option<PathBuf>,
    /// Probe cache directory; `None`: no cache (`--no-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Deadline of one call into a plugin (its helper process is killed past it).
    pub plugin_timeout: std::time::Duration,
}

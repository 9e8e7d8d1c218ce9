//! The subcommands, one module each.

use std::path::PathBuf;

pub mod baseline;
pub mod check;
pub mod diff;
pub mod domcaps;
pub mod drivers;
pub mod fmt;
pub mod labels;
pub mod probe;
pub mod serve;

/// Options shared by every subcommand.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub plugin_dir: Option<PathBuf>,
    /// Probe cache directory; `None`: no cache (`--no-cache`).
    pub cache_dir: Option<PathBuf>,
}

//! The subcommands, one module each.

use std::path::PathBuf;

pub mod domcaps;
pub mod drivers;
pub mod fmt;

/// Options shared by every subcommand.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub plugin_dir: Option<PathBuf>,
}

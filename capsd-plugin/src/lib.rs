//! capsd-plugin: out-of-tree capsd drivers loaded at run time.
//!
//! - [`abi`]: the versioned C ABI (entry point `capsd_plugin_v1`, a `#[repr(C)]` function
//!   table, byte buffers tagged XML/JSON/error). No Rust type crosses the boundary.
//! - [`export`] and [`export_driver!`]: the plugin author's side. Implement
//!   [`DomainCapsDriver`], build a `cdylib`, and write `capsd_plugin::export_driver!(MyDriver::new);`.
//! - [`loader`]: the checks ([`loader::vet_dir`]: ownership and permissions, nothing loaded)
//!   and the version handshake ([`loader::load_vetted`], [`loader::load_dir`]), each plugin as
//!   a [`DomainCapsDriver`], refused files with reasons.
//! - [`hosted`]: how capsd runs each vetted plugin: [`hosted::start_dir`] starts one helper
//!   process per plugin, which loads it and makes the handshake, so no plugin code ever runs
//!   in capsd's process; [`HostedPlugin`] calls it there (every call under a deadline, the
//!   helper restarted when it fails), so a plugin that crashes, exits or hangs, when loaded
//!   or when called, fails only itself.
//! - [`wire`]: the structured error encoding both sides share.
//!
//! A complete plugin (crate-type `cdylib`):
//!
//! ```no_run
//! use capsd_plugin::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};
//!
//! struct MyDriver;
//!
//! impl DomainCapsDriver for MyDriver {
//!     fn name(&self) -> &str {
//!         "mine"
//!     }
//!     fn availability(&self) -> Availability {
//!         Availability::Unavailable { reason: "nothing to drive here".into() }
//!     }
//!     fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
//!         Err(DriverError::not_supported("mine", query.to_string()))
//!     }
//! }
//!
//! capsd_plugin::export_driver!(|| MyDriver);
//! # fn main() {}
//! ```
//!
//! `examples/driver-bhyve` is a real one; `include/capsd_plugin.h` is the same ABI for C.

pub mod abi;
pub mod export;
pub mod hosted;
pub mod loader;
pub mod wire;

pub use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};
pub use hosted::{start_dir, HostOptions, HostedPlugin, StartFailure, StartReport};
pub use loader::{
    load_dir, load_file, load_vetted, vet_dir, vet_file, FileIdentity, LoadReport, PluginDriver, PluginError,
    VetReport, Vetted, DEFAULT_PLUGIN_DIR,
};

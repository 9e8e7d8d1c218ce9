//! capsd-plugin: out-of-tree capsd drivers loaded at run time.
//!
//! - [`abi`]: the versioned C ABI (entry point `capsd_plugin_v1`, a `#[repr(C)]` function
//!   table, byte buffers tagged XML/JSON/error). No Rust type crosses the boundary.
//! - [`export`] and [`export_driver!`]: the plugin author's side. Implement
//!   [`DomainCapsDriver`], build a `cdylib`, and write `capsd_plugin::export_driver!(MyDriver::new);`.
//! - [`loader`]: capsd's side. [`loader::load_dir`] loads every library of a directory after
//!   ownership/permission checks and the version handshake, and returns each plugin as a
//!   [`DomainCapsDriver`] plus the list of refused files with reasons.
//! - [`hosted`]: how capsd runs each vetted plugin: [`HostedPlugin`] calls it in a helper
//!   process of its own (one per plugin, started on demand, every call under a deadline),
//!   so a plugin that crashes, exits or hangs fails only its own requests.
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
pub use hosted::{HostOptions, HostedPlugin};
pub use loader::{
    load_dir, load_file, load_vetted, FileIdentity, LoadReport, PluginDriver, PluginError, DEFAULT_PLUGIN_DIR,
};

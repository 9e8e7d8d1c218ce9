//! capsd-plugin: out-of-tree capsd drivers loaded at run time.
//!
//! - [`abi`]: the versioned C ABI (entry point `capsd_plugin_v1`, a `#[repr(C)]` function
//!   table, byte buffers tagged XML/JSON/error). No Rust type crosses the boundary.
//! - [`export`] and [`export_driver!`]: the plugin author's side. Implement
//!   [`DomainCapsDriver`], build a `cdylib`, and write `capsd_plugin::export_driver!(MyDriver::new);`.
//! - [`loader`]: capsd's side. [`loader::load_dir`] loads every library of a directory after
//!   ownership/permission checks and the version handshake, and returns each plugin as a
//!   [`DomainCapsDriver`] plus the list of refused files with reasons.
//! - [`wire`]: the structured error encoding both sides share.
//!
//! ```ignore
//! struct MyDriver;
//! impl capsd_plugin::DomainCapsDriver for MyDriver { /* name, availability, domain_capabilities */ }
//! capsd_plugin::export_driver!(|| MyDriver);
//! ```

pub mod abi;
pub mod export;
pub mod loader;
pub mod wire;

pub use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};
pub use loader::{load_dir, load_file, LoadReport, PluginDriver, PluginError, DEFAULT_PLUGIN_DIR};

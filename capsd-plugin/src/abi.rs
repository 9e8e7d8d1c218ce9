//! The C ABI shared by capsd and its plugins, version 1. Only `#[repr(C)]` structs, plain
//! integers, raw pointers and `extern "C"` function pointers appear here: no Rust type with an
//! unstable layout ever crosses the library boundary, so a plugin may be built by another
//! rustc (or written in C) than the capsd that loads it.
//!
//! # Protocol
//! 1. The library exports `capsd_plugin_v1` ([`ENTRY_SYMBOL`]), an `extern "C" fn() ->
//!    *const CapsdPluginV1`. It returns null when the plugin failed to initialise.
//! 2. The host reads [`CapsdPluginV1::abi_version`] and [`CapsdPluginV1::vtable_size`] first
//!    and refuses the plugin unless the version is [`ABI_VERSION`] and the table is at least
//!    as large as the host's [`CapsdPluginV1`]. Nothing else is read before that check.
//! 3. [`CapsdPluginV1::name`] is a NUL-terminated UTF-8 string that lives as long as the
//!    library stays loaded.
//! 4. Calls fill a [`CapsdReply`] the host provides (zeroed, `kind == REPLY_NONE`). Every
//!    non-null `data` buffer in a reply is owned by the plugin and handed back to
//!    [`CapsdPluginV1::free_buffer`] with the same `len` exactly once.
//! 5. The query goes in as the UTF-8 JSON form of `capsd_core::Query` (camelCase keys:
//!    `emulator`, `arch`, `machine`, `virtType`; absent keys mean "not given").
//! 6. A document comes back as bytes tagged [`REPLY_XML`] (libvirt's XML, preferred: it is the
//!    stable format) or [`REPLY_JSON`] (capsd's JSON form of the same model).
//! 7. An error comes back as [`REPLY_ERROR`] with an [`CapsdReply::code`] (`ERR_*`, matching
//!    the variants of `capsd_core::DriverError`) and a UTF-8 JSON object of the variant's
//!    fields (see [`crate::wire::ErrorPayload`]); its `message` field is always present so an
//!    older host can still show an error it does not know.
//! 8. Every function may be called from any thread, concurrently. Plugins must not unwind
//!    across the boundary: the [`crate::export_driver!`] macro catches panics and turns them
//!    into [`ERR_PANIC`] errors.

use std::ffi::{c_char, c_void};

/// The ABI version this crate speaks.
pub const ABI_VERSION: u32 = 1;

/// The entry point every version-1 plugin exports (NUL-terminated, for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"capsd_plugin_v1\0";

/// The entry point's type.
pub type EntryPointV1 = unsafe extern "C" fn() -> *const CapsdPluginV1;

/// Nothing was written (the host pre-fills replies with this).
pub const REPLY_NONE: u32 = 0;
/// `data` holds a libvirt `<domainCapabilities>` XML document.
pub const REPLY_XML: u32 = 1;
/// `data` holds capsd's JSON form of the document.
pub const REPLY_JSON: u32 = 2;
/// `code` holds an `ERR_*` value, `data` a JSON error payload.
pub const REPLY_ERROR: u32 = 3;
/// Answer to `availability`: the driver can answer on this host (`data` empty).
pub const REPLY_AVAILABLE: u32 = 4;
/// Answer to `availability`: the driver cannot answer here; `data` holds the reason (UTF-8).
pub const REPLY_UNAVAILABLE: u32 = 5;

/// `DriverError::Unavailable`: payload `reason`.
pub const ERR_UNAVAILABLE: u32 = 1;
/// `DriverError::NotSupported`: payload `what`.
pub const ERR_NOT_SUPPORTED: u32 = 2;
/// `DriverError::InvalidInput`: payload `field`, `value`, `reason`.
pub const ERR_INVALID_INPUT: u32 = 3;
/// `DriverError::ProbeFailed`: payload `target`, `reason`.
pub const ERR_PROBE_FAILED: u32 = 4;
/// `DriverError::Io`: payload `path`, `reason`, optional `os_error` (errno).
pub const ERR_IO: u32 = 5;
/// The plugin panicked; payload `message`.
pub const ERR_PANIC: u32 = 100;
/// The plugin broke its own invariants (could not encode a reply, ...); payload `message`.
pub const ERR_INTERNAL: u32 = 101;

/// One reply buffer and its tag. The host allocates the struct; the plugin allocates `data`.
#[repr(C)]
#[derive(Debug)]
pub struct CapsdReply {
    /// `REPLY_*`.
    pub kind: u32,
    /// `ERR_*` when `kind == REPLY_ERROR`, 0 otherwise.
    pub code: u32,
    /// Plugin-owned bytes, or null when `len == 0`.
    pub data: *mut u8,
    pub len: usize,
}

impl CapsdReply {
    /// A reply with nothing written yet.
    pub const fn empty() -> Self {
        CapsdReply { kind: REPLY_NONE, code: 0, data: std::ptr::null_mut(), len: 0 }
    }
}

impl Default for CapsdReply {
    fn default() -> Self {
        Self::empty()
    }
}

/// The function table a version-1 plugin returns from its entry point.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CapsdPluginV1 {
    /// Must be [`ABI_VERSION`]; checked before anything else is read.
    pub abi_version: u32,
    /// `size_of::<CapsdPluginV1>()` as the plugin was built; lets later minor revisions append
    /// fields.
    pub vtable_size: u32,
    /// Driver name used with `--driver`: NUL-terminated UTF-8, `[a-z0-9_-]`, 1 to 64 bytes,
    /// valid while the library is loaded.
    pub name: *const c_char,
    /// Opaque plugin state passed back to every call.
    pub instance: *mut c_void,
    /// Fill `out` with [`REPLY_AVAILABLE`], [`REPLY_UNAVAILABLE`] or [`REPLY_ERROR`].
    pub availability: unsafe extern "C" fn(instance: *mut c_void, out: *mut CapsdReply),
    /// Answer a query (`query`/`query_len`: UTF-8 JSON) by filling `out` with [`REPLY_XML`],
    /// [`REPLY_JSON`] or [`REPLY_ERROR`].
    pub domain_capabilities:
        unsafe extern "C" fn(instance: *mut c_void, query: *const u8, query_len: usize, out: *mut CapsdReply),
    /// Release a `data` buffer this plugin put in a reply.
    pub free_buffer: unsafe extern "C" fn(data: *mut u8, len: usize),
}

/// Size of the version-1 table as this crate defines it (what a plugin must at least provide).
pub const VTABLE_SIZE_V1: u32 = std::mem::size_of::<CapsdPluginV1>() as u32;

//! Test plugin written against the raw C ABI (no `export_driver!`): driver `badxml` answers
//! every query with a malformed XML document. capsd must turn that into an error naming the
//! plugin.

use std::ffi::c_void;

use capsd_plugin::abi::{CapsdPluginV1, CapsdReply, ABI_VERSION, REPLY_AVAILABLE, REPLY_XML, VTABLE_SIZE_V1};

/// Truncated: `<arch>` is never closed.
static DOCUMENT: &[u8] = b"<domainCapabilities>\n  <domain>kvm</domain>\n  <arch>x86_64\n";

struct Table(CapsdPluginV1);
// SAFETY: the table is immutable; its pointers are a static C string and a null instance.
unsafe impl Sync for Table {}

unsafe extern "C" fn availability(_: *mut c_void, out: *mut CapsdReply) {
    // SAFETY: the host passes a valid, writable reply (ABI rule 4).
    unsafe { out.write(CapsdReply { kind: REPLY_AVAILABLE, code: 0, data: std::ptr::null_mut(), len: 0 }) };
}

unsafe extern "C" fn domain_capabilities(_: *mut c_void, _: *const u8, _: usize, out: *mut CapsdReply) {
    let reply = CapsdReply { kind: REPLY_XML, code: 0, data: DOCUMENT.as_ptr() as *mut u8, len: DOCUMENT.len() };
    // SAFETY: as above.
    unsafe { out.write(reply) };
}

/// The document is static: nothing to free.
unsafe extern "C" fn free_buffer(_: *mut u8, _: usize) {}

static TABLE: Table = Table(CapsdPluginV1 {
    abi_version: ABI_VERSION,
    vtable_size: VTABLE_SIZE_V1,
    name: c"badxml".as_ptr(),
    instance: std::ptr::null_mut(),
    availability,
    domain_capabilities,
    free_buffer,
});

/// The entry point.
#[no_mangle]
pub extern "C" fn capsd_plugin_v1() -> *const CapsdPluginV1 {
    &TABLE.0
}

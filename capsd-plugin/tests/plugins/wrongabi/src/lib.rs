//! Test plugin built for a future ABI: it exports `capsd_plugin_v1` but its table says
//! `abi_version = 2`. capsd must refuse it after reading only the header.

use std::ffi::c_void;

use capsd_plugin::abi::{CapsdPluginV1, CapsdReply, VTABLE_SIZE_V1};

struct Table(CapsdPluginV1);
// SAFETY: the table is immutable; its pointers are a static C string and a null instance.
unsafe impl Sync for Table {}

unsafe extern "C" fn availability(_: *mut c_void, _: *mut CapsdReply) {}
unsafe extern "C" fn domain_capabilities(_: *mut c_void, _: *const u8, _: usize, _: *mut CapsdReply) {}
unsafe extern "C" fn free_buffer(_: *mut u8, _: usize) {}

static TABLE: Table = Table(CapsdPluginV1 {
    abi_version: 2,
    vtable_size: VTABLE_SIZE_V1,
    name: c"future".as_ptr(),
    instance: std::ptr::null_mut(),
    availability,
    domain_capabilities,
    free_buffer,
});

/// The entry point, with a version-2 table behind it.
#[no_mangle]
pub extern "C" fn capsd_plugin_v1() -> *const CapsdPluginV1 {
    &TABLE.0
}

//! Test plugin without the `capsd_plugin_v1` entry point: a shared library that is not a
//! capsd plugin at all.

/// Some unrelated exported function.
#[no_mangle]
pub extern "C" fn not_a_capsd_plugin() -> u32 {
    42
}

//! Shared by the CLI/agent tests that need a real QEMU: they run when
//! `qemu-system-x86_64` is installed, are skipped otherwise, and fail instead of skipping
//! when `CAPSD_REQUIRE_LIVE` is set (CI).

use std::path::Path;

pub const X86: &str = "/usr/bin/qemu-system-x86_64";

/// Whether the live tests can run here (see the module docs).
pub fn live() -> bool {
    if Path::new(X86).exists() {
        return true;
    }
    assert!(std::env::var_os("CAPSD_REQUIRE_LIVE").is_none(), "{X86} is required (CAPSD_REQUIRE_LIVE is set)");
    eprintln!("skipped: {X86} is not installed");
    false
}

//! Reference data that lives outside the repository, in `shared/` beside it (or
//! `$CAPSD_SHARED_DIR`): libvirt's upstream test outputs and schemas, this project's
//! recorded libvirt outputs. Read in place, never copied.
//!
//! A test that needs some calls [`need`] first. When the data is there it gets the path.
//! When it is not, the test is skipped: a line on stderr names the data, and when
//! `$CAPSD_SKIP_LOG` names a file (as `cargo xtask test` does), the test's name and the data
//! are appended there so the run can list what it skipped. With `CAPSD_REQUIRE_REFERENCE=1`
//! (CI) missing data fails the test instead.
//!
//! This file is also compiled into the tests of crates that do not depend on `capsd-tests`
//! (`#[path = ".../tests/src/reference.rs"] mod reference;`): one rule, one place.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// Set to `1` to make missing reference data a failure.
pub const REQUIRE_ENV: &str = "CAPSD_REQUIRE_REFERENCE";
/// File where skipped tests are listed, one `test<TAB>missing path` per line.
pub const SKIP_LOG_ENV: &str = "CAPSD_SKIP_LOG";
/// Overrides the location of the shared reference directory.
pub const SHARED_DIR_ENV: &str = "CAPSD_SHARED_DIR";

/// The shared reference directory: `$CAPSD_SHARED_DIR`, else `shared` beside the repository
/// that holds the package under test (found upwards from its manifest directory).
pub fn shared_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(SHARED_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    let repo = start.ancestors().find(|d| d.join(".ci/run").is_file()).unwrap_or(&start);
    repo.join("../shared")
}

/// `rel` under the shared directory when it exists; `None` after recording the skip (see
/// the module docs). Panics, naming the data, when `CAPSD_REQUIRE_REFERENCE=1`.
pub fn need(rel: &str) -> Option<PathBuf> {
    let path = shared_dir().join(rel);
    if path.exists() {
        return Some(path);
    }
    let shown = display(&path);
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("missing reference data {shown} ({REQUIRE_ENV}=1)");
    }
    let test = test_name();
    // Once per test (a property test asks on every case).
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&test) {
        return None;
    }
    seen.push(test.clone());
    eprintln!("skipped {test}: missing reference data {shown} (set {REQUIRE_ENV}=1 to fail instead)");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV) {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(format!("{test}\t{shown}\n").as_bytes());
        }
    }
    None
}

/// The path without `..` steps where it can be resolved (for messages).
fn display(p: &Path) -> String {
    let parent = p.parent().and_then(|d| d.ancestors().find_map(|a| a.canonicalize().ok().map(|c| (a, c))));
    match parent {
        Some((a, c)) => c.join(p.strip_prefix(a).unwrap_or(p)).display().to_string(),
        None => p.display().to_string(),
    }
}

/// `<package>/<test binary>::<test>` (libtest names each test's thread after the test).
fn test_name() -> String {
    let bin = std::env::args()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // Cargo's test binaries are `<target>-<16 hex digits>`.
    let bin = match bin.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => name.to_owned(),
        _ => bin,
    };
    // The package too: test binaries of different crates share names (`replay`, `schema`).
    let package = std::env::var("CARGO_PKG_NAME").map(|p| format!("{p}/")).unwrap_or_default();
    let thread = std::thread::current();
    format!("{package}{bin}::{}", thread.name().unwrap_or("?"))
}

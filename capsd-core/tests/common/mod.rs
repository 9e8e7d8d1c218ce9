//! Shared helpers for capsd-core's integration tests: locating the reference fixtures.
//!
//! The fixtures live outside the repository, in `<repo>/../shared/fixtures`. Tests that
//! need them ask `reference::need` first (skipped without them, failed with
//! `CAPSD_REQUIRE_REFERENCE=1`); the oracle directory `/tmp/oracle` (outputs of this
//! machine's libvirt) is used when it exists.

#![allow(dead_code)]

pub mod gen;

use std::path::{Path, PathBuf};

/// `<repo>/../shared/fixtures`.
pub fn fixtures_root() -> PathBuf {
    crate::reference::shared_dir().join("fixtures")
}

/// The `*.xml` files of a directory, sorted; panics (fails the test) if the directory is
/// missing or holds no XML file.
pub fn xml_files(dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("fixture directory {} is missing or unreadable: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("reading fixture directory").path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.xml fixture in {}", dir.display());
    files
}

/// Every domain capabilities document the tests check: libvirt's upstream test outputs, the
/// recorded libvirt 9.0 host outputs and, when present, this machine's oracle outputs.
pub fn all_documents() -> Vec<PathBuf> {
    let root = fixtures_root();
    let mut files = xml_files(&root.join("libvirt-upstream/domaincaps"));
    files.extend(xml_files(&root.join("libvirt-9.0-host")));
    let oracle = Path::new("/tmp/oracle");
    if oracle.is_dir() {
        files.extend(xml_files(oracle));
    }
    files
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Trailing whitespace at the end of the document aside, the two texts are the same.
pub fn same_document(a: &str, b: &str) -> bool {
    a.trim_end() == b.trim_end()
}

/// The first differing line, for failure messages.
pub fn first_difference(expected: &str, actual: &str) -> String {
    for (i, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            return format!("line {}:\n  expected: {e:?}\n  actual:   {a:?}", i + 1);
        }
    }
    format!("line counts differ: expected {}, actual {}", expected.lines().count(), actual.lines().count())
}

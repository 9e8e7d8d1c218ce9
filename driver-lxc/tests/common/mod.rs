//! Helpers shared by driver-lxc's integration tests: recorded roots, schema validation
//! with xmllint, copying a root to change one fact.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A recorded root under `tests/data`.
pub fn data_root(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name).join("root")
}

/// The domain capabilities schema, beside the repository.
pub fn schema() -> PathBuf {
    crate::reference::shared_dir().join("fixtures/libvirt-upstream/schemas/domaincaps.rng")
}

/// Validate a document with `xmllint --relaxng`; panics with xmllint's message when invalid.
pub fn assert_valid(xml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("caps.xml");
    std::fs::write(&file, xml).unwrap();
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--relaxng")
        .arg(schema())
        .arg(&file)
        .output()
        .expect("xmllint must be installed (libxml2-utils)");
    assert!(out.status.success(), "document does not validate:\n{}\n{}", String::from_utf8_lossy(&out.stderr), xml);
}

/// Copy a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A writable copy of a recorded root.
pub fn copy_root(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&data_root(name), dir.path());
    dir
}

//! The README's first command (`cargo run --release -p capsd -- domcapabilities`) builds with
//! the Rust toolchain alone: nothing in capsd's build graph (normal and build dependencies)
//! generates protocol code with `protoc`. Read from the real graph by `cargo tree`, so a
//! dependency that brings a protobuf code generator back (etcd-client through tonic-build,
//! prost-build...) fails here.

use std::path::Path;
use std::process::Command;

/// Crates whose build needs `protoc` (or builds one from C++ sources).
const NEEDS_PROTOC: [&str; 9] = [
    "prost-build",
    "tonic-build",
    "tonic-prost-build",
    "protobuf-codegen",
    "protobuf-src",
    "protoc-rust",
    "protoc-bin-vendored",
    "grpcio-compiler",
    "etcd-client",
];

#[test]
fn capsd_builds_without_protoc() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = Command::new(cargo)
        .current_dir(root)
        .args(["tree", "--offline", "--locked", "-p", "capsd", "-e", "normal,build", "--prefix", "none"])
        .args(["--format", "{p}"])
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo tree: {}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    let names: Vec<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    // The graph read is the real one: capsd's fleet client and its TLS are in it.
    for needed in ["capsd", "capsd-fleet", "hyper", "rustls"] {
        assert!(names.contains(&needed), "{needed} missing from cargo tree's answer:\n{tree}");
    }
    let found: Vec<&&str> = NEEDS_PROTOC.iter().filter(|n| names.contains(n)).collect();
    assert!(found.is_empty(), "capsd's build needs protoc again through {found:?}:\n{tree}");
}

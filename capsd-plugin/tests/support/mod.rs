//! Builds the plugin libraries the tests load: the bhyve example
//! (`examples/driver-bhyve`), the misbehaving test plugins (`capsd-plugin/tests/plugins`) and
//! the C test plugins (`tests/plugins/c/*.c`, with `cc` or `$CC`; among them plugins that
//! crash, abort, exit or hang on one query).
//! Both are separate cargo workspaces built with the cargo running the tests into
//! `target/plugins` (a separate target directory, so the outer `cargo test` lock is not
//! contended). Shared by capsd-plugin's and capsd's plugin tests (`#[path]` include).

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (both test crates sit directly under it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crate dir has a parent").to_owned()
}

/// Directory holding the freshly built plugin libraries.
pub fn built_dir() -> &'static Path {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(p) => p,
        Err(e) => panic!("building the test plugins failed:\n{e}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let root = repo_root();
    let target = root.join("target/plugins");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for manifest in ["examples/driver-bhyve/Cargo.toml", "capsd-plugin/tests/plugins/Cargo.toml"] {
        let out = Command::new(&cargo)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--quiet", "--manifest-path", manifest])
            .output()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!("cargo build --manifest-path {manifest}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    // The C test plugins, built against the C header of the ABI: `c/NAME.c` becomes
    // `libtp_c_NAME.so`; `c/misbehave.c` is built once per way of misbehaving when called
    // (`libtp_c_segv.so`, ...), `c/ctor.c` once per way of misbehaving when loaded
    // (`libtp_c_ctor_segv.so`, ...).
    let out_dir = target.join("debug");
    let c_plugins = [
        ("minimal", "minimal", None),
        ("unresolved", "unresolved", None),
        ("segv", "misbehave", Some("-DMISBEHAVE=1")),
        ("abort", "misbehave", Some("-DMISBEHAVE=2")),
        ("exit", "misbehave", Some("-DMISBEHAVE=3")),
        ("hang", "misbehave", Some("-DMISBEHAVE=4")),
        ("ctor_segv", "ctor", Some("-DCTOR=1")),
        ("ctor_exit", "ctor", Some("-DCTOR=2")),
        ("ctor_hang", "ctor", Some("-DCTOR=3")),
        ("ctor_fork", "ctor", Some("-DCTOR=4")),
    ];
    for (name, source, define) in c_plugins {
        let src = format!("capsd-plugin/tests/plugins/c/{source}.c");
        let tmp = out_dir.join(format!(".libtp_c_{name}.so.{}", std::process::id()));
        let out = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()))
            .current_dir(&root)
            .args(["-shared", "-fPIC", "-std=c99", "-D_DEFAULT_SOURCE", "-Wall", "-Wextra", "-Werror"])
            .args(define)
            .args(["-I", "capsd-plugin/include", "-o"])
            .arg(&tmp)
            .arg(&src)
            .output()
            .map_err(|e| format!("cannot run the C compiler: {e}"))?;
        if !out.status.success() {
            return Err(format!("cc {src}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        // Renamed into place so another test process never copies a half-written library.
        std::fs::rename(&tmp, out_dir.join(format!("libtp_c_{name}.so"))).map_err(|e| format!("rename: {e}"))?;
    }
    Ok(out_dir)
}

/// The library file of a built plugin (`capsd_driver_bhyve`, `tp_panic`, ...).
pub fn lib(name: &str) -> PathBuf {
    built_dir().join(format!("lib{name}.so"))
}

/// A fresh plugin directory (mode 0700, ours) holding copies of the named libraries.
pub fn plugin_dir(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for n in names {
        let dst = dir.path().join(format!("lib{n}.so"));
        std::fs::copy(lib(n), &dst).expect("copy plugin");
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    dir
}

/// The recorded bhyve facts of one scenario (`basic`, `uefi`, `fbuf`).
pub fn bhyve_facts(scenario: &str) -> PathBuf {
    repo_root().join("examples/driver-bhyve/tests/data").join(scenario)
}

/// libvirt's reference document for a bhyve scenario, read from /work/shared.
pub fn bhyve_reference(scenario: &str) -> String {
    let p = repo_root().join(format!("../shared/fixtures/libvirt-upstream/domaincaps/bhyve_{scenario}.x86_64.xml"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

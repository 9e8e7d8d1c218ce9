//! Records the git commit capsd is built from (`capsd --version`) as `CAPSD_GIT_COMMIT`.
//!
//! `CAPSD_GIT_COMMIT` in the build environment wins (a build from a source tarball has no
//! git); otherwise `git rev-parse`, and `unknown` when that fails. Rebuilt when HEAD moves.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=CAPSD_GIT_COMMIT");
    let commit = match std::env::var("CAPSD_GIT_COMMIT") {
        Ok(c) if !c.is_empty() => c,
        _ => {
            // HEAD, the branch it names and packed refs: what moves when a commit is made or
            // checked out (in a worktree, HEAD is the worktree's, refs the common directory's).
            // A file named that does not exist would make cargo rerun this every build.
            let branch = git(&["symbolic-ref", "-q", "HEAD"]);
            for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
                let Some(p) = git(&["rev-parse", "--git-path", name]).map(PathBuf::from) else { continue };
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=CAPSD_GIT_COMMIT={commit}");
    pack_relative_relocations();
}

/// Link the binary with packed relative relocations (`DT_RELR`, glibc 2.36+, binutils
/// 2.38+) where the linker has them: the dynamic loader then applies capsd's ~15,000
/// relative relocations from a table of a few KiB instead of reading 360 KiB of `RELA`
/// entries, which was a fifth of a warm `capsd domcapabilities`'s instructions (issue 21).
/// `CAPSD_NO_RELR=1` links without.
fn pack_relative_relocations() {
    println!("cargo:rerun-if-env-changed=CAPSD_NO_RELR");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu || std::env::var_os("CAPSD_NO_RELR").is_some_and(|v| !v.is_empty() && v != "0") {
        return;
    }
    let supported = Command::new("ld")
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("pack-relative-relocs"));
    if supported {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

//! `cargo xtask test`: the whole test suite, exactly as CI runs it (`.ci/run` calls this).
//!
//! Steps: make sure the system tools the tests use are installed (runs `.ci/setup` when
//! something is missing and we are root), `cargo fmt --check`, `cargo clippy -D warnings`,
//! `cargo test` for the workspace, then the out-of-tree plugin example's own tests.
//! `--quick` skips fmt and clippy.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Tools the test suite needs on PATH.
const TOOLS: [&str; 3] = ["xmllint", "qemu-system-x86_64", "virsh"];

pub fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(bad) = args.iter().find(|a| *a != "--quick") {
        bail!("unknown argument '{bad}' (usage: cargo xtask test [--quick])");
    }
    let root = workspace_root();
    ensure_tools(&root)?;
    if !quick {
        cargo(&root, &["fmt", "--all", "--check"])?;
        cargo(&root, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    }
    cargo(&root, &["test", "--workspace"])?;
    for example in examples(&root)? {
        let manifest = example.join("Cargo.toml");
        let manifest = manifest.to_str().context("non-UTF-8 path")?;
        if !quick {
            cargo(&root, &["clippy", "--manifest-path", manifest, "--all-targets", "--", "-D", "warnings"])?;
        }
        cargo(&root, &["test", "--manifest-path", manifest])?;
    }
    println!("xtask test: all steps passed");
    Ok(())
}

/// The repository root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent directory").to_path_buf()
}

/// Out-of-tree crates under `examples/` that have their own Cargo.toml.
fn examples(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("examples");
    let mut out = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.join("Cargo.toml").is_file() {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn ensure_tools(root: &Path) -> Result<()> {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if is_root() {
        println!("xtask test: missing {}: running .ci/setup", missing.join(", "));
        let status = Command::new("bash").arg(root.join(".ci/setup")).status().context("running .ci/setup")?;
        if !status.success() {
            bail!(".ci/setup failed ({status})");
        }
        return Ok(());
    }
    bail!("missing tools: {} (run `sudo .ci/setup` once)", missing.join(", "))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
}

fn is_root() -> bool {
    // `id -u` keeps xtask free of libc bindings.
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    println!("xtask test: cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo).args(args).current_dir(root).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

//! `cargo xtask bench fleet`: 1,000 simulated hosts in a local etcd. The benchmark itself is
//! capsd-fleet's `bench-fleet` example (see there for what it measures and its targets), so
//! that xtask builds without etcd-client and its `protoc` build dependency.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::agent::{build_capsd, workspace_root};

pub fn run() -> Result<()> {
    let capsd = build_capsd()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["run", "--release", "--quiet", "--package", "capsd-fleet", "--example", "bench-fleet", "--"])
        .arg(&capsd)
        .status()
        .context("running capsd-fleet's bench-fleet example")?;
    if !status.success() {
        bail!("bench fleet failed: {status}");
    }
    Ok(())
}

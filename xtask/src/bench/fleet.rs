//! `cargo xtask bench fleet [--hosts N] [--members 1|3]`: simulated hosts (default 1,000) in
//! a local etcd of one or three members. The benchmark itself is capsd-fleet's `bench-fleet`
//! example (see there for what it measures and its targets), so that xtask stays free of
//! capsd-fleet's HTTP and TLS stack.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use super::agent::{build_capsd, workspace_root};

pub fn run(opts: &[(String, String)]) -> Result<()> {
    let capsd = build_capsd()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (name, value) in opts {
        cmd.env(format!("CAPSD_BENCH_{}", name.to_uppercase()), value);
    }
    let status = cmd
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

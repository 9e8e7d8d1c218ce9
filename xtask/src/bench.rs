//! `cargo xtask bench [core|qemu|agent|plugin]...`: benchmarks with printed figures. Speed targets
//! live here, never in timed tests. Each group is its own module.

mod agent;
mod core;
mod load;
mod plugin;
mod qemu;

use anyhow::{bail, Result};

/// Run the named groups, or all of them.
pub fn run(args: &[String]) -> Result<()> {
    let all = ["core", "qemu", "agent", "plugin"];
    let groups: Vec<&str> = if args.is_empty() { all.to_vec() } else { args.iter().map(String::as_str).collect() };
    for g in groups {
        match g {
            "core" => core::run()?,
            "qemu" => qemu::run()?,
            "agent" => agent::run()?,
            "plugin" => plugin::run()?,
            other => bail!("unknown bench group '{other}' (have: {})", all.join(", ")),
        }
    }
    Ok(())
}

//! `cargo xtask bench [core|qemu|agent|plugin|stacks|fleet]...`: benchmarks with printed figures. Speed targets
//! live here, never in timed tests. Each group is its own module.

pub(crate) mod agent;
mod core;
mod fleet;
mod load;
mod plugin;
mod qemu;
mod stacks;

use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The machine the figures come from, printed before them: CPU model, cores, memory,
/// kernel and the load average when the run started (figures from a loaded machine are
/// not comparable with the targets; `cargo xtask bench` says so rather than hiding it).
pub(crate) fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .map_or(0.0, |kb| kb as f64 / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!("{model}, {cores} cores, {mem_gib:.1} GiB, Linux {}, load average {}", kernel.trim(), load.join(" "))
}

/// Run the named groups, or all of them.
pub fn run(args: &[String]) -> Result<()> {
    let all = ["core", "qemu", "agent", "plugin", "stacks", "fleet"];
    // bench fleet's options: --hosts N, --members N (1 or 3).
    let mut fleet_opts = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hosts" | "--members" => {
                let v = it.next().with_context(|| format!("{a} needs a number"))?;
                v.parse::<usize>().with_context(|| format!("{a} {v}: not a number"))?;
                fleet_opts.push((a.trim_start_matches("--").to_owned(), v.clone()));
            }
            _ => rest.push(a.clone()),
        }
    }
    let args = &rest;
    let groups: Vec<&str> = if args.is_empty() { all.to_vec() } else { args.iter().map(String::as_str).collect() };
    if cfg!(not(debug_assertions)) || std::env::var_os("CAPSD_BENCH_IN_PLACE").is_some() {
        println!("bench: machine: {}", machine());
    }
    for g in groups {
        match g {
            "core" => core::run()?,
            "qemu" => qemu::run()?,
            "agent" => agent::run()?,
            "plugin" => plugin::run()?,
            "stacks" => stacks::run()?,
            "fleet" => fleet::run(&fleet_opts)?,
            other => bail!("unknown bench group '{other}' (have: {})", all.join(", ")),
        }
    }
    Ok(())
}

/// In a debug xtask (unless `CAPSD_BENCH_IN_PLACE` is set), run `bench GROUP` again from a
/// release build and return `true`: the caller is done. Figures come from release code.
fn rerun_in_release(group: &str) -> Result<bool> {
    if !cfg!(debug_assertions) || std::env::var_os("CAPSD_BENCH_IN_PLACE").is_some() {
        return Ok(false);
    }
    println!("bench {group}: xtask is a debug build; re-running with --release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(agent::workspace_root())
        .args(["run", "--release", "--quiet", "--package", "xtask", "--", "bench", group])
        .status()
        .with_context(|| format!("running cargo run --release for the {group} benchmark"))?;
    if !status.success() {
        bail!("release run of bench {group} failed: {status}");
    }
    Ok(true)
}

//! `cargo xtask conformance [--oracle DIR] [--keep DIR] [--ratchet-add]`: compare capsd's
//! live answers with libvirt's on this machine, case by case.
//!
//! Runs the shared libvirt oracle (`../shared/tools/libvirt-oracle.sh`; `CAPSD_SHARED`
//! overrides `../shared`) with the QEMU case
//! file (`driver-qemu/tests/data/oracle-cases.txt`) unless `--oracle DIR` names outputs it
//! already wrote, runs `capsd domcapabilities` (built now) with each case's arguments, and
//! compares the two with `../shared/tools/facts.py`, twice: as is, and with the contents of
//! the host-model and custom CPU modes left out (`--ignore-cpu-models`, the issue's
//! "byte for byte, except..." rule). Prints the fact counts of every case.
//!
//! The ratchet file (`driver-qemu/tests/data/conformance-ratchet.txt`) lists the cases that
//! must match (CPU models masked); the task fails when one of them no longer does.
//! `--ratchet-add` appends the cases that now match and are not listed yet.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::record_qemu::{read_cases, CASES};
use crate::test::workspace_root;

pub const RATCHET: &str = "driver-qemu/tests/data/conformance-ratchet.txt";

/// Read the ratchet (one case name per line, `#` comments).
pub fn read_ratchet(path: &Path) -> Result<BTreeSet<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect())
}

/// The `identical=... ref=...` summary line of facts.py, and whether it said identical.
fn facts(tool: &Path, reference: &Path, candidate: &Path, ignore_cpu: bool) -> Result<(bool, String)> {
    let mut cmd = Command::new("python3");
    cmd.arg(tool).arg(reference).arg(candidate);
    if ignore_cpu {
        cmd.arg("--ignore-cpu-models");
    }
    let out = cmd.output().with_context(|| format!("running {}", tool.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with("identical=")).unwrap_or("(no summary)").to_owned();
    Ok((line.starts_with("identical=yes"), line))
}

/// The capsd binary, built now.
pub fn build_capsd(root: &Path) -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "-q", "-p", "capsd"])
        .status()
        .context("running cargo build -p capsd")?;
    if !status.success() {
        bail!("cargo build -p capsd failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() { root.join(target) } else { target };
    Ok(target.join("debug/capsd"))
}

pub fn run(args: &[String]) -> Result<()> {
    let root = workspace_root();
    // The shared reference tree (`../shared` beside the repository; `CAPSD_SHARED` overrides).
    let shared = std::env::var_os("CAPSD_SHARED").map_or_else(|| root.join("../shared"), PathBuf::from).join("tools");
    let mut oracle: Option<PathBuf> = None;
    let mut keep: Option<PathBuf> = None;
    let mut ratchet_add = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--oracle" => oracle = Some(PathBuf::from(it.next().context("--oracle needs a directory")?)),
            "--keep" => keep = Some(PathBuf::from(it.next().context("--keep needs a directory")?)),
            "--ratchet-add" => ratchet_add = true,
            other => bail!("unknown argument '{other}' (usage: cargo xtask conformance [--oracle DIR] [--keep DIR] [--ratchet-add])"),
        }
    }
    let cases_file = root.join(CASES);
    let cases = read_cases(&cases_file)?;
    let tmp = std::env::temp_dir().join(format!("capsd-conformance-{}", std::process::id()));
    let work = keep.clone().unwrap_or(tmp.clone());
    std::fs::create_dir_all(&work)?;
    let oracle_dir = match oracle {
        Some(d) => d,
        None => {
            let d = work.join("libvirt");
            std::fs::create_dir_all(&d)?;
            println!("running the libvirt oracle ({} cases)...", cases.len());
            let status = Command::new("bash")
                .arg(shared.join("libvirt-oracle.sh"))
                .arg(&d)
                .env("ORACLE_CASES", &cases_file)
                .status()
                .context("running libvirt-oracle.sh")?;
            if !status.success() {
                bail!("libvirt-oracle.sh failed ({status})");
            }
            d
        }
    };
    let capsd = build_capsd(&root)?;
    let cand_dir = work.join("capsd");
    std::fs::create_dir_all(&cand_dir)?;
    let ratchet_path = root.join(RATCHET);
    let ratchet = read_ratchet(&ratchet_path)?;
    let facts_tool = shared.join("facts.py");

    let mut regressions = Vec::new();
    let mut new_matches = Vec::new();
    let (mut n_exact, mut n_masked, mut n_total) = (0, 0, 0);
    for c in &cases {
        let reference = oracle_dir.join(format!("{}.xml", c.name));
        let candidate = cand_dir.join(format!("{}.xml", c.name));
        let t0 = std::time::Instant::now();
        let out = Command::new(&capsd).arg("domcapabilities").args(&c.args).output().context("running capsd")?;
        let took = t0.elapsed();
        if !reference.exists() {
            // libvirt refused this case on this machine (no KVM, a binary missing...): the
            // right answer is a refusal too, so the case still counts, as "both refuse".
            let why = std::fs::read_to_string(oracle_dir.join(format!("{}.err", c.name))).unwrap_or_default();
            n_total += 1;
            if out.status.success() {
                println!("{:<28} libvirt refused ({}) but capsd answered", c.name, why.trim());
                if ratchet.contains(&c.name) {
                    regressions.push(c.name.clone());
                }
            } else {
                println!(
                    "{:<28} both refuse: libvirt: {}; capsd: {}",
                    c.name,
                    why.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                n_exact += 1;
                n_masked += 1;
            }
            continue;
        }
        n_total += 1;
        std::fs::write(&candidate, &out.stdout)?;
        if !out.status.success() {
            println!("{:<28} capsd failed ({}): {}", c.name, out.status, String::from_utf8_lossy(&out.stderr).trim());
            if ratchet.contains(&c.name) {
                regressions.push(c.name.clone());
            }
            continue;
        }
        let (exact, full) = facts(&facts_tool, &reference, &candidate, false)?;
        let (masked, cpu_masked) = facts(&facts_tool, &reference, &candidate, true)?;
        n_exact += exact as usize;
        n_masked += masked as usize;
        println!("{:<28} {took:>8.1?}  full: {full}", c.name);
        println!("{:<28} {:>8}  cpu-masked: {cpu_masked}", "", "");
        if ratchet.contains(&c.name) && !masked {
            regressions.push(c.name.clone());
        }
        if masked && !ratchet.contains(&c.name) {
            new_matches.push(c.name.clone());
        }
    }
    println!(
        "conformance: {n_total} cases; identical (or both refuse) {n_exact}; identical with CPU models masked {n_masked}; ratchet {}",
        ratchet.len()
    );
    println!("outputs: libvirt {} capsd {}", oracle_dir.display(), cand_dir.display());
    if !new_matches.is_empty() {
        if ratchet_add {
            let mut text = std::fs::read_to_string(&ratchet_path).unwrap_or_default();
            for n in &new_matches {
                text.push_str(n);
                text.push('\n');
            }
            std::fs::write(&ratchet_path, text)?;
            println!("added to the ratchet: {}", new_matches.join(" "));
        } else {
            println!("matching but not in the ratchet (add with --ratchet-add): {}", new_matches.join(" "));
        }
    }
    if !regressions.is_empty() {
        bail!("cases in the ratchet that no longer match libvirt: {}", regressions.join(" "));
    }
    Ok(())
}

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
//!
//! Then the Debian stacks of [`crate::stacks`] (libvirt 9.0 with QEMU 10.0, 11.3, 12.x, each
//! also without the optional helpers), each with its own ratchet; `--stack NAME` (repeatable)
//! picks stacks (`bookworm` is this machine's libvirt), `--no-stacks` leaves them out. The
//! chroots need root and Debian's package mirror; without root the stacks are skipped with
//! a message, unless `CAPSD_REQUIRE_STACKS=1` (CI) makes that an error.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::record_qemu::{read_cases, CASES};
use crate::test::workspace_root;

pub const RATCHET: &str = "driver-qemu/tests/data/conformance-ratchet.txt";

/// Cases beyond the recorded ones (other machine types, arch-only queries, more arches),
/// compared live only.
pub const MORE_CASES: &str = "driver-qemu/tests/data/more-cases.txt";

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
    let mut picked: Vec<String> = Vec::new();
    let mut no_stacks = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--oracle" => oracle = Some(PathBuf::from(it.next().context("--oracle needs a directory")?)),
            "--keep" => keep = Some(PathBuf::from(it.next().context("--keep needs a directory")?)),
            "--ratchet-add" => ratchet_add = true,
            "--stack" => picked.push(it.next().context("--stack needs a stack name")?.clone()),
            "--no-stacks" => no_stacks = true,
            other => bail!(
                "unknown argument '{other}' (usage: cargo xtask conformance [--oracle DIR] [--keep DIR] [--ratchet-add] \
                 [--stack NAME]... [--no-stacks])"
            ),
        }
    }
    let mut chroot_stacks = Vec::new();
    for name in &picked {
        if name == "bookworm" {
            continue;
        }
        chroot_stacks.push(crate::stacks::by_name(name).with_context(|| {
            let known: Vec<String> = crate::stacks::all().into_iter().map(|s| s.name).collect();
            format!("unknown stack '{name}' (known: bookworm {})", known.join(" "))
        })?);
    }
    if picked.is_empty() && !no_stacks {
        chroot_stacks = crate::stacks::all();
    }
    let run_host = picked.is_empty() || picked.iter().any(|p| p == "bookworm");
    if !run_host {
        return run_stacks(&root, &shared, &chroot_stacks, ratchet_add);
    }
    let cases_file = root.join(CASES);
    let mut cases = read_cases(&cases_file)?;
    cases.extend(read_cases(&root.join(MORE_CASES))?);
    // The oracle script takes one case file: both lists, written together.
    let all_cases_file = std::env::temp_dir().join(format!("capsd-conformance-cases-{}.txt", std::process::id()));
    std::fs::write(
        &all_cases_file,
        cases.iter().map(|c| format!("{} {}\n", c.name, c.args.join(" "))).collect::<String>(),
    )?;
    let cases_file = all_cases_file;
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
    // The cases without recordings are ratcheted like a stack's (conformance/bookworm.txt):
    // the recorded ratchet is also what tests/replay.rs replays.
    let more: std::collections::BTreeSet<String> =
        read_cases(&root.join(MORE_CASES))?.into_iter().map(|c| c.name).collect();
    let mut more_result = crate::stacks::StackResult::default();
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
            let both = !out.status.success();
            more_result.cases.insert(c.name.clone(), (both, both));
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
        more_result.cases.insert(c.name.clone(), (exact, masked));
        if ratchet.contains(&c.name) && !masked {
            regressions.push(c.name.clone());
        }
        if masked && !ratchet.contains(&c.name) && !more.contains(&c.name) {
            new_matches.push(c.name.clone());
        }
    }
    more_result.cases.retain(|name, _| more.contains(name));
    more_result.versions = "host".into();
    let more_path = root.join("driver-qemu/tests/data/conformance/bookworm.txt");
    let more_ratchet = crate::stacks::read_ratchet(&more_path)?;
    let (more_regressions, learnt) = crate::stacks::judge(&more_ratchet, &more_result);
    regressions.extend(more_regressions);
    if ratchet_add || !more_path.exists() {
        let mut merged = learnt;
        merged.versions = None;
        for (n, e) in &more_ratchet.cases {
            merged.cases.entry(n.clone()).or_insert(*e);
        }
        crate::stacks::write_ratchet(&more_path, "bookworm (this machine, cases without recordings)", &merged)?;
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
    let stacks = run_stacks(&root, &shared, &chroot_stacks, ratchet_add);
    if !regressions.is_empty() {
        bail!("cases in the ratchet that no longer match libvirt: {}", regressions.join(" "));
    }
    stacks
}

/// Run the chroot stacks (all at once: building and probing are mostly waiting) and judge
/// each against its ratchet.
fn run_stacks(root: &Path, tools: &Path, stacks: &[crate::stacks::Stack], ratchet_add: bool) -> Result<()> {
    if stacks.is_empty() {
        return Ok(());
    }
    let required = std::env::var("CAPSD_REQUIRE_STACKS").is_ok_and(|v| v == "1");
    let why_not = if !crate::test::is_root() {
        Some("not root (the stacks are chroots)".to_owned())
    } else if !tools.join("stack-oracle.sh").exists() {
        Some(format!("{} is missing", tools.join("stack-oracle.sh").display()))
    } else {
        None
    };
    if let Some(why) = why_not {
        let names: Vec<&str> = stacks.iter().map(|s| s.name.as_str()).collect();
        if required {
            bail!("CAPSD_REQUIRE_STACKS=1 but the stacks cannot run: {why}");
        }
        println!("stacks skipped ({why}): {}", names.join(" "));
        return Ok(());
    }
    let mut cases = read_cases(&root.join(CASES))?;
    cases.extend(read_cases(&root.join(MORE_CASES))?);
    // The debug build: the stacks probe with --no-cache, so QEMU's time dominates.
    let capsd = build_capsd(root)?;
    let base = std::env::temp_dir().join(format!("capsd-stacks-{}", std::process::id()));
    let facts_tool = tools.join("facts.py");
    let facts = |r: &Path, c: &Path, masked: bool| facts(&facts_tool, r, c, masked);
    println!(
        "running {} stacks: {}",
        stacks.len(),
        stacks.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(" ")
    );
    let results: Vec<(crate::stacks::Stack, Result<crate::stacks::StackResult>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = stacks
            .iter()
            .map(|stack| {
                let out = base.join(&stack.name);
                let cases = crate::stacks::cases_for(stack, &cases);
                let (capsd, tools, facts) = (&capsd, tools, &facts);
                scope.spawn(move || {
                    let t0 = std::time::Instant::now();
                    let r = crate::stacks::run_stack(stack, tools, capsd, &cases, &out, facts);
                    println!("stack {} done in {:.0?}", stack.name, t0.elapsed());
                    r
                })
            })
            .collect();
        stacks
            .iter()
            .cloned()
            .zip(handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("panicked")))))
            .collect()
    });
    let mut failures = Vec::new();
    for (stack, result) in results {
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                println!("stack {}: {e:#}", stack.name);
                failures.push(format!("{}: could not run", stack.name));
                continue;
            }
        };
        println!("== stack {} ({})", stack.name, result.versions);
        for l in &result.lines {
            println!("{l}");
        }
        let exact = result.cases.values().filter(|(e, _)| *e).count();
        let masked = result.cases.values().filter(|(_, m)| *m).count();
        println!(
            "stack {}: {} cases; identical (or both refuse) {exact}; identical with CPU models masked {masked}",
            stack.name,
            result.cases.len()
        );
        if result.libvirt_died {
            failures.push(format!("{}: its libvirtd died during the run (cases without an answer above)", stack.name));
            continue;
        }
        let path = stack.ratchet_path(root);
        let ratchet = crate::stacks::read_ratchet(&path)?;
        let (regressions, learnt) = crate::stacks::judge(&ratchet, &result);
        let moved = ratchet.versions.as_ref().is_some_and(|v| *v != result.versions);
        if moved {
            println!(
                "stack {} changed: ratchet learnt on {}, now {}; re-learning it ({} cases kept){}",
                stack.name,
                ratchet.versions.as_deref().unwrap_or("?"),
                result.versions,
                learnt.cases.len(),
                if regressions.is_empty() {
                    String::new()
                } else {
                    format!("; no longer matching: {}", regressions.join(" "))
                }
            );
            crate::stacks::write_ratchet(&path, &stack.name, &learnt)?;
            continue;
        }
        if !regressions.is_empty() {
            failures.push(format!("{}: {}", stack.name, regressions.join(" ")));
        }
        let improved = learnt.cases.iter().any(|(n, e)| ratchet.cases.get(n).is_none_or(|old| *e && !*old));
        if improved {
            if ratchet_add || ratchet.versions.is_none() {
                let mut merged = learnt;
                for (n, e) in &ratchet.cases {
                    merged.cases.entry(n.clone()).or_insert(*e);
                }
                crate::stacks::write_ratchet(&path, &stack.name, &merged)?;
                println!("stack {}: ratchet updated ({})", stack.name, path.display());
            } else {
                println!(
                    "stack {}: more cases match than its ratchet requires (record with --ratchet-add)",
                    stack.name
                );
            }
        }
    }
    println!("outputs: {}", base.display());
    if !failures.is_empty() {
        bail!("stack cases in the ratchet that no longer match libvirt: {}", failures.join("; "));
    }
    Ok(())
}

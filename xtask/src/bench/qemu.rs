//! `cargo xtask bench qemu`: cold probe times, capsd against libvirt.
//!
//! - capsd: `driver_qemu::probe::probe` of `qemu-system-x86_64` (KVM and TCG runs, every
//!   plan stage, host facts), no cache; then `probe_many` over every installed
//!   `qemu-system-*`. Best and median of several runs.
//! - libvirt: `virsh -c qemu:///system domcapabilities --emulatorbin ...` right after
//!   moving the binary's ctime (libvirt re-probes a binary whose ctime changed, so this is its
//!   cold path without restarting libvirtd); for all binaries, `virsh capabilities` after
//!   touching every one of them. Skipped (with a notice) when virsh cannot reach libvirtd.
//!
//! Probing is dominated by QEMU start-up and QMP round trips, not by our code, but JSON
//! handling is not free in a debug build: like `bench core`, a debug xtask re-runs itself
//! with `--release` (set `CAPSD_BENCH_IN_PLACE=1` to measure the current build).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use driver_qemu::probe::{probe, probe_many, ProbeOptions};
use driver_qemu::QemuDriver;

const X86: &str = "/usr/bin/qemu-system-x86_64";
const RUNS: usize = 5;

pub fn run() -> Result<()> {
    if super::rerun_in_release("qemu")? {
        return Ok(());
    }
    let x86 = Path::new(X86);
    if !x86.exists() {
        bail!("{X86} is not installed");
    }
    let opts = ProbeOptions::default();
    let one = time_runs(RUNS, || probe(x86, &opts).map(|_| ()).map_err(Into::into))?;
    let runs = probe(x86, &opts)?;
    let n_cmds: usize = runs.runs.values().map(|t| t.exchanges.len()).sum();
    println!(
        "capsd cold probe {X86} (runs: {:?}, {n_cmds} QMP commands): best {:.1?} median {:.1?}",
        runs.runs.keys().collect::<Vec<_>>(),
        one.0,
        one.1
    );
    let all = QemuDriver::new().installed_emulators();
    let many = time_runs(3, || {
        let r = probe_many(&all, &opts);
        let failed = r.iter().filter(|r| r.is_err()).count();
        if failed == all.len() {
            bail!("every probe failed");
        }
        Ok(())
    })?;
    println!(
        "capsd cold probe of all {} installed binaries (parallel): best {:.1?} median {:.1?}",
        all.len(),
        many.0,
        many.1
    );

    if Command::new("virsh")
        .args(["-c", "qemu:///system", "version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        let lv = time_runs(3, || libvirt_cold_domcaps(x86))?;
        println!("libvirt cold domcapabilities {X86}: best {:.1?} median {:.1?}", lv.0, lv.1);
        println!("speed-up (median, x86_64 KVM+TCG): {:.1}x", lv.1.as_secs_f64() / one.1.as_secs_f64());
        // What a user waits for: the whole CLI, no cache, against libvirt's cold answer.
        let capsd = super::agent::build_capsd()?;
        let cli = time_runs(RUNS, || {
            let st = Command::new(&capsd)
                .args(["--no-cache", "domcapabilities", "--emulatorbin", X86])
                .stdout(std::process::Stdio::null())
                .status()
                .context("running capsd")?;
            if !st.success() {
                bail!("capsd --no-cache domcapabilities failed: {st}");
            }
            Ok(())
        })?;
        let ratio = lv.1.as_secs_f64() / cli.1.as_secs_f64();
        println!(
            "cold CLI median: capsd --no-cache domcapabilities {:.1?} | libvirt {:.1?} | {ratio:.1}x faster | target >= 20x: {}",
            cli.1,
            lv.1,
            if ratio >= 20.0 { "met" } else { "NOT met" }
        );
        let t0 = Instant::now();
        libvirt_cold_all(&all)?;
        let lv_all = t0.elapsed();
        println!("libvirt cold `virsh capabilities` (probes all {} binaries): {lv_all:.1?}", all.len());
        println!("speed-up (all binaries): {:.1}x", lv_all.as_secs_f64() / many.1.as_secs_f64());
    } else {
        println!("libvirt: virsh cannot reach qemu:///system here; libvirt figures skipped");
    }
    Ok(())
}

/// (best, median) of `n` timed runs.
fn time_runs(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed());
    }
    times.sort();
    Ok((times[0], times[times.len() / 2]))
}

/// Make libvirt's cached capabilities of `bin` stale: libvirt compares the binary's ctime,
/// which a chmod to its own mode moves. (Opening it for writing to set its mtime fails with
/// ETXTBSY while any QEMU of that binary runs.)
fn touch(bin: &Path) -> Result<()> {
    let perms = std::fs::metadata(bin).with_context(|| format!("reading {}", bin.display()))?.permissions();
    std::fs::set_permissions(bin, perms).with_context(|| format!("changing the ctime of {}", bin.display()))?;
    Ok(())
}

fn libvirt_cold_domcaps(bin: &Path) -> Result<()> {
    touch(bin)?;
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "domcapabilities", "--emulatorbin"])
        .arg(bin)
        .output()
        .context("running virsh")?;
    if !out.status.success() {
        bail!("virsh domcapabilities failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn libvirt_cold_all(all: &[PathBuf]) -> Result<()> {
    for b in all {
        touch(b)?;
    }
    let out = Command::new("virsh").args(["-c", "qemu:///system", "capabilities"]).output().context("running virsh")?;
    if !out.status.success() {
        bail!("virsh capabilities failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

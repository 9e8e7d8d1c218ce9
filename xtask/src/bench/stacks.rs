//! `cargo xtask bench stacks`: per Debian stack (the chroots `cargo xtask conformance`
//! builds), capsd against that stack's own libvirt on the same x86_64 query, in one run:
//! the cold probe (capsd `--no-cache` against `virsh domcapabilities` right after the binary
//! was touched, so libvirt re-probes it) and the warm CLI (capsd with its cache filled
//! against virsh with libvirt's answer in memory). Targets (issue 21): cold at least 20x
//! faster, warm at most a tenth of virsh. Stacks not built yet are skipped with a notice.
//!
//! Inside each chroot (under the same per-chroot lock as stack-oracle.sh, with /proc, /sys
//! and /dev bound only while it runs) the stack's libvirtd is started, `stack_bench.sh`
//! times the runs, and everything is stopped and unmounted again.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

const SCRIPT: &str = include_str!("stack_bench.sh");
const COLD: usize = 5;
const WARM: usize = 40;

/// Mount, start libvirtd, run the timing script, stop, unmount: one shell, so a failure on
/// the way still unmounts (trap).
const HARNESS: &str = r#"
set -euo pipefail
root=$1; capsd=$2; cold=$3; warm=$4
cleanup() {
  [ -f "$root/run/libvirtd.pid" ] && kill "$(cat "$root/run/libvirtd.pid")" 2>/dev/null && sleep 1
  for m in dev/pts dev sys proc; do mountpoint -q "$root/$m" && umount -l "$root/$m"; done
  rm -f "$root/usr/local/bin/capsd-bench" "$root/tmp/stack_bench.sh"
  return 0
}
trap cleanup EXIT
for m in proc sys dev dev/pts; do mountpoint -q "$root/$m" || mount --bind "/$m" "$root/$m"; done
cp "$capsd" "$root/usr/local/bin/capsd-bench"
cat > "$root/tmp/stack_bench.sh"
chroot "$root" bash -c 'mkdir -p /var/log/libvirt /run/libvirt
  virsh -c qemu:///system version >/dev/null 2>&1 || {
    (setsid libvirtd >/var/log/libvirt/bench-libvirtd.log 2>&1 &)
    for _ in $(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done; }'
chroot "$root" bash /tmp/stack_bench.sh /usr/local/bin/capsd-bench "$cold" "$warm"
"#;

pub fn run() -> Result<()> {
    if !crate::test::is_root() {
        println!("bench stacks: not root; the stacks are chroots, skipped");
        return Ok(());
    }
    let capsd = super::agent::build_capsd()?;
    let mut ran = 0;
    for stack in crate::stacks::all() {
        let chroot = stack.root();
        if !chroot.join("usr/sbin/libvirtd").exists() {
            println!(
                "stack {}: not built ({}), skipped; `cargo xtask conformance` builds it",
                stack.name,
                chroot.display()
            );
            continue;
        }
        ran += 1;
        let times = run_in(&stack, &capsd).with_context(|| format!("stack {}", stack.name))?;
        report(&stack.name, &times);
    }
    if ran == 0 {
        println!("bench stacks: no stack is built");
    }
    Ok(())
}

fn run_in(stack: &crate::stacks::Stack, capsd: &Path) -> Result<Vec<(String, Duration)>> {
    use std::io::Write;
    let mut child = Command::new("flock")
        .arg(stack.lock_path())
        .args(["bash", "-c", HARNESS, "harness"])
        .arg(stack.root())
        .arg(capsd)
        .arg(COLD.to_string())
        .arg(WARM.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting the stack harness")?;
    child.stdin.take().context("harness stdin")?.write_all(SCRIPT.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("harness failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), Duration::from_nanos(v.trim().parse().ok()?)))
        })
        .collect())
}

fn median(times: &[(String, Duration)], kind: &str) -> Option<Duration> {
    let mut v: Vec<Duration> = times.iter().filter(|(k, _)| k == kind).map(|(_, d)| *d).collect();
    v.sort();
    v.get(v.len() / 2).copied()
}

fn report(stack: &str, times: &[(String, Duration)]) {
    let m = |k| median(times, k);
    match (m("cold_capsd"), m("cold_libvirt"), m("warm_capsd"), m("warm_virsh")) {
        (Some(cc), Some(cl), Some(wc), Some(wv)) => {
            let cold = cl.as_secs_f64() / cc.as_secs_f64();
            let warm = wc.as_secs_f64() / wv.as_secs_f64();
            println!(
                "stack {stack}: cold capsd {cc:.1?} vs libvirt {cl:.1?} = {cold:.1}x faster (target >= 20x: {}); \
                 warm capsd {wc:.2?} vs virsh {wv:.2?} = {warm:.3} of virsh (target <= 0.10: {})",
                if cold >= 20.0 { "met" } else { "MISSED" },
                if warm <= 0.1 { "met" } else { "MISSED" },
            );
        }
        _ => println!("stack {stack}: incomplete timings: {times:?}"),
    }
}

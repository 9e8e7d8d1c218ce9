//! `cargo xtask deb --test`, under a real systemd as PID 1: a Debian 13 (trixie) virtual
//! machine booted by QEMU, where the package is installed and its units are used as an
//! operator would (the chroots of `chroot.rs` have no running systemd).
//!
//! The base image is built once and cached under `/var/lib/capsd-deb-test/vm`
//! (`CAPSD_DEB_TEST_DIR` overrides the parent), rebuilt when its recipe changes:
//! debootstrap minbase trixie plus [`PACKAGES`] (systemd, udev, dbus, Debian's cloud kernel
//! and its initramfs, the host's QEMU system emulator, etcd), an ext4 image made from that
//! tree with `mkfs.ext4 -d`, and the kernel and initramfs copied out of its /boot. The image
//! holds one unit of ours, `capsd-vm-test.service`, which at the end of the boot mounts the
//! second disk, runs its `run.sh` with the output on the second serial port, and powers off.
//!
//! Each run boots a throw-away qcow2 overlay of the image (`-kernel`/`-initrd`,
//! `root=/dev/vda`), with no network device, and a second, read-only disk made for the run
//! (`mkfs.ext4 -d` again): the package, `vm/run.sh` (the checks; read it for what they are)
//! and a test plugin whose constructor crashes. KVM is used when `/dev/kvm` opens and the
//! guest runs under it; a KVM that stops the guest with an internal error (nested
//! virtualisation that cannot run the kernel's decompressor, as on some CI machines) is left
//! for TCG, as is a machine without KVM. `CAPSD_DEB_TEST_ACCEL=tcg|kvm` forces one.
//! The host waits on the guest's own conditions (the result lines, QEMU's exit), each with a
//! generous deadline, and reports each check of `run.sh` as its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::chroot::{in_chroot, mirror, refuse_mounted, tail, Mounts};
use super::Report;

/// What the image holds besides minbase (the host's QEMU system emulator is added); a change
/// rebuilds it.
const PACKAGES: &str = "systemd systemd-sysv udev dbus kmod linux-image-cloud-amd64 initramfs-tools \
                        etcd-server etcd-client curl iproute2 procps";

/// The Debian release the VM runs.
const SUITE: &str = "trixie";

/// The checks, run in the VM.
const RUN_SH: &str = include_str!("vm/run.sh");

/// The image's own unit: runs the payload's checks once the system is up, then powers off.
const RUNNER_UNIT: &str = "\
# cargo xtask deb --test (xtask/src/deb/vm.rs): run the checks of the payload disk, power off.
[Unit]
Description=capsd package checks (cargo xtask deb --test)
After=multi-user.target

[Service]
# simple, not oneshot: the boot is complete once it runs (the checks wait for that).
Type=simple
ExecStart=/usr/local/sbin/capsd-vm-test
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
";

const RUNNER: &str = "\
#!/bin/sh
# cargo xtask deb --test: the payload disk (/dev/vdb) holds run.sh; its output goes to the
# second serial port, which the host reads. The last line says how it ended.
out=/dev/ttyS1
export TERM=dumb
stty -F $out raw -echo 2>/dev/null
mkdir -p /payload
if mount -o ro /dev/vdb /payload; then
    # The first line may follow what a terminal reset left on the port: start on a new one.
    { echo; bash /payload/run.sh /payload; } >$out 2>&1
    echo \"VMTEST-END $?\" >$out
else
    echo 'VMTEST-END the payload disk did not mount' >$out
fi
systemctl --no-block poweroff
";

/// A plugin whose constructor crashes (the agent must keep serving with it installed).
const CRASH_PLUGIN_C: &str = "\
/* cargo xtask deb --test: a capsd plugin whose constructor crashes when it is loaded. */
__attribute__((constructor)) static void vmtest_crash(void) { *(volatile int *)0 = 1; }
int capsd_plugin_v1(void) { return 0; }
";

/// Longest a boot with the checks may take (TCG on a loaded 2-core machine included).
const DEADLINE: Duration = Duration::from_secs(60 * 60);

pub fn run(deb: &Path, report: &mut Report) -> Result<()> {
    super::require_tools(&[
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("cc", "gcc"),
    ])?;
    let arch = super::output(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned();
    if arch != "amd64" {
        bail!("the systemd VM test boots an amd64 Debian image; this machine is {arch}");
    }
    let dir = super::chroot::test_dir().join("vm");
    let t = Instant::now();
    let image = ensure_image(&dir)?;
    let built = t.elapsed();
    let t = Instant::now();
    let run = dir.join("run");
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("removing {}", run.display()))?;
    }
    std::fs::create_dir_all(&run)?;
    let payload = make_payload(&run, deb)?;
    let result = boot(&image, &run, &payload);
    let booted = t.elapsed();
    match result {
        Ok((accel, out)) => {
            println!(
                "xtask deb: vm: image ready in {:.0} s, boot and checks under {accel} took {:.0} s",
                built.as_secs_f64(),
                booted.as_secs_f64()
            );
            record(&out, report);
            let _ = std::fs::remove_dir_all(&run);
        }
        Err(e) => report.fail("vm", "boot the Debian 13 VM and run the checks", e),
    }
    Ok(())
}

/// The checks' lines into the report: `ok NAME`, `FAIL NAME` with `| ` lines, `note ...`,
/// and the runner's `VMTEST-END STATUS`.
fn record(out: &str, report: &mut Report) {
    let mut failed: Option<(String, String)> = None;
    let flush = |failed: &mut Option<(String, String)>, report: &mut Report| {
        if let Some((name, why)) = failed.take() {
            let why = if why.is_empty() { "(run.sh gave no reason)".to_owned() } else { why };
            report.fail("vm", &name, anyhow::anyhow!("{why}"));
        }
    };
    let mut checks = 0;
    let mut ended = None;
    for line in out.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(why) = line.strip_prefix("| ") {
            if let Some((_, w)) = failed.as_mut() {
                if !w.is_empty() {
                    w.push('\n');
                }
                w.push_str(why);
            }
            continue;
        }
        flush(&mut failed, report);
        if let Some(name) = line.strip_prefix("ok ") {
            checks += 1;
            report.pass("vm", name);
        } else if let Some(name) = line.strip_prefix("FAIL ") {
            checks += 1;
            failed = Some((name.to_owned(), String::new()));
        } else if let Some(note) = line.strip_prefix("note ") {
            println!("xtask deb: vm: {note}");
        } else if let Some(status) = line.strip_prefix("VMTEST-END ") {
            ended = Some(status.to_owned());
        }
    }
    flush(&mut failed, report);
    match ended.as_deref() {
        Some("0") if checks > 0 => {}
        Some(status) => report.fail("vm", "run.sh ran to its end", anyhow::anyhow!("it ended with '{status}'")),
        None => report.fail("vm", "run.sh ran to its end", anyhow::anyhow!("no end line; output:\n{}", tail(out))),
    }
}

/// The cached image: its disk, kernel and initramfs.
struct Image {
    disk: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

fn ensure_image(dir: &Path) -> Result<Image> {
    let image = Image { disk: dir.join("base.img"), kernel: dir.join("vmlinuz"), initrd: dir.join("initrd.img") };
    let marker = dir.join("base.ready");
    let qemu = super::qemu_for("amd64");
    let recipe = format!(
        "{SUITE} minbase + {PACKAGES} {qemu}\nrunner {:016x}\n",
        fnv(&[RUNNER_UNIT.as_bytes(), RUNNER.as_bytes()].concat())
    );
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(recipe.as_str()) {
        return Ok(image);
    }
    println!("xtask deb: building the {SUITE} VM image in {} (some minutes, once)", dir.display());
    let _ = std::fs::remove_file(&marker);
    refuse_mounted(dir)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree)?;
    let status = Command::new("debootstrap")
        .args(["--variant=minbase", SUITE])
        .arg(&tree)
        .arg(mirror()?)
        .arg(format!("/usr/share/debootstrap/scripts/{SUITE}"))
        .stdout(std::fs::File::create(dir.join("debootstrap.log"))?)
        .stderr(std::fs::File::create(dir.join("debootstrap.err"))?)
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        bail!("debootstrap {SUITE} failed ({status}); see {}/debootstrap.log and .err", dir.display());
    }
    {
        let _mounts = Mounts::bind_host(&tree)?;
        std::fs::copy("/etc/resolv.conf", tree.join("etc/resolv.conf")).context("copying resolv.conf")?;
        in_chroot(
            &tree,
            &format!(
                "apt-get -q update >/dev/null
                 apt-get -q -y install --no-install-recommends {PACKAGES} {qemu} >/dev/null
                 apt-get clean
                 rm -rf /var/lib/apt/lists/*"
            ),
        )
        .context("installing the image's packages")?;
    }
    let put = |rel: &str, text: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = tree.join(rel);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("etc/systemd/system/capsd-vm-test.service", RUNNER_UNIT, 0o644)?;
    put("usr/local/sbin/capsd-vm-test", RUNNER, 0o755)?;
    put("etc/fstab", "/dev/vda / ext4 rw,errors=remount-ro 0 1\n", 0o644)?;
    put("etc/hostname", "capsd-vm\n", 0o644)?;
    // A fixed machine id: every run boots a copy, and an empty one would make it a first boot.
    put("etc/machine-id", "c4b5d0f1e2a34b6c8d7e9f0a1b2c3d4e\n", 0o444)?;
    put("etc/resolv.conf", "", 0o644)?;
    // No logins on the consoles (nobody types there), no etcd of the package's (the checks
    // start their own), no timers that would run during a check.
    in_chroot(
        &tree,
        "systemctl enable capsd-vm-test.service
         systemctl mask serial-getty@ttyS0.service serial-getty@ttyS1.service getty@tty1.service \
             etcd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
             dpkg-db-backup.timer systemd-tmpfiles-clean.timer 2>/dev/null",
    )
    .context("enabling the runner")?;
    let boot = tree.join("boot");
    let pick = |prefix: &str| -> Result<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
            .collect();
        found.sort();
        found.pop().with_context(|| format!("no {prefix}* in the image's /boot"))
    };
    std::fs::copy(pick("vmlinuz-")?, &image.kernel).context("copying the kernel out")?;
    std::fs::copy(pick("initrd.img-")?, &image.initrd).context("copying the initramfs out")?;
    let tmp = dir.join("base.img.tmp");
    super::output(Command::new("mkfs.ext4").args(["-q", "-F", "-L", "capsd-vm", "-d"]).arg(&tree).arg(&tmp).arg("4G"))?;
    std::fs::rename(&tmp, &image.disk)?;
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    std::fs::write(&marker, recipe)?;
    Ok(image)
}

/// FNV-1a, for the recipe's fingerprint of the runner.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// The second disk of a run: the package, the checks and the test plugin.
fn make_payload(run: &Path, deb: &Path) -> Result<PathBuf> {
    let tree = run.join("payload");
    std::fs::create_dir_all(&tree)?;
    std::fs::copy(deb, tree.join("capsd.deb")).context("copying the package")?;
    std::fs::write(tree.join("run.sh"), RUN_SH)?;
    let src = run.join("crash.c");
    std::fs::write(&src, CRASH_PLUGIN_C)?;
    super::output(
        Command::new("cc")
            .args(["-shared", "-fPIC", "-nostdlib", "-O0", "-o"])
            .arg(tree.join("libvmtest_crash.so"))
            .arg(&src),
    )
    .context("building the test plugin")?;
    let img = run.join("payload.img");
    super::output(
        Command::new("mkfs.ext4").args(["-q", "-F", "-L", "payload", "-d"]).arg(&tree).arg(&img).arg("256M"),
    )?;
    Ok(img)
}

/// Whether this process can open `/dev/kvm` read-write.
fn kvm_opens() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// Boot the VM on an overlay of the image with the payload; the accelerator used and the
/// checks' output.
fn boot(image: &Image, run: &Path, payload: &Path) -> Result<(&'static str, String)> {
    let forced = std::env::var("CAPSD_DEB_TEST_ACCEL").ok().filter(|v| !v.is_empty());
    let accels: Vec<&'static str> = match forced.as_deref() {
        Some("kvm") => vec!["kvm"],
        Some("tcg") => vec!["tcg"],
        Some(other) => bail!("CAPSD_DEB_TEST_ACCEL='{other}': not kvm or tcg"),
        None if kvm_opens() => vec!["kvm", "tcg"],
        None => vec!["tcg"],
    };
    let mut last = None;
    for accel in accels {
        match boot_with(image, run, payload, accel)? {
            Boot::Done(out) => return Ok((accel, out)),
            Boot::KvmFailed(why) => {
                println!("xtask deb: vm: KVM cannot run this guest here ({why}); booting under TCG");
                last = Some(why);
            }
        }
    }
    bail!("KVM could not run the guest: {}", last.unwrap_or_default())
}

enum Boot {
    Done(String),
    KvmFailed(String),
}

fn boot_with(image: &Image, run: &Path, payload: &Path, accel: &str) -> Result<Boot> {
    let overlay = run.join("overlay.qcow2");
    let _ = std::fs::remove_file(&overlay);
    super::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.disk)
            .arg(&overlay),
    )?;
    let (console, results, stderr) = (run.join("console.log"), run.join("results.log"), run.join("qemu.err"));
    for f in [&console, &results] {
        std::fs::write(f, "")?;
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-monitor", "none"])
        .args(["-machine", "q35", "-m", "2048"]);
    // KVM: QEMU's default CPU model (`host` can fail on MSRs a nested hypervisor does not pass
    // through). TCG: every feature it emulates, on one vCPU: with two, multi-threaded TCG
    // once ran a stale translation of kernel code being patched (an int3 oops at boot).
    if accel == "tcg" {
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"]);
    } else {
        cmd.args(["-accel", "kvm", "-smp", "2"]);
    }
    cmd.arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        // no_timer_check: the kernel's boot-time test that the timer interrupt arrives through
        // the IO-APIC counts ticks within a window of host time; TCG on a loaded machine can
        // miss it, and the kernel then panics ("IO-APIC + timer doesn't work!", seen in a
        // fresh-clone .ci/run beside a CPU hog). The timer works; only the test is timing-bound.
        .args(["-append", "root=/dev/vda rw console=ttyS0 panic=-1 no_timer_check systemd.show_status=0 quiet"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2,cache=unsafe", overlay.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw,readonly=on", payload.display()))
        .args(["-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr)?);
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let t = Instant::now();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            let out = read(&results);
            if out.contains("VMTEST-END") {
                break Ok(Boot::Done(out));
            }
            let err = read(&stderr);
            if accel == "kvm" {
                break Ok(Boot::KvmFailed(format!("QEMU exited ({status}): {}", err.trim())));
            }
            break Err(anyhow::anyhow!(
                "QEMU exited ({status}) before the checks ended\nstderr:\n{}console:\n{}checks:\n{}",
                tail(&err),
                tail(&read(&console)),
                tail(&out)
            ));
        }
        let err = read(&stderr);
        if accel == "kvm" && (err.contains("KVM internal error") || err.contains("emulation failure")) {
            let _ = child.kill();
            let _ = child.wait();
            let line = err.lines().find(|l| l.contains("KVM internal error") || l.contains("emulation failure"));
            break Ok(Boot::KvmFailed(line.unwrap_or_default().to_owned()));
        }
        if t.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break Err(anyhow::anyhow!(
                "the VM did not finish within {} min\nconsole:\n{}checks:\n{}",
                DEADLINE.as_secs() / 60,
                tail(&read(&console)),
                tail(&read(&results))
            ));
        }
        // Polling files QEMU writes; the guest decides when it is done.
        std::thread::sleep(Duration::from_millis(250));
    };
    let _ = std::fs::remove_file(&overlay);
    outcome
}

#[cfg(test)]
mod tests {
    use super::super::Report;

    #[test]
    fn the_checks_output_is_read_into_the_report() {
        let out = "\r\nnote kernel 6.12\r\nok a\r\nFAIL b\r\n| why 1\r\n| why 2\r\nnoise\r\nok c\r\nVMTEST-END 0\r\n";
        let mut r = Report::default();
        super::record(out, &mut r);
        assert_eq!(r.passed, 2);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, "vm: b");
        assert_eq!(format!("{}", r.failed[0].1), "why 1\nwhy 2");
    }

    #[test]
    fn a_run_that_did_not_end_or_ran_nothing_fails() {
        let mut r = Report::default();
        super::record("ok a\n", &mut r);
        assert_eq!((r.passed, r.failed.len()), (1, 1), "no end line");
        let mut r = Report::default();
        super::record("VMTEST-END 0\n", &mut r);
        assert_eq!(r.failed.len(), 1, "no check ran");
        let mut r = Report::default();
        super::record("ok a\nVMTEST-END 2\n", &mut r);
        assert_eq!(r.failed.len(), 1, "run.sh failed");
    }
}

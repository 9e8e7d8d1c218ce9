//! An interrupted CLI leaves nothing behind: SIGINT or SIGTERM in the middle of a probe kill
//! the probe and remove its private directory before capsd dies of the signal; after a
//! SIGKILL (which nothing can catch) the next probing run removes the dead run's directory.
//! The emulator is a fake that never opens its QMP socket (a slow QEMU); no QEMU is needed.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Setup {
    _tmp: tempfile::TempDir,
    /// TMPDIR of the capsd runs: where their probe directories go.
    tmpdir: PathBuf,
    cache: PathBuf,
    fake: PathBuf,
    marker: String,
}

fn setup(tag: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    // Traversable for an unprivileged probe user.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    std::fs::set_permissions(&tmpdir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let marker = format!("1000.{}{tag}", std::process::id());
    let fake = tmp.path().join("qemu-system-x86_64");
    std::fs::write(&fake, format!("#!/bin/sh\nexec sleep {marker}\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    Setup { cache: tmp.path().join("cache"), tmpdir, fake, marker, _tmp: tmp }
}

fn start(s: &Setup, fake: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(&s.cache)
        .args(["domcapabilities", "--emulatorbin"])
        .arg(fake)
        .env("TMPDIR", &s.tmpdir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn probe_dirs(s: &Setup) -> Vec<String> {
    std::fs::read_dir(&s.tmpdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("capsd-probe-"))
        .collect()
}

/// Live processes whose command line holds `marker`.
fn running(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(marker)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start a probe of the slow fake, wait until it runs, send `sig`, return how capsd ended.
fn interrupt(s: &Setup, sig: nix::sys::signal::Signal) -> std::process::ExitStatus {
    let mut child = start(s, &s.fake);
    wait_until("the probe to run", || !probe_dirs(s).is_empty() && !running(&s.marker).is_empty());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
    child.wait().unwrap()
}

#[test]
fn sigterm_and_sigint_clean_up_before_capsd_dies() {
    use nix::sys::signal::Signal;
    for (i, sig) in [Signal::SIGTERM, Signal::SIGINT].into_iter().enumerate() {
        let s = setup(&format!("{i}"));
        let status = interrupt(&s, sig);
        assert_eq!(status.signal(), Some(sig as i32), "capsd did not die of {sig}: {status}");
        assert_eq!(probe_dirs(&s), Vec::<String>::new(), "probe directories left after {sig}");
        assert_eq!(running(&s.marker), Vec::<String>::new(), "the probe survived {sig}");
        let tmps: Vec<_> = std::fs::read_dir(&s.cache)
            .map(|rd| {
                rd.flatten().map(|e| e.file_name()).filter(|n| n.to_string_lossy().starts_with(".tmp-")).collect()
            })
            .unwrap_or_default();
        assert!(tmps.is_empty(), "{tmps:?}");
    }
}

#[test]
fn after_sigkill_the_next_probing_run_removes_the_leftovers() {
    let s = setup("9");
    let status = interrupt(&s, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(status.signal(), Some(9));
    // The probe dies with capsd (parent-death signal), but its directory stays.
    wait_until("the probe to die with capsd", || running(&s.marker).is_empty());
    let left = probe_dirs(&s);
    assert!(!left.is_empty(), "SIGKILL cannot be caught: a directory was expected to stay");
    // The next run that probes (here a binary that fails at once) removes it.
    let broken = s.tmpdir.parent().unwrap().join("qemu-system-broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = start(&s, &broken).wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(probe_dirs(&s), Vec::<String>::new(), "left by the killed run: {left:?}");
}

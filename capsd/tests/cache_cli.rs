//! The CLI and the probe cache, with the real QEMU (skipped when `qemu-system-x86_64` is not
//! installed, unless `CAPSD_REQUIRE_LIVE=1`, as in CI): a warm answer does not start QEMU
//! and is the same document; touching the binary or damaging the file re-probes;
//! `capsd probe` fills the cache.

mod live_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use live_support::{live, X86};

/// `capsd --cache-dir DIR ARGS...` with the cache's logs on stderr.
fn capsd(cache: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .env("RUST_LOG", "driver_qemu::cache=info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "capsd {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn probed(out: &Output) -> bool {
    String::from_utf8_lossy(&out.stderr).contains("probed")
}

fn probe_files(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "probe"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A private copy of the emulator, so that touching it disturbs nobody.
fn copy_of_qemu(dir: &Path) -> PathBuf {
    let p = dir.join("qemu-system-x86_64");
    std::fs::copy(X86, &p).unwrap();
    p
}

#[test]
fn warm_answers_come_from_the_cache_and_match() {
    if !live() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let cold = capsd(&cache, &["domcapabilities"]);
    assert!(probed(&cold), "first run must probe: {}", String::from_utf8_lossy(&cold.stderr));
    assert_eq!(probe_files(&cache).len(), 1);
    let warm = capsd(&cache, &["domcapabilities"]);
    assert!(!probed(&warm), "second run must not probe: {}", String::from_utf8_lossy(&warm.stderr));
    assert_eq!(warm.stdout, cold.stdout);
    // The printed answer is kept beside the probe record.
    let answers = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "answer"))
        .count();
    assert_eq!(answers, 1);
    // The same record answers other queries of the same binary: a TCG query probes at most
    // once (a KVM query that the KVM run answered left the TCG run for later), then never.
    let q35 = capsd(&cache, &["domcapabilities", "--machine", "q35", "--virttype", "qemu"]);
    let q35_again = capsd(&cache, &["domcapabilities", "--machine", "q35", "--virttype", "qemu"]);
    assert!(!probed(&q35_again), "{}", String::from_utf8_lossy(&q35_again.stderr));
    assert_eq!(q35_again.stdout, q35.stdout);
    let pc = capsd(&cache, &["domcapabilities", "--machine", "pc", "--virttype", "qemu"]);
    assert!(!probed(&pc));
    // The default query again: the same document (derived again if the TCG query re-probed).
    let warm = capsd(&cache, &["domcapabilities"]);
    assert!(!probed(&warm));
    assert_eq!(warm.stdout, cold.stdout);
    // And --no-cache really probes.
    let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .args(["--no-cache", "domcapabilities"])
        .env("RUST_LOG", "driver_qemu=info")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, cold.stdout);
}

#[test]
fn touching_the_binary_or_damaging_the_file_reprobes() {
    if !live() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let qemu = copy_of_qemu(tmp.path());
    let q = qemu.to_str().unwrap();
    let first = capsd(&cache, &["domcapabilities", "--emulatorbin", q]);
    assert!(probed(&first));
    assert!(!probed(&capsd(&cache, &["domcapabilities", "--emulatorbin", q])));

    // Touch: new mtime and ctime.
    let f = std::fs::File::options().write(true).open(&qemu).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    drop(f);
    let again = capsd(&cache, &["domcapabilities", "--emulatorbin", q]);
    assert!(probed(&again), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stderr).contains("stale"), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(again.stdout, first.stdout);

    // Damage: flip a byte near the end (inside a transcript).
    let file = &probe_files(&cache)[0];
    let mut bytes = std::fs::read(file).unwrap();
    let i = bytes.len() - 100;
    bytes[i] ^= 0x01;
    std::fs::write(file, &bytes).unwrap();
    let repaired = capsd(&cache, &["domcapabilities", "--emulatorbin", q]);
    let err = String::from_utf8_lossy(&repaired.stderr);
    assert!(err.contains("damaged") && probed(&repaired), "{err}");
    assert_eq!(repaired.stdout, first.stdout);
    assert!(!probed(&capsd(&cache, &["domcapabilities", "--emulatorbin", q])));
}

#[test]
fn probe_subcommand_fills_the_cache_with_progress_lines() {
    if !live() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = capsd(&cache, &["probe", "--emulatorbin", X86]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("[1/1] ok    {X86}")), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 ok, 0 failed"));
    assert_eq!(probe_files(&cache).len(), 1);
    assert!(!probed(&capsd(&cache, &["domcapabilities"])));

    // A bad path fails that entry and the exit code, with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(&cache)
        .args(["probe", "--emulatorbin", "/no/such/qemu-system-x86_64"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FAIL  /no/such/qemu-system-x86_64"), "{err}");
}

#[test]
fn probe_draws_a_bar_on_a_terminal_and_plain_lines_otherwise() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("qemu-system-absent");
    let args = ["--cache-dir", dir.path().to_str().unwrap(), "probe", "--emulatorbin", absent.to_str().unwrap()];
    // Not a terminal: numbered lines, no escape codes.
    let out = Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[1/1] FAIL  ") && !err.contains('\x1b'), "{err:?}");
    // A terminal: the result line above a bar.
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    child.wait().unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Reading the master ends with EIO once the child's side is closed.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let tty = String::from_utf8_lossy(&raw);
    assert!(tty.contains("FAIL  ") && tty.contains("] 1/1"), "{tty:?}");
    assert!(!tty.contains("[1/1]"), "plain lines on a terminal: {tty:?}");
}

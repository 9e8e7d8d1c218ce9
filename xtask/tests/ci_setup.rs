//! `.ci/setup` on the states a fresh machine can be in, with the package tools replaced by
//! stubs on PATH (the real ones would change this machine): `dpkg -s` says whether anything
//! is missing, `dpkg-query`/`apt-cache` report the installed qemu-utils (the stubbed
//! `apt-cache policy` prints as much as the real one, so a reader that stops early in a
//! `pipefail` pipeline kills it as it did before), and `apt-get` records what it was asked.
//! A debootstrap'ed bookworm chroot would test the real tools, but takes far longer than
//! CI's budget allows for one script.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn stub(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Run `.ci/setup` with `dpkg -s` succeeding or not and qemu-utils at `installed` (`None`:
/// not installed); returns the exit success and the apt-get calls, one per line.
fn setup(all_present: bool, installed: Option<&str>) -> (bool, String, String) {
    let tmp = tempfile_dir();
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = tmp.join("apt-get.log");
    stub(&bin, "dpkg", &format!("[ \"$1\" = -s ] && exit {}\nexit 0", if all_present { 0 } else { 1 }));
    let version = installed.unwrap_or("");
    stub(
        &bin,
        "dpkg-query",
        &match installed {
            Some(v) => format!("printf '%s' '{v}'"),
            None => "echo 'dpkg-query: no packages found matching qemu-utils' >&2; exit 1".to_owned(),
        },
    );
    stub(
        &bin,
        "apt-cache",
        &format!(
            "echo 'qemu-utils:'\necho '  Installed: {}'\necho '  Candidate: 1:7.2+dfsg-7+deb12u18'\n\
             i=0; while [ $i -lt 20000 ]; do echo '     500 http://deb.debian.org/debian bookworm/main amd64 Packages'; i=$((i+1)); done",
            if version.is_empty() { "(none)" } else { version }
        ),
    );
    stub(&bin, "apt-get", &format!("echo \"$*\" >> '{}'", log.display()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new("bash")
        .arg(root.join(".ci/setup"))
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&tmp);
    (out.status.success(), calls, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tempfile_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "capsd-ci-setup-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn install_line(calls: &str) -> &str {
    calls.lines().find(|l| l.contains("install")).unwrap_or_else(|| panic!("no apt-get install in {calls:?}"))
}

#[test]
fn backports_qemu_utils_gets_the_bookworm_pin() {
    let (ok, calls, out) = setup(false, Some("1:8.2.1+ds-1~bpo12+1"));
    assert!(ok, "{out}");
    let line = install_line(&calls);
    assert!(line.split_whitespace().any(|w| w == "qemu-utils/bookworm"), "{line}");
    assert!(line.contains("--allow-downgrades"), "{line}");
}

#[test]
fn the_distributions_qemu_utils_or_none_gets_no_pin() {
    for installed in [Some("1:7.2+dfsg-7+deb12u18"), None] {
        let (ok, calls, out) = setup(false, installed);
        assert!(ok, "{installed:?}: {out}");
        let line = install_line(&calls);
        assert!(!line.contains("qemu-utils/"), "{installed:?}: {line}");
        assert!(line.contains("qemu-system-x86") && line.contains("libvirt-daemon-driver-qemu"), "{line}");
    }
}

#[test]
fn nothing_is_installed_when_everything_is_present() {
    let (ok, calls, out) = setup(true, Some("1:8.2.1+ds-1~bpo12+1"));
    assert!(ok && calls.is_empty(), "{calls:?} {out}");
    assert!(out.contains("all packages present"), "{out}");
}

//! What a failed KVM run means. Only QEMU refusing the accelerator (exiting with a code of
//! its own before its QMP greeting, before or after opening its socket) means "this binary
//! cannot use KVM here", and the answer is then TCG's. A KVM run that hangs, is killed, or
//! breaks its QMP session says nothing about KVM: the probe fails (on a loaded host such a
//! run once turned a KVM host's answer into TCG's, `<domain>qemu</domain>`).
//!
//! The fake emulators are wrappers of the real `qemu-system-x86_64` that misbehave only when
//! asked for `accel=kvm`. They need `/dev/kvm` usable (else no KVM run is attempted) and the
//! real QEMU; without either they skip with a notice naming what is missing, unless
//! `CAPSD_REQUIRE_LIVE=1` and QEMU is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use capsd_core::{DomainCapsDriver, Query};
use driver_qemu::probe::{probe, ProbeOptions};
use driver_qemu::probe_data::Accel;
use driver_qemu::process::ProcessOptions;
use driver_qemu::qmp::Timeouts;
use driver_qemu::QemuDriver;

const X86: &str = "/usr/bin/qemu-system-x86_64";

/// The real QEMU when it is installed and KVM usable; `None` after a notice otherwise.
fn prerequisites() -> Option<PathBuf> {
    if !Path::new(X86).exists() {
        if std::env::var("CAPSD_REQUIRE_LIVE").as_deref() == Ok("1") {
            panic!("{X86} is not installed and CAPSD_REQUIRE_LIVE=1");
        }
        eprintln!("skipping: {X86} is not installed");
        return None;
    }
    if !driver_qemu::host::kvm_usable() {
        eprintln!("skipping: /dev/kvm is not usable here, so no KVM run is attempted");
        return None;
    }
    Some(PathBuf::from(X86))
}

fn opts() -> ProbeOptions {
    ProbeOptions {
        process: ProcessOptions {
            // Short enough that the hanging cases end soon; the real QEMU's TCG run opens its
            // socket far sooner even on a loaded machine.
            start_timeout: Duration::from_secs(20),
            qmp: Timeouts { per_command: Duration::from_secs(20), overall: Duration::from_secs(60) },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A wrapper of the real QEMU running `kvm_body` (shell) instead when asked for KVM.
fn wrapper(dir: &Path, name: &str, real: &Path, kvm_body: &str) -> PathBuf {
    let p = dir.join(name);
    let text =
        format!("#!/bin/sh\ncase \"$*\" in\n*accel=kvm*)\n{kvm_body}\n;;\nesac\nexec {} \"$@\"\n", real.display());
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Python sending a QMP greeting on the connection `c`.
const GREETS: &str = r#"c.sendall(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")"#;

/// Python that opens the QMP socket named in the arguments, lets a client connect, touches
/// `marker` (so that a test knows the connection happened), then runs `then`.
fn listen_then(marker: &Path, then: &str) -> String {
    format!(
        "exec python3 -c '
import socket, sys, time, os
arg = sys.argv[sys.argv.index(\"-qmp\") + 1]
path = arg[len(\"unix:\"):].split(\",\")[0]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(1)
c, _ = s.accept()
open(\"{}\", \"w\").close()
{then}
' \"$@\"",
        marker.display()
    )
}

#[test]
fn only_qemu_refusing_kvm_leaves_the_kvm_run_out() {
    let Some(real) = prerequisites() else { return };
    let dir = tempfile::Builder::new().prefix("capsd-accel-").tempdir().unwrap();
    let d = dir.path();

    // Refusals: exits before opening its socket, and exits after a client connected (the
    // client sees the connection reset or closed, as with a real QEMU for a foreign
    // architecture). The probe answers with the TCG run alone.
    let connected = d.join("connected");
    let greeted = d.join("greeted");
    let refusals = [
        (wrapper(d, "refuses-at-once", &real, "echo 'invalid accelerator kvm' >&2\nexit 1"), None),
        (
            wrapper(
                d,
                "refuses-after-connect",
                &real,
                &listen_then(&connected, "sys.stderr.write(\"invalid accelerator kvm\\n\"); os._exit(1)"),
            ),
            Some(&connected),
        ),
        // Greets, then exits 1 before answering qmp_capabilities, as Debian's QEMU does when
        // it cannot load its TCG accelerator module.
        (
            wrapper(d, "refuses-after-greeting", &real, &listen_then(&greeted, &format!("{GREETS}; os._exit(1)"))),
            Some(&greeted),
        ),
    ];
    for (bin, marker) in &refusals {
        let data = probe(bin, &opts()).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        assert!(data.host.kvm_usable);
        assert!(data.run(Accel::Tcg).is_some(), "{}: no TCG run", bin.display());
        assert!(data.run(Accel::Kvm).is_none(), "{}: a KVM run although QEMU refused KVM", bin.display());
        if let Some(m) = marker {
            assert!(m.exists(), "{}: the probe never connected before QEMU exited", bin.display());
        }
    }

    // Failures: the KVM run hangs before its socket, hangs after a client connected, or is
    // crashes. The probe fails, naming the binary; it never answers with TCG's run.
    let m = |name: &str| d.join(format!("{name}.connected"));
    let failures = [
        (wrapper(d, "hangs", &real, "exec sleep 1000"), "did not open its QMP socket"),
        (wrapper(d, "silent", &real, &listen_then(&m("silent"), "time.sleep(1000)")), "greeting"),
        // Exit 0: what QEMU does when SIGTERM ends it (as `systemctl stop` sends it).
        (wrapper(d, "terminated", &real, "exit 0"), "exit status: 0"),
        // Greets, then exits 0 (as on SIGTERM) before answering qmp_capabilities.
        (
            wrapper(d, "ends-after-greeting", &real, &listen_then(&m("greeting"), &format!("{GREETS}; os._exit(0)"))),
            "exit status: 0",
        ),
        // A fault (the emulator may be PID 1 of its own namespace, which signals it sends
        // itself do not end).
        (wrapper(d, "crashes", &real, "exec python3 -c 'import ctypes; ctypes.string_at(0)'"), "signal"),
        (
            wrapper(d, "crashes-after-connect", &real, &listen_then(&m("crash"), "import ctypes; ctypes.string_at(0)")),
            "signal",
        ),
    ];
    for (bin, why) in &failures {
        let e = probe(bin, &opts()).map(|d| d.runs.keys().copied().collect::<Vec<_>>());
        let msg = match e {
            Ok(runs) => panic!("{}: a failed KVM run was taken for no KVM: runs {runs:?}", bin.display()),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(&bin.display().to_string()), "{msg}");
        assert!(msg.contains(why), "{}: {msg:?} does not say {why:?}", bin.display());
    }
    for name in ["silent", "greeting", "crash"] {
        assert!(m(name).exists(), "{name}: the probe never connected to the fake");
    }
}

/// The driver's KVM query starts the KVM run alone first: a hung KVM run fails the query
/// there too, and a refusal answers TCG's document.
#[test]
fn a_kvm_query_fails_when_its_kvm_run_fails() {
    let Some(real) = prerequisites() else { return };
    let dir = tempfile::Builder::new().prefix("capsd-accel-").tempdir().unwrap();
    let d = dir.path();
    // Probing as root (the test's user, whose access to /dev/kvm `prerequisites` checked),
    // not as the probe user a root driver picks.
    let root = driver_qemu::process::ProbeUser::from_name("root").unwrap();
    let driver = QemuDriver::new().with_probe_options(opts()).with_probe_user(root);
    let query = |bin: &Path| Query {
        emulator: Some(bin.to_owned()),
        virt_type: Some("kvm".into()),
        machine: Some("pc".into()),
        ..Default::default()
    };
    let hangs = wrapper(d, "hangs", &real, "exec sleep 1000");
    let e = driver.domain_capabilities(&query(&hangs)).expect_err("a hung KVM run must fail the query");
    assert!(e.to_string().contains("did not open its QMP socket"), "{e}");

    // Refused: no KVM here for this binary, so virttype kvm is not supported (an error, as
    // libvirt's), and the default virt type answers with TCG's document.
    let refuses = wrapper(d, "refuses", &real, "echo 'invalid accelerator kvm' >&2\nexit 1");
    assert!(driver.domain_capabilities(&query(&refuses)).is_err());
    let caps = driver
        .domain_capabilities(&Query { virt_type: None, ..query(&refuses) })
        .unwrap_or_else(|e| panic!("default virt type with KVM refused: {e}"));
    assert_eq!(caps.domain, "qemu");
}

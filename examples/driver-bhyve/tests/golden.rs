//! The bhyve driver against libvirt's own expectations: for the recorded hosts in
//! `tests/data/{basic,uefi,fbuf}` it must reproduce libvirt's `bhyve_*.x86_64.xml` domain
//! capabilities byte for byte (read from /work/shared by path at test time). Also checks the
//! probe results, query errors, and the live path against a fake `bhyve` executable.

#[path = "../../../tests/src/reference.rs"]
mod reference;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use capsd_core::{DomainCapsDriver, DriverError, ErrorKind, Query};
use capsd_driver_bhyve::probe::{probe_caps, BhyveCaps, LiveHost, ReplayHost};
use capsd_driver_bhyve::{BhyveDriver, Source};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn reference(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/libvirt-upstream/domaincaps")
        .join(format!("bhyve_{name}.x86_64.xml"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn replay(name: &str) -> BhyveDriver {
    BhyveDriver::new(Source::Replay { dir: data(name) })
}

fn libvirt_query() -> Query {
    Query {
        emulator: Some("/usr/sbin/bhyve".into()),
        arch: Some("x86_64".into()),
        machine: None,
        virt_type: Some("bhyve".into()),
        libvirt: None,
    }
}

#[test]
fn reproduces_libvirt_byte_for_byte() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    for name in ["basic", "uefi", "fbuf"] {
        let caps = replay(name).domain_capabilities(&libvirt_query()).unwrap();
        let xml = capsd_core::xml::to_xml(&caps);
        assert_eq!(xml, reference(name), "scenario {name}");
        // And the reader agrees with the writer.
        assert_eq!(capsd_core::xml::from_xml(&xml).unwrap(), caps, "scenario {name}");
    }
}

#[test]
fn defaults_match_libvirt_defaults_on_an_x86_64_host() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    if std::env::consts::ARCH != "x86_64" {
        return;
    }
    let caps = replay("basic").domain_capabilities(&Query::default()).unwrap();
    assert_eq!(capsd_core::xml::to_xml(&caps), reference("basic"));
}

#[test]
fn probes_read_each_recording() {
    let caps = |n: &str| probe_caps(&ReplayHost::open(&data(n)).unwrap()).unwrap();
    assert_eq!(caps("basic"), BhyveCaps::default());
    assert_eq!(caps("uefi"), BhyveCaps { rtc_utc: true, lpc_bootrom: true, virtio_rnd: true, ..BhyveCaps::default() });
    assert_eq!(
        caps("fbuf"),
        BhyveCaps {
            rtc_utc: true,
            cpu_topology: true,
            ahci32slot: true,
            net_e1000: true,
            lpc_bootrom: true,
            fbuf: true,
            xhci: true,
            sound_hda: false,
            vnc_password: true,
            virtio_9p: false,
            virtio_rnd: true,
        }
    );
}

#[test]
fn bad_queries_are_refused_with_the_right_kind() {
    let d = replay("fbuf");
    let e = d.domain_capabilities(&Query { virt_type: Some("kvm".into()), ..Query::default() }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(e.to_string(), "invalid virttype 'kvm': the bhyve driver only offers virt type 'bhyve'");
    let e = d.domain_capabilities(&Query { arch: Some("aarch64".into()), ..Query::default() }).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CannotAnswer);
    assert!(e.to_string().contains("arch 'aarch64'"), "{e}");
    let e = d.domain_capabilities(&Query { machine: Some("q35".into()), ..Query::default() }).unwrap_err();
    assert_eq!(e.to_string(), "driver 'bhyve' does not support machine 'q35' (bhyve has no machine types)");
    // A recording answers for its own bhyve binary only.
    let e = d.domain_capabilities(&Query { emulator: Some("/opt/bhyve".into()), ..Query::default() }).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid emulatorbin '/opt/bhyve': not the bhyve binary of this recording (/usr/sbin/bhyve)"
    );
}

#[test]
fn incomplete_recording_names_the_missing_command() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read_to_string(data("uefi").join("transcript.txt")).unwrap();
    let cut = full.split("$ bhyve -s 0,fbuf\n").next().unwrap();
    std::fs::write(dir.path().join("transcript.txt"), cut).unwrap();
    let d = BhyveDriver::new(Source::Replay { dir: dir.path().to_owned() });
    assert!(d.availability().is_available());
    let e = d.domain_capabilities(&Query::default()).unwrap_err();
    assert!(matches!(e, DriverError::ProbeFailed { .. }), "{e}");
    assert!(e.to_string().ends_with("transcript.txt failed: no recording of `bhyve -s 0,fbuf`"), "{e}");

    let none = BhyveDriver::new(Source::Replay { dir: dir.path().join("absent") });
    assert!(!none.availability().is_available());
}

#[test]
fn missing_firmware_directory_gives_a_loader_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read_to_string(data("uefi").join("transcript.txt")).unwrap();
    let t = full.replace(
        "$ ls -a /foo\n.\n..\nbar\nbaz\n",
        "$ ls -a /usr/local/share/uefi-firmware\nls: /usr/local/share/uefi-firmware: No such file or directory\n",
    );
    std::fs::write(dir.path().join("transcript.txt"), t).unwrap();
    let caps =
        BhyveDriver::new(Source::Replay { dir: dir.path().to_owned() }).domain_capabilities(&Query::default()).unwrap();
    let loader = caps.os.unwrap().loader.unwrap();
    assert!(loader.supported.is_yes());
    assert!(loader.values.is_empty());
}

/// The live path: a fake `bhyve` that answers like FreeBSD 12's, spawned for real.
#[test]
fn live_probing_runs_bhyve_and_reads_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let usage = dir.path().join("usage.txt");
    std::fs::write(&usage, "Usage: bhyve [-c [[cpus=]numcpus][,sockets=n]]\n       -u: RTC keeps UTC time\n").unwrap();
    let fake = dir.path().join("bhyve");
    let script = format!(
        "#!/bin/sh\ncase \"$*\" in\n  '-s 0,hda') echo 'pci slot 0:0: unknown device \"hda\"' >&2; exit 1 ;;\n  *) cat '{}' >&2; exit 1 ;;\nesac\n",
        usage.display()
    );
    std::fs::write(&fake, script).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let host = LiveHost { bhyve: fake, config: dir.path().join("bhyve.conf") };
    let caps = probe_caps(&host).unwrap();
    assert!(caps.rtc_utc && caps.cpu_topology && caps.lpc_bootrom && caps.fbuf && caps.vnc_password);
    assert!(!caps.sound_hda);

    let broken = LiveHost { bhyve: dir.path().join("no-such-bhyve"), config: dir.path().join("bhyve.conf") };
    let e = probe_caps(&broken).unwrap_err();
    assert!(e.to_string().contains("no-such-bhyve -h failed: cannot start"), "{e}");
}

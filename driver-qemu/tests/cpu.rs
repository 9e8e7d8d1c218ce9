//! Replay tests of the `<cpu>` element and `<hyperv>` feature (issue 8).
//!
//! The probes are the recordings of `tests/data/qemu-7.2-*.json` (`cargo xtask record-qemu`:
//! Debian's QEMU 7.2 on an AMD EPYC host with KVM; no cpu_map inside: that is libvirt's LGPL
//! data and is read from the host at test time). `tests/data/cpu/libvirt/<case>.xml`
//! are the `<cpu>`/`<hyperv>` parts of libvirt 9.0's `virsh domcapabilities` on that same
//! host. With libvirt's cpu_map installed (`/usr/share/libvirt/cpu_map`, the version of the
//! recording host) the derived elements must equal libvirt's byte for byte; the answer
//! from QEMU alone is checked against `tests/data/cpu/qemu-only/<case>.xml`
//! (`UPDATE_EXPECT=1` rewrites those).

use std::path::{Path, PathBuf};

use capsd_core::{DomainCapabilities, Features};
use driver_qemu::cpu::{cpu_capabilities, host::read_cpu_map_from, hyperv};
use driver_qemu::probe_data::{Accel, ProbeData};

const CPU_MAP: &str = "/usr/share/libvirt/cpu_map";

struct Case {
    name: &'static str,
    recording: &'static str,
    arch: &'static str,
    machine: &'static str,
    accel: Accel,
}

const CASES: &[Case] = &[
    Case {
        name: "x86_64-kvm-default",
        recording: "x86_64",
        arch: "x86_64",
        machine: "pc-i440fx-7.2",
        accel: Accel::Kvm,
    },
    Case { name: "x86_64-kvm-q35", recording: "x86_64", arch: "x86_64", machine: "pc-q35-7.2", accel: Accel::Kvm },
    Case {
        name: "x86_64-tcg-default",
        recording: "x86_64",
        arch: "x86_64",
        machine: "pc-i440fx-7.2",
        accel: Accel::Tcg,
    },
    Case { name: "x86_64-tcg-q35", recording: "x86_64", arch: "x86_64", machine: "pc-q35-7.2", accel: Accel::Tcg },
    Case { name: "i686-kvm-default", recording: "i686", arch: "i686", machine: "pc-i440fx-7.2", accel: Accel::Kvm },
    Case { name: "i686-tcg-default", recording: "i686", arch: "i686", machine: "pc-i440fx-7.2", accel: Accel::Tcg },
    // qemu-system-x86_64 asked for an i686 guest.
    Case {
        name: "x86_64-bin-i686-kvm-default",
        recording: "x86_64",
        arch: "i686",
        machine: "pc-i440fx-7.2",
        accel: Accel::Kvm,
    },
    Case {
        name: "x86_64-bin-i686-tcg-default",
        recording: "x86_64",
        arch: "i686",
        machine: "pc-i440fx-7.2",
        accel: Accel::Tcg,
    },
    Case { name: "aarch64-tcg-virt", recording: "aarch64", arch: "aarch64", machine: "virt-7.2", accel: Accel::Tcg },
    Case {
        name: "s390x-tcg-default",
        recording: "s390x",
        arch: "s390x",
        machine: "s390-ccw-virtio-7.2",
        accel: Accel::Tcg,
    },
    Case { name: "ppc64-tcg-pseries", recording: "ppc64", arch: "ppc64", machine: "pseries-7.2", accel: Accel::Tcg },
];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cpu")
}

/// The probe recording of `qemu-system-<name>` (`cargo xtask record-qemu`).
fn recording(name: &str) -> ProbeData {
    let bin = if name == "i686" { "i386" } else { name };
    let path = data_dir().parent().unwrap().join(format!("qemu-7.2-{bin}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `<cpu>` element and `<hyperv>` line block as capsd-core formats them.
fn render(data: &ProbeData, case: &Case) -> String {
    let cpu = cpu_capabilities(data, case.arch, case.machine, case.accel);
    let hv = hyperv(data, case.arch, case.accel);
    let caps = DomainCapabilities {
        domain: case.accel.virt_type().into(),
        arch: case.arch.into(),
        cpu,
        features: Some(Features { hyperv: hv, ..Default::default() }),
        ..Default::default()
    };
    let xml = capsd_core::xml::to_xml(&caps);
    let mut out = String::new();
    if let (Some(a), Some(b)) = (xml.find("  <cpu>\n"), xml.find("  </cpu>\n")) {
        out.push_str(&xml[a..b + "  </cpu>\n".len()]);
    }
    if let Some(a) = xml.find("    <hyperv") {
        let rest = &xml[a..];
        let end = if rest.starts_with("    <hyperv supported='yes'>") {
            rest.find("    </hyperv>\n").map(|e| e + "    </hyperv>\n".len())
        } else {
            rest.find('\n').map(|e| e + 1)
        };
        out.push_str(&rest[..end.unwrap_or(rest.len())]);
    }
    out
}

fn libvirt_expected(case: &Case) -> String {
    let path = data_dir().join(format!("libvirt/{}.xml", case.name));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // First line is a comment naming the source.
    text.split_once('\n').map(|(_, rest)| rest.to_owned()).unwrap_or_default()
}

#[test]
fn equals_libvirt_with_its_cpu_map() {
    if !Path::new(CPU_MAP).join("index.xml").exists() {
        eprintln!("libvirt's cpu_map is not installed: comparison with libvirt skipped");
        return;
    }
    let map = read_cpu_map_from(Path::new(CPU_MAP)).unwrap();
    let mut failures = Vec::new();
    for case in CASES {
        let mut data = recording(case.recording);
        data.host.cpu_map = Some(map.clone());
        let ours = render(&data, case);
        let theirs = libvirt_expected(case);
        if ours != theirs {
            failures.push(format!("== {}\n--- libvirt\n{theirs}--- capsd\n{ours}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn qemu_only_answer() {
    for case in CASES {
        let data = recording(case.recording);
        assert!(data.host.cpu_map.is_none(), "recordings must not carry libvirt's cpu_map");
        let ours = render(&data, case);
        expect_test::expect_file![data_dir().join(format!("qemu-only/{}.xml", case.name))].assert_eq(&ours);
    }
}

#[test]
fn non_x86_and_tcg_rules() {
    let map = Path::new(CPU_MAP).join("index.xml").exists().then(|| read_cpu_map_from(Path::new(CPU_MAP)).unwrap());
    for rec in ["aarch64", "s390x", "ppc64"] {
        let mut data = recording(rec);
        data.host.cpu_map = map.clone();
        let cpu = cpu_capabilities(&data, rec, "", Accel::Tcg).unwrap();
        // Not native on this x86_64 host: no host-passthrough, no host-model.
        assert!(!cpu.host_passthrough.unwrap().supported.is_yes(), "{rec}");
        assert!(!cpu.host_model.unwrap().supported.is_yes(), "{rec}");
        assert!(cpu.custom.unwrap().models.iter().all(|m| m.name != "host"));
        // No KVM probe of these binaries: no Hyper-V statement.
        assert!(hyperv(&data, rec, Accel::Tcg).is_none());
        // No KVM run recorded: no KVM answer at all.
        assert!(cpu_capabilities(&data, rec, "", Accel::Kvm).is_none());
    }
}

#[test]
fn s390_old_machines_have_no_models_under_kvm() {
    // Same transcript replayed as a KVM run on an s390x host.
    let mut data = recording("s390x");
    let tcg = data.runs.get(&Accel::Tcg).unwrap().clone();
    data.runs.insert(Accel::Kvm, tcg);
    data.host.host_arch = "s390x".into();
    let old = cpu_capabilities(&data, "s390x", "s390-ccw-virtio-2.4", Accel::Kvm).unwrap();
    assert!(old.host_passthrough.unwrap().supported.is_yes());
    assert!(!old.custom.unwrap().supported.is_yes());
    assert!(!old.maximum.unwrap().supported.is_yes());
    let new = cpu_capabilities(&data, "s390x", "s390-ccw-virtio-7.2", Accel::Kvm).unwrap();
    assert!(new.custom.unwrap().supported.is_yes());
}

#[test]
fn blockers_on_request() {
    use driver_qemu::cpu::{cpu_capabilities_with, CpuOptions};
    let mut data = recording("x86_64");
    if Path::new(CPU_MAP).join("index.xml").exists() {
        data.host.cpu_map = Some(read_cpu_map_from(Path::new(CPU_MAP)).unwrap());
    }
    let opts = CpuOptions { blockers: true, ..CpuOptions::default() };
    let cpu = cpu_capabilities_with(&data, "x86_64", "pc-i440fx-7.2", Accel::Kvm, opts).unwrap();
    let models = cpu.custom.unwrap().models;
    let qemu64 = models.iter().find(|m| m.name == "qemu64").unwrap();
    let b = qemu64.blockers.as_ref().unwrap();
    assert_eq!((b.model.as_str(), b.features.as_slice()), ("qemu64", &["pni".to_owned()][..]));
    // Usable models carry none.
    assert!(models.iter().filter(|m| m.usable == capsd_core::Usable::Yes).all(|m| m.blockers.is_none()));
    // The default (libvirt 9.0) prints none.
    let plain = cpu_capabilities(&data, "x86_64", "pc-i440fx-7.2", Accel::Kvm).unwrap();
    assert!(plain.custom.unwrap().models.iter().all(|m| m.blockers.is_none()));
    let xml = capsd_core::xml::to_xml(&DomainCapabilities {
        domain: "kvm".into(),
        arch: "x86_64".into(),
        cpu: cpu_capabilities_with(&data, "x86_64", "pc-i440fx-7.2", Accel::Kvm, opts),
        ..Default::default()
    });
    assert!(xml.contains("<blockers model='qemu64'>\n        <feature name='pni'/>\n      </blockers>"), "{xml}");
}

/// libvirt's cpu_map is LGPL data: no committed recording may carry it (record-qemu strips
/// it; replays read the running host's map).
#[test]
fn no_recording_carries_libvirt_cpu_map() {
    let mut dirs = vec![data_dir().parent().unwrap().to_path_buf()];
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).unwrap();
                assert!(!text.contains("\"cpu_map\":{"), "{} carries libvirt's cpu_map", p.display());
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

/// What `f` logs at warning level and above, and its result.
fn warnings<R>(f: impl FnOnce() -> R) -> (R, String) {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (r, text)
}

/// The whole document of the x86_64 recording for `accel`, for libvirt 11.3, as XML, and
/// the warnings logged while deriving it.
fn document_11_3(data: &ProbeData, accel: Accel) -> (String, String) {
    use driver_qemu::cpu::CpuOptions;
    use driver_qemu::derive::{domain_capabilities_with, ResolvedQuery};
    use driver_qemu::libvirt::{LibvirtVersion, Target};
    let q = ResolvedQuery {
        emulator: "/usr/bin/qemu-system-x86_64".into(),
        arch: "x86_64".into(),
        machine: "pc-i440fx-7.2".into(),
        accel,
    };
    let opts = CpuOptions { target: Target::new(LibvirtVersion::new(11, 3, 0)), ..Default::default() };
    let (doc, log) = warnings(|| domain_capabilities_with(data, &q, opts).unwrap());
    (capsd_core::xml::to_xml(&doc), log)
}

/// A recorded transcript where QEMU failed `query-cpu-definitions` (gave no reply, as when it
/// dies mid-probe): the modes that depend on it are omitted (never `supported='no'`) and the
/// failure is logged.
#[test]
fn a_failed_qmp_command_omits_the_modes_it_decides() {
    use driver_qemu::probe_data::{QmpError, Reply};
    let mut data = recording("x86_64");
    for t in data.runs.values_mut() {
        let e = t.exchanges.iter_mut().find(|e| e.execute == "query-cpu-definitions").unwrap();
        e.reply = Reply::err(QmpError { class: "NoReply".into(), desc: "injected failure".into() });
    }
    for accel in [Accel::Kvm, Accel::Tcg] {
        let (xml, log) = document_11_3(&data, accel);
        for mode in ["maximum", "host-model", "custom"] {
            assert!(!xml.contains(&format!("<mode name='{mode}'")), "{accel:?} {mode}:\n{xml}");
        }
        assert!(xml.contains("<mode name='host-passthrough'"), "{xml}");
        assert!(
            log.contains("WARN") && log.contains("query-cpu-definitions") && log.contains("injected failure"),
            "{log}"
        );
    }
}

/// libvirt's cpu_map there but unusable: host-model and the custom models are omitted with
/// a warning, instead of an answer from QEMU alone or a false "no".
#[test]
fn an_unusable_cpu_map_omits_host_model_and_custom() {
    use driver_qemu::cpu::host::read_cpu_map_in;
    let garbage = tempfile::tempdir().unwrap();
    std::fs::write(garbage.path().join("index.xml"), "\u{0}\u{1}<<not xml").unwrap();
    let unknown = tempfile::tempdir().unwrap();
    std::fs::write(
        unknown.path().join("index.xml"),
        "<cpus><arch name='x86'><models vendor='all'><include filename='x86_all.xml'/></models></arch></cpus>",
    )
    .unwrap();
    let unreadable = tempfile::tempdir().unwrap();
    std::fs::create_dir(unreadable.path().join("index.xml")).unwrap();
    let mut dirs = vec![garbage.path(), unknown.path(), unreadable.path()];
    // Permission 000 stops everyone but root.
    let denied = tempfile::tempdir().unwrap();
    std::fs::write(denied.path().join("index.xml"), "<cpus/>").unwrap();
    if !nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(denied.path(), std::fs::Permissions::from_mode(0o000)).unwrap();
        dirs.push(denied.path());
    }
    for dir in dirs {
        let (read, log) = warnings(|| read_cpu_map_in(dir));
        let error = read.expect_err("an unusable map is an error, not an absent map");
        assert!(log.contains("WARN") && log.contains("cpu_map"), "{log}");
        let mut data = recording("x86_64");
        data.host.cpu_map_error = Some(error.clone());
        for accel in [Accel::Kvm, Accel::Tcg] {
            let (xml, log) = document_11_3(&data, accel);
            assert!(!xml.contains("<mode name='host-model'"), "{error}: {xml}");
            assert!(!xml.contains("<mode name='custom'"), "{error}: {xml}");
            assert!(xml.contains("<mode name='maximum' supported='yes'>"), "{xml}");
            assert!(log.contains("WARN") && log.contains(&error), "{log}");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(denied.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
}

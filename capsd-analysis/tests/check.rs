//! `check` on real domain definitions (produced by virt-install, tests/data/domains) against
//! libvirt-formatted capabilities: this host's libvirt 9.0 outputs and libvirt's upstream
//! test data (read from ../shared/fixtures beside the workspace).

#[path = "../../tests/src/reference.rs"]
mod reference;

use std::path::{Path, PathBuf};

use capsd_analysis::{check, AnalysisError, Domain, Report, Verdict};
use capsd_core::DomainCapabilities;

use Verdict::{Supported as S, Unknown as U, Unsupported as N};

fn shared() -> PathBuf {
    crate::reference::shared_dir().join("fixtures")
}

fn caps(rel: &str) -> DomainCapabilities {
    let p = shared().join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    capsd_core::parse_any(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn domain(name: &str) -> Domain {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/domains").join(name);
    Domain::parse(&std::fs::read_to_string(&p).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn run(dom: &str, caps_rel: &str) -> Report {
    check(&domain(dom), &caps(caps_rel)).unwrap()
}

const HOST_Q35: &str = "libvirt-9.0-host/x86_64-kvm-q35.xml";
const HOST_PC: &str = "libvirt-9.0-host/x86_64-kvm-default.xml";
const HOST_AARCH64: &str = "libvirt-9.0-host/aarch64-tcg-virt.xml";
const UP_Q35: &str = "libvirt-upstream/domaincaps/qemu_11.1.0-q35.x86_64.xml";
const UP_PC: &str = "libvirt-upstream/domaincaps/qemu_11.1.0.x86_64.xml";
const UP_SEV: &str = "libvirt-upstream/domaincaps/qemu_9.2.0-q35.x86_64+amdsev.xml";
const UP_EMPTY: &str = "libvirt-upstream/domaincaps/empty.xml";
const UP_AARCH64: &str = "libvirt-upstream/domaincaps/qemu_11.1.0-virt.aarch64.xml";

/// Every listed path has exactly that verdict (and exists).
fn expect(r: &Report, want: &[(&str, Verdict)]) {
    for (path, v) in want {
        let found: Vec<&capsd_analysis::Finding> = r.findings.iter().filter(|f| f.path == *path).collect();
        assert!(!found.is_empty(), "no finding for {path}; findings:\n{}", r.to_text());
        for f in found {
            assert_eq!(f.verdict, *v, "{path}: {f:?}");
        }
    }
}

#[test]
fn secure_boot_q35_on_libvirt_9_host() {
    let Some(_) = reference::need("fixtures") else { return };
    let r = run("secboot-q35.xml", HOST_Q35);
    expect(
        &r,
        &[
            ("/domain/@type", S),
            ("/domain/os/type/@arch", S),
            ("/domain/os/type/@machine", S), // q35 is QEMU's alias of pc-q35-7.2
            ("/domain/os/@firmware", S),
            // libvirt 9.0 writes no <firmwareFeatures>: no statement, not "no".
            ("/domain/os/firmware/feature[@name='secure-boot']/@enabled", U),
            ("/domain/os/firmware/feature[@name='enrolled-keys']/@enabled", U),
            ("/domain/os/loader/@secure", S),
            ("/domain/cpu/@mode", S),
            ("/domain/devices/disk/target/@bus", S),
            ("/domain/devices/tpm/@model", S),
            ("/domain/devices/tpm/backend/@version", S),
            ("/domain/devices/graphics/@type", S),
            ("/domain/devices/video/model/@type", S),
            ("/domain/devices/redirdev[1]/@bus", S),
            ("/domain/devices/redirdev[2]/@bus", S),
            ("/domain/devices/channel/@type", S),
            // libvirt 9.0 writes no <console> element either.
            ("/domain/devices/console/@type", U),
        ],
    );
    assert!(!r.has_unsupported(), "{}", r.to_text());
    let fw = r.findings.iter().find(|f| f.path.contains("secure-boot")).unwrap();
    assert_eq!(fw.capability, "/domainCapabilities/os/firmwareFeatures");
}

#[test]
fn secure_boot_features_decided_where_firmware_features_are_stated() {
    let Some(_) = reference::need("fixtures") else { return };
    let r = run("secboot-q35.xml", UP_SEV);
    expect(
        &r,
        &[
            ("/domain/os/firmware/feature[@name='secure-boot']/@enabled", S),
            ("/domain/os/firmware/feature[@name='enrolled-keys']/@enabled", S),
            ("/domain/os/type/@machine", S),
        ],
    );
    let f = r.findings.iter().find(|f| f.path.contains("secure-boot")).unwrap();
    assert_eq!(f.capability, "/domainCapabilities/os/firmwareFeatures/enum[@name='secureBoot']");
}

#[test]
fn bios_i440fx_custom_cpu_hyperv_tpm12_virtiofs() {
    let Some(_) = reference::need("fixtures") else { return };
    let r = run("bios-i440fx.xml", HOST_PC);
    expect(
        &r,
        &[
            ("/domain/os/type/@machine", S),
            ("/domain/cpu/@mode", S),
            // Haswell-noTSX is usable='no' on this (Xeon, KVM) host.
            ("/domain/cpu/model", N),
            ("/domain/memoryBacking/source/@type", S),
            ("/domain/devices/disk[1]/target/@bus", S),
            ("/domain/devices/disk[2]/@device", S),
            ("/domain/devices/disk[2]/target/@bus", S),
            ("/domain/devices/filesystem/driver/@type", S),
            ("/domain/devices/tpm/@model", S),
            ("/domain/devices/tpm/backend/@version", S),
            ("/domain/devices/video/model/@type", S),
            // libvirt 9.0 lists only spinlocks and vendor_id for Hyper-V.
            ("/domain/features/hyperv", S),
            ("/domain/features/hyperv/spinlocks", S),
            ("/domain/features/hyperv/vapic", N),
            ("/domain/features/hyperv/relaxed", N),
            // No <panic> element in libvirt 9.0's output.
            ("/domain/devices/panic/@model", U),
        ],
    );
    assert!(r.has_unsupported());
    let cpu = r.findings.iter().find(|f| f.path == "/domain/cpu/model").unwrap();
    assert_eq!(cpu.capability, "/domainCapabilities/cpu/mode[@name='custom']/model[.='Haswell-noTSX']/@usable");

    // Newer libvirt states panic models and all enlightenments.
    let r = run("bios-i440fx.xml", UP_PC);
    expect(
        &r,
        &[
            ("/domain/devices/panic/@model", S),
            ("/domain/features/hyperv/vapic", S),
            ("/domain/features/hyperv/relaxed", S),
            ("/domain/devices/console/@type", S),
        ],
    );
}

#[test]
fn vcpus_over_max_and_empty_pci_backend_enum_are_unsupported() {
    let Some(_) = reference::need("fixtures") else { return };
    let r = run("virtio-video-q35.xml", HOST_Q35);
    expect(
        &r,
        &[
            ("/domain/vcpu", N), // 512 > 288
            ("/domain/iothreads", S),
            ("/domain/cpu/@mode", S),
            ("/domain/devices/video/model/@type", S),
            ("/domain/devices/hostdev/@mode", S),
            ("/domain/devices/hostdev/@type", S),
            // libvirt 9.0 writes <enum name='pciBackend'/>: present and empty lists nothing.
            ("/domain/devices/hostdev/driver/@name", N),
        ],
    );
    let r = run("virtio-video-q35.xml", UP_Q35);
    assert!(r.all_supported(), "{}", r.to_text());
    assert_eq!(r.findings.len(), 12);
}

#[test]
fn uefi_i440fx_and_other_machines() {
    let Some(_) = reference::need("fixtures") else { return };
    let r = run("uefi-i440fx.xml", HOST_PC);
    expect(&r, &[("/domain/os/type/@machine", S), ("/domain/os/@firmware", S), ("/domain/devices/tpm/@model", S)]);
    // Capabilities of another machine or virt type make no statement about this domain.
    let r = run("uefi-i440fx.xml", HOST_Q35);
    expect(&r, &[("/domain/os/type/@machine", U)]);
    let r = run("uefi-i440fx.xml", "libvirt-9.0-host/x86_64-tcg-default.xml");
    expect(&r, &[("/domain/@type", U), ("/domain/os/type/@machine", S)]);
}

#[test]
fn spice_q35() {
    let Some(_) = reference::need("fixtures") else { return };
    let r = run("spice-q35.xml", HOST_Q35);
    expect(
        &r,
        &[
            ("/domain/vcpu", S),
            ("/domain/devices/graphics/@type", S),
            ("/domain/devices/rng/@model", S),
            ("/domain/devices/rng/backend/@model", S),
            ("/domain/devices/redirdev/@bus", S),
        ],
    );
    assert!(!r.has_unsupported());
}

#[test]
fn aarch64_virt() {
    let Some(_) = reference::need("fixtures") else { return };
    let r = run("aarch64-virt.xml", HOST_AARCH64);
    expect(
        &r,
        &[
            ("/domain/@type", S),
            ("/domain/os/type/@arch", S),
            ("/domain/os/type/@machine", S), // virt is the alias of virt-7.2
            ("/domain/os/@firmware", S),
            ("/domain/features/gic/@version", S),
            // TCG cannot tell whether cortex-a57 is usable: usable='unknown'.
            ("/domain/cpu/model", U),
            ("/domain/devices/tpm/backend/@type", S),
        ],
    );
    assert!(!r.has_unsupported());
    // The same domain against x86_64 capabilities: wrong arch and no GIC.
    let r = run("aarch64-virt.xml", HOST_Q35);
    expect(&r, &[("/domain/os/type/@arch", U), ("/domain/features/gic/@version", N), ("/domain/cpu/model", N)]);
    // KVM capabilities do not speak for a TCG (type='qemu') domain.
    let r = run("aarch64-virt.xml", UP_AARCH64);
    // ... and that host's GIC is version 2 only.
    expect(&r, &[("/domain/@type", U), ("/domain/features/gic/@version", N)]);
}

#[test]
fn omitted_elements_are_unknown_never_unsupported() {
    let Some(_) = reference::need("fixtures") else { return };
    // empty.xml omits <vcpu>, <os>, <memoryBacking>, every device, hyperv; it says no to
    // every CPU mode.
    let r = run("bios-i440fx.xml", UP_EMPTY);
    expect(
        &r,
        &[
            ("/domain/vcpu", U),
            ("/domain/memoryBacking/source/@type", U),
            ("/domain/devices/disk[1]/target/@bus", U),
            ("/domain/devices/tpm/@model", U),
            ("/domain/features/hyperv", U),
            ("/domain/cpu/@mode", N),
            ("/domain/os/type/@machine", U),
        ],
    );
    let unsupported: Vec<&str> = r.findings.iter().filter(|f| f.verdict == N).map(|f| f.path.as_str()).collect();
    assert_eq!(unsupported, ["/domain/cpu/@mode", "/domain/cpu/model"]);
    for f in r.findings.iter().filter(|f| f.verdict == U) {
        assert!(f.note.is_some(), "{f:?}");
    }
}

fn synthetic(body: &str) -> Domain {
    Domain::parse(&format!(
        "<domain type='kvm'>\n<os><type arch='x86_64' machine='q35'>hvm</type></os>\n{body}\n</domain>"
    ))
    .unwrap()
}

#[test]
fn launch_security_sev() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = synthetic("<launchSecurity type='sev'><policy>0x0003</policy></launchSecurity>");
    let r = check(&d, &caps(UP_SEV)).unwrap();
    let ls: Vec<(&str, Verdict)> = r
        .findings
        .iter()
        .filter(|f| f.path == "/domain/launchSecurity/@type")
        .map(|f| (f.capability.as_str(), f.verdict))
        .collect();
    assert_eq!(
        ls,
        [
            ("/domainCapabilities/features/launchSecurity/enum[@name='sectype']", S),
            ("/domainCapabilities/features/sev/@supported", S)
        ]
    );
    // libvirt 9.0 on this Intel host: <sev supported='no'/> and no <launchSecurity>.
    let r = check(&d, &caps(HOST_Q35)).unwrap();
    let ls: Vec<Verdict> =
        r.findings.iter().filter(|f| f.path == "/domain/launchSecurity/@type").map(|f| f.verdict).collect();
    assert_eq!(ls, [U, N]);
    // s390-pv is not a sectype the SEV host lists.
    let d = synthetic("<launchSecurity type='s390-pv'/>");
    let r = check(&d, &caps(UP_SEV)).unwrap();
    assert_eq!(r.findings.iter().find(|f| f.path == "/domain/launchSecurity/@type").unwrap().verdict, N);
}

#[test]
fn cpu_features_from_host_model_and_blockers() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = synthetic(
        "<cpu mode='custom'><model>Skylake-Client</model>\
         <feature policy='require' name='vme'/><feature policy='require' name='pni'/>\
         <feature policy='forbid' name='x2apic'/><feature policy='require' name='avx512f'/>\
         <feature policy='disable' name='hle'/></cpu>",
    );
    let r = check(&d, &caps(HOST_Q35)).unwrap();
    expect(
        &r,
        &[
            ("/domain/cpu/feature[@name='vme']/@policy", S), // host-model requires it
            ("/domain/cpu/feature[@name='pni']/@policy", N), // host-model disables it
            ("/domain/cpu/feature[@name='x2apic']/@policy", N), // forbidden but the host has it
            ("/domain/cpu/feature[@name='avx512f']/@policy", U), // not stated
        ],
    );
    assert!(!r.findings.iter().any(|f| f.path.contains("'hle'")), "disable needs nothing");
    // Upstream 11.1 (an AMD EPYC-Turin host-model that does not mention amx-bf16): amx-bf16
    // blocks the Sapphire Rapids models, so the host lacks it; pcid is disabled in the
    // host-model, which decides first.
    let d = synthetic(
        "<cpu><model>Broadwell</model><feature policy='require' name='amx-bf16'/>\
         <feature policy='require' name='pcid'/></cpu>",
    );
    let r = check(&d, &caps(UP_Q35)).unwrap();
    let f = r.findings.iter().find(|f| f.path.contains("'amx-bf16'")).unwrap();
    assert_eq!(f.verdict, N);
    assert!(f.capability.starts_with("/domainCapabilities/cpu/mode[@name='custom']/blockers[@model="), "{f:?}");
    assert!(f.capability.ends_with("/feature[@name='amx-bf16']"), "{f:?}");
    let f = r.findings.iter().find(|f| f.path.contains("'pcid'")).unwrap();
    assert_eq!(
        (f.verdict, f.capability.as_str()),
        (N, "/domainCapabilities/cpu/mode[@name='host-model']/feature[@name='pcid']/@policy")
    );
    let m = r.findings.iter().find(|f| f.path == "/domain/cpu/model").unwrap();
    assert_eq!(m.verdict, N);
    assert!(m.note.as_deref().unwrap().contains("pcid"), "{m:?}");
}

#[test]
fn device_enums_for_crypto_interface_panic_console() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = synthetic(
        "<devices><crypto model='virtio' type='qemu'><backend model='builtin'/></crypto>\
         <interface type='user'><backend type='passt'/></interface>\
         <panic model='pvpanic'/><console type='pty'/><console type='spiceport'/>\
         <hostdev mode='subsystem' type='usb'><source startupPolicy='optional'/></hostdev></devices>",
    );
    let r = check(&d, &caps(UP_Q35)).unwrap();
    expect(
        &r,
        &[
            ("/domain/devices/crypto/@model", S),
            ("/domain/devices/crypto/@type", S),
            ("/domain/devices/crypto/backend/@model", S),
            ("/domain/devices/interface/backend/@type", S),
            ("/domain/devices/panic/@model", S),
            ("/domain/devices/console[1]/@type", S),
            ("/domain/devices/hostdev/source/@startupPolicy", S),
        ],
    );
    let r = check(&d, &caps(HOST_Q35)).unwrap();
    expect(&r, &[("/domain/devices/crypto/@model", U), ("/domain/devices/interface/backend/@type", U)]);
}

#[test]
fn malformed_domains_are_clear_errors() {
    let Some(_) = reference::need("fixtures") else { return };
    let cases: [(&str, usize, &str, &str); 6] = [
        ("<domain type='kvm'>\n  <devices>\n    <disk>\n", 4, "/domain/devices/disk", "truncated"),
        ("<domain type='kvm'>\n<vcpu>many</vcpu>\n</domain>", 2, "/domain/vcpu", "not a vCPU count"),
        ("<!DOCTYPE domain [<!ENTITY e 'x'>]>\n<domain type='kvm'/>", 1, "/", "DTD"),
        ("<domain type='kvm'>\n<name>&e;</name>\n</domain>", 2, "/domain/name", "entity"),
        ("<domainCapabilities/>", 1, "/domainCapabilities", "not <domain>"),
        ("<domain>\n</domain>", 1, "/domain", "no type"),
    ];
    for (input, line, path, msg) in cases {
        let err = Domain::parse(input).and_then(|d| check(&d, &caps(HOST_Q35))).unwrap_err();
        let (l, p) = match &err {
            AnalysisError::Xml(e) => (e.line, e.path.clone()),
            AnalysisError::Domain { line, path, .. } => (*line, path.clone()),
            other => panic!("{other:?}"),
        };
        assert_eq!((l, p.as_str()), (line, path), "{input}: {err}");
        assert!(err.to_string().contains(msg), "{input}: {err}");
    }
}

#[test]
fn sgx_memory_backing_store_and_cca() {
    let Some(_) = reference::need("fixtures") else { return };
    let d = synthetic(
        "<devices><memory model='sgx-epc'><target><size unit='KiB'>16384</size></target></memory>\
         <disk type='file' device='disk'><backingStore type='file'><format type='qcow2'/>\
         <source file='/base.qcow2'/></backingStore><target dev='vda' bus='virtio'/></disk></devices>\
         <launchSecurity type='cca'/>",
    );
    let r = check(&d, &caps("libvirt-upstream/domaincaps/qemu_11.0.0-q35.x86_64+sgx.xml")).unwrap();
    expect(
        &r,
        &[
            ("/domain/devices/memory/@model", S),
            ("/domain/devices/disk/backingStore", S),
            ("/domain/devices/disk/target/@bus", S),
        ],
    );
    let r = check(&d, &caps(HOST_Q35)).unwrap();
    expect(&r, &[("/domain/devices/memory/@model", N), ("/domain/devices/disk/backingStore", S)]);
    // No document here states <cca>: unknown, with the launchSecurity enum deciding no.
    let cca: Vec<(&str, Verdict)> = r
        .findings
        .iter()
        .filter(|f| f.path == "/domain/launchSecurity/@type")
        .map(|f| (f.capability.as_str(), f.verdict))
        .collect();
    assert_eq!(cca, [("/domainCapabilities/features/launchSecurity", U), ("/domainCapabilities/features/cca", U)]);
}

#[test]
fn domain_accessors_make_the_driver_query() {
    let d = domain("aarch64-virt.xml");
    assert_eq!(
        (d.virt_type(), d.arch(), d.machine(), d.emulator()),
        ("qemu", Some("aarch64"), Some("virt"), Some("/usr/bin/qemu-system-aarch64"))
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> String {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/domains/bios-i440fx.xml");
        std::fs::read_to_string(p).unwrap()
    }

    proptest! {
        /// Truncated or corrupted real domain definitions: an error or a report, never a panic,
        /// and every error names a line within the input.
        #[test]
        fn corrupted_domains(cut in 0usize..3000, at in 0usize..3000, junk in "[<>&;'\"/a-z= \n]{0,8}") {
            let Some(_) = reference::need("fixtures") else { return Ok(()) };
            let s = sample();
            let mut t: String = s.chars().take(cut).collect();
            let pos = t.char_indices().nth(at % (t.chars().count() + 1)).map(|(i, _)| i).unwrap_or(t.len());
            t.insert_str(pos, &junk);
            match Domain::parse(&t) {
                Ok(d) => {
                    let _ = check(&d, &caps(HOST_Q35));
                }
                Err(AnalysisError::Xml(e)) => prop_assert!(e.line >= 1 && e.line <= t.lines().count().max(1) + 1, "{e}"),
                Err(AnalysisError::Domain { line, .. }) => prop_assert!(line >= 1),
                Err(other) => prop_assert!(false, "unexpected error {other}"),
            }
        }
    }
}

#[test]
fn many_cpu_features_are_decided_from_one_index() {
    // 30,000 host-model features and as many in the domain: each domain feature used to be
    // searched for in the whole list (quadratic).
    let n = 30_000;
    let feats: String = (0..n)
        .map(|i| format!("<feature policy='{}' name='f{i}'/>", if i % 2 == 0 { "require" } else { "disable" }))
        .collect();
    let caps = capsd_core::xml::from_xml(&format!(
        "<domainCapabilities><domain>kvm</domain><arch>x86_64</arch><cpu>\
         <mode name='host-model' supported='yes'><model>Skylake-Client</model>{feats}</mode>\
         <mode name='custom' supported='yes'><model usable='no'>Old</model>\
         <blockers model='Old'><feature name='gone'/></blockers></mode></cpu></domainCapabilities>"
    ))
    .unwrap();
    let wanted: String = (0..n).map(|i| format!("<feature policy='require' name='f{i}'/>")).collect();
    let d = Domain::parse(&format!(
        "<domain type='kvm'><cpu mode='host-model'>{wanted}<feature policy='forbid' name='gone'/>\
         <feature policy='require' name='unstated'/></cpu></domain>"
    ))
    .unwrap();
    let r = check(&d, &caps).unwrap();
    // The domain type and the mode, every feature, 'gone' and 'unstated'.
    assert_eq!(r.findings.len(), 2 + n + 2);
    assert_eq!((r.count(S), r.count(N), r.count(U)), (2 + n / 2 + 1, n / 2, 1));
    let gone = r.findings.iter().find(|f| f.path.contains("'gone'")).unwrap();
    assert_eq!(
        gone.capability,
        "/domainCapabilities/cpu/mode[@name='custom']/blockers[@model='Old']/feature[@name='gone']"
    );
}

#[test]
fn many_devices_against_long_enums_are_checked_from_an_index() {
    // 20,000 disks against a 40,000-value bus enum among 40 enums: a search per disk, and a
    // note per unlisted value repeating the whole list, took 30 s.
    let n = 40_000;
    let vals: String = (0..n).map(|i| format!("<value>b{i}</value>")).collect();
    let others: String = (0..40).map(|i| format!("<enum name='x{i}'/>")).collect();
    let caps = capsd_core::xml::from_xml(&format!(
        "<domainCapabilities><domain>kvm</domain><arch>x86_64</arch><devices><disk supported='yes'>\
         {others}<enum name='bus'>{vals}</enum></disk></devices></domainCapabilities>"
    ))
    .unwrap();
    let disks: String = (0..20_000).map(|i| format!("<disk><target bus='b{}'/></disk>", i * 3)).collect();
    let d = Domain::parse(&format!("<domain type='kvm'><devices>{disks}</devices></domain>")).unwrap();
    let r = check(&d, &caps).unwrap();
    // b0, b3, ... b39999 are listed (13,334 of them), the rest are not.
    assert_eq!((r.count(S), r.count(N), r.count(U)), (1 + 13_334, 20_000 - 13_334, 0));
    let last = r.findings.last().unwrap();
    assert_eq!((last.value.as_str(), last.verdict), ("b59997", N));
    assert_eq!(last.capability, "/domainCapabilities/devices/disk/enum[@name='bus']");
    assert_eq!(last.note.as_deref(), Some("not among the 40000 values listed"));
}

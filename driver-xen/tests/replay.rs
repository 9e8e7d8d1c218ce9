//! Replay tests: recorded Xen hosts (`tests/data/<host>/root` + `commands/`) go through the
//! driver; the two upstream libvirt fixtures must come out byte for byte, the rest is
//! checked against golden files (`UPDATE_EXPECT=1` rewrites them).

#[path = "../../tests/src/reference.rs"]
mod reference;

use std::path::{Path, PathBuf};

use capsd_core::xml::{from_xml, to_xml};
use capsd_core::{Availability, DomainCapsDriver, DriverError, EnumList, Query};
use driver_xen::{XenDriver, XenHost, XlInfo};

fn data(host: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(host)
}

fn driver(host: &str) -> XenDriver {
    XenDriver::with_root(data(host).join("root")).expect("recorded host loads")
}

fn upstream_fixture(name: &str) -> String {
    // The repository root is the parent of this crate; shared/ sits beside the repository.
    let p = crate::reference::shared_dir().join("fixtures/libvirt-upstream/domaincaps").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn query(emulator: Option<&str>, arch: Option<&str>, machine: Option<&str>, virt: Option<&str>) -> Query {
    Query {
        emulator: emulator.map(PathBuf::from),
        arch: arch.map(str::to_owned),
        machine: machine.map(str::to_owned),
        virt_type: virt.map(str::to_owned),
        libvirt: None,
    }
}

/// The inputs of libvirt's domaincapstest for libxl: emulator, machine, arch, virt type.
fn upstream_query(machine: &str) -> Query {
    query(Some("/usr/bin/qemu-system-x86_64"), Some("x86_64"), Some(machine), Some("xen"))
}

#[test]
fn xenfv_reproduces_upstream_fixture_byte_for_byte() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    let caps = driver("upstream-4.17-x86_64").domain_capabilities(&upstream_query("xenfv")).unwrap();
    let expected = upstream_fixture("libxl-xenfv.xml");
    assert_eq!(to_xml(&caps), expected);
    assert_eq!(from_xml(&expected).unwrap(), caps);
}

#[test]
fn xenpv_reproduces_upstream_fixture_byte_for_byte() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    let caps = driver("upstream-4.17-x86_64").domain_capabilities(&upstream_query("xenpv")).unwrap();
    let expected = upstream_fixture("libxl-xenpv.xml");
    assert_eq!(to_xml(&caps), expected);
    assert_eq!(from_xml(&expected).unwrap(), caps);
}

#[test]
fn xenpvh_golden() {
    let caps = driver("upstream-4.17-x86_64").domain_capabilities(&upstream_query("xenpvh")).unwrap();
    // PVH: PV vCPU limit, no loader, no hostdev (no device model to pass devices through).
    assert_eq!(caps.vcpu.unwrap().max, 512);
    assert!(caps.devices.as_ref().unwrap().hostdev.is_none());
    expect_test::expect_file!["data/upstream-4.17-x86_64/xenpvh.xml"].assert_eq(&to_xml(&caps));
}

#[test]
fn debian_host_defaults_and_paths() {
    let d = driver("debian-4.17-x86_64");
    assert_eq!(d.availability(), Availability::Available);
    let caps = d.domain_capabilities(&Query::default()).unwrap();
    assert_eq!(caps.machine.as_deref(), Some("xenpv"));
    assert_eq!(caps.arch, "x86_64");
    assert_eq!(caps.path.as_deref(), Some("/usr/libexec/xen-qemu-system-i386"));
    expect_test::expect_file!["data/debian-4.17-x86_64/default.xml"].assert_eq(&to_xml(&caps));

    let fv = d.domain_capabilities(&query(None, None, Some("xenfv"), None)).unwrap();
    let loader = fv.os.as_ref().unwrap().loader.as_ref().unwrap();
    assert_eq!(loader.values, ["/usr/lib/xen-4.17/boot/hvmloader", "/usr/share/ovmf/OVMF.fd"]);
    expect_test::expect_file!["data/debian-4.17-x86_64/xenfv.xml"].assert_eq(&to_xml(&fv));
}

#[test]
fn wrong_virt_type_arch_and_machine_are_not_supported_naming_the_value() {
    let d = driver("upstream-4.17-x86_64");
    let cases = [
        (query(None, None, None, Some("kvm")), "'kvm'"),
        (query(None, Some("aarch64"), None, None), "'aarch64'"),
        (query(None, None, Some("pc-q35-7.2"), None), "'pc-q35-7.2'"),
        // i686 exists only as HVM on this host: no PV machine for it.
        (query(None, Some("i686"), Some("xenpv"), None), "'xenpv'"),
    ];
    for (q, needle) in cases {
        let err = d.domain_capabilities(&q).unwrap_err();
        assert!(matches!(err, DriverError::NotSupported { .. }), "{q}: {err}");
        assert!(err.to_string().contains(needle), "{q}: {err}");
    }
    // i686 HVM guests are offered: default machine for them is xenfv.
    let caps = d.domain_capabilities(&query(None, Some("i686"), None, None)).unwrap();
    assert_eq!(caps.machine.as_deref(), Some("xenfv"));
    assert_eq!(caps.arch, "i686");
}

#[test]
fn missing_emulator_is_invalid_input() {
    let err = driver("upstream-4.17-x86_64")
        .domain_capabilities(&query(Some("/usr/bin/qemu-system-nope"), None, None, None))
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidInput { .. }), "{err}");
    assert!(err.to_string().contains("/usr/bin/qemu-system-nope"), "{err}");
}

#[test]
fn domu_is_unavailable() {
    let d = driver("domu-x86_64");
    match d.availability() {
        Availability::Unavailable { reason } => assert!(reason.contains("control_d"), "{reason}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    let err = d.domain_capabilities(&Query::default()).unwrap_err();
    assert!(matches!(err, DriverError::Unavailable { .. }), "{err}");
}

#[test]
fn xl_info_without_recording_is_a_probe_failure() {
    // Same tree as the upstream host, but no commands/ beside it: use an empty runner.
    let runner = std::sync::Arc::new(driver_xen::RecordedRunner::from_map(Default::default()));
    let d = XenDriver::with_root_and_runner(data("upstream-4.17-x86_64").join("root"), runner);
    assert_eq!(d.availability(), Availability::Available);
    let err = d.domain_capabilities(&Query::default()).unwrap_err();
    assert!(matches!(err, DriverError::ProbeFailed { .. }), "{err}");
    assert!(err.to_string().contains("xl-info"), "{err}");
}

fn recorded_facts() -> XenHost {
    driver("upstream-4.17-x86_64").facts().unwrap()
}

fn with_xl_info(mut host: XenHost, edit: impl Fn(&str) -> String) -> XenHost {
    let text = std::fs::read_to_string(data("upstream-4.17-x86_64").join("commands/xl-info.out")).unwrap();
    host.xl_info = Some(XlInfo::parse(&edit(&text)).unwrap());
    host
}

fn replace_field(text: &str, field: &str, value: &str) -> String {
    text.lines()
        .map(
            |l| {
                if l.split(':').next().unwrap().trim() == field {
                    format!("{field:<23}: {value}")
                } else {
                    l.to_owned()
                }
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn facts_decide_pci_usb_and_pvh() {
    // No IOMMU: no PCI passthrough for either machine.
    let host = with_xl_info(recorded_facts(), |t| replace_field(t, "virt_caps", "pv hvm hap shadow"));
    let d = XenDriver::from_facts(host);
    for m in ["xenfv", "xenpv"] {
        let caps = d.domain_capabilities(&query(None, None, Some(m), None)).unwrap();
        let hostdev = caps.devices.unwrap().hostdev.unwrap();
        assert_eq!(hostdev.enums.enum_values("subsysType").unwrap(), ["usb"], "{m}");
    }

    // Xen 4.6: no PVUSB (4.7) and no PVH (4.10).
    let host = with_xl_info(recorded_facts(), |t| {
        replace_field(&replace_field(t, "xen_minor", "6"), "virt_caps", "hvm hvm_directio")
    });
    let d = XenDriver::from_facts(host);
    let caps = d.domain_capabilities(&query(None, None, Some("xenfv"), None)).unwrap();
    let hostdev = caps.devices.unwrap().hostdev.unwrap();
    assert_eq!(hostdev.enums.enum_values("subsysType").unwrap(), ["pci"]);
    // Old-style virt_caps: hvm_directio stands for the IOMMU, PV passthrough too.
    let caps = d.domain_capabilities(&query(None, None, Some("xenpv"), None)).unwrap();
    assert_eq!(caps.devices.unwrap().hostdev.unwrap().enums.enum_values("subsysType").unwrap(), ["pci"]);
    let err = d.domain_capabilities(&query(None, None, Some("xenpvh"), None)).unwrap_err();
    assert!(err.to_string().contains("'xenpvh'"), "{err}");
}

#[test]
fn facts_decide_machines_offered() {
    // No VT-x/SVM: Xen lists no hvm flavour, so only xenpv exists.
    let host = with_xl_info(recorded_facts(), |t| replace_field(t, "xen_caps", "xen-3.0-x86_64"));
    let d = XenDriver::from_facts(host);
    let err = d.domain_capabilities(&query(None, None, Some("xenfv"), None)).unwrap_err();
    assert!(matches!(err, DriverError::NotSupported { .. }) && err.to_string().contains("offered: xenpv"), "{err}");

    // Xen built without PV support: the default machine becomes xenfv.
    let host = with_xl_info(recorded_facts(), |t| replace_field(t, "xen_caps", "hvm-3.0-x86_32 hvm-3.0-x86_64"));
    let caps = XenDriver::from_facts(host).domain_capabilities(&Query::default()).unwrap();
    assert_eq!(caps.machine.as_deref(), Some("xenfv"));
    assert_eq!(caps.vcpu.unwrap().max, 128);
}

#[test]
fn firmware_list_follows_files() {
    let mut host = recorded_facts();
    assert_eq!(host.firmwares, ["/usr/lib/xen/boot/hvmloader", "/usr/lib/xen/boot/ovmf.bin"]);
    host.firmwares.truncate(1);
    let caps = XenDriver::from_facts(host).domain_capabilities(&query(None, None, Some("xenfv"), None)).unwrap();
    assert_eq!(caps.os.unwrap().loader.unwrap().values, ["/usr/lib/xen/boot/hvmloader"]);
}

/// This machine: the driver must say Unavailable exactly when the host is not Xen dom0.
#[test]
fn live_host_availability_matches_sysfs() {
    let d = XenDriver::new();
    let on_xen = std::fs::read_to_string("/sys/hypervisor/type").map(|s| s.trim() == "xen").unwrap_or(false);
    match d.availability() {
        Availability::Unavailable { reason } => {
            assert!(!reason.is_empty());
            let err = d.domain_capabilities(&Query::default()).unwrap_err();
            assert!(matches!(err, DriverError::Unavailable { .. }), "{err}");
        }
        Availability::Available => assert!(on_xen, "available on a host whose /sys/hypervisor/type is not xen"),
    }
    if !on_xen {
        assert!(!d.availability().is_available());
    }
}

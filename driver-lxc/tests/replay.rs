//! Replay tests on recorded roots: golden documents (`UPDATE_EXPECT=1` rewrites them), all
//! valid against the schema, and single facts changed in a copy of a root to see the
//! document follow.

#[path = "../../tests/src/reference.rs"]
mod reference;

mod common;

use std::path::PathBuf;

use capsd_core::xml::to_xml;
use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, EnumList, Query};
use common::{assert_valid, copy_root, data_root};
use driver_lxc::LxcDriver;

fn caps_of(root: &std::path::Path) -> DomainCapabilities {
    LxcDriver::with_root(root).domain_capabilities(&Query::default()).unwrap()
}

fn os_enum(caps: &DomainCapabilities, name: &str) -> Option<Vec<String>> {
    caps.os.as_ref().unwrap().enums.enum_values(name).map(<[String]>::to_vec)
}

fn dev_enum(caps: &DomainCapabilities, dev: &str, name: &str) -> Option<Vec<String>> {
    caps.devices.as_ref().unwrap().get(dev).and_then(|d| d.enums.enum_values(name)).map(<[String]>::to_vec)
}

#[test]
fn debian_cgroup2_golden_and_valid() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/schemas") else { return };
    let caps = caps_of(&data_root("debian12-cgroup2"));
    let xml = to_xml(&caps);
    assert_valid(&xml);
    expect_test::expect_file!["data/debian12-cgroup2/caps.xml"].assert_eq(&xml);
    assert_eq!(caps.path.as_deref(), Some("/usr/lib/libvirt/libvirt_lxc"));
    assert_eq!(caps.vcpu.unwrap().max, 4);
    assert_eq!(os_enum(&caps, "cgroup").unwrap(), ["v2"]);
    // modules.dep lists nbd, but qemu-nbd is not installed: no nbd driver.
    assert_eq!(dev_enum(&caps, "filesystem", "driverType").unwrap(), ["path", "loop"]);
}

#[test]
fn snapshot_cgroup1_golden_and_valid() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/schemas") else { return };
    let caps = caps_of(&data_root("snapshot-cgroup1"));
    let xml = to_xml(&caps);
    assert_valid(&xml);
    expect_test::expect_file!["data/snapshot-cgroup1/caps.xml"].assert_eq(&xml);
    assert_eq!(os_enum(&caps, "cgroup").unwrap(), ["v1"]);
    // The kernel config (gzip) says CONFIG_BLK_DEV_NBD is not set.
    assert_eq!(dev_enum(&caps, "filesystem", "driverType").unwrap(), ["path", "loop"]);
}

#[test]
fn missing_net_namespace_removes_networking() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/schemas") else { return };
    let root = copy_root("debian12-cgroup2");
    std::fs::remove_file(root.path().join("proc/self/ns/net")).unwrap();
    let caps = caps_of(root.path());
    assert_valid(&to_xml(&caps));
    let iface = caps.devices.as_ref().unwrap().interface.as_ref().unwrap();
    assert!(!iface.supported.is_yes() && iface.enums.is_empty());
    assert_eq!(dev_enum(&caps, "hostdev", "capsType").unwrap(), ["storage", "misc"]);
    assert!(!os_enum(&caps, "namespaces").unwrap().contains(&"net".to_owned()));
}

#[test]
fn cgroup_v1_instead_of_v2_changes_the_document() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/schemas") else { return };
    let root = copy_root("debian12-cgroup2");
    let before = caps_of(root.path());
    let cg = root.path().join("sys/fs/cgroup");
    std::fs::remove_dir_all(&cg).unwrap();
    for c in ["cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio"] {
        std::fs::create_dir_all(cg.join(c)).unwrap();
    }
    let after = caps_of(root.path());
    assert_valid(&to_xml(&after));
    assert_eq!(os_enum(&before, "cgroup").unwrap(), ["v2"]);
    assert_eq!(os_enum(&after, "cgroup").unwrap(), ["v1"]);
    assert_eq!(
        os_enum(&after, "cgroupControllers").unwrap(),
        ["blkio", "cpu", "cpuacct", "cpuset", "freezer", "memory", "pids"]
    );
    // v1 without the devices controller: no device node access (CONFIG_CGROUP_BPF no
    // longer matters), so no block file systems and no storage/misc/usb host devices.
    assert_eq!(dev_enum(&before, "filesystem", "type").unwrap(), ["mount", "block", "file", "ram"]);
    assert_eq!(dev_enum(&after, "filesystem", "type").unwrap(), ["mount", "file", "ram"]);
    assert_eq!(dev_enum(&after, "hostdev", "capsType").unwrap(), ["net"]);
    assert_eq!(dev_enum(&after, "hostdev", "subsysType").unwrap(), Vec::<String>::new());
    // With the devices controller, they come back.
    std::fs::create_dir_all(cg.join("devices")).unwrap();
    let with_devices = caps_of(root.path());
    assert_eq!(dev_enum(&with_devices, "hostdev", "capsType").unwrap(), ["storage", "misc", "net"]);
    assert_eq!(dev_enum(&with_devices, "hostdev", "subsysType").unwrap(), ["usb"]);
}

#[test]
fn user_namespace_knobs() {
    let root = copy_root("debian12-cgroup2");
    assert_eq!(os_enum(&caps_of(root.path()), "userns").unwrap(), ["idmap", "unprivileged"]);
    std::fs::write(root.path().join("proc/sys/kernel/unprivileged_userns_clone"), "0\n").unwrap();
    assert_eq!(os_enum(&caps_of(root.path()), "userns").unwrap(), ["idmap"]);
    std::fs::write(root.path().join("proc/sys/user/max_user_namespaces"), "0\n").unwrap();
    assert_eq!(os_enum(&caps_of(root.path()), "userns").unwrap(), Vec::<String>::new());
    std::fs::remove_file(root.path().join("proc/sys/user/max_user_namespaces")).unwrap();
    assert_eq!(os_enum(&caps_of(root.path()), "userns"), None, "unknown limit: no statement");
}

#[test]
fn unreadable_proc_filesystems_states_nothing_about_the_console() {
    let root = copy_root("debian12-cgroup2");
    std::fs::remove_file(root.path().join("proc/filesystems")).unwrap();
    let caps = caps_of(root.path());
    let devices = caps.devices.as_ref().unwrap();
    assert_eq!(devices.console, None, "devpts unknown: no statement, not supported='no'");
    // Values only a listed file system proves stay out; the element itself is still stated.
    assert_eq!(dev_enum(&caps, "filesystem", "type").unwrap(), ["mount", "block", "file"]);
    assert_eq!(dev_enum(&caps, "filesystem", "procViews").unwrap(), Vec::<String>::new());
}

#[test]
fn fuse_devpts_and_modules_follow_files() {
    let root = copy_root("debian12-cgroup2");
    assert_eq!(dev_enum(&caps_of(root.path()), "filesystem", "procViews").unwrap(), ["meminfo"]);
    std::fs::remove_file(root.path().join("dev/fuse")).unwrap();
    assert_eq!(dev_enum(&caps_of(root.path()), "filesystem", "procViews").unwrap(), Vec::<String>::new());

    std::fs::remove_file(root.path().join("dev/ptmx")).unwrap();
    let caps = caps_of(root.path());
    assert!(!caps.devices.as_ref().unwrap().console.as_ref().unwrap().supported.is_yes());

    // qemu-nbd installed: the nbd driver (module in modules.dep, CONFIG_BLK_DEV_NBD=m) appears.
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::write(root.path().join("usr/bin/qemu-nbd"), "").unwrap();
    assert_eq!(dev_enum(&caps_of(root.path()), "filesystem", "driverType").unwrap(), ["path", "loop", "nbd"]);

    // Kernel config without macvlan: no direct interfaces.
    let cfg = root.path().join("boot/config-6.1.0-18-amd64");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("CONFIG_MACVLAN=m\n", "");
    std::fs::write(&cfg, text).unwrap();
    assert_eq!(dev_enum(&caps_of(root.path()), "interface", "type").unwrap(), ["network", "bridge", "ethernet"]);
}

#[test]
fn missing_required_namespace_is_unavailable() {
    let root = copy_root("debian12-cgroup2");
    std::fs::remove_file(root.path().join("proc/self/ns/pid")).unwrap();
    let d = LxcDriver::with_root(root.path());
    match d.availability() {
        Availability::Unavailable { reason } => assert!(reason.contains("pid"), "{reason}"),
        a => panic!("expected unavailable, got {a:?}"),
    }
    let err = d.domain_capabilities(&Query::default()).unwrap_err();
    assert!(matches!(err, DriverError::Unavailable { .. }), "{err}");
}

#[test]
fn no_cgroups_is_unavailable() {
    let root = copy_root("debian12-cgroup2");
    std::fs::remove_dir_all(root.path().join("sys/fs/cgroup")).unwrap();
    match LxcDriver::with_root(root.path()).availability() {
        Availability::Unavailable { reason } => assert!(reason.contains("cgroup"), "{reason}"),
        a => panic!("expected unavailable, got {a:?}"),
    }
}

#[test]
fn missing_libvirt_lxc_omits_path() {
    let root = copy_root("debian12-cgroup2");
    std::fs::remove_file(root.path().join("usr/lib/libvirt/libvirt_lxc")).unwrap();
    let caps = caps_of(root.path());
    assert_eq!(caps.path, None);
    assert!(!to_xml(&caps).contains("<path>"));
}

#[test]
fn queries_it_cannot_answer_name_the_value() {
    let d = LxcDriver::with_root(data_root("debian12-cgroup2"));
    let cases = [
        (Query { virt_type: Some("kvm".into()), ..Query::default() }, "'kvm'"),
        (Query { arch: Some("aarch64".into()), ..Query::default() }, "'aarch64'"),
        (Query { machine: Some("q35".into()), ..Query::default() }, "'q35'"),
    ];
    for (q, needle) in cases {
        let err = d.domain_capabilities(&q).unwrap_err();
        assert!(matches!(err, DriverError::NotSupported { .. }), "{q}: {err}");
        assert!(err.to_string().contains(needle), "{q}: {err}");
    }
    let ok = Query { virt_type: Some("lxc".into()), arch: Some("x86_64".into()), ..Query::default() };
    assert_eq!(d.domain_capabilities(&ok).unwrap().arch, "x86_64");

    let err = d
        .domain_capabilities(&Query { emulator: Some(PathBuf::from("/usr/bin/nope")), ..Query::default() })
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidInput { .. }) && err.to_string().contains("/usr/bin/nope"), "{err}");
}

#[test]
fn malformed_host_file_is_a_probe_failure_naming_it() {
    let root = copy_root("debian12-cgroup2");
    std::fs::write(root.path().join("sys/devices/system/cpu/online"), "zero-three\n").unwrap();
    let err = LxcDriver::with_root(root.path()).domain_capabilities(&Query::default()).unwrap_err();
    assert!(matches!(err, DriverError::ProbeFailed { .. }), "{err}");
    assert!(err.to_string().contains("cpu/online"), "{err}");
}

/// Every enum of every recorded document is either one libvirt documents with that name on
/// that element, or declared in `LXC_ENUMS` with its values.
#[test]
fn enums_used_are_declared() {
    let libvirt: &[(&str, &str)] = &[
        ("devices/hostdev", "mode"),
        ("devices/hostdev", "subsysType"),
        ("devices/hostdev", "capsType"),
        ("devices/filesystem", "driverType"),
        ("devices/console", "type"),
    ];
    for root in ["debian12-cgroup2", "snapshot-cgroup1"] {
        let caps = caps_of(&data_root(root));
        let mut lists: Vec<(String, Vec<capsd_core::Enum>)> = vec![("os".into(), caps.os.clone().unwrap().enums)];
        for (name, el) in caps.devices.as_ref().unwrap().iter() {
            lists.push((format!("devices/{name}"), el.enums.clone()));
        }
        for (element, enums) in lists {
            for e in enums {
                if libvirt.contains(&(element.as_str(), e.name.as_str())) {
                    continue;
                }
                let decl = driver_lxc::caps::LXC_ENUMS
                    .iter()
                    .find(|(el, n, _)| *el == element && *n == e.name)
                    .unwrap_or_else(|| panic!("{root}: <{element}> enum '{}' is not declared", e.name));
                if let Some(allowed) = decl.2 {
                    for v in &e.values {
                        assert!(allowed.contains(&v.as_str()), "{root}: <{element}> enum '{}' value '{v}'", e.name);
                    }
                }
            }
        }
    }
}

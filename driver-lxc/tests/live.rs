//! The real host: the document for this machine validates against the schema, and its
//! values agree with the host files read independently here.

#[path = "../../tests/src/reference.rs"]
mod reference;

mod common;

use capsd_core::xml::to_xml;
use capsd_core::{DomainCapsDriver, EnumList, Query};
use driver_lxc::LxcDriver;

#[test]
fn live_document_validates_and_matches_host() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/schemas") else { return };
    let d = LxcDriver::new();
    assert!(d.availability().is_available(), "{:?}", d.availability());
    let caps = d.domain_capabilities(&Query::default()).unwrap();
    let xml = to_xml(&caps);
    common::assert_valid(&xml);

    assert_eq!(caps.domain, "lxc");
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let n = driver_lxc::host::count_cpu_list(&online).unwrap();
    assert_eq!(caps.vcpu.unwrap().max, n);
    if let Ok(arch) = std::fs::read_to_string("/proc/sys/kernel/arch") {
        assert_eq!(caps.arch, arch.trim());
    }
    let ns = caps.os.as_ref().unwrap().enums.enum_values("namespaces").unwrap().to_vec();
    for n in &ns {
        assert!(std::path::Path::new("/proc/self/ns").join(n).exists(), "{n}");
    }
    let has_lxc = std::path::Path::new("/usr/lib/libvirt/libvirt_lxc").is_file();
    assert_eq!(caps.path.is_some(), has_lxc || std::path::Path::new("/usr/libexec/libvirt_lxc").is_file());
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cg = caps.os.as_ref().unwrap().enums.enum_values("cgroup").unwrap().to_vec();
    assert_eq!(cg, [if v2 { "v2" } else { "v1" }]);
}

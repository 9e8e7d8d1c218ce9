//! From [`LxcHost`] facts and a [`Query`] to a [`DomainCapabilities`] document for a
//! container domain. libvirt defines no domain capabilities for LXC; this module defines
//! them in the same document format, valid against `domaincaps.rng`. The mapping (which
//! fact decides which value) is the table in the crate documentation.

use capsd_core::{Devices, DomainCapabilities, DriverError, EnumElement, Flag, Os, Query, Support, Vcpu};

use crate::host::{CgroupLayout, LxcHost};

pub(crate) const DRIVER: &str = "lxc";

/// The enums this driver defines beyond the ones libvirt documents for each element, as
/// `(element, enum name, values)`; the element is named as in the conformance suite (`os`,
/// `devices/filesystem`, ...) and `None` means the values are an open list. A checker of
/// enum names (capsd-tests) can accept these for `<domain>lxc</domain>` documents. Enums
/// the document uses with libvirt's own names (hostdev `mode`, `subsysType`, `capsType`;
/// filesystem `driverType`; console `type`) are not repeated here.
pub const LXC_ENUMS: &[(&str, &str, Option<&[&str]>)] = &[
    ("os", "type", Some(&["exe"])),
    ("os", "namespaces", Some(&crate::host::NAMESPACES)),
    ("os", "userns", Some(&["idmap", "unprivileged"])),
    ("os", "cgroup", Some(&["v1", "v2"])),
    ("os", "cgroupControllers", None),
    ("devices/filesystem", "type", Some(&["mount", "block", "file", "ram"])),
    ("devices/filesystem", "procViews", Some(&["meminfo"])),
    ("devices/interface", "type", Some(&["network", "bridge", "ethernet", "direct"])),
];

/// Namespaces without which no container can start.
pub const REQUIRED_NAMESPACES: [&str; 4] = ["mnt", "uts", "ipc", "pid"];

/// Whether the host can run containers at all; `Err(reason)` when not.
pub fn check_usable(host: &LxcHost) -> Result<(), String> {
    let missing: Vec<&str> = REQUIRED_NAMESPACES.iter().copied().filter(|n| !host.has_namespace(n)).collect();
    if !missing.is_empty() {
        return Err(format!("the kernel lacks the {} namespace(s) (/proc/self/ns)", missing.join(", ")));
    }
    if host.cgroups.is_none() {
        return Err("no cgroup hierarchy is mounted at /sys/fs/cgroup".to_owned());
    }
    Ok(())
}

/// The architecture of the host: `/proc/sys/kernel/arch`, else `fallback`.
pub fn host_arch(host: &LxcHost, fallback: Option<&str>) -> Result<String, DriverError> {
    host.arch
        .clone()
        .or_else(|| fallback.map(str::to_owned))
        .ok_or_else(|| DriverError::probe_failed("/proc/sys/kernel/arch", "absent: the host architecture is not known"))
}

/// Check the query: virt type `lxc`, the host arch, no machine. Returns the arch.
pub fn check_query(query: &Query, arch: &str) -> Result<(), DriverError> {
    if let Some(vt) = &query.virt_type {
        if vt != "lxc" {
            return Err(DriverError::not_supported(DRIVER, format!("virttype '{vt}' (this driver offers only 'lxc')")));
        }
    }
    if let Some(a) = &query.arch {
        if a != arch {
            return Err(DriverError::not_supported(
                DRIVER,
                format!("arch '{a}' (containers run on the host architecture, {arch})"),
            ));
        }
    }
    if let Some(m) = &query.machine {
        return Err(DriverError::not_supported(DRIVER, format!("machine '{m}' (containers have no machine type)")));
    }
    Ok(())
}

/// Whether access to host device nodes can be granted to a container: the v1 `devices`
/// controller, or a v2 hierarchy with BPF device programs (`CONFIG_CGROUP_BPF`).
pub fn device_control(host: &LxcHost) -> Option<bool> {
    match host.cgroups.as_ref()?.layout {
        CgroupLayout::V1 => Some(host.has_controller("devices")),
        CgroupLayout::V2 => host.kernel_feature("CONFIG_CGROUP_BPF", None),
    }
}

/// Build the document.
pub fn build(host: &LxcHost, path: Option<String>, arch: String) -> DomainCapabilities {
    DomainCapabilities {
        path,
        domain: "lxc".to_owned(),
        machine: None,
        arch,
        vcpu: host.online_cpus.map(|max| Vcpu { max }),
        iothreads: Some(Flag::no()),
        os: Some(os(host)),
        cpu: None,
        memory_backing: None,
        devices: Some(Devices {
            hostdev: hostdev(host),
            filesystem: Some(filesystem(host)),
            interface: interface(host),
            console: console(host),
            ..Devices::default()
        }),
        features: None,
    }
}

fn os(host: &LxcHost) -> Os {
    let mut enums =
        vec![capsd_core::Enum::new("type", ["exe"]), capsd_core::Enum::new("namespaces", host.namespaces.clone())];
    if let Some(userns) = userns(host) {
        enums.push(capsd_core::Enum::new("userns", userns));
    }
    if let Some(cg) = &host.cgroups {
        let v = match cg.layout {
            CgroupLayout::V1 => "v1",
            CgroupLayout::V2 => "v2",
        };
        enums.push(capsd_core::Enum::new("cgroup", [v]));
        enums.push(capsd_core::Enum::new("cgroupControllers", cg.controllers.clone()));
    }
    Os { supported: Support::Yes, enums, firmware_features: None, loader: None, varstore: None }
}

/// `idmap`: root can give a container its own user namespace with an ID map;
/// `unprivileged`: unprivileged users can create user namespaces too. `None` when the
/// limit is unknown.
fn userns(host: &LxcHost) -> Option<Vec<&'static str>> {
    if !host.has_namespace("user") {
        return Some(vec![]);
    }
    let max = host.max_user_namespaces?;
    let mut out = Vec::new();
    if max > 0 {
        out.push("idmap");
        // Debian's and Ubuntu's knobs restrict unprivileged creation; kernels without
        // them do not.
        if host.unprivileged_userns_clone != Some(false) && host.apparmor_restrict_unprivileged_userns != Some(true) {
            out.push("unprivileged");
        }
    }
    Some(out)
}

fn hostdev(host: &LxcHost) -> Option<EnumElement> {
    let devices = device_control(host)?;
    let net = host.has_namespace("net");
    let usb = devices && host.usb_bus;
    let mut mode = Vec::new();
    if usb {
        mode.push("subsystem");
    }
    if devices || net {
        mode.push("capabilities");
    }
    let mut caps_type = Vec::new();
    if devices {
        caps_type.extend(["storage", "misc"]);
    }
    if net {
        caps_type.push("net");
    }
    Some(
        EnumElement::new(Support::from_bool(!mode.is_empty()))
            .with_enum("mode", mode)
            .with_enum("subsysType", if usb { vec!["usb"] } else { vec![] })
            .with_enum("capsType", caps_type),
    )
}

fn filesystem(host: &LxcHost) -> EnumElement {
    let loop_dev = host.dev_loop_control || host.kernel_feature("CONFIG_BLK_DEV_LOOP", Some("loop")) == Some(true);
    let nbd = host.qemu_nbd.is_some() && host.kernel_feature("CONFIG_BLK_DEV_NBD", Some("nbd")) == Some(true);
    let mut types = vec!["mount"];
    if device_control(host) == Some(true) {
        types.push("block");
    }
    if loop_dev || nbd {
        types.push("file");
    }
    if host.has_filesystem("tmpfs") == Some(true) {
        types.push("ram");
    }
    let mut drivers = vec!["path"];
    if loop_dev {
        drivers.push("loop");
    }
    if nbd {
        drivers.push("nbd");
    }
    let fuse = host.dev_fuse && host.has_filesystem("fuse") == Some(true);
    EnumElement::new(Support::Yes)
        .with_enum("type", types)
        .with_enum("driverType", drivers)
        .with_enum("procViews", if fuse { vec!["meminfo"] } else { vec![] })
}

fn interface(host: &LxcHost) -> Option<EnumElement> {
    if !host.has_namespace("net") {
        return Some(EnumElement::unsupported());
    }
    let veth = host.kernel_feature("CONFIG_VETH", Some("veth"));
    let macvlan = host.kernel_feature("CONFIG_MACVLAN", Some("macvlan"));
    if veth.is_none() && macvlan.is_none() {
        return None;
    }
    let mut types = Vec::new();
    if veth == Some(true) {
        types.extend(["network", "bridge", "ethernet"]);
    }
    if macvlan == Some(true) {
        types.push("direct");
    }
    Some(EnumElement::new(Support::from_bool(!types.is_empty())).with_enum("type", types))
}

/// `None` (no statement) when `/proc/filesystems` could not be read: whether `devpts` is
/// there is then unknown.
fn console(host: &LxcHost) -> Option<EnumElement> {
    let devpts = host.has_filesystem("devpts")?;
    Some(if devpts && host.dev_ptmx {
        EnumElement::new(Support::Yes).with_enum("type", ["pty"])
    } else {
        EnumElement::unsupported()
    })
}

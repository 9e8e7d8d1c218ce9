//! From [`XenHost`] facts and a [`Query`] to a [`DomainCapabilities`] document, with the
//! content libvirt's libxl driver reports for the `xenfv`, `xenpv` and `xenpvh` machines.
//!
//! Which fact decides what:
//!
//! | element | decided by |
//! |---|---|
//! | machines offered for an arch | `xen_caps`: `hvm-*-ARCH` offers `xenfv`, and `xenpvh` on Xen >= 4.10; `xen-*-ARCH` offers `xenpv` |
//! | default machine | first offered of `xenpv`, `xenfv`, `xenpvh` |
//! | `<arch>` default | `machine` of `xl info` |
//! | `<path>` | the query's emulator, else the device model found on the host, else omitted |
//! | `<vcpu max>` | libxl's limits: 128 for HVM (`HVM_MAX_VCPUS` of Xen's `hvm_info_table.h`), 512 for PV and PVH |
//! | `<loader>` values | firmware images found (hvmloader, then OVMF); `xenfv` only |
//! | hostdev `subsysType` `usb` | Xen >= 4.7 (PVUSB) |
//! | hostdev `subsysType` `pci` | `virt_caps` lists `hvm_directio` (xenfv) / `pv_directio` (xenpv); Xen < 4.12 lists no `pv` word and `hvm_directio` stands for the IOMMU |
//! | disk, graphics, video, hostdev enums | what libxl accepts (fixed per toolstack) |
//! | cpu modes, gic, vmcoreinfo, genid, sev, sgx, iothreads | stated unsupported, as libvirt's libxl driver does |

use capsd_core::{
    Cpu, Devices, DomainCapabilities, DriverError, EnumElement, Features, Flag, Loader, Os, Query, Support, Vcpu,
};

use crate::host::XenHost;

/// Driver name used in errors.
pub(crate) const DRIVER: &str = "xen";

/// libxl's maximum vCPUs for an HVM guest (Xen's public `HVM_MAX_VCPUS`).
pub const HVM_MAX_VCPUS: u32 = 128;
/// The vCPU limit libvirt's libxl driver states for PV and PVH guests (Xen reports none).
pub const PV_MAX_VCPUS: u32 = 512;

/// The three Xen machine types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XenMachine {
    /// Fully virtualized (HVM) with a device model.
    Xenfv,
    /// Paravirtualized.
    Xenpv,
    /// PVH: paravirtualized on hardware virtualization, no device model.
    Xenpvh,
}

impl XenMachine {
    pub const ALL: [XenMachine; 3] = [XenMachine::Xenpv, XenMachine::Xenfv, XenMachine::Xenpvh];

    pub fn as_str(self) -> &'static str {
        match self {
            XenMachine::Xenfv => "xenfv",
            XenMachine::Xenpv => "xenpv",
            XenMachine::Xenpvh => "xenpvh",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        XenMachine::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// The machines this host offers for `arch`, in default-preference order.
pub fn machines_for_arch(host: &XenHost, arch: &str) -> Vec<XenMachine> {
    let caps = host.guest_caps();
    let pv = caps.iter().any(|g| !g.hvm && g.arch == arch);
    let hvm = caps.iter().any(|g| g.hvm && g.arch == arch);
    let pvh = hvm && host.version().is_some_and(|v| v >= (4, 10));
    let mut out = Vec::new();
    if pv {
        out.push(XenMachine::Xenpv);
    }
    if hvm {
        out.push(XenMachine::Xenfv);
    }
    if pvh {
        out.push(XenMachine::Xenpvh);
    }
    out
}

/// The architectures Xen offers guests for, in `xen_caps` order.
pub fn guest_arches(host: &XenHost) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for g in host.guest_caps() {
        if !out.contains(&g.arch) {
            out.push(g.arch);
        }
    }
    out
}

/// Check the query against the host and resolve its defaults: (emulator path, arch,
/// machine).
pub fn resolve(
    host: &XenHost,
    query: &Query,
    emulator_exists: &dyn Fn(&str) -> bool,
) -> Result<(Option<String>, String, XenMachine), DriverError> {
    if let Some(vt) = &query.virt_type {
        if vt != "xen" {
            return Err(DriverError::not_supported(DRIVER, format!("virttype '{vt}' (this driver offers only 'xen')")));
        }
    }
    let arches = guest_arches(host);
    let arch = match &query.arch {
        Some(a) => a.clone(),
        None => host
            .host_arch()
            .map(str::to_owned)
            .ok_or_else(|| DriverError::probe_failed("xl info", "no host architecture ('machine' field) known"))?,
    };
    if !arches.contains(&arch) {
        return Err(DriverError::not_supported(
            DRIVER,
            format!("arch '{arch}' (Xen on this host offers: {})", list_or_none(&arches)),
        ));
    }
    let offered = machines_for_arch(host, &arch);
    let machine = match &query.machine {
        Some(m) => {
            let Some(mach) = XenMachine::from_name(m) else {
                return Err(DriverError::not_supported(
                    DRIVER,
                    format!("machine '{m}' (Xen machines are xenpv, xenfv and xenpvh)"),
                ));
            };
            if !offered.contains(&mach) {
                let names: Vec<String> = offered.iter().map(|m| m.as_str().to_owned()).collect();
                return Err(DriverError::not_supported(
                    DRIVER,
                    format!("machine '{m}' for arch '{arch}' on this host (offered: {})", list_or_none(&names)),
                ));
            }
            mach
        }
        None => *offered.first().ok_or_else(|| {
            DriverError::not_supported(DRIVER, format!("arch '{arch}': no Xen machine type is offered for it"))
        })?,
    };
    let path = match &query.emulator {
        Some(e) => {
            let s = e.to_string_lossy().into_owned();
            if !emulator_exists(&s) {
                return Err(DriverError::invalid("emulator", s, "no such file"));
            }
            Some(s)
        }
        None => host.device_model.clone(),
    };
    Ok((path, arch, machine))
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Build the document for a resolved query.
pub fn build(host: &XenHost, path: Option<String>, arch: &str, machine: XenMachine) -> DomainCapabilities {
    let max = match machine {
        XenMachine::Xenfv => HVM_MAX_VCPUS,
        XenMachine::Xenpv | XenMachine::Xenpvh => PV_MAX_VCPUS,
    };
    let loader = match machine {
        XenMachine::Xenfv => Loader {
            supported: Support::Yes,
            values: host.firmwares.clone(),
            enums: vec![capsd_core::Enum::new("type", ["rom", "pflash"]), capsd_core::Enum::new("readonly", ["yes"])],
        },
        XenMachine::Xenpv | XenMachine::Xenpvh => Loader { supported: Support::No, values: vec![], enums: vec![] },
    };
    let cpu = Cpu::unsupported();
    let devices = Devices {
        disk: Some(
            EnumElement::new(Support::Yes)
                .with_enum("diskDevice", ["disk", "cdrom"])
                .with_enum("bus", ["ide", "scsi", "xen"])
                .with_enum("model", Vec::<String>::new()),
        ),
        graphics: Some(EnumElement::new(Support::Yes).with_enum("type", ["sdl", "vnc", "spice"])),
        video: Some(EnumElement::new(Support::Yes).with_enum("modelType", ["vga", "cirrus", "xen"])),
        hostdev: match machine {
            XenMachine::Xenpvh => None,
            XenMachine::Xenfv | XenMachine::Xenpv => Some(hostdev(host, machine)),
        },
        ..Devices::default()
    };
    DomainCapabilities {
        path,
        domain: "xen".to_owned(),
        machine: Some(machine.as_str().to_owned()),
        arch: arch.to_owned(),
        vcpu: Some(Vcpu { max }),
        iothreads: Some(Flag::no()),
        os: Some(Os {
            supported: Support::Yes,
            enums: vec![],
            firmware_features: None,
            loader: Some(loader),
            varstore: None,
        }),
        cpu: Some(cpu),
        memory_backing: None,
        devices: Some(devices),
        features: Some(Features::unsupported()),
    }
}

fn hostdev(host: &XenHost, machine: XenMachine) -> EnumElement {
    let mut subsys = Vec::new();
    if host.version().is_some_and(|v| v >= (4, 7)) {
        subsys.push("usb");
    }
    // Xen >= 4.12 reports pv/hvm and the IOMMU per guest type; older Xen printed only
    // `hvm_directio` (no `pv` word), which then stands for "an IOMMU is there".
    let new_style = host.has_virt_cap("pv") || host.has_virt_cap("pv_directio");
    let pci = match machine {
        XenMachine::Xenfv => host.has_virt_cap("hvm_directio"),
        _ if new_style => host.has_virt_cap("pv_directio"),
        _ => host.has_virt_cap("hvm_directio"),
    };
    if pci {
        subsys.push("pci");
    }
    EnumElement::new(Support::Yes)
        .with_enum("mode", ["subsystem"])
        .with_enum("startupPolicy", ["default", "mandatory", "requisite", "optional"])
        .with_enum("subsysType", subsys)
        .with_enum("capsType", Vec::<String>::new())
        .with_enum("pciBackend", if pci { vec!["xen"] } else { vec![] })
}

//! Which `<enum name='...'>` an element may carry, and, where the set is closed, which
//! `<value>`s.
//!
//! The RelaxNG schema leaves enum names and values open (`<text/>`), so this table is the
//! suite's own. It was built from:
//! - `docs/formatdomaincaps.rst` (D): the enum names it documents per element and the
//!   attributes they stand for;
//! - `domaincaps.rng` (S): `measurement-algo` values of `<cca>` are fixed there;
//! - libvirt's upstream test data `tests/domaincapsdata` (U): elements and enums the docs copy
//!   does not cover yet (`firmwareFeatures`, `iommufd`, `interface`, `panic`, `console`,
//!   `launchSecurity`);
//! - the domain XML vocabulary (X): each enum lists values of an attribute of libvirt's domain
//!   XML, and those attributes accept a fixed set of words (libvirt's enum tables for disk
//!   buses, video models, character device types, ...). Where that set is known the values
//!   are checked against it; [`Values::Open`] marks enums whose values are not a fixed word
//!   list.

use std::collections::BTreeMap;

/// What values an enum may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// Any text.
    Open,
    /// Only these words.
    Closed(&'static [&'static str]),
}

const YES_NO: Values = Values::Closed(&["yes", "no"]);
const ON_OFF: Values = Values::Closed(&["on", "off"]);
const VIRTIO_MODELS: Values = Values::Closed(&["virtio", "virtio-transitional", "virtio-non-transitional"]);
/// Character device source types (`<serial type=...>`, `<channel type=...>`, `<console type=...>`).
const CHARDEV_TYPES: Values = Values::Closed(&[
    "null",
    "vc",
    "pty",
    "dev",
    "file",
    "pipe",
    "stdio",
    "udp",
    "tcp",
    "unix",
    "spicevmc",
    "spiceport",
    "nmdm",
    "qemu-vdagent",
    "dbus",
]);

/// Element key (as produced by [`crate::conformance`]: `os`, `os/loader`,
/// `cpu/mode[host-passthrough]`, `devices/disk`, `features/gic`, ...) to its allowed enums.
pub fn table() -> BTreeMap<&'static str, Vec<(&'static str, Values)>> {
    let mut t: BTreeMap<&'static str, Vec<(&'static str, Values)>> = BTreeMap::new();
    // D: <os> firmware auto-selection; values are the os/@firmware words.
    t.insert("os", vec![("firmware", Values::Closed(&["bios", "efi"]))]);
    // U: firmware features of the auto-selected firmware.
    t.insert("os/firmwareFeatures", vec![("secureBoot", YES_NO), ("enrolledKeys", YES_NO)]);
    // D: loader; <value> elements (paths) are not enums.
    t.insert("os/loader", vec![("type", Values::Closed(&["rom", "pflash"])), ("readonly", YES_NO), ("secure", YES_NO)]);
    t.insert("cpu/mode[host-passthrough]", vec![("hostPassthroughMigratable", ON_OFF)]);
    t.insert("cpu/mode[maximum]", vec![("maximumMigratable", ON_OFF)]);
    t.insert("memoryBacking", vec![("sourceType", Values::Closed(&["file", "anonymous", "memfd"]))]);
    t.insert(
        "devices/disk",
        vec![
            ("diskDevice", Values::Closed(&["disk", "cdrom", "floppy", "lun"])),
            ("bus", Values::Closed(&["ide", "fdc", "scsi", "virtio", "xen", "usb", "uml", "sata", "sd", "nvme"])),
            // U: disk model (virtio variants).
            ("model", VIRTIO_MODELS),
        ],
    );
    t.insert(
        "devices/graphics",
        vec![("type", Values::Closed(&["sdl", "vnc", "rdp", "desktop", "spice", "egl-headless", "dbus"]))],
    );
    t.insert(
        "devices/video",
        vec![(
            "modelType",
            Values::Closed(&[
                "vga",
                "cirrus",
                "vmvga",
                "xen",
                "vbox",
                "qxl",
                "parallels",
                "virtio",
                "gop",
                "none",
                "bochs",
                "ramfb",
            ]),
        )],
    );
    t.insert(
        "devices/hostdev",
        vec![
            ("mode", Values::Closed(&["subsystem", "capabilities"])),
            ("startupPolicy", Values::Closed(&["default", "mandatory", "requisite", "optional"])),
            ("subsysType", Values::Closed(&["usb", "pci", "scsi", "scsi_host", "mdev"])),
            ("capsType", Values::Closed(&["storage", "misc", "net"])),
            ("pciBackend", Values::Closed(&["default", "kvm", "vfio", "xen"])),
            // U: iommufd support of VFIO host devices.
            ("iommufd", YES_NO),
        ],
    );
    t.insert(
        "devices/rng",
        vec![("model", VIRTIO_MODELS), ("backendModel", Values::Closed(&["random", "egd", "builtin"]))],
    );
    t.insert(
        "devices/filesystem",
        vec![("driverType", Values::Closed(&["default", "path", "handle", "loop", "nbd", "ploop", "virtiofs"]))],
    );
    t.insert(
        "devices/tpm",
        vec![
            ("model", Values::Closed(&["tpm-tis", "tpm-crb", "tpm-spapr", "spapr-tpm-proxy"])),
            ("backendModel", Values::Closed(&["passthrough", "emulator", "external"])),
            ("backendVersion", Values::Closed(&["1.2", "2.0"])),
        ],
    );
    t.insert("devices/redirdev", vec![("bus", Values::Closed(&["usb"]))]);
    t.insert("devices/channel", vec![("type", CHARDEV_TYPES)]);
    t.insert(
        "devices/crypto",
        vec![
            ("model", Values::Closed(&["virtio"])),
            ("type", Values::Closed(&["qemu"])),
            ("backendModel", Values::Closed(&["builtin", "lkcf"])),
        ],
    );
    // U: interface backends.
    t.insert("devices/interface", vec![("backendType", Values::Closed(&["default", "passt"]))]);
    // U: panic device models.
    t.insert(
        "devices/panic",
        vec![("model", Values::Closed(&["default", "isa", "pseries", "hyperv", "s390", "pvpanic"]))],
    );
    // U: console types (character device types).
    t.insert("devices/console", vec![("type", CHARDEV_TYPES)]);
    t.insert("features/gic", vec![("version", Values::Closed(&["2", "3", "host"]))]);
    t.insert(
        "features/hyperv",
        vec![(
            "features",
            Values::Closed(&[
                "relaxed",
                "vapic",
                "spinlocks",
                "vpindex",
                "runtime",
                "synic",
                "stimer",
                "reset",
                "vendor_id",
                "frequencies",
                "reenlightenment",
                "tlbflush",
                "ipi",
                "evmcs",
                "avic",
                "emsr_bitmap",
                "xmm_input",
            ]),
        )],
    );
    // U: launch security types.
    t.insert("features/launchSecurity", vec![("sectype", Values::Closed(&["sev", "sev-snp", "s390-pv", "tdx"]))]);
    // S: fixed by the schema.
    t.insert("features/cca", vec![("measurement-algo", Values::Closed(&["sha256", "sha512"]))]);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_has_an_entry() {
        let t = table();
        for d in capsd_core::Devices::NAMES {
            assert!(t.contains_key(format!("devices/{d}").as_str()), "devices/{d} missing");
        }
    }
}

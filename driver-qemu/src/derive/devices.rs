//! `<devices>`: each device element from QEMU's device types, backends and schema, plus
//! the machine facts in [`super::machine`]. Enum values are always listed in libvirt's
//! order for that enum, whatever order the facts were found in.

use capsd_core::{Devices, EnumElement, Support};

use super::evidence as ev;
use super::machine;
use super::probe::Answers;
use crate::host::HostFacts;
use crate::libvirt::{Change, Target};

/// QEMU can create transitional / non-transitional virtio PCI devices (the
/// `virtio-*-pci-transitional` types exist).
fn virtio_transitional(a: &Answers<'_>) -> bool {
    a.has_type("virtio-blk-pci-transitional")
}

fn virtio_models(a: &Answers<'_>) -> Vec<&'static str> {
    pick!(@values ("virtio", true), ("virtio-transitional", virtio_transitional(a)), ("virtio-non-transitional", virtio_transitional(a)))
}

/// Whether a floppy drive (and so the `fdc` bus) is offered. Before
/// [`Change::FloppyNeedsController`] everything but pSeries; from it, only when QEMU also
/// has a floppy controller (`isa-fdc`), as the PC boards, alpha, PReP/PowerMac, PowerNV and
/// microvm binaries do, and ARM, s390 and RISC-V ones do not.
fn floppy(a: &Answers<'_>, arch: &str, machine_name: &str, target: Target) -> bool {
    machine::allows_floppy(arch, machine_name) && (!target.has(Change::FloppyNeedsController) || a.has_type("isa-fdc"))
}

/// `<disk>`.
pub fn disk(a: &Answers<'_>, arch: &str, machine: &str, target: Target) -> EnumElement {
    EnumElement::new(Support::Yes)
        .with_enum(
            "diskDevice",
            pick!("diskDevice"; ("disk", true), ("cdrom", true), ("floppy", floppy(a, arch, machine, target)), ("lun", true)),
        )
        .with_enum(
            "bus",
            pick!("bus";
                ("ide", machine::has_builtin_ide(arch, machine)),
                ("fdc", floppy(a, arch, machine, target)),
                ("scsi", true),
                ("virtio", true),
                ("usb", a.has_type("usb-storage")),
                ("sata", a.has_type("ich9-ahci")),
                ("nvme", target.has(Change::DiskBusNvme) && a.has_type("nvme-ns")),
            ),
        )
        .with_enum("model", ev::enum_node("model", || virtio_models(a)))
}

/// `<graphics>`: display back-ends from the schema (`query-display-options` branches, the
/// `query-vnc` command), spice when QEMU has its option group ([`Answers::has_spice`]), and
/// `rdp` ([`Change::GraphicsRdp`]) with the D-Bus display and a `qemu-rdp` helper on the host.
pub fn graphics(a: &Answers<'_>, host: &HostFacts, target: Target) -> EnumElement {
    let s = &a.schema;
    let dbus = || s.ret_has_variant("query-display-options", "dbus");
    let rdp = || {
        dbus() && target.has(Change::GraphicsRdp) && {
            ev::qemu_rdp(host);
            host.qemu_rdp
        }
    };
    EnumElement::new(Support::Yes).with_enum(
        "type",
        pick!("type";
            ("sdl", s.ret_has_variant("query-display-options", "sdl")),
            ("vnc", s.has_command("query-vnc")),
            ("rdp", rdp()),
            ("spice", a.has_spice()),
            ("egl-headless", s.ret_has_variant("query-display-options", "egl-headless")),
            ("dbus", dbus()),
        ),
    )
}

/// `<video>`: one model per display device type; `none` always.
pub fn video(a: &Answers<'_>) -> EnumElement {
    EnumElement::new(Support::Yes).with_enum(
        "modelType",
        pick!("modelType";
            ("vga", a.has_type("VGA")),
            ("cirrus", a.has_type("cirrus-vga")),
            ("vmvga", a.has_type("vmware-svga")),
            ("qxl", a.has_type("qxl")),
            ("virtio", a.has_any_type(&["virtio-gpu-pci", "virtio-gpu-device"])),
            ("none", true),
            ("bochs", a.has_type("bochs-display")),
            ("ramfb", a.has_type("ramfb")),
        ),
    )
}

/// The USB host controllers whose presence makes libvirt offer USB host device assignment
/// (its `hostdev` filling function checks these QEMU device types, not `usb-host`).
pub const USB_CONTROLLERS: [&str; 8] = [
    "piix3-usb-uhci",
    "piix4-usb-uhci",
    "usb-ehci",
    "ich9-usb-ehci1",
    "vt82c686b-usb-uhci",
    "pci-ohci",
    "nec-usb-xhci",
    "qemu-xhci",
];

/// `<hostdev>`: subsystem assignment (`pci` and `scsi` always, as libvirt 9.0 states them
/// even for binaries without either bus; `usb` when QEMU has any of [`USB_CONTROLLERS`]);
/// the `vfio` PCI backend only where the host can do VFIO passthrough and QEMU has
/// `vfio-pci`.
/// From [`Change::HostdevIommufd`], an `iommufd` enum: `yes` with VFIO passthrough, QEMU's
/// `iommufd` object and the host's `/dev/iommu`; `no` always.
pub fn hostdev(a: &Answers<'_>, host: &HostFacts, target: Target) -> EnumElement {
    let vfio = || {
        ev::vfio(host);
        host.vfio.passthrough_supported() && a.has_type("vfio-pci")
    };
    let e = EnumElement::new(Support::Yes)
        .with_enum("mode", ["subsystem"])
        .with_enum("startupPolicy", ["default", "mandatory", "requisite", "optional"])
        .with_enum(
            "subsysType",
            pick!("subsysType"; ("usb", a.has_any_type(&USB_CONTROLLERS)), ("pci", true), ("scsi", true)),
        )
        .with_enum("capsType", Vec::<String>::new())
        .with_enum("pciBackend", pick!("pciBackend"; ("default", vfio()), ("vfio", vfio())));
    if !target.has(Change::HostdevIommufd) {
        return e;
    }
    let iommufd = || {
        vfio() && a.has_type("iommufd") && {
            ev::iommufd(host);
            host.vfio.iommufd_device
        }
    };
    e.with_enum("iommufd", pick!("iommufd"; ("yes", iommufd()), ("no", true)))
}

/// `<rng>`: always supported (libvirt states the element even where no RNG device exists:
/// the `model` enum is then empty); `virtio` models with a virtio RNG type; backends from
/// the `rng-*` object types.
pub fn rng(a: &Answers<'_>) -> EnumElement {
    let models = ev::enum_node("model", || {
        let virtio = a.has_any_type(&["virtio-rng-pci", "virtio-rng-ccw", "virtio-rng-device"]);
        if virtio {
            virtio_models(a)
        } else {
            Vec::new()
        }
    });
    EnumElement::new(Support::Yes).with_enum("model", models).with_enum(
        "backendModel",
        pick!("backendModel";
            ("random", a.has_type("rng-random")),
            ("egd", a.has_type("rng-egd")),
            ("builtin", a.has_type("rng-builtin")),
        ),
    )
}

/// `<filesystem>`: 9p `path` always, `handle` until [`Change::FilesystemNoHandle`];
/// `virtiofs` with `vhost-user-fs-device`.
pub fn filesystem(a: &Answers<'_>, target: Target) -> EnumElement {
    EnumElement::new(Support::Yes).with_enum(
        "driverType",
        pick!("driverType";
            ("path", true),
            ("handle", !target.has(Change::FilesystemNoHandle)),
            ("virtiofs", a.has_type("vhost-user-fs-device")),
        ),
    )
}

/// `<tpm>`: frontends from `query-tpm-models` (plus the `spapr-tpm-proxy` type); without
/// any the element is `supported='no'`. Backends from `query-tpm-types`, the emulator ones
/// (`emulator` with `external`) only with the host's whole swtpm tool set (`swtpm`,
/// `swtpm_setup`, `swtpm_ioctl`), and the versions `swtpm_setup` says it can create (the
/// enum is left out when it names none).
/// Left out when the binary has `query-tpm-models` but its answer is missing (QEMU did not
/// say); a binary without the command (built without TPM) has no TPM frontends.
pub fn tpm(a: &Answers<'_>, host: &HostFacts) -> Option<EnumElement> {
    if a.schema.has_command("query-tpm-models") && a.reply("query-tpm-models").is_none() {
        tracing::warn!("query-tpm-models was not answered: <tpm> left out");
        capsd_core::evidence::omitted(capsd_core::evidence::Omission::NotAnswered);
        return None;
    }
    Some(tpm_from_lists(a, host))
}

fn tpm_from_lists(a: &Answers<'_>, host: &HostFacts) -> EnumElement {
    // Without a model the element is `supported='no'` and has no enum.
    let model_values = capsd_core::evidence::node(
        || capsd_core::evidence::step("enum", Some("model"), None),
        || {
            pick!(@values
                ("tpm-tis", a.list_has("query-tpm-models", "tpm-tis")),
                ("tpm-crb", a.list_has("query-tpm-models", "tpm-crb")),
                ("tpm-spapr", a.list_has("query-tpm-models", "tpm-spapr")),
                ("spapr-tpm-proxy", a.has_type("spapr-tpm-proxy")),
            )
        },
        |v| !v.is_empty(),
    );
    if model_values.is_empty() {
        return EnumElement::unsupported();
    }
    let swtpm = host.swtpm.as_ref().filter(|s| s.swtpm_setup.is_some() && s.swtpm_ioctl.is_some());
    let emulator = || {
        ev::swtpm(host);
        swtpm.is_some() && a.list_has("query-tpm-types", "emulator")
    };
    let setup_features: &[String] = swtpm.map(|s| s.swtpm_setup_features.as_slice()).unwrap_or(&[]);
    let has_feature = |f: &str| {
        ev::swtpm(host);
        ev::swtpm_setup_features(host);
        setup_features.iter().any(|x| x == f)
    };
    let e = EnumElement::new(Support::Yes).with_enum("model", model_values).with_enum(
        "backendModel",
        pick!("backendModel";
            ("passthrough", a.list_has("query-tpm-types", "passthrough")),
            ("emulator", emulator()),
            ("external", emulator()),
        ),
    );
    // An empty list leaves the enum out: its node is present only with a value.
    let versions = capsd_core::evidence::node(
        || capsd_core::evidence::step("enum", Some("backendVersion"), None),
        || {
            let mut v = Vec::new();
            for (version, feature) in [("1.2", "tpm-1.2"), ("2.0", "tpm-2.0")] {
                if ev::value_node(version, || has_feature(feature)) {
                    v.push(version);
                }
            }
            v
        },
        |v| !v.is_empty(),
    );
    if versions.is_empty() {
        e
    } else {
        e.with_enum("backendVersion", versions)
    }
}

/// `<redirdev>`: USB redirection with `usb-redir`.
pub fn redirdev(a: &Answers<'_>) -> EnumElement {
    if !a.has_type("usb-redir") {
        return EnumElement::unsupported();
    }
    EnumElement::new(Support::Yes).with_enum("bus", pick!("bus"; ("usb", true)))
}

/// `<channel>`: `pty` and `unix` always; `spicevmc` with the spice display.
pub fn channel(a: &Answers<'_>) -> EnumElement {
    EnumElement::new(Support::Yes)
        .with_enum("type", pick!("type"; ("pty", true), ("unix", true), ("spicevmc", a.has_spice())))
}

/// `<crypto>` ([`Change::Crypto`]): the virtio model with QEMU's `virtio-crypto-device`,
/// the `qemu` type and the `builtin` backend always, `lkcf` with its backend object.
pub fn crypto(a: &Answers<'_>) -> EnumElement {
    EnumElement::new(Support::Yes)
        .with_enum("model", pick!("model"; ("virtio", a.has_type("virtio-crypto-device"))))
        .with_enum("type", ["qemu"])
        .with_enum(
            "backendModel",
            pick!("backendModel"; ("builtin", true), ("lkcf", a.has_type("cryptodev-backend-lkcf"))),
        )
}

/// `<interface>` ([`Change::Interface`]): `default` with QEMU's user-mode (slirp) netdev,
/// `passt` with its `stream` netdev (the passt program itself is not looked for).
pub fn interface(a: &Answers<'_>) -> EnumElement {
    let s = &a.schema;
    EnumElement::new(Support::Yes).with_enum(
        "backendType",
        pick!("backendType";
            ("default", s.arg_has_variant("netdev_add", "user")),
            ("passt", s.arg_has_variant("netdev_add", "stream")),
        ),
    )
}

/// `<panic>` ([`Change::Panic`]): `isa` with the ISA `pvpanic` device, `pseries` on pSeries,
/// `hyperv` on x86, `s390` on s390, `pvpanic` with `pvpanic-pci`; `supported='no'` when none.
pub fn panic(a: &Answers<'_>, arch: &str, machine_name: &str) -> EnumElement {
    let models = pick!("model";
        ("isa", a.has_type("pvpanic")),
        ("pseries", machine::is_pseries(arch, machine_name)),
        ("hyperv", machine::is_x86(arch)),
        ("s390", machine::is_s390(arch)),
        ("pvpanic", a.has_type("pvpanic-pci")),
    );
    if models.is_empty() {
        return EnumElement::unsupported();
    }
    EnumElement::new(Support::Yes).with_enum("model", models)
}

/// `<console>` ([`Change::Console`]): the character device types QEMU always has, the
/// spice ones with the spice display, `qemu-vdagent` with that chardev backend.
pub fn console(a: &Answers<'_>) -> EnumElement {
    EnumElement::new(Support::Yes).with_enum(
        "type",
        pick!("type";
            ("null", true),
            ("vc", true),
            ("pty", true),
            ("dev", true),
            ("file", true),
            ("pipe", true),
            ("stdio", true),
            ("udp", true),
            ("tcp", true),
            ("unix", true),
            ("spicevmc", a.has_spice()),
            ("spiceport", a.has_spice()),
            ("qemu-vdagent", a.schema.arg_member_has_variant("chardev-add", "backend", "qemu-vdagent")),
            ("dbus", true),
        ),
    )
}

/// All device elements the target libvirt prints for QEMU.
pub fn devices(a: &Answers<'_>, host: &HostFacts, arch: &str, machine: &str, target: Target) -> Devices {
    Devices {
        disk: Some(ev::always("disk", || disk(a, arch, machine, target))),
        graphics: Some(ev::always("graphics", || graphics(a, host, target))),
        video: Some(ev::always("video", || video(a))),
        hostdev: Some(ev::always("hostdev", || hostdev(a, host, target))),
        rng: Some(ev::always("rng", || rng(a))),
        filesystem: Some(ev::always("filesystem", || filesystem(a, target))),
        tpm: ev::element("tpm", || tpm(a, host)),
        redirdev: Some(ev::always("redirdev", || redirdev(a))),
        channel: Some(ev::always("channel", || channel(a))),
        crypto: ev::element("crypto", || target.has(Change::Crypto).then(|| crypto(a))),
        interface: ev::element("interface", || target.has(Change::Interface).then(|| interface(a))),
        panic: ev::element("panic", || target.has(Change::Panic).then(|| panic(a, arch, machine))),
        console: ev::element("console", || target.has(Change::Console).then(|| console(a))),
    }
}

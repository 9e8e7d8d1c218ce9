//! `<devices>`: each device element from QEMU's device types, backends and schema, plus
//! the machine facts in [`super::machine`]. Enum values are always listed in libvirt's
//! order for that enum, whatever order the facts were found in.

use capsd_core::{Devices, EnumElement, Support};

use super::machine;
use super::probe::Answers;
use crate::host::HostFacts;

/// Keep the values whose condition holds, in the given (canonical) order.
fn pick<'v>(candidates: &[(&'v str, bool)]) -> Vec<&'v str> {
    candidates.iter().filter(|(_, ok)| *ok).map(|(v, _)| *v).collect()
}

/// QEMU can create transitional / non-transitional virtio PCI devices (the
/// `virtio-*-pci-transitional` types exist).
fn virtio_transitional(a: &Answers<'_>) -> bool {
    a.has_type("virtio-blk-pci-transitional")
}

fn virtio_models(a: &Answers<'_>) -> Vec<&'static str> {
    let t = virtio_transitional(a);
    pick(&[("virtio", true), ("virtio-transitional", t), ("virtio-non-transitional", t)])
}

/// `<disk>`.
pub fn disk(a: &Answers<'_>, arch: &str, machine: &str) -> EnumElement {
    let floppy = machine::allows_floppy(arch, machine);
    EnumElement::new(Support::Yes)
        .with_enum("diskDevice", pick(&[("disk", true), ("cdrom", true), ("floppy", floppy), ("lun", true)]))
        .with_enum(
            "bus",
            pick(&[
                ("ide", machine::has_builtin_ide(arch, machine)),
                ("fdc", floppy),
                ("scsi", true),
                ("virtio", true),
                ("usb", a.has_type("usb-storage")),
                ("sata", a.has_type("ich9-ahci")),
            ]),
        )
        .with_enum("model", virtio_models(a))
}

/// `<graphics>`: display back-ends from the schema (`query-display-options` branches, the
/// `query-vnc` / `query-spice` commands).
pub fn graphics(a: &Answers<'_>) -> EnumElement {
    let s = &a.schema;
    EnumElement::new(Support::Yes).with_enum(
        "type",
        pick(&[
            ("sdl", s.ret_has_variant("query-display-options", "sdl")),
            ("vnc", s.has_command("query-vnc")),
            ("spice", s.has_command("query-spice")),
            ("egl-headless", s.ret_has_variant("query-display-options", "egl-headless")),
            ("dbus", s.ret_has_variant("query-display-options", "dbus")),
        ]),
    )
}

/// `<video>`: one model per display device type; `none` always.
pub fn video(a: &Answers<'_>) -> EnumElement {
    EnumElement::new(Support::Yes).with_enum(
        "modelType",
        pick(&[
            ("vga", a.has_type("VGA")),
            ("cirrus", a.has_type("cirrus-vga")),
            ("vmvga", a.has_type("vmware-svga")),
            ("qxl", a.has_type("qxl")),
            ("virtio", a.has_any_type(&["virtio-gpu-pci", "virtio-gpu-device"])),
            ("none", true),
            ("bochs", a.has_type("bochs-display")),
            ("ramfb", a.has_type("ramfb")),
        ]),
    )
}

/// `<hostdev>`: subsystem assignment (`pci` and `scsi` always, as libvirt 9.0 states them
/// even for binaries without either bus; `usb` with `usb-host`); the `vfio` PCI backend only
/// where the host can do VFIO passthrough and QEMU has `vfio-pci`.
pub fn hostdev(a: &Answers<'_>, host: &HostFacts) -> EnumElement {
    let vfio = host.vfio.passthrough_supported() && a.has_type("vfio-pci");
    EnumElement::new(Support::Yes)
        .with_enum("mode", ["subsystem"])
        .with_enum("startupPolicy", ["default", "mandatory", "requisite", "optional"])
        .with_enum("subsysType", pick(&[("usb", a.has_type("usb-host")), ("pci", true), ("scsi", true)]))
        .with_enum("capsType", Vec::<String>::new())
        .with_enum("pciBackend", pick(&[("default", vfio), ("vfio", vfio)]))
}

/// `<rng>`: always supported (libvirt states the element even where no RNG device exists:
/// the `model` enum is then empty); `virtio` models with a virtio RNG type; backends from
/// the `rng-*` object types.
pub fn rng(a: &Answers<'_>) -> EnumElement {
    let virtio = a.has_any_type(&["virtio-rng-pci", "virtio-rng-ccw", "virtio-rng-device"]);
    let models = if virtio { virtio_models(a) } else { Vec::new() };
    EnumElement::new(Support::Yes).with_enum("model", models).with_enum(
        "backendModel",
        pick(&[
            ("random", a.has_type("rng-random")),
            ("egd", a.has_type("rng-egd")),
            ("builtin", a.has_type("rng-builtin")),
        ]),
    )
}

/// `<filesystem>`: 9p (`path`, `handle`) always; `virtiofs` with `vhost-user-fs-device`.
pub fn filesystem(a: &Answers<'_>) -> EnumElement {
    EnumElement::new(Support::Yes).with_enum(
        "driverType",
        pick(&[("path", true), ("handle", true), ("virtiofs", a.has_type("vhost-user-fs-device"))]),
    )
}

/// `<tpm>`: frontends from `query-tpm-models` (plus the `spapr-tpm-proxy` type),
/// backends from `query-tpm-types` (`external` goes with `emulator`), versions from what
/// the host's `swtpm_setup` supports.
pub fn tpm(a: &Answers<'_>, host: &HostFacts) -> EnumElement {
    let models = a.string_list("query-tpm-models");
    let types = a.string_list("query-tpm-types");
    let has_model = |m: &str| models.contains(&m);
    let passthrough = types.contains(&"passthrough");
    let emulator = types.contains(&"emulator");
    if !passthrough && !emulator {
        return EnumElement::unsupported();
    }
    // Versions are offered only with the whole swtpm tool set (swtpm, swtpm_setup,
    // swtpm_ioctl), from what swtpm_setup says it can create.
    let setup_features: &[String] = host
        .swtpm
        .as_ref()
        .filter(|s| s.swtpm_setup.is_some() && s.swtpm_ioctl.is_some())
        .map(|s| s.swtpm_setup_features.as_slice())
        .unwrap_or(&[]);
    let has_feature = |f: &str| setup_features.iter().any(|x| x == f);
    EnumElement::new(Support::Yes)
        .with_enum(
            "model",
            pick(&[
                ("tpm-tis", has_model("tpm-tis")),
                ("tpm-crb", has_model("tpm-crb")),
                ("tpm-spapr", has_model("tpm-spapr")),
                ("spapr-tpm-proxy", a.has_type("spapr-tpm-proxy")),
            ]),
        )
        .with_enum(
            "backendModel",
            pick(&[("passthrough", passthrough), ("emulator", emulator), ("external", emulator)]),
        )
        .with_enum("backendVersion", pick(&[("1.2", has_feature("tpm-1.2")), ("2.0", has_feature("tpm-2.0"))]))
}

/// `<redirdev>`: USB redirection with `usb-redir`.
pub fn redirdev(a: &Answers<'_>) -> EnumElement {
    if !a.has_type("usb-redir") {
        return EnumElement::unsupported();
    }
    EnumElement::new(Support::Yes).with_enum("bus", ["usb"])
}

/// `<channel>`: `pty` and `unix` always; `spicevmc` when the chardev backend exists.
pub fn channel(a: &Answers<'_>) -> EnumElement {
    let spicevmc = a.schema.arg_member_has_variant("chardev-add", "backend", "spicevmc");
    EnumElement::new(Support::Yes).with_enum("type", pick(&[("pty", true), ("unix", true), ("spicevmc", spicevmc)]))
}

/// All device elements libvirt 9.0 prints for QEMU.
pub fn devices(a: &Answers<'_>, host: &HostFacts, arch: &str, machine: &str) -> Devices {
    Devices {
        disk: Some(disk(a, arch, machine)),
        graphics: Some(graphics(a)),
        video: Some(video(a)),
        hostdev: Some(hostdev(a, host)),
        rng: Some(rng(a)),
        filesystem: Some(filesystem(a)),
        tpm: Some(tpm(a, host)),
        redirdev: Some(redirdev(a)),
        channel: Some(channel(a)),
        ..Devices::default()
    }
}

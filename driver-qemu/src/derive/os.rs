//! `<os>`: the firmware kinds that automatic selection can pick (`<enum name='firmware'>`)
//! and the `<loader>` images, from the host's firmware descriptors.
//!
//! Facts (libvirt 9.0): the descriptors whose targets cover the guest architecture and the
//! canonical machine name (shell glob) are considered, in descriptor preference order. Their
//! interface types give the `firmware` enum (`bios`, `efi`, in that order). Their images
//! (the pflash executable, or the memory/kernel image), unique, are the loader values. When
//! no descriptor matches, the loader values are libvirt's built-in default list instead
//! (and the firmware enum stays empty). Either way, only files that exist are listed. The
//! `secure` enum offers `yes` only when a matching descriptor requires SMM.

use capsd_core::{Enum, EnumElement, Flag, Loader, Os, Support};

use super::evidence as ev;
use super::machine::descriptor_arch_matches;
use crate::firmware::FirmwareDescriptor;
use crate::host::HostFacts;
use crate::libvirt::{Change, Target};

/// Whether descriptor `d` applies to `arch` + `machine`.
fn applies(d: &FirmwareDescriptor, arch: &str, machine: &str) -> bool {
    d.targets.iter().any(|t| {
        descriptor_arch_matches(&t.architecture, arch)
            && t.machines.iter().any(|g| crate::firmware::glob_match(g, machine))
    })
}

/// Evidence (`capsd explain`): descriptor `d` was read, and what in it decided.
fn note(d: &FirmwareDescriptor, what: &str) {
    ev::host(&d.path, || {
        Some(match what {
            "interface" => format!("interface-types {}", d.interface_types.join(" ")),
            "image" => {
                format!("image {} {}", d.mapping.executable_path(), if image_exists(d) { "exists" } else { "absent" })
            }
            feature => format!("features {} {}", if d.has_feature(feature) { "has" } else { "lack" }, feature),
        })
    });
}

/// Evidence: no descriptor covers the arch and machine.
fn note_none(matching: &[&FirmwareDescriptor], arch: &str, machine: &str) {
    if matching.is_empty() {
        ev::query("arch", arch);
        ev::query("machine", machine);
        ev::host("firmware descriptors for this arch and machine", || None);
    }
}

/// Whether the image a descriptor boots from exists on the host.
fn image_exists(d: &FirmwareDescriptor) -> bool {
    use crate::firmware::FirmwareMapping;
    match &d.mapping {
        FirmwareMapping::Flash { executable, .. } => executable.exists,
        FirmwareMapping::Memory { exists, .. } | FirmwareMapping::Kernel { exists, .. } => *exists,
    }
}

/// `<firmwareFeatures>` ([`Change::FirmwareFeatures`]): `secureBoot` / `enrolledKeys`
/// offer `yes` when a matching descriptor has the feature and `no` when one lacks it (both
/// empty without descriptors).
fn firmware_features(matching: &[&FirmwareDescriptor]) -> EnumElement {
    let values = |name: &str, feature: &str| {
        ev::enum_node(name, || {
            let has = |d: &&&FirmwareDescriptor| {
                note(d, feature);
                d.has_feature(feature)
            };
            let mut v = Vec::new();
            if ev::value_node("yes", || matching.iter().any(|d| has(&d))) {
                v.push("yes");
            }
            if ev::value_node("no", || matching.iter().any(|d| !has(&d))) {
                v.push("no");
            }
            v
        })
    };
    EnumElement::new(Support::Yes)
        .with_enum("secureBoot", values("secureBoot", "secure-boot"))
        .with_enum("enrolledKeys", values("enrolledKeys", "enrolled-keys"))
}

/// The `<os>` element for `arch` + canonical `machine`, as the target libvirt prints it.
/// `uefi_vars_device`: QEMU has a `uefi-vars` device (`<varstore>`; asked only for it).
pub fn os_caps_for(
    host: &HostFacts,
    arch: &str,
    machine: &str,
    target: Target,
    uefi_vars_device: impl FnOnce() -> bool,
) -> Os {
    let mut os = os_caps(host, arch, machine);
    let matching: Vec<&FirmwareDescriptor> = host.firmware.iter().filter(|d| applies(d, arch, machine)).collect();
    os.firmware_features = ev::element("firmwareFeatures", || {
        target.has(Change::FirmwareFeatures).then(|| {
            note_none(&matching, arch, machine);
            firmware_features(&matching)
        })
    });
    os.varstore = ev::element("varstore", || {
        target.has(Change::Varstore).then(|| {
            let yes = uefi_vars_device()
                && matching.iter().any(|d| {
                    note(d, "host-uefi-vars");
                    d.has_feature("host-uefi-vars")
                });
            Flag::new(Support::from_bool(yes))
        })
    });
    os
}

/// The `<os>` element for `arch` + canonical `machine` (libvirt 9.0's form).
pub fn os_caps(host: &HostFacts, arch: &str, machine: &str) -> Os {
    let matching: Vec<&FirmwareDescriptor> = host.firmware.iter().filter(|d| applies(d, arch, machine)).collect();

    let has_interface = |i: &str| {
        matching.iter().any(|d| {
            note(d, "interface");
            d.interface_types.iter().any(|t| t == i)
        })
    };
    let firmware = ev::enum_node("firmware", || {
        note_none(&matching, arch, machine);
        pick!(@values ("bios", has_interface("bios")), ("efi", has_interface("uefi")))
    });

    let loader = ev::always("loader", || {
        let mut values: Vec<String> = Vec::new();
        if matching.is_empty() {
            note_none(&matching, arch, machine);
            for path in crate::host::DEFAULT_LOADERS {
                let present = host.default_loaders_present.iter().any(|p| p == path);
                ev::value_node(path, || {
                    ev::host(path, || present.then(|| "exists".to_owned()));
                    present
                });
            }
            for path in &host.default_loaders_present {
                if !values.contains(path) {
                    values.push(path.clone());
                }
            }
        } else {
            for d in &matching {
                let path = d.mapping.executable_path();
                let new = !values.iter().any(|v| v == path);
                if ev::value_node(path, || {
                    note(d, "image");
                    image_exists(d)
                }) && new
                {
                    values.push(path.to_owned());
                }
            }
        }

        let secure = ev::enum_node("secure", || {
            let secure_yes = ev::value_node("yes", || {
                note_none(&matching, arch, machine);
                matching.iter().any(|d| {
                    note(d, "requires-smm");
                    d.has_feature("requires-smm")
                })
            });
            let mut secure = Vec::new();
            if secure_yes {
                secure.push("yes");
            }
            ev::value_node("no", || true);
            secure.push("no");
            secure
        });
        Loader {
            supported: Support::Yes,
            values,
            enums: vec![
                Enum::new("type", ["rom", "pflash"]),
                Enum::new("readonly", ["yes", "no"]),
                Enum::new("secure", secure),
            ],
        }
    });

    Os {
        supported: Support::Yes,
        enums: vec![Enum::new("firmware", firmware)],
        firmware_features: None,
        loader: Some(loader),
        varstore: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::{FirmwareFile, FirmwareMapping, FirmwareTarget};
    use capsd_core::EnumList;

    fn desc(file: &str, arch: &str, machines: &[&str], features: &[&str], exists: bool) -> FirmwareDescriptor {
        FirmwareDescriptor {
            path: format!("/usr/share/qemu/firmware/{file}.json"),
            description: String::new(),
            interface_types: vec!["uefi".into()],
            mapping: FirmwareMapping::Flash {
                mode: "split".into(),
                executable: FirmwareFile { filename: format!("/fw/{file}.fd"), format: "raw".into(), exists },
                nvram_template: None,
            },
            targets: vec![FirmwareTarget {
                architecture: arch.into(),
                machines: machines.iter().map(|s| s.to_string()).collect(),
            }],
            features: features.iter().map(|s| s.to_string()).collect(),
            tags: vec![],
        }
    }

    fn host() -> HostFacts {
        HostFacts {
            firmware: vec![
                desc("secure", "x86_64", &["pc-q35-*"], &["requires-smm", "secure-boot"], true),
                desc("gone", "x86_64", &["pc-q35-*"], &[], false),
                desc("plain", "x86_64", &["pc-i440fx-*", "pc-q35-*"], &[], true),
                desc("arm32", "arm", &["virt-*"], &[], true),
            ],
            default_loaders_present: vec!["/usr/share/OVMF/OVMF_CODE.fd".into()],
            ..Default::default()
        }
    }

    #[test]
    fn descriptor_order_existence_and_smm() {
        let os = os_caps(&host(), "x86_64", "pc-q35-7.2");
        let loader = os.loader.unwrap();
        assert_eq!(loader.values, ["/fw/secure.fd", "/fw/plain.fd"], "missing image left out, order kept");
        assert_eq!(loader.enums.enum_values("secure").unwrap(), ["yes", "no"]);
        assert_eq!(os.enums.enum_values("firmware").unwrap(), ["efi"]);
    }

    #[test]
    fn secure_no_without_smm_descriptor() {
        let os = os_caps(&host(), "x86_64", "pc-i440fx-7.2");
        let loader = os.loader.unwrap();
        assert_eq!(loader.values, ["/fw/plain.fd"]);
        assert_eq!(loader.enums.enum_values("secure").unwrap(), ["no"]);
    }

    #[test]
    fn no_descriptor_falls_back_to_default_list() {
        let os = os_caps(&host(), "ppc64", "pseries-7.2");
        assert_eq!(os.enums.enum_values("firmware").unwrap(), Vec::<String>::new().as_slice());
        assert_eq!(os.loader.unwrap().values, ["/usr/share/OVMF/OVMF_CODE.fd"]);
    }

    #[test]
    fn arm_descriptor_name_maps_to_armv7l() {
        let os = os_caps(&host(), "armv7l", "virt-7.2");
        assert_eq!(os.loader.unwrap().values, ["/fw/arm32.fd"]);
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::firmware::{FirmwareMapping, FirmwareTarget};
    use capsd_core::EnumList;

    fn rom(file: &str, interface: &str) -> FirmwareDescriptor {
        FirmwareDescriptor {
            path: String::new(),
            description: String::new(),
            interface_types: vec![interface.into()],
            mapping: FirmwareMapping::Memory { filename: file.into(), exists: true },
            targets: vec![FirmwareTarget { architecture: "x86_64".into(), machines: vec!["pc-*".into()] }],
            features: vec![],
            tags: vec![],
        }
    }

    #[test]
    fn bios_listed_before_efi_and_images_unique() {
        let host = HostFacts {
            firmware: vec![rom("/fw/ovmf.bin", "uefi"), rom("/fw/bios.bin", "bios"), rom("/fw/ovmf.bin", "uefi")],
            ..Default::default()
        };
        let os = os_caps(&host, "x86_64", "pc-i440fx-7.2");
        assert_eq!(os.enums.enum_values("firmware").unwrap(), ["bios", "efi"]);
        assert_eq!(os.loader.unwrap().values, ["/fw/ovmf.bin", "/fw/bios.bin"]);
    }

    #[test]
    fn glob_is_matched_against_the_canonical_name() {
        let host = HostFacts { firmware: vec![rom("/fw/bios.bin", "bios")], ..Default::default() };
        assert!(os_caps(&host, "x86_64", "isapc").enums.enum_values("firmware").unwrap().is_empty());
        assert_eq!(os_caps(&host, "x86_64", "pc-q35-7.2").enums.enum_values("firmware").unwrap(), ["bios"]);
    }
}

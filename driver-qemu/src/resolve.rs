//! Query resolution, the way `virsh domcapabilities` (libvirt 9.0) applies defaults and
//! rejects inputs. Pure: the emulator search takes a lookup function and the rest reads
//! only [`ProbeData`].
//!
//! Two phases, because the emulator must be known before it can be probed:
//! 1. [`pre_probe`]: check the virt type and arch names, default the arch to the host's,
//!    and pick the emulator (`--emulatorbin`, or `qemu-system-<arch>` found in `PATH`).
//! 2. [`resolve`]: with the probe, check that the emulator serves the arch, choose the virt
//!    type (`kvm` when the binary's KVM run reports KVM enabled, else `qemu`), and turn the
//!    machine (or libvirt's default machine) into its canonical name.
//!
//! Facts carried over from libvirt: the arch defaults to the host arch even when only an
//! emulator is given (so `--emulatorbin qemu-system-aarch64` alone is an arch mismatch on an
//! x86_64 host); an emulator binary serves its own arch plus i686 (x86_64), armv7l (aarch64),
//! armv6l (armv7l) and ppc64le (ppc64); the machine `none` is never offered; the default
//! machine is libvirt's per-arch preferred machine when the binary has it, else QEMU's
//! `is-default` machine, else the first listed; `--virttype none` means "not given".

use std::path::{Path, PathBuf};

use capsd_core::{DriverError, Query};
use serde_json::Value;

use crate::libvirt::{Change, Target};
use crate::probe_data::{Accel, ProbeData};

pub use crate::derive::ResolvedQuery;

const DRIVER: &str = "qemu";

/// libvirt 9.0's architecture names (`virArch`), except `none`.
pub const KNOWN_ARCHES: [&str; 36] = [
    "alpha",
    "armv6l",
    "armv7l",
    "armv7b",
    "aarch64",
    "cris",
    "i686",
    "ia64",
    "lm32",
    "m68k",
    "microblaze",
    "microblazeel",
    "mips",
    "mipsel",
    "mips64",
    "mips64el",
    "openrisc",
    "parisc",
    "parisc64",
    "ppc",
    "ppcle",
    "ppc64",
    "ppc64le",
    "ppcemb",
    "riscv32",
    "riscv64",
    "s390",
    "s390x",
    "sh4",
    "sh4eb",
    "sparc",
    "sparc64",
    "unicore32",
    "x86_64",
    "xtensa",
    "xtensaeb",
];

/// libvirt's domain virt type names (`virDomainVirtType`).
pub const KNOWN_VIRT_TYPES: [&str; 16] = [
    "none",
    "qemu",
    "kqemu",
    "kvm",
    "xen",
    "lxc",
    "uml",
    "openvz",
    "test",
    "vmware",
    "hyperv",
    "vbox",
    "phyp",
    "parallels",
    "bhyve",
    "vz",
];

/// The virt type as asked: `None` when not given (or `none`), else `Ok(Accel)` for the two
/// QEMU offers, `Err(name)` for a known virt type QEMU does not offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VirtTypeArg {
    Default,
    Accel(Accel),
    Other(String),
}

/// Phase 1 result: the emulator to probe and the arch asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreProbe {
    pub emulator: PathBuf,
    pub arch: String,
    pub virt_type: VirtTypeArg,
    /// The libvirt release whose defaults apply (the default machine changed in 9.3).
    pub target: Target,
}

/// Parse `--virttype`.
pub fn parse_virt_type(v: Option<&str>) -> Result<VirtTypeArg, DriverError> {
    match v {
        None | Some("none") => Ok(VirtTypeArg::Default),
        Some("kvm") => Ok(VirtTypeArg::Accel(Accel::Kvm)),
        Some("qemu") => Ok(VirtTypeArg::Accel(Accel::Tcg)),
        Some(o) if KNOWN_VIRT_TYPES.contains(&o) => Ok(VirtTypeArg::Other(o.to_owned())),
        Some(o) => Err(DriverError::invalid("virttype", o, "unknown virttype")),
    }
}

/// Whether the target libvirt knows architecture `a` (`loongarch64` from
/// [`Change::ArchLoongArch64`]).
pub fn arch_known(a: &str, target: Target) -> bool {
    KNOWN_ARCHES.contains(&a) || (a == "loongarch64" && target.has(Change::ArchLoongArch64))
}

/// Check an `--arch` name against the target release's list.
pub fn parse_arch(a: &str, target: Target) -> Result<String, DriverError> {
    if arch_known(a, target) {
        Ok(a.to_owned())
    } else {
        Err(DriverError::invalid("arch", a, "unknown architecture"))
    }
}

/// The `qemu-system-*` suffix libvirt looks for first for a guest arch, then fallbacks.
pub fn binary_names_for_arch(arch: &str) -> Vec<String> {
    let primary = match arch {
        "i686" => "i386",
        "armv6l" | "armv7l" => "arm",
        // libvirt names OpenRISC's binary `or32` (QEMU's is `or1k`, so libvirt finds none).
        "openrisc" => "or32",
        other => other,
    };
    let mut names = vec![format!("qemu-system-{primary}")];
    let fallback = match arch {
        "i686" => Some("x86_64"),
        "armv7l" => Some("aarch64"),
        "ppc64le" => Some("ppc64"),
        _ => None,
    };
    if let Some(f) = fallback {
        names.push(format!("qemu-system-{f}"));
    }
    names
}

/// Phase 1: validate names (for the target release), default the arch, pick the emulator.
/// `find` looks a program name up in `PATH`.
pub fn pre_probe(
    q: &Query,
    target: Target,
    host_arch: &str,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<PreProbe, DriverError> {
    let virt_type = parse_virt_type(q.virt_type.as_deref())?;
    let arch = match &q.arch {
        Some(a) => parse_arch(a, target)?,
        None => host_arch.to_owned(),
    };
    let emulator = match &q.emulator {
        Some(e) => e.clone(),
        None => binary_names_for_arch(&arch).iter().find_map(|n| find(n)).ok_or_else(|| {
            DriverError::not_supported(
                DRIVER,
                format!("architecture '{arch}': unable to find any emulator to serve it"),
            )
        })?,
    };
    Ok(PreProbe { emulator, arch, virt_type, target })
}

/// libvirt's arch name (in the target release) for QEMU's `query-target` arch. QEMU's `or1k` is not libvirt's OpenRISC name
/// (`or32`), so libvirt cannot use an OpenRISC binary (it fails without a reason).
pub fn arch_from_qemu(qemu_arch: &str, target: Target) -> Option<String> {
    let a = match qemu_arch {
        "i386" => "i686",
        "arm" => "armv7l",
        "or32" => "openrisc",
        other => other,
    };
    arch_known(a, target).then(|| a.to_owned())
}

fn family(arch: &str) -> Option<&'static str> {
    match arch {
        "i686" | "x86_64" => Some("x86"),
        "ppc" | "ppcle" | "ppc64" | "ppc64le" | "ppcemb" => Some("ppc"),
        "armv6l" | "armv7l" | "armv7b" | "aarch64" => Some("arm"),
        "s390" | "s390x" => Some("s390"),
        _ => None,
    }
}

/// Whether an emulator whose own arch is `emu` serves guests of `arch`.
pub fn emulator_serves(emu: &str, arch: &str) -> bool {
    emu == arch
        || matches!(
            (emu, arch),
            ("x86_64", "i686") | ("aarch64", "armv7l") | ("armv7l", "armv6l") | ("ppc64", "ppc64le")
        )
}

/// One machine from `query-machines`, as libvirt keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineEntry {
    pub name: String,
    pub alias: Option<String>,
    pub is_default: bool,
}

/// The machines of one run in libvirt's order: `none` dropped, the target release's default
/// machine ([`preferred_machine_for`]) first.
pub fn machines(reply: &Value, arch: &str, target: Target) -> Vec<MachineEntry> {
    let mut list: Vec<MachineEntry> = reply
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|m| {
            let name = m.get("name")?.as_str()?.to_owned();
            (name != "none").then(|| MachineEntry {
                name,
                alias: m.get("alias").and_then(Value::as_str).map(str::to_owned),
                is_default: m.get("is-default").and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect();
    let preferred = preferred_machine_for(arch, target);
    let idx = preferred
        .and_then(|p| list.iter().rposition(|m| m.name == p || m.alias.as_deref() == Some(p)))
        .or_else(|| list.iter().rposition(|m| m.is_default));
    if let Some(i) = idx {
        let m = list.remove(i);
        list.insert(0, m);
    }
    list
}

/// The target release's default machine per arch: from [`Change::VirtDefaultMachine`] on,
/// `virt` for ARM and RISC-V; otherwise [`preferred_machine`].
pub fn preferred_machine_for(arch: &str, target: Target) -> Option<&'static str> {
    let virt = matches!(arch, "armv6l" | "armv7l" | "armv7b" | "aarch64" | "riscv32" | "riscv64");
    if virt && target.has(Change::VirtDefaultMachine) {
        return Some("virt");
    }
    preferred_machine(arch)
}

/// libvirt 9.0's default machine per arch (used when the binary has it).
pub fn preferred_machine(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "alpha" => "clipper",
        "armv6l" | "armv7l" | "armv7b" | "aarch64" => "integratorcp",
        "cris" => "axis-dev88",
        "i686" | "x86_64" => "pc",
        "lm32" => "lm32-evr",
        "m68k" => "mcf5208evb",
        "microblaze" | "microblazeel" => "petalogix-s3adsp1800",
        "mips" | "mipsel" | "mips64" | "mips64el" => "malta",
        "openrisc" => "or1k-sim",
        "ppc" | "ppcle" => "g3beige",
        "ppc64" | "ppc64le" => "pseries",
        "ppcemb" => "bamboo",
        "riscv32" | "riscv64" => "spike_v1.10",
        "s390x" => "s390-ccw-virtio",
        "sh4" | "sh4eb" => "shix",
        "sparc" => "SS-5",
        "sparc64" => "sun4u",
        "unicore32" => "puv3",
        "xtensa" | "xtensaeb" => "sim",
        _ => return None,
    })
}

/// Whether a run says KVM is present and enabled (`query-kvm`).
pub fn kvm_enabled(data: &ProbeData) -> bool {
    data.run(Accel::Kvm)
        .and_then(|t| t.get("query-kvm"))
        .map(|k| {
            k.get("enabled").and_then(Value::as_bool) == Some(true)
                && k.get("present").and_then(Value::as_bool) == Some(true)
        })
        .unwrap_or(false)
}

/// The binary's own arch (libvirt name in the target release), from `query-target` of any run.
pub fn emulator_arch(data: &ProbeData, target: Target) -> Result<String, DriverError> {
    let qemu_arch = data
        .runs
        .values()
        .find_map(|t| t.get("query-target"))
        .and_then(|t| t.get("arch"))
        .and_then(Value::as_str)
        .ok_or_else(|| DriverError::probe_failed(&data.binary, "query-target gave no architecture"))?;
    arch_from_qemu(qemu_arch, target).ok_or_else(|| {
        DriverError::not_supported(
            DRIVER,
            format!("emulator '{}': its architecture '{qemu_arch}' is unknown to libvirt", data.binary),
        )
    })
}

/// Phase 2: everything else, from the probe.
pub fn resolve(pre: &PreProbe, machine: Option<&str>, data: &ProbeData) -> Result<ResolvedQuery, DriverError> {
    let emu = pre.emulator.display().to_string();
    let emu_arch = emulator_arch(data, pre.target)?;
    let arch = pre.arch.as_str();
    if emu_arch != arch && (family(&emu_arch).is_none() || family(&emu_arch) != family(arch)) {
        return Err(DriverError::invalid(
            "arch",
            arch,
            format!("architecture from emulator '{emu_arch}' doesn't match given architecture '{arch}'"),
        ));
    }
    if !emulator_serves(&emu_arch, arch) {
        return Err(DriverError::invalid("arch", arch, format!("Emulator '{emu}' does not support arch '{arch}'")));
    }
    let accel = match &pre.virt_type {
        VirtTypeArg::Default => {
            if kvm_enabled(data) || data.run(Accel::Tcg).is_none() {
                Accel::Kvm
            } else {
                Accel::Tcg
            }
        }
        VirtTypeArg::Accel(Accel::Kvm) => {
            if !kvm_enabled(data) {
                return Err(DriverError::invalid(
                    "virttype",
                    "kvm",
                    format!("the accel 'kvm' is not supported by '{emu}' on this host"),
                ));
            }
            Accel::Kvm
        }
        VirtTypeArg::Accel(Accel::Tcg) => {
            if data.run(Accel::Tcg).is_none() {
                return Err(DriverError::invalid(
                    "virttype",
                    "qemu",
                    format!("Emulator '{emu}' does not support virt type 'qemu'"),
                ));
            }
            Accel::Tcg
        }
        VirtTypeArg::Other(o) => {
            return Err(DriverError::invalid(
                "virttype",
                o,
                format!("Emulator '{emu}' does not support virt type '{o}'"),
            ))
        }
    };
    let run = data.run(accel).ok_or_else(|| {
        DriverError::not_supported(DRIVER, format!("virt type '{}' with '{emu}': it was not probed", accel.virt_type()))
    })?;
    let list = machines(run.get("query-machines").unwrap_or(&Value::Null), &emu_arch, pre.target);
    let machine = match machine {
        Some(m) => list
            .iter()
            .find(|e| e.name == m || e.alias.as_deref() == Some(m))
            .map(|e| e.name.clone())
            .ok_or_else(|| {
                DriverError::invalid("machine", m, format!("the machine '{m}' is not supported by emulator '{emu}'"))
            })?,
        None => list.first().map(|e| e.name.clone()).ok_or_else(|| {
            DriverError::not_supported(DRIVER, format!("emulator '{emu}': it offers no machine type"))
        })?,
    };
    Ok(ResolvedQuery { emulator: emu, arch: arch.to_owned(), machine, accel })
}

/// Both phases with a probe function in between, with libvirt 9.0's defaults (tests).
pub fn resolve_query(
    q: &Query,
    host_arch: &str,
    find: impl Fn(&str) -> Option<PathBuf>,
    probe: impl FnOnce(&Path) -> Result<ProbeData, DriverError>,
) -> Result<(ResolvedQuery, ProbeData), DriverError> {
    resolve_query_for(q, Target::default(), host_arch, find, probe)
}

/// Both phases with a probe function in between, with `target`'s defaults (the driver).
pub fn resolve_query_for(
    q: &Query,
    target: Target,
    host_arch: &str,
    find: impl Fn(&str) -> Option<PathBuf>,
    probe: impl FnOnce(&Path) -> Result<ProbeData, DriverError>,
) -> Result<(ResolvedQuery, ProbeData), DriverError> {
    let pre = pre_probe(q, target, host_arch, find)?;
    let data = probe(&pre.emulator)?;
    let r = resolve(&pre, q.machine.as_deref(), &data)?;
    Ok((r, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_data::{Exchange, Reply, Transcript, PROBE_FORMAT_VERSION};
    use serde_json::json;

    fn transcript(target: &str, machines: Value, kvm: bool) -> Transcript {
        let ex = |c: &str, v: Value| Exchange { execute: c.into(), arguments: None, reply: Reply::ok(v) };
        Transcript {
            greeting: Value::Null,
            exchanges: vec![
                ex("query-target", json!({"arch": target})),
                ex("query-machines", machines),
                ex("query-kvm", json!({"enabled": kvm, "present": kvm})),
            ],
        }
    }

    fn data(binary: &str, target: &str, machines: Value, with_kvm: bool) -> ProbeData {
        let mut runs = std::collections::BTreeMap::new();
        runs.insert(Accel::Tcg, transcript(target, machines.clone(), false));
        if with_kvm {
            runs.insert(Accel::Kvm, transcript(target, machines, true));
        }
        ProbeData { format_version: PROBE_FORMAT_VERSION, binary: binary.into(), runs, host: Default::default() }
    }

    fn x86() -> ProbeData {
        data(
            "/usr/bin/qemu-system-x86_64",
            "x86_64",
            json!([
                {"name": "pc-q35-7.1"},
                {"name": "pc-q35-7.2", "alias": "q35"},
                {"name": "none"},
                {"name": "pc-i440fx-7.2", "alias": "pc", "is-default": true},
                {"name": "microvm"}
            ]),
            true,
        )
    }

    fn aarch64() -> ProbeData {
        data(
            "/usr/bin/qemu-system-aarch64",
            "aarch64",
            json!([{"name": "sx1"}, {"name": "virt-7.2", "alias": "virt"}, {"name": "integratorcp"}, {"name": "none"}]),
            false,
        )
    }

    fn q(emu: Option<&str>, arch: Option<&str>, machine: Option<&str>, vt: Option<&str>) -> Query {
        Query {
            emulator: emu.map(PathBuf::from),
            arch: arch.map(str::to_owned),
            machine: machine.map(str::to_owned),
            virt_type: vt.map(str::to_owned),
            libvirt: None,
        }
    }

    fn find(name: &str) -> Option<PathBuf> {
        ["qemu-system-x86_64", "qemu-system-aarch64", "qemu-system-ppc64"]
            .contains(&name)
            .then(|| PathBuf::from(format!("/usr/bin/{name}")))
    }

    fn run(query: Query) -> Result<ResolvedQuery, DriverError> {
        resolve_query(&query, "x86_64", find, |p| {
            Ok(if p.ends_with("qemu-system-aarch64") { aarch64() } else { x86() })
        })
        .map(|(r, _)| r)
    }

    #[test]
    fn defaults_on_x86_host() {
        let r = run(q(None, None, None, None)).unwrap();
        assert_eq!(
            r,
            ResolvedQuery {
                emulator: "/usr/bin/qemu-system-x86_64".into(),
                arch: "x86_64".into(),
                machine: "pc-i440fx-7.2".into(),
                accel: Accel::Kvm
            }
        );
        assert_eq!(run(q(None, None, None, Some("none"))).unwrap().accel, Accel::Kvm);
        assert_eq!(run(q(None, None, None, Some("qemu"))).unwrap().accel, Accel::Tcg);
    }

    #[test]
    fn alias_to_canonical() {
        assert_eq!(run(q(None, None, Some("q35"), None)).unwrap().machine, "pc-q35-7.2");
        assert_eq!(run(q(None, None, Some("pc-q35-7.1"), None)).unwrap().machine, "pc-q35-7.1");
        let e = run(q(None, None, Some("Q35"), None)).unwrap_err();
        assert!(matches!(e, DriverError::InvalidInput { .. }));
        assert!(e.to_string().contains("the machine 'Q35' is not supported"), "{e}");
        let e = run(q(None, None, Some("none"), None)).unwrap_err();
        assert!(e.to_string().contains("'none'"), "{e}");
    }

    #[test]
    fn i686_uses_x86_64_binary_when_no_i386() {
        let r = run(q(None, Some("i686"), None, None)).unwrap();
        assert_eq!(r.emulator, "/usr/bin/qemu-system-x86_64");
        assert_eq!(r.arch, "i686");
    }

    #[test]
    fn preferred_machine_beats_list_order() {
        let r = run(q(None, Some("aarch64"), None, None)).unwrap();
        assert_eq!(r.machine, "integratorcp");
        assert_eq!(r.accel, Accel::Tcg);
        assert_eq!(run(q(None, Some("aarch64"), Some("virt"), None)).unwrap().machine, "virt-7.2");
    }

    #[test]
    fn arm_and_riscv_default_to_virt_from_9_3() {
        use crate::libvirt::{LibvirtVersion, Target};
        let reply = json!([{"name": "sx1"}, {"name": "virt-7.2", "alias": "virt"}, {"name": "integratorcp"}]);
        let first = |v: LibvirtVersion| machines(&reply, "aarch64", Target::new(v))[0].name.clone();
        assert_eq!(first(LibvirtVersion::new(9, 0, 0)), "integratorcp");
        assert_eq!(first(LibvirtVersion::new(9, 3, 0)), "virt-7.2");
        let riscv = json!([{"name": "spike", "is-default": true}, {"name": "virt"}]);
        assert_eq!(machines(&riscv, "riscv64", Target::new(LibvirtVersion::new(12, 8, 0)))[0].name, "virt");
        // x86 is unchanged.
        let pc = json!([{"name": "pc-q35-7.2", "alias": "q35"}, {"name": "pc-i440fx-7.2", "alias": "pc"}]);
        assert_eq!(machines(&pc, "x86_64", Target::new(LibvirtVersion::new(12, 8, 0)))[0].name, "pc-i440fx-7.2");
    }

    #[test]
    fn errors_like_libvirt() {
        let msg = |query: Query| run(query).unwrap_err().to_string();
        assert!(msg(q(None, None, None, Some("bogus"))).contains("unknown virttype"));
        assert!(msg(q(None, Some("bogus"), None, None)).contains("unknown architecture"));
        assert!(msg(q(None, Some("sparc"), None, None)).contains("unable to find any emulator"));
        assert!(matches!(run(q(None, Some("sparc"), None, None)), Err(DriverError::NotSupported { .. })));
        assert!(msg(q(Some("/usr/bin/qemu-system-aarch64"), None, None, None))
            .contains("architecture from emulator 'aarch64' doesn't match given architecture 'x86_64'"));
        assert!(msg(q(None, Some("aarch64"), None, Some("kvm"))).contains("the accel 'kvm' is not supported"));
        assert!(msg(q(None, None, None, Some("xen"))).contains("does not support virt type 'xen'"));
        assert!(msg(q(Some("/usr/bin/qemu-system-aarch64"), Some("armv6l"), None, None))
            .contains("does not support arch 'armv6l'"));
    }

    #[test]
    fn emulator_arch_rules() {
        assert!(emulator_serves("x86_64", "i686"));
        assert!(!emulator_serves("i686", "x86_64"));
        assert!(emulator_serves("ppc64", "ppc64le"));
        assert!(!emulator_serves("ppc64", "ppc"));
        assert_eq!(arch_from_qemu("i386", Target::default()).as_deref(), Some("i686"));
        assert_eq!(arch_from_qemu("hppa", Target::default()), None);
        assert_eq!(binary_names_for_arch("armv7l"), ["qemu-system-arm", "qemu-system-aarch64"]);
    }
}

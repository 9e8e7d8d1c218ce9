//! `<features>` other than `<hyperv>` (which `crate::cpu` derives): GIC versions, the
//! device-backed features, the block-layer features, and the confidential-computing ones.

use capsd_core::{EnumElement, Flag, Sev, SevParams, Sgx, SgxInfo, SgxSection, Support};
use serde_json::Value;

use super::evidence as ev;
use super::machine;
use super::probe::Answers;
use crate::host::HostFacts;
use crate::libvirt::{Change, Target};
use crate::probe_data::Accel;

/// `<gic>`: only for the ARM `virt` board; the versions the accelerator can provide (kernel
/// GIC for KVM, emulated for TCG), ascending.
pub fn gic(a: &Answers<'_>, arch: &str, machine_name: &str, accel: Accel) -> EnumElement {
    if !machine::is_arm_virt(arch, machine_name) {
        return EnumElement::unsupported();
    }
    let mut versions: Vec<u32> = a
        .gic_capabilities()
        .into_iter()
        .filter(|g| match accel {
            Accel::Kvm => g.kernel,
            Accel::Tcg => g.emulated,
        })
        .map(|g| g.version)
        .collect();
    versions.sort_unstable();
    versions.dedup();
    if versions.is_empty() {
        return EnumElement::unsupported();
    }
    EnumElement::new(Support::Yes).with_enum("version", versions.iter().map(u32::to_string))
}

/// A flag from a QOM type's presence.
fn type_flag(a: &Answers<'_>, ty: &str) -> Flag {
    Flag::new(Support::from_bool(a.has_type(ty)))
}

/// `<vmcoreinfo>`: the `vmcoreinfo` device.
pub fn vmcoreinfo(a: &Answers<'_>) -> Flag {
    type_flag(a, "vmcoreinfo")
}

/// `<genid>`: the `vmgenid` device.
pub fn genid(a: &Answers<'_>) -> Flag {
    type_flag(a, "vmgenid")
}

/// `<backingStoreInput>`: libvirt drives block devices with `blockdev-add`.
pub fn backing_store_input(a: &Answers<'_>) -> Flag {
    Flag::new(Support::from_bool(a.schema.has_command("blockdev-add")))
}

/// `<backup>`: incremental backup, which libvirt enables once `blockdev-reopen` is stable
/// (no `x-` prefix).
pub fn backup(a: &Answers<'_>) -> Flag {
    Flag::new(Support::from_bool(a.schema.has_command("blockdev-reopen")))
}

/// `<s390-pv>` (s390 only): QEMU has the `s390-pv-guest` object, the binary can use KVM
/// here and the host enables protected virtualization. Like libvirt, the answer is a
/// property of the binary on this host, the same for both virt types.
pub fn s390_pv(a: &Answers<'_>, host: &HostFacts, arch: &str) -> Option<Flag> {
    if !machine::is_s390(arch) {
        return None;
    }
    let qemu = a.has_type("s390-pv-guest");
    ev::s390_pv(host);
    Some(Flag::new(Support::from_bool(qemu && a.kvm_probed && host.s390_pv.enabled())))
}

/// `<s390-pv>` from [`Change::S390PvEverywhere`] on: [`s390_pv`] on s390, `no` elsewhere.
pub fn s390_pv_for(a: &Answers<'_>, host: &HostFacts, arch: &str, target: Target) -> Option<Flag> {
    s390_pv(a, host, arch).or_else(|| target.has(Change::S390PvEverywhere).then(|| Flag::new(Support::No)))
}

/// `<async-teardown>` ([`Change::AsyncTeardown`]): QEMU's `-run-with async-teardown=on`.
/// Left out when QEMU did not list its command-line options.
pub fn async_teardown(a: &Answers<'_>) -> Option<Flag> {
    a.cmdline_param("run-with", "async-teardown").map(|b| Flag::new(Support::from_bool(b)))
}

/// `<ps2>` ([`Change::Ps2`]): the PC boards (i440FX, Q35, isapc, xenfv) whose machine type
/// has the `i8042` switch. Left out when the machine properties were not read.
pub fn ps2(a: &Answers<'_>, arch: &str, machine_name: &str) -> Option<Flag> {
    if !machine::is_x86(arch) {
        return Some(Flag::new(Support::No));
    }
    let board = machine::is_i440fx(arch, machine_name)
        || machine::is_q35(arch, machine_name)
        || matches!(machine_name, "isapc" | "xenfv")
        || machine_name.starts_with("xenfv-");
    let toggle = a.type_has_property("generic-pc-machine", "i8042")?;
    Some(Flag::new(Support::from_bool(board && toggle)))
}

/// `<tdx>` ([`Change::Tdx`]): x86_64 KVM guests with QEMU's `tdx-guest` object on a host
/// whose KVM enables TDX.
pub fn tdx(a: &Answers<'_>, host: &HostFacts, arch: &str, accel: Accel) -> Flag {
    ev::query("arch", arch);
    ev::query("virttype", accel.virt_type());
    Flag::new(Support::from_bool(
        arch == "x86_64" && accel == Accel::Kvm && a.has_type("tdx-guest") && {
            ev::tdx(host);
            host.tdx
        },
    ))
}

/// `<launchSecurity>` ([`Change::LaunchSecurity`]): the confidential guest types usable here,
/// `supported='no'` when none. `sev` and `sev-snp` are QEMU's to say, as libvirt decides
/// them: its `sev-guest` / `sev-snp-guest` object type, dropped when QEMU does not answer
/// `query-sev-capabilities` (SEV built in, not usable on this host). The kernel's
/// `kvm_amd` `sev_snp` parameter is not consulted (no release from 10.5 to 12.8 reads it).
pub fn launch_security(a: &Answers<'_>, host: &HostFacts, arch: &str, sev: &Sev, target: Target) -> EnumElement {
    let sev_ok = || {
        ev::sev(host);
        sev.supported == Support::Yes
    };
    let pv = || {
        machine::is_s390(arch)
            && a.has_type("s390-pv-guest")
            && a.type_has_property("none-machine", "confidential-guest-support").unwrap_or(false)
            && {
                ev::s390_pv(host);
                host.s390_pv.enabled()
            }
    };
    let tdx = || {
        target.has(Change::Tdx) && a.has_type("tdx-guest") && {
            ev::tdx(host);
            host.tdx
        }
    };
    // The enum is printed only with a value (else the element is `supported='no'`).
    let values = capsd_core::evidence::node(
        || capsd_core::evidence::step("enum", Some("sectype"), None),
        || {
            pick!(@values
                ("sev", sev_ok() && a.has_type("sev-guest")),
                ("sev-snp", sev_ok() && a.has_type("sev-snp-guest")),
                ("s390-pv", pv()),
                ("tdx", tdx()),
            )
        },
        |v| !v.is_empty(),
    );
    if values.is_empty() {
        return EnumElement::unsupported();
    }
    EnumElement::new(Support::Yes).with_enum("sectype", values)
}

/// `<sev>`: yes when QEMU answered `query-sev-capabilities`, with its C-bit position and
/// physical address reduction, and the guest counts from the host's SEV ASID range (CPUID
/// 0x8000001F: ECX is the highest ASID, EDX the lowest ASID for plain SEV guests; ASIDs
/// below EDX are for SEV-ES guests). Counts are 0 when the host does not tell.
/// From [`Change::SevCpu0Id`] on, with QEMU's `cpu0-id` too.
pub fn sev(a: &Answers<'_>, host: &HostFacts, target: Target) -> Sev {
    let Some(reply) = a.reply("query-sev-capabilities").filter(|v| v.is_object()) else {
        return Sev { supported: Support::No, params: None, cpu0_id: None };
    };
    let num = |k: &str| reply.get(k).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
    ev::sev_asids(host);
    let (max_guests, max_es_guests) = match host.sev.cpuid_asids {
        Some((max_asid, min_asid)) if max_asid != 0 && min_asid != 0 && max_asid >= min_asid => {
            (max_asid - min_asid + 1, min_asid - 1)
        }
        _ => (0, 0),
    };
    Sev {
        supported: Support::Yes,
        params: Some(SevParams {
            cbitpos: num("cbitpos"),
            reduced_phys_bits: num("reduced-phys-bits"),
            max_guests: Some(max_guests),
            max_es_guests: Some(max_es_guests),
        }),
        cpu0_id: reply
            .get("cpu0-id")
            .and_then(Value::as_str)
            .filter(|_| target.has(Change::SevCpu0Id))
            .map(str::to_owned),
    }
}

/// `<sgx>`: from `query-sgx-capabilities` (sections in bytes become KiB).
pub fn sgx(a: &Answers<'_>) -> Sgx {
    let Some(reply) = a.reply("query-sgx-capabilities").filter(|v| v.is_object()) else {
        return Sgx { supported: Support::No, info: None };
    };
    let flag = |k: &str| reply.get(k).and_then(Value::as_bool).unwrap_or(false);
    let sections: Option<Vec<SgxSection>> = reply.get("sections").and_then(Value::as_array).map(|list| {
        list.iter()
            .filter_map(|s| {
                Some(SgxSection {
                    node: u32::try_from(s.get("node")?.as_u64()?).ok()?,
                    size_kib: s.get("size")?.as_u64()? / 1024,
                })
            })
            .collect()
    });
    let section_size_kib = match &sections {
        Some(list) => list.iter().map(|s| s.size_kib).sum(),
        None => reply.get("section-size").and_then(Value::as_u64).unwrap_or(0) / 1024,
    };
    Sgx {
        supported: Support::Yes,
        info: Some(SgxInfo { flc: flag("flc"), sgx1: flag("sgx1"), sgx2: flag("sgx2"), section_size_kib, sections }),
    }
}

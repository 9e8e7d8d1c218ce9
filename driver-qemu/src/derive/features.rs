//! `<features>` other than `<hyperv>` (which `crate::cpu` derives): GIC versions, the
//! device-backed features, the block-layer features, and the confidential-computing ones.

use capsd_core::{EnumElement, Flag, Sev, Sgx, SgxInfo, SgxSection, Support};
use serde_json::Value;

use super::machine;
use super::probe::Answers;
use crate::host::HostFacts;
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

/// `<s390-pv>` (s390 only): QEMU has confidential guest support and the `s390-pv-guest`
/// object, the domain uses KVM, and the host enables protected virtualization.
pub fn s390_pv(a: &Answers<'_>, host: &HostFacts, arch: &str, accel: Accel) -> Option<Flag> {
    if !machine::is_s390(arch) {
        return None;
    }
    let qemu = a.has_type("s390-pv-guest");
    Some(Flag::new(Support::from_bool(qemu && accel == Accel::Kvm && host.s390_pv.enabled())))
}

/// `<sev>`: yes when QEMU answered `query-sev-capabilities`.
///
/// libvirt 9.0 also prints `cbitpos`, `reducedPhysBits`, `maxGuests` and `maxESGuests`;
/// the two guest counts come from host CPUID, which the host facts do not carry yet, so
/// the parameters are left out (a known gap; this host has no SEV to compare with).
pub fn sev(a: &Answers<'_>) -> Sev {
    let supported = a.reply("query-sev-capabilities").is_some_and(Value::is_object);
    Sev { supported: Support::from_bool(supported), params: None, cpu0_id: None }
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

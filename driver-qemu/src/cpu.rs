//! The `<cpu>` element and the `<hyperv>` feature of the document, as the target libvirt
//! release prints them ([`CpuOptions::target`], 9.0 by default), derived from the probe
//! transcript (QMP answers) and the host facts. Pure: no I/O.
//!
//! # Modes (libvirt `virQEMUCapsFillDomainCPUCaps`)
//! * `host-passthrough`: KVM and a guest architecture native to the host (same arch,
//!   i686 on x86_64, armv7l on aarch64, ppc64 on ppc64/ppc64le). Enum
//!   `hostPassthroughMigratable`: `on` when QEMU's `max-x86_64-cpu` has a `migratable`
//!   property, then always `off`.
//! * `maximum`: QEMU lists a CPU model named `max`; enum `maximumMigratable` `on`, `off`.
//! * `host-model`: only for a native guest. x86 decodes QEMU's expansion of `host` (KVM) or
//!   `max` (TCG) into a named model plus `require`/`disable` features (see [`x86`]); when
//!   QEMU's `max-x86_64-cpu` type lacks an `unavailable-features` property (the i386 binary
//!   has no such type) libvirt leaves out the features that are MSR bits (`rdctl-no`, ...).
//!   s390x takes QEMU's static expansion (`host` under KVM, `max` under TCG) as it is, in
//!   QEMU's order (which is why JSON objects keep their order: serde_json's
//!   `preserve_order`). ppc64 names the host's own CPU (`fallback='allow'`, no features):
//!   the model of libvirt's ppc64 cpu_map covering the host's processor version register,
//!   with its vendor, when QEMU offers that model; omitted when the host CPU or the map is
//!   not known. Other arches have none.
//! * `custom`: only for arches libvirt has a CPU driver for (x86, ppc64, s390, ARM; riscv64
//!   and loongarch64 in later releases; so never 32-bit ppc, mips, ...). QEMU's `query-cpu-definitions` without `host`; for x86 and
//!   ppc64 only the models libvirt's cpu_map knows (ppc64 names matched case-insensitively
//!   and spelled as in the map; from 10.10 on the x86 map has QEMU's versioned `-vN` names
//!   too). `usable` from `unavailable-features` (`unknown` when QEMU does not say), `vendor`
//!   from the cpu_map model (`unknown` otherwise), `deprecated='yes'` when QEMU marks the
//!   model deprecated. [`CpuOptions::blockers`] adds `<blockers>` to older releases.
//!
//! # What changed after 9.0 (rows of [`crate::libvirt::CHANGES`])
//! * host-model: `<maxphysaddr mode='passthrough' limit='N'/>` for KVM when the host
//!   states its physical address size (`/proc/cpuinfo` of an x86 host; 9.5); features
//!   sorted by name instead of the map's (x86) or QEMU's (s390) order (12.5). Which features appear is QEMU's answer: QEMU 10.1 and later stop
//!   enabling the arch-capabilities MSR features in `host` on AMD, so they vanish there
//!   without a rule of libvirt's.
//! * custom: `<blockers>` after each unusable model (10.9); `canonical='X-vN'` on a model
//!   the map's versioned alias names (10.10); models sorted by name in byte order, each
//!   model's blockers sorted and without repeats (10.10, see the row); s390 models of the
//!   machine generations (`z*`, `gen*`) say `vendor='IBM'` (by 11.3).
//!
//! # Omission
//! A mode that depends on an answer QEMU did not give (a CPU query that failed with an
//! error other than "no such command/type", or was not asked) is omitted with a warning,
//! never stated `supported='no'` (a `GenericError` to `query-cpu-definitions` is an answer:
//! targets without CPU models give it, and libvirt reads it as "no models"); so are host-model (x86) and the x86/ppc64 custom models
//! when libvirt's cpu_map is there but could not be used
//! ([`crate::host::HostFacts::cpu_map_error`]).
//!
//! # Without libvirt's cpu_map
//! libvirt itself cannot run without its cpu_map; capsd answers from QEMU alone then:
//! * host-model: decoded against QEMU's own definitions of its named models
//!   ([`qemu_only`]); feature names are QEMU's spellings, sorted by name, and include
//!   features libvirt does not know (paravirtual `kvm-*` ones, for example); the chosen
//!   model can differ where libvirt's copy of a model differs from QEMU's.
//! * custom (x86): QEMU's named models (unversioned names, no `max`/`base`, whatever the
//!   target) instead of the map's subset; `vendor` is the vendor of QEMU's (TCG) definition
//!   of the model (so generic models such as `qemu64` say `AMD` where libvirt says
//!   `unknown`).
//! * custom (ppc64): QEMU's names as QEMU spells them (lower case), all of them, vendor
//!   `unknown`.
//!
//! # Hyper-V (libvirt `virQEMUCapsProbeHypervCapabilities`)
//! From the KVM run's full expansion of `host` with `hv-passthrough` (every enlightenment
//! KVM supports): every `hv-*` property that is a true boolean, a positive number or a
//! string, named as libvirt names its Hyper-V features, in libvirt's order
//! (`emsr_bitmap`, `xmm_input` from 10.7). Stated for both virt types of an x86 binary when
//! KVM was probed; absent otherwise. From 11.9 on `<defaults>` follows the enum: the
//! spinlock retries (unless "never"), `stimer_direct`, `tlbflush_direct`/`_extended` and a
//! non-empty vendor id, each only when its feature is listed; omitted when empty.

pub mod cpumap;
pub mod host;
pub mod plan;
pub mod qemu_only;
pub mod x86;

use serde_json::Value;

use crate::libvirt::Change;
use crate::probe_data::{Accel, ProbeData, Transcript};
use capsd_core::{
    Blockers, Cpu, CpuModeEnums, CpuModelName, CustomModel, CustomModels, Enum, Fallback, HostModel, Hyperv,
    HypervDefaults, MaxPhysAddr, MaxPhysAddrMode, Support, Usable,
};

/// libvirt's arch name for QEMU's `query-target` arch.
pub fn libvirt_arch(qemu_arch: &str) -> &str {
    match qemu_arch {
        "i386" => "i686",
        other => other,
    }
}

fn is_ppc64(arch: &str) -> bool {
    matches!(arch, "ppc64" | "ppc64le")
}

/// libvirt's notion of a guest architecture running natively on the host.
pub fn guest_is_native(host: &str, guest: &str) -> bool {
    host == guest
        || (host == "x86_64" && guest == "i686")
        || (host == "aarch64" && guest == "armv7l")
        || (is_ppc64(host) && is_ppc64(guest))
}

/// Whether the target libvirt has a CPU driver for `arch`: x86, ppc64, s390 and ARM in 9.0,
/// riscv64 and loongarch64 later ([`Change::CpuDriverRiscv64`],
/// [`Change::CpuDriverLoongArch64`]). Without one libvirt cannot list CPU models, so the
/// custom mode is unsupported whatever QEMU offers.
pub fn has_cpu_driver(arch: &str, target: crate::libvirt::Target) -> bool {
    match arch {
        "i686" | "x86_64" | "ppc64" | "ppc64le" | "s390" | "s390x" | "armv6l" | "armv7l" | "armv7b" | "aarch64" => true,
        "riscv64" => target.has(Change::CpuDriverRiscv64),
        "loongarch64" => target.has(Change::CpuDriverLoongArch64),
        _ => false,
    }
}

/// The binary's architecture in libvirt's names (`query-target`, else the queried arch).
fn binary_arch<'a>(t: &'a Transcript, arch: &'a str) -> &'a str {
    plan::target_arch(t).map(libvirt_arch).unwrap_or(arch)
}

/// What QEMU answered to one command.
#[derive(Debug, Clone, Copy)]
enum Said<'a> {
    /// The reply.
    Yes(&'a Value),
    /// QEMU has no such command or type (`CommandNotFound`, `DeviceNotFound`): a definite
    /// "this binary cannot", as libvirt sees it too.
    Lacks,
    /// Not asked, or failed otherwise: QEMU did not say. What depends on it is omitted.
    Unknown,
}

fn said<'a>(t: &'a Transcript, execute: &str, arguments: Option<&Value>) -> Said<'a> {
    match t.exchange(execute, arguments).map(|e| e.reply.get()) {
        Some(Ok(v)) => Said::Yes(v),
        Some(Err(e)) if matches!(e.class.as_str(), "CommandNotFound" | "DeviceNotFound") => Said::Lacks,
        Some(Err(e)) => {
            tracing::warn!(command = execute, class = %e.class, desc = %e.desc, "QEMU failed a CPU query; what depends on it is omitted");
            Said::Unknown
        }
        None => {
            tracing::warn!(command = execute, "QEMU was not asked a CPU query; what depends on it is omitted");
            Said::Unknown
        }
    }
}

/// `query-cpu-definitions`: `Ok(None)` when QEMU has no such command or answers it with a
/// `GenericError` (targets without CPU models do: "CPU model definitions are not supported
/// on this target"; libvirt takes that error as "no models"), `Err(())` when it did not say
/// (no reply, a damaged cache entry, not asked).
fn definitions(t: &Transcript) -> Result<Option<&Vec<Value>>, ()> {
    match t.exchange("query-cpu-definitions", None).map(|e| e.reply.get()) {
        Some(Err(e)) if e.class == "GenericError" => Ok(None),
        _ => match said(t, "query-cpu-definitions", None) {
            Said::Yes(v) => Ok(v.as_array()),
            Said::Lacks => Ok(None),
            Said::Unknown => Err(()),
        },
    }
}

fn def_name(d: &Value) -> Option<&str> {
    d.get("name").and_then(Value::as_str)
}

/// QEMU's `unavailable-features` of a definition (`None` when QEMU does not say).
fn blockers(d: &Value) -> Option<Vec<String>> {
    d.get("unavailable-features")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
}

/// The models of this accelerator with their blockers, for host-model decoding.
fn hv_models(defs: &[Value]) -> Vec<x86::HvModel> {
    defs.iter()
        .filter_map(|d| Some(x86::HvModel { name: def_name(d)?.to_owned(), blockers: blockers(d).unwrap_or_default() }))
        .collect()
}

/// Output choices for `<cpu>`: the libvirt release it is for, and extras beyond it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Follow each unusable custom model with `<blockers model=...>` listing the features
    /// QEMU cannot provide for it (libvirt's spelling where its cpu_map knows the feature),
    /// even when the target release does not print them
    /// ([`crate::libvirt::Change::CpuBlockers`]).
    pub blockers: bool,
    /// The libvirt release the element is for (default: 9.0).
    pub target: crate::libvirt::Target,
}

impl CpuOptions {
    /// Whether unusable models get `<blockers>`: asked for, or printed by the target.
    pub fn print_blockers(&self) -> bool {
        self.blockers || self.target.has(crate::libvirt::Change::CpuBlockers)
    }
}

/// The `<cpu>` element for `arch` (libvirt's name), `machine` and `accel`, or `None` when
/// this accelerator was not probed. Exactly libvirt 9.0's element
/// ([`cpu_capabilities_with`] for other releases).
pub fn cpu_capabilities(data: &ProbeData, arch: &str, machine: &str, accel: Accel) -> Option<Cpu> {
    cpu_capabilities_with(data, arch, machine, accel, CpuOptions::default())
}

/// [`cpu_capabilities`] with output choices.
pub fn cpu_capabilities_with(
    data: &ProbeData,
    arch: &str,
    machine: &str,
    accel: Accel,
    options: CpuOptions,
) -> Option<Cpu> {
    let t = data.run(accel)?;
    let barch = binary_arch(t, arch);
    let native = guest_is_native(&data.host.host_arch, barch);
    let ev_native = || {
        use capsd_core::evidence::{fact, Fact};
        fact(|| Fact::Host { source: crate::host::source::UNAME.into(), value: Some(data.host.host_arch.clone()) });
        fact(|| Fact::Query { name: "arch".into(), value: barch.to_owned() });
        fact(|| Fact::Query { name: "virttype".into(), value: accel.virt_type().to_owned() });
    };
    let mode = |name: &'static str| move || capsd_core::evidence::step("mode", Some(name), None);
    let ev_map = || {
        capsd_core::evidence::fact(|| capsd_core::evidence::Fact::Host {
            source: "libvirt cpu_map (/usr/share/libvirt/cpu_map or $CAPSD_CPU_MAP_DIR)".into(),
            value: match (&data.host.cpu_map, &data.host.cpu_map_error) {
                (Some(_), _) => Some("read".into()),
                (None, Some(e)) => Some(format!("unusable: {e}")),
                (None, None) => None,
            },
        })
    };

    // s390x KVM with machine types older than CPU models: only host-passthrough.
    let s390_old_machine = barch == "s390x"
        && accel == Accel::Kvm
        && matches!(
            machine,
            "s390-ccw-virtio-2.4" | "s390-ccw-virtio-2.5" | "s390-ccw-virtio-2.6" | "s390-ccw-virtio-2.7"
        );

    let host_passthrough = capsd_core::evidence::node(
        mode("host-passthrough"),
        || {
            ev_native();
            host_passthrough(t, accel, native)
        },
        |_| true,
    );

    let maximum =
        capsd_core::evidence::node(mode("maximum"), || maximum(definitions(t), s390_old_machine), Option::is_some);

    let host_model = capsd_core::evidence::node(
        mode("host-model"),
        || {
            ev_native();
            ev_map();
            if native && !s390_old_machine {
                host_model(data, t, barch, accel, options)
            } else {
                Some(HostModel::unsupported())
            }
        },
        Option::is_some,
    );

    let custom = capsd_core::evidence::node(
        mode("custom"),
        || {
            ev_map();
            match definitions(t) {
                _ if s390_old_machine || !has_cpu_driver(arch, options.target) => Some(CustomModels::unsupported()),
                Err(()) => None,
                Ok(Some(d)) if !d.is_empty() => custom_models(data, t, arch, d, options),
                Ok(_) => Some(CustomModels::unsupported()),
            }
        },
        Option::is_some,
    );

    Some(Cpu { host_passthrough: Some(host_passthrough), maximum, host_model, custom })
}

/// `<mode name='host-passthrough'>`: KVM on a native guest, with `migratable` when QEMU's
/// `max` CPU type has that property.
fn host_passthrough(t: &Transcript, accel: Accel, native: bool) -> CpuModeEnums {
    if accel == Accel::Kvm && native {
        let mut values = Vec::new();
        if plan::qom_has_property(t, plan::MAX_X86_64_CPU_TYPE, "migratable").unwrap_or(false) {
            values.push("on");
        }
        values.push("off");
        CpuModeEnums { supported: Support::Yes, enums: vec![Enum::new("hostPassthroughMigratable", values)] }
    } else {
        CpuModeEnums::unsupported()
    }
}

/// `<mode name='maximum'>`. Without QEMU's model list (the command failed) nothing says
/// whether `max` exists.
fn maximum(defs: Result<Option<&Vec<Value>>, ()>, s390_old_machine: bool) -> Option<CpuModeEnums> {
    match defs {
        _ if s390_old_machine => Some(CpuModeEnums::unsupported()),
        Err(()) => None,
        Ok(d) if d.is_some_and(|d| d.iter().any(|x| def_name(x) == Some("max"))) => {
            Some(CpuModeEnums { supported: Support::Yes, enums: vec![Enum::new("maximumMigratable", ["on", "off"])] })
        }
        Ok(_) => Some(CpuModeEnums::unsupported()),
    }
}

/// libvirt's cpu_map could not be used (see [`crate::host::HostFacts::cpu_map_error`]):
/// what depends on it is omitted, with a warning naming the mode.
fn map_unusable(data: &ProbeData, mode: &str) -> bool {
    match &data.host.cpu_map_error {
        Some(e) => {
            tracing::warn!(mode, error = %e, "libvirt cpu_map unusable: <mode name='{mode}'> is omitted");
            true
        }
        None => false,
    }
}

/// Whether deriving a `kvm` document from `data` reads its TCG run: only for the vendors of
/// x86 custom models when libvirt's cpu_map (its x86 part) is absent (see the module doc).
/// Everything else a `kvm` query derives comes from the KVM run and the host facts.
pub fn kvm_query_reads_tcg_run(data: &ProbeData) -> bool {
    decodes_from_qemu_alone(&data.host)
}

/// Whether x86 CPU models are decoded from QEMU alone with these host facts (libvirt's
/// cpu_map has no x86 part here): only then are QEMU's definitions of every model
/// ([`plan::stage_models`]) read.
pub fn decodes_from_qemu_alone(host: &crate::host::HostFacts) -> bool {
    host.cpu_map.as_ref().and_then(|m| m.x86.as_ref()).is_none()
}

/// Whether `data` lacks what its own host facts make derivation read: QEMU's definitions
/// of every x86 model ([`plan::models_probed`]) in some run, where the models are decoded
/// from QEMU alone. A probe never produces such data (it asks them whenever the host
/// facts it read beside the runs say so); a record probed with libvirt's cpu_map and then
/// given other host facts would be one.
pub fn lacks_cpu_models(data: &ProbeData) -> bool {
    decodes_from_qemu_alone(&data.host) && data.runs.values().any(|t| !plan::models_probed(t))
}

/// host-model for a native guest: `None` (the mode omitted) when QEMU or libvirt's
/// cpu_map did not say what it needs, `supported='no'` when it cannot be offered.
fn host_model(data: &ProbeData, t: &Transcript, barch: &str, accel: Accel, options: CpuOptions) -> Option<HostModel> {
    let target = options.target;
    if barch == "s390x" {
        return s390_host_model(data, t, accel, target);
    }
    if is_ppc64(barch) {
        return ppc64_host_model(data, t, accel, target);
    }
    if !plan::is_x86(barch) {
        // ARM: libvirt takes no host-model from QEMU; others: no libvirt CPU driver.
        return Some(HostModel::unsupported());
    }
    let source = plan::host_model_source(accel);
    let (Ok(mig), Ok(nonmig)) = (
        expansion(t, &plan::static_expansion_args(source, None)),
        expansion(t, &plan::static_expansion_args(source, Some(false))),
    ) else {
        return None;
    };
    let Ok(defs) = definitions(t) else { return None };
    let Some(cpu) = x86::ExpandedCpu::from_replies(mig, nonmig) else { return Some(HostModel::unsupported()) };
    let Some(defs) = defs else { return Some(HostModel::unsupported()) };
    let hv = hv_models(defs);
    let decoded = match data.host.cpu_map.as_ref().and_then(|m| m.x86.as_ref()) {
        Some(map) => x86::decode(map, &cpu, &hv).map(|mut d| {
            // Without `unavailable-features` on QEMU's max-x86_64-cpu type (e.g. the i386
            // binary, which has no such type) libvirt drops the MSR-based features.
            if !plan::qom_has_property(t, plan::MAX_X86_64_CPU_TYPE, "unavailable-features").unwrap_or(false) {
                d.features.retain(|f| !map.feature(&f.name).is_some_and(|x| x.is_msr()));
            }
            d
        }),
        None if map_unusable(data, "host-model") => return None,
        None => {
            let names = plan::named_models(defs);
            qemu_only::decode(&cpu, &qemu_only::qemu_models(t, &names), &hv)
        }
    };
    let Some(decoded) = decoded else { return Some(HostModel::unsupported()) };
    let mut hm = HostModel {
        supported: Support::Yes,
        model: Some(CpuModelName { name: decoded.model, fallback: Some(Fallback::Forbid), vendor_id: None }),
        vendor: decoded.vendor,
        maxphysaddr: host_phys_addr(data, accel, target),
        features: decoded.features,
    };
    sort_features(&mut hm, target);
    Some(hm)
}

/// A static expansion QEMU was asked: `Ok(Some(reply))`, `Ok(None)` when QEMU has no such
/// command or model, `Err(())` when it did not say.
fn expansion<'a>(t: &'a Transcript, args: &Value) -> Result<Option<&'a Value>, ()> {
    match said(t, "query-cpu-model-expansion", Some(args)) {
        Said::Yes(v) => Ok(Some(v)),
        Said::Lacks => Ok(None),
        Said::Unknown => Err(()),
    }
}

/// From [`Change::HostModelFeaturesSorted`] on, libvirt lists host-model features by name
/// (byte order) on every arch; before, in the order it found them (x86: its map's order;
/// s390: QEMU's).
fn sort_features(hm: &mut HostModel, target: crate::libvirt::Target) {
    if target.has(Change::HostModelFeaturesSorted) {
        hm.features.sort_by(|a, b| a.name.cmp(&b.name));
    }
}

/// `<maxphysaddr mode='passthrough' limit='N'/>` ([`Change::HostModelMaxPhysAddr`]): the
/// host's physical address size for accelerated guests, when the host states one (libvirt
/// reads it on x86, SuperH and LoongArch hosts only; see [`crate::host::HostFacts`]).
fn host_phys_addr(data: &ProbeData, accel: Accel, target: crate::libvirt::Target) -> Option<MaxPhysAddr> {
    (target.has(Change::HostModelMaxPhysAddr) && accel == Accel::Kvm)
        .then_some(data.host.phys_addr_bits)
        .flatten()
        .filter(|&b| b > 0)
        .map(|limit| MaxPhysAddr { mode: MaxPhysAddrMode::Passthrough, bits: None, limit: Some(limit) })
}

/// s390x: QEMU's static expansion of `host` (KVM) or `max` (TCG) as it is: the model, each
/// boolean property required when on and disabled when off, in QEMU's order.
fn s390_host_model(
    data: &ProbeData,
    t: &Transcript,
    accel: Accel,
    target: crate::libvirt::Target,
) -> Option<HostModel> {
    let source = plan::host_model_source(accel);
    let reply = match expansion(t, &plan::static_expansion_args(source, None)) {
        Ok(Some(v)) => v,
        Ok(None) => return Some(HostModel::unsupported()),
        Err(()) => return None,
    };
    let Some(mut hm) = s390_expanded_model(reply) else { return Some(HostModel::unsupported()) };
    hm.maxphysaddr = host_phys_addr(data, accel, target);
    sort_features(&mut hm, target);
    Some(hm)
}

fn s390_expanded_model(reply: &Value) -> Option<HostModel> {
    let model = reply.get("model")?;
    let name = model.get("name")?.as_str()?.to_owned();
    let features = model
        .get("props")
        .and_then(Value::as_object)
        .map(|p| {
            p.iter()
                .filter_map(|(k, v)| {
                    let policy = if v.as_bool()? {
                        capsd_core::FeaturePolicy::Require
                    } else {
                        capsd_core::FeaturePolicy::Disable
                    };
                    Some(capsd_core::CpuFeature { policy, name: k.clone() })
                })
                .collect()
        })
        .unwrap_or_default();
    Some(HostModel {
        supported: Support::Yes,
        model: Some(CpuModelName { name, fallback: Some(Fallback::Forbid), vendor_id: None }),
        vendor: None,
        maxphysaddr: None,
        features,
    })
}

/// ppc64: QEMU does not expand the host CPU; libvirt names it itself: the model of its
/// ppc64 cpu_map covering the host's processor version register (with that model's
/// vendor), or a model a facts file states ([`crate::host::HostFacts::host_cpu_model`]).
/// The model must be one QEMU offers (compared without case: QEMU spells POWER models in
/// lower case, libvirt renames them to its map's spelling), else libvirt has no host-model
/// (`supported='no'`). It is printed with `fallback='allow'` and no features.
fn ppc64_host_model(
    data: &ProbeData,
    t: &Transcript,
    accel: Accel,
    target: crate::libvirt::Target,
) -> Option<HostModel> {
    let (name, vendor) = match (&data.host.host_cpu_model, data.host.cpu_pvr) {
        (Some(model), _) => (model.clone(), None),
        (None, Some(pvr)) => match data.host.cpu_map.as_ref().and_then(|m| m.ppc64.as_ref()) {
            Some(map) => match map.model_for_pvr(pvr) {
                Some(m) => (m.name.clone(), m.vendor.clone()),
                None => {
                    tracing::warn!(
                        pvr = format!("{pvr:#010x}"),
                        "libvirt's cpu_map has no ppc64 model for this host CPU"
                    );
                    return Some(HostModel::unsupported());
                }
            },
            None if map_unusable(data, "host-model") => return None,
            None => {
                tracing::warn!("no libvirt cpu_map to name the ppc64 host CPU: <mode name='host-model'> is omitted");
                return None;
            }
        },
        (None, None) => {
            tracing::warn!("the ppc64 host CPU (its PVR) is not known: <mode name='host-model'> is omitted");
            return None;
        }
    };
    let offered = match definitions(t) {
        Err(()) => return None,
        // Without QEMU's list libvirt takes any model as allowed.
        Ok(None) => true,
        Ok(Some(defs)) => defs.iter().filter_map(def_name).any(|n| n.eq_ignore_ascii_case(&name)),
    };
    if !offered {
        tracing::info!(model = %name, "QEMU does not offer the host CPU's model: host-model is unsupported");
        return Some(HostModel::unsupported());
    }
    Some(HostModel {
        supported: Support::Yes,
        model: Some(CpuModelName { name, fallback: Some(Fallback::Allow), vendor_id: None }),
        vendor,
        maxphysaddr: host_phys_addr(data, accel, target),
        features: Vec::new(),
    })
}

/// The custom mode's model list; `None` (the mode omitted) when it depends on libvirt's
/// cpu_map and that map could not be used.
fn custom_models(
    data: &ProbeData,
    t: &Transcript,
    arch: &str,
    defs: &[Value],
    options: CpuOptions,
) -> Option<CustomModels> {
    let map = data.host.cpu_map.as_ref();
    let x86_map = map.and_then(|m| m.x86.as_ref());
    let ppc_map = map.and_then(|m| m.ppc64.as_ref());
    let x86 = plan::is_x86(arch);
    let ppc = is_ppc64(arch);
    if (x86 || ppc) && map_unusable(data, "custom") {
        return None;
    }
    let target = options.target;
    let qemu_named: Vec<&str> = if x86 && x86_map.is_none() { plan::named_models(defs) } else { Vec::new() };

    let mut models = Vec::new();
    for d in defs {
        let Some(qname) = def_name(d) else { continue };
        // ppc64: QEMU spells models in lower case; libvirt uses its map's spelling.
        let name = match (ppc, ppc_map) {
            (true, Some(pm)) => {
                pm.models.iter().find(|m| m.name.eq_ignore_ascii_case(qname)).map(|m| m.name.as_str()).unwrap_or(qname)
            }
            _ => qname,
        };
        if name == "host" {
            continue;
        }
        let mut canonical = None;
        let vendor = if x86 {
            match x86_map {
                Some(xm) => match xm.model(name) {
                    Some(m) => {
                        if target.has(Change::CpuVersionedModels) {
                            canonical = m.canonical.clone();
                        }
                        m.vendor.clone()
                    }
                    None => continue,
                },
                None => {
                    if !qemu_named.contains(&name) {
                        continue;
                    }
                    // Under KVM QEMU gives every model the host's vendor; its TCG
                    // definition says which vendor the model itself has.
                    data.run(Accel::Tcg)
                        .and_then(|tcg| qemu_only::model_vendor(tcg, name))
                        .or_else(|| qemu_only::model_vendor(t, name))
                }
            }
        } else if ppc {
            match ppc_map {
                Some(pm) => match pm.models.iter().find(|m| m.name == name) {
                    Some(m) => m.vendor.clone(),
                    None => continue,
                },
                None => None,
            }
        } else if arch.starts_with("s390") && target.has(Change::S390ModelVendor) {
            // libvirt's s390 CPU driver names IBM for the machine generations' models.
            (name.starts_with('z') || name.starts_with("gen")).then(|| "IBM".to_owned())
        } else {
            None
        };
        let unavailable = blockers(d);
        let usable = match &unavailable {
            None => Usable::Unknown,
            Some(b) if b.is_empty() => Usable::Yes,
            Some(_) => Usable::No,
        };
        let model_blockers = match unavailable {
            Some(b) if options.print_blockers() && !b.is_empty() => Some(Blockers {
                model: name.to_owned(),
                features: b
                    .iter()
                    .map(|f| {
                        x86_map.and_then(|m| m.feature_from_qemu(f)).map_or(f.as_str(), |x| x.name.as_str()).to_owned()
                    })
                    .collect(),
            }),
            _ => None,
        };
        let deprecated = d.get("deprecated").and_then(Value::as_bool).filter(|&x| x);
        models.push(CustomModel {
            name: name.to_owned(),
            usable,
            deprecated,
            canonical,
            vendor: Some(vendor.unwrap_or_else(|| "unknown".to_owned())),
            blockers: model_blockers,
        });
    }
    if target.has(Change::CpuModelsSorted) {
        // Byte order (upper case first), as C's strcmp; each model's blockers likewise,
        // without repeats.
        models.sort_by(|a, b| a.name.cmp(&b.name));
        for b in models.iter_mut().filter_map(|m| m.blockers.as_mut()) {
            b.features.sort();
            b.features.dedup();
        }
    }
    // libvirt states the mode unsupported when no model is left to list.
    Some(CustomModels { supported: Support::from_bool(!models.is_empty()), models })
}

/// libvirt 9.0's Hyper-V feature names, in its order.
pub const HYPERV_FEATURES: [&str; 15] = [
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
];

/// Hyper-V feature names libvirt 10.7 added after [`HYPERV_FEATURES`], in its order
/// ([`Change::HypervEmsrXmm`]).
pub const HYPERV_FEATURES_10_7: [&str; 2] = ["emsr_bitmap", "xmm_input"];

/// The `<hyperv>` feature as libvirt 9.0 states it ([`hyperv_with`] for other releases).
pub fn hyperv(data: &ProbeData, arch: &str, accel: Accel) -> Option<Hyperv> {
    hyperv_with(data, arch, accel, CpuOptions::default())
}

/// The `<hyperv>` feature: `None` when it is not stated (no KVM probe of an x86 binary, or
/// QEMU expanded no Hyper-V property).
pub fn hyperv_with(data: &ProbeData, arch: &str, accel: Accel, options: CpuOptions) -> Option<Hyperv> {
    // libvirt probes it once per binary, from the KVM run, and states it for every virt type.
    let _ = accel;
    let t = data.run(Accel::Kvm)?;
    let barch = binary_arch(t, arch);
    if !(plan::is_x86(barch) || barch == "aarch64" || barch.starts_with("arm")) {
        return None;
    }
    let mut names: Vec<&str> = HYPERV_FEATURES.to_vec();
    if options.target.has(Change::HypervEmsrXmm) {
        names.extend(HYPERV_FEATURES_10_7);
    }
    let reply = t.reply("query-cpu-model-expansion", Some(&plan::hyperv_expansion_args()))?;
    let props = reply.get("model")?.get("props")?.as_object()?;
    let mut present = vec![false; names.len()];
    // What a guest gets by default where libvirt leaves the value to QEMU (11.9 on).
    let mut defaults = HypervDefaults::default();
    for (name, value) in props {
        let Some(hv) = name.strip_prefix("hv-") else { continue };
        match (hv, value) {
            // QEMU's "never retry" (0xffffffff) states no default.
            ("spinlocks", Value::Number(n)) => {
                defaults.spinlocks = n.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|&n| n != u32::MAX)
            }
            ("stimer-direct", Value::Bool(b)) => defaults.stimer_direct = Some(*b),
            ("tlbflush-direct", Value::Bool(b)) => defaults.tlbflush_direct = Some(*b),
            ("tlbflush-ext", Value::Bool(b)) => defaults.tlbflush_extended = Some(*b),
            ("vendor-id", Value::String(s)) if !s.is_empty() => defaults.vendor_id = Some(s.clone()),
            _ => {}
        }
        let idx = names.iter().position(|f| *f == hv).or_else(|| names.iter().position(|f| *f == hv.replace('-', "_")));
        let Some(idx) = idx else { continue };
        let on = match value {
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64().is_some_and(|x| x > 0.0),
            Value::String(_) => true,
            _ => false,
        };
        present[idx] |= on;
    }
    let values: Vec<&str> = names.iter().zip(present).filter(|(_, p)| *p).map(|(f, _)| *f).collect();
    if values.is_empty() {
        return None;
    }
    // Each default is stated only with the feature it belongs to.
    let has = |f: &str| values.contains(&f);
    let defaults = HypervDefaults {
        spinlocks: defaults.spinlocks.filter(|&n| n != 0 && has("spinlocks")),
        stimer_direct: defaults.stimer_direct.filter(|_| has("stimer")),
        tlbflush_direct: defaults.tlbflush_direct.filter(|_| has("tlbflush")),
        tlbflush_extended: defaults.tlbflush_extended.filter(|_| has("tlbflush")),
        vendor_id: defaults.vendor_id.filter(|_| has("vendor_id")),
    };
    let defaults =
        (options.target.has(Change::HypervDefaults) && defaults != HypervDefaults::default()).then_some(defaults);
    Some(Hyperv { supported: Support::Yes, enums: vec![Enum::new("features", values)], defaults })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostFacts;
    use crate::probe_data::{Exchange, QmpError, Reply};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn data(arch: &str, kvm_exchanges: Vec<Exchange>) -> ProbeData {
        let mut exchanges =
            vec![Exchange { execute: "query-target".into(), arguments: None, reply: Reply::ok(json!({"arch": arch})) }];
        exchanges.extend(kvm_exchanges);
        let mut runs = BTreeMap::new();
        runs.insert(Accel::Kvm, Transcript { greeting: Value::Null, exchanges });
        ProbeData {
            format_version: crate::probe_data::PROBE_FORMAT_VERSION,
            binary: "/usr/bin/qemu-system-x86_64".into(),
            runs,
            host: HostFacts { host_arch: "x86_64".into(), kvm_usable: true, ..Default::default() },
        }
    }

    fn full_host(props: Value) -> Exchange {
        Exchange {
            execute: "query-cpu-model-expansion".into(),
            arguments: Some(plan::hyperv_expansion_args()),
            reply: Reply::ok(json!({"model": {"name": "host", "props": props}})),
        }
    }

    #[test]
    fn hyperv_names_and_order_follow_libvirt() {
        let d = data(
            "x86_64",
            vec![full_host(json!({
                "hv-vendor-id": "", "hv-relaxed": true, "hv-spinlocks": 0, "hv-tlbflush": true,
                "hv-stimer-direct": true, "hv-time": true, "hv-passthrough": false, "sse2": true
            }))],
        );
        let hv = hyperv(&d, "x86_64", Accel::Tcg).unwrap();
        assert_eq!(hv.supported, Support::Yes);
        assert_eq!(hv.enums, vec![Enum::new("features", ["relaxed", "vendor_id", "tlbflush"])]);
    }

    #[test]
    fn hyperv_defaults_from_11_9() {
        let d = data(
            "x86_64",
            vec![full_host(json!({
                "hv-spinlocks": 4095, "hv-stimer": true, "hv-stimer-direct": true, "hv-tlbflush": true,
                "hv-tlbflush-direct": false, "hv-tlbflush-ext": true, "hv-vendor-id": "Linux KVM Hv"
            }))],
        );
        let hv = |v: &str| hyperv_with(&d, "x86_64", Accel::Kvm, target(v)).unwrap().defaults;
        assert_eq!(hv("11.8"), None);
        let want = HypervDefaults {
            spinlocks: Some(4095),
            stimer_direct: Some(true),
            tlbflush_direct: Some(false),
            tlbflush_extended: Some(true),
            vendor_id: Some("Linux KVM Hv".into()),
        };
        assert_eq!(hv("11.9"), Some(want));
        // The test host's answer: never-retry spinlocks, empty vendor id, no stimer or
        // tlbflush: no <defaults> at all.
        let d = data(
            "x86_64",
            vec![full_host(json!({"hv-spinlocks": 4294967295u64, "hv-vendor-id": "", "hv-stimer": false,
                "hv-stimer-direct": false, "hv-tlbflush-direct": false}))],
        );
        let hv = hyperv_with(&d, "x86_64", Accel::Kvm, target("12.8")).unwrap();
        assert_eq!(hv.enums, vec![Enum::new("features", ["spinlocks", "vendor_id"])]);
        assert_eq!(hv.defaults, None);
    }

    #[test]
    fn hyperv_names_of_10_7() {
        let d = data("x86_64", vec![full_host(json!({"hv-xmm-input": true, "hv-emsr-bitmap": true, "hv-ipi": true}))]);
        let hv = |v: &str| hyperv_with(&d, "x86_64", Accel::Kvm, target(v)).unwrap().enums;
        assert_eq!(hv("10.6"), vec![Enum::new("features", ["ipi"])]);
        assert_eq!(hv("10.7"), vec![Enum::new("features", ["ipi", "emsr_bitmap", "xmm_input"])]);
    }

    #[test]
    fn hyperv_absent_without_properties_or_kvm() {
        let d = data("x86_64", vec![full_host(json!({"sse2": true, "hv-relaxed": false}))]);
        assert!(hyperv(&d, "x86_64", Accel::Kvm).is_none());
        let d = data("x86_64", vec![]);
        assert!(hyperv(&d, "x86_64", Accel::Kvm).is_none());
        let d = data("s390x", vec![full_host(json!({"hv-relaxed": true}))]);
        assert!(hyperv(&d, "s390x", Accel::Kvm).is_none());
    }

    #[test]
    fn odd_answers_do_not_panic() {
        let odd = json!({"model": {"name": 7, "props": {"vendor": 12, "family": "x", "fpu": "yes", "sse": null}}});
        let ex = |args: Value, reply: Value| Exchange {
            execute: "query-cpu-model-expansion".into(),
            arguments: Some(args),
            reply: Reply::ok(reply),
        };
        let d = data(
            "x86_64",
            vec![
                ex(plan::static_expansion_args("host", None), odd.clone()),
                ex(plan::static_expansion_args("host", Some(false)), json!("garbage")),
                ex(plan::hyperv_expansion_args(), odd),
                Exchange {
                    execute: "query-cpu-definitions".into(),
                    arguments: None,
                    reply: Reply::ok(
                        json!([{"name": 3}, {"unavailable-features": "x"}, {"name": "qemu64", "deprecated": true}]),
                    ),
                },
            ],
        );
        let cpu = cpu_capabilities(&d, "x86_64", "pc", Accel::Kvm).unwrap();
        let custom = cpu.custom.unwrap();
        assert_eq!(custom.models.len(), 1);
        assert_eq!(custom.models[0].deprecated, Some(true));
        assert!(hyperv(&d, "x86_64", Accel::Kvm).is_none());
    }

    #[test]
    fn native_ppc64_host_model_is_omitted_and_arm_has_none() {
        let defs = defs_reply(Reply::ok(json!([{"name": "power10_v2.0"}, {"name": "cortex-a57"}])));
        let mut d = data("ppc64", vec![defs.clone()]);
        d.host.host_arch = "ppc64le".into();
        let cpu = cpu_capabilities(&d, "ppc64", "pseries", Accel::Kvm).unwrap();
        assert!(cpu.host_model.is_none());
        let mut d = data("aarch64", vec![defs]);
        d.host.host_arch = "aarch64".into();
        let cpu = cpu_capabilities(&d, "aarch64", "virt", Accel::Kvm).unwrap();
        assert_eq!(cpu.host_model.unwrap().supported, Support::No);
    }

    /// QEMU's s390 expansion as QMP sends it: properties in QEMU's order, not by name.
    const S390_HOST: &str = r#"{"model": {"name": "gen16a-base",
        "props": {"nnpa": true, "aen": true, "cmmnt": true, "te": false, "vxpdeh": true, "aefsi": true}}}"#;

    fn s390_host(accel_model: &str) -> Exchange {
        Exchange {
            execute: "query-cpu-model-expansion".into(),
            arguments: Some(plan::static_expansion_args(accel_model, None)),
            reply: Reply::ok(serde_json::from_str(S390_HOST).unwrap()),
        }
    }

    fn host_model_features(h: &HostModel) -> Vec<(capsd_core::FeaturePolicy, &str)> {
        h.features.iter().map(|f| (f.policy, f.name.as_str())).collect()
    }

    #[test]
    fn s390_host_model_keeps_qemus_order_until_12_5() {
        use capsd_core::FeaturePolicy::{Disable, Require};
        let mut d = data("s390x", vec![s390_host("host")]);
        d.runs.insert(Accel::Tcg, Transcript { greeting: Value::Null, exchanges: vec![s390_host("max")] });
        d.host.host_arch = "s390x".into();
        let hm_of = |d: &ProbeData, v: &str, accel| {
            cpu_capabilities_with(d, "s390x", "s390-ccw-virtio", accel, target(v)).unwrap().host_model.unwrap()
        };
        let hm = |v: &str, accel| hm_of(&d, v, accel);
        let qemu_order = [
            (Require, "nnpa"),
            (Require, "aen"),
            (Require, "cmmnt"),
            (Disable, "te"),
            (Require, "vxpdeh"),
            (Require, "aefsi"),
        ];
        for accel in [Accel::Kvm, Accel::Tcg] {
            let h = hm("11.3", accel);
            assert_eq!(h.model.as_ref().unwrap().name, "gen16a-base");
            assert_eq!(h.model.as_ref().unwrap().fallback, Some(Fallback::Forbid));
            assert_eq!(host_model_features(&h), qemu_order, "{accel:?}");
            assert_eq!(host_model_features(&hm("9.0", accel)), qemu_order);
        }
        let sorted = [
            (Require, "aefsi"),
            (Require, "aen"),
            (Require, "cmmnt"),
            (Require, "nnpa"),
            (Disable, "te"),
            (Require, "vxpdeh"),
        ];
        assert_eq!(host_model_features(&hm("12.5", Accel::Kvm)), sorted);
        // The probe cache's compact form keeps the order too.
        let t = d.run(Accel::Kvm).unwrap().clone();
        let bytes = std::sync::Arc::new(crate::cache::compact::encode(&t));
        let cached = crate::cache::compact::decode(&bytes, 0..bytes.len()).unwrap();
        let mut d = d.clone();
        d.runs.insert(Accel::Kvm, cached);
        assert_eq!(host_model_features(&hm_of(&d, "11.3", Accel::Kvm)), qemu_order);
    }

    /// Not asked (a probe made before capsd asked it on s390) or failed: omitted, never "no".
    #[test]
    fn s390_host_model_without_the_expansion_is_omitted() {
        let mut d = data("s390x", vec![]);
        d.host.host_arch = "s390x".into();
        let cpu = cpu_capabilities_with(&d, "s390x", "s390-ccw-virtio", Accel::Kvm, target("11.3")).unwrap();
        assert!(cpu.host_model.is_none());
    }

    fn ppc64_map() -> cpumap::CpuMap {
        let files: std::collections::BTreeMap<String, String> = [
            ("index.xml", "<cpus><arch name='ppc64'><include filename='p.xml'/></arch></cpus>"),
            (
                "p.xml",
                "<cpus><vendor name='IBM'/>\
                 <model name='POWER8'><vendor name='IBM'/><pvr value='0x004b0000' mask='0xffff0000'/>\
                 <pvr value='0x004d0000' mask='0xffff0000'/></model>\
                 <model name='POWER9'><vendor name='IBM'/><pvr value='0x004e0000' mask='0xffff0000'/></model>\
                 <model name='POWER10'><vendor name='IBM'/><pvr value='0x00800000' mask='0xffff0000'/></model>\
                 </cpus>",
            ),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        cpumap::parse("/x", &files).unwrap()
    }

    #[test]
    fn ppc64_host_model_names_the_host_cpu() {
        let defs = defs_reply(Reply::ok(json!([{"name": "power9"}, {"name": "power8"}, {"name": "power9_v2.0"}])));
        let mut d = data("ppc64", vec![defs.clone()]);
        d.runs.insert(Accel::Tcg, Transcript { greeting: Value::Null, exchanges: vec![defs] });
        d.host.host_arch = "ppc64le".into();
        d.host.cpu_map = Some(ppc64_map());
        let hm = |d: &ProbeData, v: &str, accel| {
            cpu_capabilities_with(d, "ppc64", "pseries", accel, target(v)).unwrap().host_model
        };
        // The host CPU is not known: omitted.
        assert!(hm(&d, "11.3", Accel::Kvm).is_none());
        // A POWER9 host (PVR 004e 1202): the map's model and vendor, for both virt types.
        d.host.cpu_pvr = Some(0x004e_1202);
        for accel in [Accel::Kvm, Accel::Tcg] {
            let h = hm(&d, "9.0", accel).unwrap();
            assert_eq!(h.supported, Support::Yes);
            let model = h.model.unwrap();
            assert_eq!((model.name.as_str(), model.fallback), ("POWER9", Some(Fallback::Allow)));
            assert_eq!(h.vendor.as_deref(), Some("IBM"));
            assert!(h.features.is_empty() && h.maxphysaddr.is_none());
        }
        // A stated physical address size (libvirt's test harness fakes 64 bits): KVM, 9.5 on.
        d.host.phys_addr_bits = Some(64);
        let limit = |d: &ProbeData, v: &str, accel| hm(d, v, accel).unwrap().maxphysaddr.and_then(|m| m.limit);
        assert_eq!(limit(&d, "11.3", Accel::Kvm), Some(64));
        assert_eq!(limit(&d, "11.3", Accel::Tcg), None);
        assert_eq!(limit(&d, "9.0", Accel::Kvm), None);
        // A POWER10 host whose QEMU offers no POWER10, and a PVR the map does not know: no.
        for pvr in [0x0080_0200, 0x1234_0000] {
            d.host.cpu_pvr = Some(pvr);
            assert_eq!(hm(&d, "11.3", Accel::Kvm).unwrap().supported, Support::No, "{pvr:#x}");
        }
        // A model stated by a facts file (libvirt's harness: a model without a vendor).
        d.host.cpu_pvr = None;
        d.host.host_cpu_model = Some("POWER8".into());
        let h = hm(&d, "11.3", Accel::Kvm).unwrap();
        assert_eq!(h.model.unwrap().name, "POWER8");
        assert_eq!(h.vendor, None);
        // Without libvirt's cpu_map a PVR cannot be named: omitted.
        d.host.host_cpu_model = None;
        d.host.cpu_pvr = Some(0x004e_1202);
        d.host.cpu_map = None;
        assert!(hm(&d, "11.3", Accel::Kvm).is_none());
        // Not native (an x86 host): unsupported whatever the facts say.
        d.host.cpu_map = Some(ppc64_map());
        d.host.host_arch = "x86_64".into();
        assert_eq!(hm(&d, "11.3", Accel::Kvm).unwrap().supported, Support::No);
    }

    #[test]
    fn riscv64_and_loongarch64_models_with_their_cpu_drivers() {
        let defs = defs_reply(Reply::ok(json!([{"name": "rv64"}, {"name": "max"}])));
        for (arch, since) in [("riscv64", "9.10"), ("loongarch64", "10.2")] {
            let d = data(arch, vec![defs.clone()]);
            let custom = |v: &str| {
                cpu_capabilities_with(&d, arch, "virt", Accel::Kvm, target(v)).unwrap().custom.unwrap().supported
            };
            assert_eq!(custom("9.0"), Support::No, "{arch}");
            assert_eq!(custom(since), Support::Yes, "{arch}");
        }
    }

    #[test]
    fn native_guests() {
        assert!(guest_is_native("x86_64", "i686"));
        assert!(!guest_is_native("i686", "x86_64"));
        assert!(guest_is_native("ppc64le", "ppc64"));
        assert!(guest_is_native("aarch64", "armv7l"));
        assert!(!guest_is_native("x86_64", "aarch64"));
    }

    fn target(v: &str) -> CpuOptions {
        CpuOptions { blockers: false, target: crate::libvirt::Target::new(v.parse().unwrap()) }
    }

    fn defs_reply(reply: Reply) -> Exchange {
        Exchange { execute: "query-cpu-definitions".into(), arguments: None, reply }
    }

    #[test]
    fn modes_without_answers_are_omitted() {
        // KVM run that answered nothing CPU related: passthrough only, without `on`; the
        // modes QEMU was to say something about are omitted, never "no".
        let d = data("x86_64", vec![]);
        let cpu = cpu_capabilities(&d, "x86_64", "pc", Accel::Kvm).unwrap();
        let hp = cpu.host_passthrough.unwrap();
        assert_eq!(hp.enums, vec![Enum::new("hostPassthroughMigratable", ["off"])]);
        assert!(cpu.maximum.is_none() && cpu.host_model.is_none() && cpu.custom.is_none());
        assert!(cpu_capabilities(&d, "x86_64", "pc", Accel::Tcg).is_none());
    }

    #[test]
    fn a_failing_qmp_command_omits_what_depends_on_it() {
        let failed = QmpError { class: "NoReply".into(), desc: String::new() };
        let d = data("s390x", vec![defs_reply(Reply::err(failed))]);
        let cpu = cpu_capabilities(&d, "s390x", "s390-ccw-virtio", Accel::Kvm).unwrap();
        assert!(cpu.maximum.is_none() && cpu.custom.is_none(), "{cpu:?}");
        // QEMU saying it has no such command, or that the target has no CPU models, is an
        // answer: the binary offers no models.
        for (class, desc) in [
            ("CommandNotFound", "The command query-cpu-definitions has not been found"),
            ("GenericError", "CPU model definitions are not supported on this target"),
        ] {
            let missing = QmpError { class: class.into(), desc: desc.into() };
            let d = data("s390x", vec![defs_reply(Reply::err(missing))]);
            let cpu = cpu_capabilities(&d, "s390x", "s390-ccw-virtio", Accel::Kvm).unwrap();
            assert_eq!(cpu.maximum.unwrap().supported, Support::No);
            assert_eq!(cpu.custom.unwrap().supported, Support::No);
        }
    }

    #[test]
    fn an_unusable_cpu_map_omits_the_modes_that_need_it() {
        let defs = defs_reply(Reply::ok(json!([{"name": "qemu64", "unavailable-features": []}])));
        let host = Exchange {
            execute: "query-cpu-model-expansion".into(),
            arguments: Some(plan::static_expansion_args("host", None)),
            reply: Reply::ok(json!({"model": {"name": "base", "props": {"fpu": true}}})),
        };
        let host_nonmig =
            Exchange { arguments: Some(plan::static_expansion_args("host", Some(false))), ..host.clone() };
        let mut d = data("x86_64", vec![defs.clone(), host, host_nonmig]);
        d.host.cpu_map_error = Some("cpu_map index.xml: unknown format: unexpected <set> in <arch>".into());
        let cpu = cpu_capabilities(&d, "x86_64", "pc", Accel::Kvm).unwrap();
        assert!(cpu.host_model.is_none() && cpu.custom.is_none(), "{cpu:?}");
        assert_eq!(cpu.maximum.unwrap().supported, Support::No);
        // s390 models do not come from the map.
        let mut d = data("s390x", vec![defs]);
        d.host.cpu_map_error = Some("unreadable".into());
        let cpu = cpu_capabilities(&d, "s390x", "s390-ccw-virtio", Accel::Tcg);
        assert!(cpu.is_none());
        let cpu = cpu_capabilities(&d, "s390x", "s390-ccw-virtio", Accel::Kvm).unwrap();
        assert_eq!(cpu.custom.unwrap().supported, Support::Yes);
    }

    const VERSIONED_INDEX: &str = "<cpus><arch name='x86'><include filename='v.xml'/><include filename='f.xml'/>\
        <group name='generic'><include filename='m.xml'/></group></arch></cpus>";
    const VERSIONED_MODELS: &str = "<cpus>\
        <model name='qemu64'><decode host='on' guest='on'/><feature name='fpu'/></model>\
        <model name='qemu64-v1'><decode host='on' guest='off'/><model name='qemu64'/></model>\
        <model name='Opteron'><decode host='on' guest='on'/><vendor name='AMD'/><feature name='fpu'/>\
        <feature name='sse' added='yes'/></model>\
        <model name='Opteron-v1'><decode host='on' guest='off'/><model name='Opteron'/></model></cpus>";

    fn versioned_map() -> cpumap::CpuMap {
        let files: std::collections::BTreeMap<String, String> = [
            ("index.xml", VERSIONED_INDEX),
            ("v.xml", "<cpus><vendor name='AMD' string='AuthenticAMD'/></cpus>"),
            (
                "f.xml",
                "<cpus><feature name='fpu'><cpuid eax_in='0x01' edx='0x00000001'/></feature>\
                 <feature name='sse'><cpuid eax_in='0x01' edx='0x02000000'/></feature>\
                 <feature name='abm'><cpuid eax_in='0x80000001' ecx='0x00000020'/></feature></cpus>",
            ),
            ("m.xml", VERSIONED_MODELS),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        cpumap::parse("/x", &files).unwrap()
    }

    #[test]
    fn custom_models_per_release() {
        let defs = defs_reply(Reply::ok(json!([
            {"name": "qemu64", "unavailable-features": ["sse", "fpu", "sse"]},
            {"name": "Opteron-v1", "unavailable-features": []},
            {"name": "qemu64-v1", "unavailable-features": ["fpu"]},
            {"name": "Opteron", "unavailable-features": []},
            {"name": "host"}, {"name": "unknown-to-the-map"},
        ])));
        let mut d = data("x86_64", vec![defs]);
        d.host.cpu_map = Some(versioned_map());
        let list = |v: &str| {
            let cpu = cpu_capabilities_with(&d, "x86_64", "pc", Accel::Kvm, target(v)).unwrap();
            cpu.custom.unwrap().models
        };
        let names = |m: &[CustomModel]| m.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        // 9.0: QEMU's order, no canonical names, no blockers.
        let old = list("9.0");
        assert_eq!(names(&old), ["qemu64", "Opteron-v1", "qemu64-v1", "Opteron"]);
        assert!(old.iter().all(|m| m.canonical.is_none() && m.blockers.is_none()));
        // 11.3: sorted by byte order, canonical names of the aliases, sorted blockers.
        let new = list("11.3");
        assert_eq!(names(&new), ["Opteron", "Opteron-v1", "qemu64", "qemu64-v1"]);
        assert_eq!(new[0].canonical.as_deref(), Some("Opteron-v1"));
        assert_eq!(new[1].canonical, None);
        assert_eq!(new[1].vendor.as_deref(), Some("AMD"));
        assert_eq!(new[2].canonical.as_deref(), Some("qemu64-v1"));
        assert_eq!(new[2].blockers.as_ref().unwrap().features, ["fpu", "sse"]);
        // 10.9 has blockers in QEMU's order, not yet versioned names or sorting.
        let mid = list("10.9");
        assert_eq!(mid[0].blockers.as_ref().unwrap().features, ["sse", "fpu", "sse"]);
        assert!(mid.iter().all(|m| m.canonical.is_none()));
    }

    #[test]
    fn s390_models_name_ibm_from_11_3() {
        let defs = defs_reply(Reply::ok(json!([{"name": "z13"}, {"name": "qemu"}, {"name": "gen16a-base"}])));
        let d = data("s390x", vec![defs]);
        let vendors = |v: &str| {
            let cpu = cpu_capabilities_with(&d, "s390x", "s390-ccw-virtio", Accel::Kvm, target(v)).unwrap();
            cpu.custom.unwrap().models.into_iter().map(|m| (m.name, m.vendor.unwrap())).collect::<Vec<_>>()
        };
        let s = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(vendors("9.0"), [s("z13", "unknown"), s("qemu", "unknown"), s("gen16a-base", "unknown")]);
        assert_eq!(vendors("11.3"), [s("gen16a-base", "IBM"), s("qemu", "unknown"), s("z13", "IBM")]);
    }

    #[test]
    fn host_model_address_size_and_feature_order_per_release() {
        let expansion = |args: Value| Exchange {
            execute: "query-cpu-model-expansion".into(),
            arguments: Some(args),
            reply: Reply::ok(json!({"model": {"name": "base", "props": {
                "vendor": "AuthenticAMD", "fpu": true, "sse": true, "abm": true,
                "family": 23, "model": 1, "stepping": 0
            }}})),
        };
        let defs = defs_reply(Reply::ok(json!([{"name": "qemu64", "unavailable-features": []}])));
        let mut exchanges = vec![defs];
        for accel in ["host", "max"] {
            exchanges.push(expansion(plan::static_expansion_args(accel, None)));
            exchanges.push(expansion(plan::static_expansion_args(accel, Some(false))));
        }
        let mut d = data("x86_64", exchanges.clone());
        d.runs.insert(Accel::Tcg, Transcript { greeting: Value::Null, exchanges });
        d.host.cpu_map = Some(versioned_map());
        d.host.phys_addr_bits = Some(48);
        let hm =
            |v: &str, accel| cpu_capabilities_with(&d, "x86_64", "pc", accel, target(v)).unwrap().host_model.unwrap();
        assert_eq!(hm("9.0", Accel::Kvm).maxphysaddr, None);
        let kvm = hm("9.5", Accel::Kvm);
        assert_eq!(kvm.model.as_ref().unwrap().name, "qemu64");
        assert_eq!(
            kvm.maxphysaddr,
            Some(MaxPhysAddr { mode: MaxPhysAddrMode::Passthrough, bits: None, limit: Some(48) })
        );
        let names = |h: HostModel| h.features.into_iter().map(|f| f.name).collect::<Vec<_>>();
        assert_eq!(names(kvm), ["sse", "abm"], "map order");
        let tcg = hm("11.3", Accel::Tcg);
        assert_eq!(tcg.maxphysaddr, None);
        assert_eq!(names(tcg), ["sse", "abm"]);
        assert_eq!(names(hm("12.5", Accel::Kvm)), ["abm", "sse"], "sorted by name");
    }

    #[test]
    fn no_custom_mode_without_a_libvirt_cpu_driver() {
        let defs = Exchange {
            execute: "query-cpu-definitions".into(),
            arguments: None,
            reply: Reply::ok(json!([{"name": "7450", "typename": "7450-powerpc-cpu"}])),
        };
        let d = data("ppc", vec![defs.clone()]);
        let cpu = cpu_capabilities(&d, "ppc", "g3beige", Accel::Kvm).unwrap();
        assert_eq!(cpu.custom.unwrap().supported, Support::No);
        let cpu = cpu_capabilities(&d, "ppc64", "pseries", Accel::Kvm).unwrap();
        let custom = cpu.custom.unwrap();
        assert_eq!(custom.supported, Support::Yes);
        assert_eq!(custom.models[0].usable, Usable::Unknown);
        // x86 with a cpu_map that knows none of QEMU's models: nothing to list.
        let mut d = data("x86_64", vec![defs]);
        d.host.cpu_map = Some(cpumap::CpuMap { x86: Some(Default::default()), ..Default::default() });
        let cpu = cpu_capabilities(&d, "x86_64", "pc", Accel::Kvm).unwrap();
        assert_eq!(cpu.custom.unwrap().supported, Support::No);
    }
}

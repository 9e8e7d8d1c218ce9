//! Derivation: from what a probe learned ([`ProbeData`]: QMP transcripts and host facts)
//! and a resolved query to the neutral [`DomainCapabilities`] model, as libvirt 9.0 prints
//! it for QEMU. Pure: no I/O, no clock, no environment; everything comes from the inputs,
//! so recordings replay exactly.
//!
//! The `<cpu>` element and the `<hyperv>` feature come from [`crate::cpu`]; everything else
//! is derived here, one submodule per part of the document:
//! - [`probe`]: which transcript answers what. Accelerator-independent facts (QOM types,
//!   QMP schema, TPM, GIC, SEV, SGX) come from the *primary* run (KVM when the binary was
//!   probed with KVM, else TCG), as libvirt probes them once per binary; the machine table
//!   (`<vcpu max>`) comes from the run of the queried accelerator.
//! - [`schema`]: lookups in `query-qmp-schema` (commands, union branches).
//! - [`machine`]: machine-type and architecture facts QEMU does not report.
//! - [`os`]: `<os>` from the host's firmware descriptors.
//! - [`devices`], [`features`]: the rest of the document.
//! - [`plan`]: the QMP commands all this needs, as probe stages.
//!
//! `<vcpu max>` is the machine's `cpu-max`; for `kvm` it is further bounded by the host's
//! KVM vCPU limit (`KVM_CAP_MAX_VCPUS`, read into [`crate::host::HostFacts::kvm_max_vcpus`]).

/// Keep the values whose condition holds, in the given (canonical) order, as the values
/// of `<enum name='NAME'>`: `pick!("NAME"; ("value", condition), ...)`. Each value is a
/// node of the evidence (`capsd explain`), its condition evaluated with that node open, so
/// the facts it consults are recorded against it.
/// `pick!(@values ...)` does the same inside an enum node opened by the caller.
macro_rules! pick {
    (@values $(($v:expr, $c:expr)),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut out: Vec<&'static str> = Vec::new();
        $( if $crate::derive::evidence::value_node($v, || $c) { out.push($v); } )*
        out
    }};
    ($name:expr; $(($v:expr, $c:expr)),* $(,)?) => {
        $crate::derive::evidence::enum_node($name, || pick!(@values $(($v, $c)),*))
    };
}

pub mod devices;
pub mod evidence;
pub mod features;
pub mod machine;
pub mod os;
pub mod plan;
pub mod probe;
pub mod schema;

#[cfg(test)]
mod compare_tests;
#[cfg(test)]
mod rules_tests;

use capsd_core::{DomainCapabilities, DriverError, EnumElement, Features, Flag, Support, Vcpu};

use crate::libvirt::Change;
use crate::probe_data::{Accel, ProbeData};

use self::evidence as ev;
use self::probe::Answers;

/// A query after defaults and aliases were applied: the emulator binary, the guest arch
/// (libvirt's name), the canonical machine type and the accelerator.
///
/// Built by `crate::resolve::resolve`, which re-exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedQuery {
    pub emulator: String,
    pub arch: String,
    pub machine: String,
    pub accel: Accel,
}

/// The domain capabilities document for `q`, from `data` alone, as libvirt 9.0 writes it
/// (see [`domain_capabilities_with`] for other releases).
pub fn domain_capabilities(data: &ProbeData, q: &ResolvedQuery) -> Result<DomainCapabilities, DriverError> {
    domain_capabilities_with(data, q, crate::cpu::CpuOptions::default())
}

/// [`domain_capabilities`] for the libvirt release `cpu_options.target` (and extra CPU
/// output such as `<blockers>` when asked for).
pub fn domain_capabilities_with(
    data: &ProbeData,
    q: &ResolvedQuery,
    cpu_options: crate::cpu::CpuOptions,
) -> Result<DomainCapabilities, DriverError> {
    let target = cpu_options.target;
    let a = Answers::new(data, q.accel).ok_or_else(|| {
        DriverError::not_supported(
            "qemu",
            format!("virt type '{}' with {}: it was not probed", q.accel.virt_type(), data.binary),
        )
    })?;
    let host = &data.host;
    let arch = q.arch.as_str();
    let machine = q.machine.as_str();

    let info = ev::text_element("machine", machine, || a.machine(machine)).ok_or_else(|| {
        DriverError::invalid("machine", machine, format!("{} did not list it in query-machines", data.binary))
    })?;
    ev::text_element("path", &q.emulator, || ev::query("emulator", &q.emulator));
    ev::text_element("domain", q.accel.virt_type(), || ev::query("virttype", q.accel.virt_type()));
    ev::text_element("arch", arch, || ev::query("arch", arch));
    let max = ev::always("vcpu", || {
        capsd_core::evidence::fact(|| capsd_core::evidence::Fact::Qmp {
            command: "query-machines".into(),
            run: Some(if q.accel == Accel::Kvm { "kvm" } else { "tcg" }.to_owned()),
            item: format!("{} cpu-max {}", info.name, info.cpu_max),
            holds: true,
        });
        let mut max = info.cpu_max;
        if q.accel == Accel::Kvm {
            ev::kvm_max_vcpus(host);
            match host.kvm_max_vcpus {
                Some(kvm) => max = max.min(kvm),
                None => tracing::warn!(machine, "KVM vCPU limit unknown; using the machine's limit alone"),
            }
        }
        max
    });

    let memory_backing = ev::always("memoryBacking", || {
        EnumElement::new(Support::Yes).with_enum(
            "sourceType",
            pick!("sourceType";
                ("file", a.has_type("memory-backend-file")),
                ("anonymous", true),
                ("memfd", a.has_type("memory-backend-memfd")),
            ),
        )
    });

    // The CPU-side parts are derived by crate::cpu.
    let cpu = ev::element("cpu", || crate::cpu::cpu_capabilities_with(data, arch, &info.name, q.accel, cpu_options));

    let features =
        ev::always("features", || {
            let hyperv = ev::element("hyperv", || crate::cpu::hyperv_with(data, arch, q.accel, cpu_options));
            let sev = ev::always("sev", || features::sev(&a, host, target));
            Features {
                gic: Some(ev::always("gic", || features::gic(&a, arch, &info.name, q.accel))),
                vmcoreinfo: Some(ev::always("vmcoreinfo", || features::vmcoreinfo(&a))),
                genid: Some(ev::always("genid", || features::genid(&a))),
                backing_store_input: Some(ev::always("backingStoreInput", || features::backing_store_input(&a))),
                backup: Some(ev::always("backup", || features::backup(&a))),
                async_teardown: ev::element("async-teardown", || {
                    if target.has(Change::AsyncTeardown) {
                        features::async_teardown(&a)
                    } else {
                        None
                    }
                }),
                s390_pv: ev::element("s390-pv", || features::s390_pv_for(&a, host, arch, target)),
                ps2: ev::element("ps2", || {
                    if target.has(Change::Ps2) {
                        features::ps2(&a, arch, &info.name)
                    } else {
                        None
                    }
                }),
                tdx: ev::element("tdx", || target.has(Change::Tdx).then(|| features::tdx(&a, host, arch, q.accel))),
                launch_security: ev::element("launchSecurity", || {
                    target.has(Change::LaunchSecurity).then(|| features::launch_security(&a, host, arch, &sev, target))
                }),
                sev: Some(sev),
                sgx: Some(ev::always("sgx", || features::sgx(&a))),
                hyperv,
                ..Features::default()
            }
        });

    Ok(DomainCapabilities {
        path: Some(q.emulator.clone()),
        domain: q.accel.virt_type().to_owned(),
        machine: Some(info.name.clone()),
        arch: arch.to_owned(),
        vcpu: Some(Vcpu { max }),
        iothreads: Some(ev::always("iothreads", || Flag::new(Support::from_bool(a.has_type("iothread"))))),
        os: Some(ev::always("os", || {
            os::os_caps_for(host, arch, &info.name, target, || a.has_any_type(&["uefi-vars-x64", "uefi-vars-sysbus"]))
        })),
        cpu,
        memory_backing: Some(memory_backing),
        devices: Some(ev::always("devices", || devices::devices(&a, host, arch, &info.name, target))),
        features: Some(features),
    })
}

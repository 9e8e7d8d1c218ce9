//! proptest strategies for schema-valid models: every value generated here, written by
//! `to_xml`, validates against libvirt's `domaincaps.rng` and reads back to the same model.
//!
//! Schema constraints honoured: `<path>` is an absolute path; the four CPU modes are all
//! present when `<cpu>` is; a host-model `<vendor>`, `<maxphysaddr>` or `<feature>` needs a
//! `<model>`; `vendor_id` is 12 characters without a comma; host-model feature names match
//! `[a-zA-Z0-9\-_.]+`; `<blockers>` hold at least one feature and name the model they follow;
//! the CCA `measurement-algo` enum holds exactly `sha256`, `sha512`. Enum names are unique
//! within one element (the reader rejects duplicates).

use std::collections::HashSet;

use capsd_core::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

/// Free text, including the characters XML must escape, whitespace an XML parser would
/// normalise (tab, newline, carriage return) and some non-ASCII.
pub fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 \t\n\r<>&'\"._:/=é中-]{0,12}"
}

/// A short identifier-like word.
pub fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_.-]{1,10}"
}

pub fn support() -> impl Strategy<Value = Support> {
    prop_oneof![Just(Support::Yes), Just(Support::No)]
}

pub fn enums() -> impl Strategy<Value = Vec<Enum>> {
    vec((text(), vec(text(), 0..4)), 0..4).prop_map(|list| {
        let mut seen = HashSet::new();
        list.into_iter()
            .filter(|(name, _)| seen.insert(name.clone()))
            .map(|(name, values)| Enum { name, values })
            .collect()
    })
}

pub fn enum_element() -> impl Strategy<Value = EnumElement> {
    (support(), enums()).prop_map(|(supported, enums)| EnumElement { supported, enums })
}

pub fn flag() -> impl Strategy<Value = Flag> {
    support().prop_map(|supported| Flag { supported })
}

fn loader() -> impl Strategy<Value = Loader> {
    (support(), vec(text(), 0..3), enums()).prop_map(|(supported, values, enums)| Loader { supported, values, enums })
}

fn os() -> impl Strategy<Value = Os> {
    (support(), enums(), of(enum_element()), of(loader()), of(flag())).prop_map(
        |(supported, enums, firmware_features, loader, varstore)| Os {
            supported,
            enums,
            firmware_features,
            loader,
            varstore,
        },
    )
}

fn mode_enums() -> impl Strategy<Value = CpuModeEnums> {
    (support(), enums()).prop_map(|(supported, enums)| CpuModeEnums { supported, enums })
}

fn host_model() -> impl Strategy<Value = HostModel> {
    let fallback = of(prop_oneof![Just(Fallback::Allow), Just(Fallback::Forbid)]);
    let model = (text(), fallback, of("[a-zA-Z0-9 ]{12}")).prop_map(|(name, fallback, vendor_id)| CpuModelName {
        name,
        fallback,
        vendor_id,
    });
    let mode = prop_oneof![Just(MaxPhysAddrMode::Emulate), Just(MaxPhysAddrMode::Passthrough)];
    let maxphys =
        (mode, of(any::<u32>()), of(any::<u32>())).prop_map(|(mode, bits, limit)| MaxPhysAddr { mode, bits, limit });
    let policy = prop_oneof![
        Just(FeaturePolicy::Force),
        Just(FeaturePolicy::Require),
        Just(FeaturePolicy::Optional),
        Just(FeaturePolicy::Disable),
        Just(FeaturePolicy::Forbid),
    ];
    let feature = (policy, word()).prop_map(|(policy, name)| CpuFeature { policy, name });
    let details = of((model, of(text()), of(maxphys), vec(feature, 0..5)));
    (support(), details).prop_map(|(supported, details)| match details {
        Some((model, vendor, maxphysaddr, features)) => {
            HostModel { supported, model: Some(model), vendor, maxphysaddr, features }
        }
        None => HostModel { supported, model: None, vendor: None, maxphysaddr: None, features: Vec::new() },
    })
}

fn custom() -> impl Strategy<Value = CustomModels> {
    let usable = prop_oneof![Just(Usable::Yes), Just(Usable::No), Just(Usable::Unknown)];
    let model = (text(), usable, of(any::<bool>()), of(text()), text(), of(vec(text(), 1..4))).prop_map(
        |(name, usable, deprecated, canonical, vendor, blockers)| CustomModel {
            blockers: blockers.map(|features| Blockers { model: name.clone(), features }),
            name,
            usable,
            deprecated,
            canonical,
            vendor: Some(vendor),
        },
    );
    (support(), vec(model, 0..5)).prop_map(|(supported, models)| CustomModels { supported, models })
}

fn cpu() -> impl Strategy<Value = Cpu> {
    (mode_enums(), mode_enums(), host_model(), custom()).prop_map(|(hp, max, hm, custom)| Cpu {
        host_passthrough: Some(hp),
        maximum: Some(max),
        host_model: Some(hm),
        custom: Some(custom),
    })
}

fn devices() -> impl Strategy<Value = Devices> {
    vec(of(enum_element()), Devices::NAMES.len()).prop_map(|slots| {
        let mut d = Devices::default();
        for (name, e) in Devices::NAMES.iter().zip(slots) {
            *d.slot_mut(name).expect("known device name") = e;
        }
        d
    })
}

fn sev() -> impl Strategy<Value = Sev> {
    let params = (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(a, b, c, d)| SevParams {
        cbitpos: a,
        reduced_phys_bits: b,
        max_guests: Some(c),
        max_es_guests: Some(d),
    });
    (support(), of(params), of(text())).prop_map(|(supported, params, cpu0_id)| Sev { supported, params, cpu0_id })
}

fn sgx() -> impl Strategy<Value = Sgx> {
    let section = (any::<u32>(), any::<u64>()).prop_map(|(node, size_kib)| SgxSection { node, size_kib });
    let info = (any::<bool>(), any::<bool>(), any::<bool>(), any::<u64>(), of(vec(section, 0..3))).prop_map(
        |(flc, sgx1, sgx2, section_size_kib, sections)| SgxInfo { flc, sgx1, sgx2, section_size_kib, sections },
    );
    (support(), of(info)).prop_map(|(supported, info)| Sgx { supported, info })
}

fn cca() -> impl Strategy<Value = Cca> {
    let algos = of(Just(vec!["sha256".to_owned(), "sha512".to_owned()]));
    (support(), of(any::<bool>()), algos, of(text())).prop_map(
        |(supported, measurement_log, measurement_algo, personalization_value)| Cca {
            supported,
            measurement_log,
            measurement_algo,
            personalization_value,
        },
    )
}

fn hyperv() -> impl Strategy<Value = Hyperv> {
    let defaults = (of(any::<u32>()), of(any::<bool>()), of(any::<bool>()), of(any::<bool>()), of(text())).prop_map(
        |(spinlocks, stimer_direct, tlbflush_direct, tlbflush_extended, vendor_id)| HypervDefaults {
            spinlocks,
            stimer_direct,
            tlbflush_direct,
            tlbflush_extended,
            vendor_id,
        },
    );
    (support(), enums(), of(defaults)).prop_map(|(supported, enums, defaults)| Hyperv { supported, enums, defaults })
}

fn features() -> impl Strategy<Value = Features> {
    let flags = vec(of(flag()), 8);
    (of(enum_element()), flags, of(sev()), of(sgx()), of(cca()), of(hyperv()), of(enum_element())).prop_map(
        |(gic, flags, sev, sgx, cca, hyperv, launch_security)| Features {
            gic,
            vmcoreinfo: flags[0],
            genid: flags[1],
            backing_store_input: flags[2],
            backup: flags[3],
            async_teardown: flags[4],
            s390_pv: flags[5],
            ps2: flags[6],
            tdx: flags[7],
            sev,
            sgx,
            cca,
            hyperv,
            launch_security,
        },
    )
}

/// A whole document that is valid against `domaincaps.rng`.
pub fn domain_caps() -> impl Strategy<Value = DomainCapabilities> {
    let head = (of("/[a-zA-Z0-9 <>&'\"._/é-]{1,20}"), text(), of(text()), text(), of(any::<u32>()), of(flag()));
    let body = (of(os()), of(cpu()), of(enum_element()), of(devices()), of(features()));
    (head, body).prop_map(
        |((path, domain, machine, arch, vcpu, iothreads), (os, cpu, memory_backing, devices, features))| {
            DomainCapabilities {
                path,
                domain,
                machine,
                arch,
                vcpu: vcpu.map(|max| Vcpu { max }),
                iothreads,
                os,
                cpu,
                memory_backing,
                devices,
                features,
            }
        },
    )
}

/// A whole document as any libvirt version may write it: a schema-valid one from
/// [`domain_caps`] with the parts older versions left out removed at random (the `vendor` of
/// custom CPU models, before 8.9.0; the SEV guest limits `maxGuests` and `maxESGuests`).
/// Such documents no longer validate against the newest schema, but read and write back.
pub fn domain_caps_any_version() -> impl Strategy<Value = DomainCapabilities> {
    (domain_caps().boxed(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(|(mut caps, drop_vendor, g, es)| {
        if let Some(custom) = caps.cpu.as_mut().and_then(|c| c.custom.as_mut()) {
            for (i, m) in custom.models.iter_mut().enumerate() {
                if drop_vendor & (1 << (i % 64)) != 0 {
                    m.vendor = None;
                }
            }
        }
        if let Some(p) = caps.features.as_mut().and_then(|f| f.sev.as_mut()).and_then(|s| s.params.as_mut()) {
            if g {
                p.max_guests = None;
            }
            if es {
                p.max_es_guests = None;
            }
        }
        caps
    })
}

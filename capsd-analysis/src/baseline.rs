//! `baseline`: the capabilities document every given host satisfies.
//!
//! The rules, element by element (the inputs must share `<domain>` and `<arch>`):
//! - an element is kept only when every input has it (omitted anywhere: omitted, since one
//!   host makes no statement);
//! - `supported='yes'` only where every input says yes, else `no`;
//! - an enum is kept only when every input has it, with the values every input lists, in the
//!   first input's order; elements that end up `supported='no'` carry no enums;
//! - `<vcpu max>`: the smallest; loader `<value>`s: those every input lists;
//! - custom CPU models: those every input lists; `usable='yes'` only if usable on all, `no`
//!   if unusable on any, else `unknown`; blockers: the features every input lists as
//!   blocking the model (a blocker says "this host lacks the feature", so one host's
//!   blocker is no statement about the others); `deprecated` if deprecated anywhere;
//! - host-model CPU: `supported` combined; the model only when identical everywhere, and
//!   then vendor and maxphysaddr when identical everywhere and the features stated
//!   identically everywhere (the schema allows those only after a model);
//! - `<path>`, `<machine>`, SEV/SGX/CCA details, Hyper-V defaults: kept only when identical
//!   everywhere.
//!
//! So anything the baseline states as supported is supported by every input (the property
//! `tests/baseline.rs` checks with [`crate::check()`]).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use capsd_core::{
    Blockers, Cca, Cpu, CpuModeEnums, CustomModel, CustomModels, Devices, DomainCapabilities, Enum, EnumElement,
    Features, Flag, HostModel, Hyperv, Loader, Os, Sev, Sgx, Support, Usable, Vcpu,
};

use crate::AnalysisError;

/// The items of `first` that every list holds, in `first`'s order. Each list is hashed once,
/// so the time is linear in the total length (a hostile document can hold 250,000 values).
fn common<'a, T: Eq + Hash + 'a>(first: &'a [T], lists: impl IntoIterator<Item = &'a [T]>) -> Vec<&'a T> {
    let sets: Vec<HashSet<&T>> = lists.into_iter().map(|l| l.iter().collect()).collect();
    first.iter().filter(|x| sets.iter().all(|s| s.contains(x))).collect()
}

/// Index items by a key; of several with one key, the first (as a search in order finds).
fn first_by<'a, T>(items: &'a [T], key: impl Fn(&'a T) -> &'a str) -> HashMap<&'a str, &'a T> {
    let mut m = HashMap::with_capacity(items.len());
    for x in items {
        m.entry(key(x)).or_insert(x);
    }
    m
}

/// The document every input satisfies.
pub fn baseline(docs: &[DomainCapabilities]) -> Result<DomainCapabilities, AnalysisError> {
    let Some(first) = docs.first() else { return Err(AnalysisError::NoInput) };
    for (i, d) in docs.iter().enumerate().skip(1) {
        if d.domain != first.domain {
            return Err(AnalysisError::Mismatch {
                what: "domain type",
                first: first.domain.clone(),
                index: i,
                other: d.domain.clone(),
            });
        }
        if d.arch != first.arch {
            return Err(AnalysisError::Mismatch {
                what: "arch",
                first: first.arch.clone(),
                index: i,
                other: d.arch.clone(),
            });
        }
    }
    Ok(DomainCapabilities {
        path: same(docs, |d| d.path.clone()),
        domain: first.domain.clone(),
        machine: same(docs, |d| d.machine.clone()),
        arch: first.arch.clone(),
        vcpu: all(docs, |d| d.vcpu).map(|v| Vcpu { max: v.iter().map(|v| v.max).min().unwrap_or(0) }),
        iothreads: flag(docs, |d| d.iothreads.as_ref()),
        os: os(docs),
        cpu: cpu(docs),
        memory_backing: enum_element(docs, |d| d.memory_backing.as_ref()),
        devices: devices(docs),
        features: features(docs),
    })
}

/// `Some(values)` when every document has the value, else `None`.
fn all<'a, T: 'a>(docs: &'a [DomainCapabilities], f: impl Fn(&'a DomainCapabilities) -> Option<T>) -> Option<Vec<T>> {
    docs.iter().map(f).collect()
}

/// The value when every document has the same one.
fn same<'a, T: PartialEq + 'a>(
    docs: &'a [DomainCapabilities],
    f: impl Fn(&'a DomainCapabilities) -> Option<T>,
) -> Option<T> {
    let mut vals = all(docs, f)?.into_iter();
    let first = vals.next()?;
    vals.all(|v| v == first).then_some(first)
}

fn support(s: impl IntoIterator<Item = Support>) -> Support {
    Support::from_bool(s.into_iter().all(Support::is_yes))
}

fn flag<'a>(docs: &'a [DomainCapabilities], f: impl Fn(&'a DomainCapabilities) -> Option<&'a Flag>) -> Option<Flag> {
    all(docs, f).map(|v| Flag::new(support(v.iter().map(|f| f.supported))))
}

/// Enums present in every list, with the values present in every one of them.
fn enums(lists: &[&[Enum]]) -> Vec<Enum> {
    let Some(first) = lists.first() else { return Vec::new() };
    let by_name: Vec<HashMap<&str, &Enum>> = lists[1..].iter().map(|l| first_by(l, |e| &e.name)).collect();
    first
        .iter()
        .filter_map(|e| {
            let others: Option<Vec<&Enum>> = by_name.iter().map(|m| m.get(e.name.as_str()).copied()).collect();
            let values = common(&e.values, others?.into_iter().map(|o| o.values.as_slice()));
            Some(Enum { name: e.name.clone(), values: values.into_iter().cloned().collect() })
        })
        .collect()
}

fn combine(parts: &[(Support, &[Enum])]) -> (Support, Vec<Enum>) {
    let s = support(parts.iter().map(|p| p.0));
    let lists: Vec<&[Enum]> = parts.iter().map(|p| p.1).collect();
    let e = if s.is_yes() { enums(&lists) } else { Vec::new() };
    (s, e)
}

fn enum_element<'a>(
    docs: &'a [DomainCapabilities],
    f: impl Fn(&'a DomainCapabilities) -> Option<&'a EnumElement>,
) -> Option<EnumElement> {
    let v = all(docs, f)?;
    let parts: Vec<(Support, &[Enum])> = v.iter().map(|e| (e.supported, e.enums.as_slice())).collect();
    let (supported, enums) = combine(&parts);
    Some(EnumElement { supported, enums })
}

fn os(docs: &[DomainCapabilities]) -> Option<Os> {
    let v = all(docs, |d| d.os.as_ref())?;
    let parts: Vec<(Support, &[Enum])> = v.iter().map(|o| (o.supported, o.enums.as_slice())).collect();
    let (supported, enums) = combine(&parts);
    let loader = all(docs, |d| d.os.as_ref()?.loader.as_ref()).map(|ls: Vec<&Loader>| {
        let parts: Vec<(Support, &[Enum])> = ls.iter().map(|l| (l.supported, l.enums.as_slice())).collect();
        let (supported, enums) = combine(&parts);
        let values = if supported.is_yes() {
            common(&ls[0].values, ls[1..].iter().map(|l| l.values.as_slice())).into_iter().cloned().collect()
        } else {
            Vec::new()
        };
        Loader { supported, values, enums }
    });
    Some(Os {
        supported,
        enums,
        firmware_features: enum_element(docs, |d| d.os.as_ref()?.firmware_features.as_ref()),
        loader,
        varstore: flag(docs, |d| d.os.as_ref()?.varstore.as_ref()),
    })
}

fn mode_enums<'a>(
    docs: &'a [DomainCapabilities],
    f: impl Fn(&'a Cpu) -> Option<&'a CpuModeEnums>,
) -> Option<CpuModeEnums> {
    let v = all(docs, |d| f(d.cpu.as_ref()?))?;
    let parts: Vec<(Support, &[Enum])> = v.iter().map(|m| (m.supported, m.enums.as_slice())).collect();
    let (supported, enums) = combine(&parts);
    Some(CpuModeEnums { supported, enums })
}

fn cpu(docs: &[DomainCapabilities]) -> Option<Cpu> {
    all(docs, |d| d.cpu.as_ref())?;
    Some(Cpu {
        host_passthrough: mode_enums(docs, |c| c.host_passthrough.as_ref()),
        maximum: mode_enums(docs, |c| c.maximum.as_ref()),
        host_model: all(docs, |d| d.cpu.as_ref()?.host_model.as_ref()).map(|hs| host_model(&hs)),
        custom: all(docs, |d| d.cpu.as_ref()?.custom.as_ref()).map(|cs| custom(&cs)),
    })
}

fn host_model(hs: &[&HostModel]) -> HostModel {
    let supported = support(hs.iter().map(|h| h.supported));
    let first = hs[0];
    let all_same = |f: &dyn Fn(&HostModel) -> bool| hs.iter().all(|h| f(h));
    let model = first.model.clone().filter(|m| all_same(&|h| h.model.as_ref() == Some(m)));
    let vendor = first.vendor.clone().filter(|v| all_same(&|h| h.vendor.as_ref() == Some(v)));
    let maxphysaddr = first.maxphysaddr.clone().filter(|m| all_same(&|h| h.maxphysaddr.as_ref() == Some(m)));
    let features = if supported.is_yes() && model.is_some() {
        common(&first.features, hs[1..].iter().map(|h| h.features.as_slice())).into_iter().cloned().collect()
    } else {
        Vec::new()
    };
    // The schema allows vendor, maxphysaddr and features only after a model.
    match model.filter(|_| supported.is_yes()) {
        Some(model) => HostModel { supported, model: Some(model), vendor, maxphysaddr, features },
        None => HostModel { supported, model: None, vendor: None, maxphysaddr: None, features: Vec::new() },
    }
}

fn custom(cs: &[&CustomModels]) -> CustomModels {
    let supported = support(cs.iter().map(|c| c.supported));
    let by_name: Vec<HashMap<&str, &CustomModel>> = cs.iter().map(|c| first_by(&c.models, |m| &m.name)).collect();
    let models = if supported.is_yes() {
        cs[0]
            .models
            .iter()
            .filter_map(|m| {
                let same: Option<Vec<&CustomModel>> = by_name.iter().map(|b| b.get(m.name.as_str()).copied()).collect();
                let same = same?;
                let usable = if same.iter().all(|o| o.usable == Usable::Yes) {
                    Usable::Yes
                } else if same.iter().any(|o| o.usable == Usable::No) {
                    Usable::No
                } else {
                    Usable::Unknown
                };
                let deprecated = if same.iter().any(|o| o.deprecated == Some(true)) {
                    Some(true)
                } else if same.iter().all(|o| o.deprecated == Some(false)) {
                    Some(false)
                } else {
                    None
                };
                // Documents from libvirt before 8.9.0 carry no vendor: the baseline states one
                // only when every document does.
                let vendor = if same.iter().all(|o| o.vendor == m.vendor) {
                    m.vendor.clone()
                } else if same.iter().all(|o| o.vendor.is_some()) {
                    Some("unknown".to_owned())
                } else {
                    None
                };
                let canonical = m.canonical.clone().filter(|c| same.iter().all(|o| o.canonical.as_ref() == Some(c)));
                let blockers = if usable == Usable::No {
                    let lists: Vec<&[String]> =
                        same.iter().map(|o| o.blockers.as_ref().map_or(&[][..], |b| b.features.as_slice())).collect();
                    let mut feats: Vec<String> =
                        common(lists[0], lists[1..].iter().copied()).into_iter().cloned().collect();
                    feats.sort();
                    feats.dedup();
                    (!feats.is_empty()).then(|| Blockers { model: m.name.clone(), features: feats })
                } else {
                    None
                };
                Some(CustomModel { name: m.name.clone(), usable, deprecated, canonical, vendor, blockers })
            })
            .collect()
    } else {
        Vec::new()
    };
    CustomModels { supported, models }
}

fn devices(docs: &[DomainCapabilities]) -> Option<Devices> {
    all(docs, |d| d.devices.as_ref())?;
    let mut out = Devices::default();
    for name in Devices::NAMES {
        let merged = enum_element(docs, |d| d.devices.as_ref()?.get(name));
        if let Some(slot) = out.slot_mut(name) {
            *slot = merged;
        }
    }
    Some(out)
}

fn features(docs: &[DomainCapabilities]) -> Option<Features> {
    all(docs, |d| d.features.as_ref())?;
    let f = |g: fn(&Features) -> Option<&Flag>| flag(docs, move |d| g(d.features.as_ref()?));
    Some(Features {
        gic: enum_element(docs, |d| d.features.as_ref()?.gic.as_ref()),
        vmcoreinfo: f(|x| x.vmcoreinfo.as_ref()),
        genid: f(|x| x.genid.as_ref()),
        backing_store_input: f(|x| x.backing_store_input.as_ref()),
        backup: f(|x| x.backup.as_ref()),
        async_teardown: f(|x| x.async_teardown.as_ref()),
        s390_pv: f(|x| x.s390_pv.as_ref()),
        ps2: f(|x| x.ps2.as_ref()),
        tdx: f(|x| x.tdx.as_ref()),
        sev: all(docs, |d| d.features.as_ref()?.sev.as_ref()).map(|v: Vec<&Sev>| {
            let supported = support(v.iter().map(|s| s.supported));
            let same_as_first = |g: &dyn Fn(&Sev) -> bool| v.iter().all(|s| g(s));
            Sev {
                supported,
                params: v[0]
                    .params
                    .clone()
                    .filter(|p| supported.is_yes() && same_as_first(&|s| s.params.as_ref() == Some(p))),
                cpu0_id: v[0]
                    .cpu0_id
                    .clone()
                    .filter(|c| supported.is_yes() && same_as_first(&|s| s.cpu0_id.as_ref() == Some(c))),
            }
        }),
        sgx: all(docs, |d| d.features.as_ref()?.sgx.as_ref()).map(|v: Vec<&Sgx>| {
            let supported = support(v.iter().map(|s| s.supported));
            Sgx {
                supported,
                info: v[0].info.clone().filter(|i| supported.is_yes() && v.iter().all(|s| s.info.as_ref() == Some(i))),
            }
        }),
        cca: all(docs, |d| d.features.as_ref()?.cca.as_ref()).map(|v: Vec<&Cca>| {
            let supported = support(v.iter().map(|s| s.supported));
            if supported.is_yes() && v.iter().all(|c| *c == v[0]) {
                v[0].clone()
            } else {
                Cca { supported, measurement_log: None, measurement_algo: None, personalization_value: None }
            }
        }),
        hyperv: all(docs, |d| d.features.as_ref()?.hyperv.as_ref()).map(|v: Vec<&Hyperv>| {
            let parts: Vec<(Support, &[Enum])> = v.iter().map(|h| (h.supported, h.enums.as_slice())).collect();
            let (supported, enums) = combine(&parts);
            let defaults = v[0]
                .defaults
                .clone()
                .filter(|d| supported.is_yes() && v.iter().all(|h| h.defaults.as_ref() == Some(d)));
            Hyperv { supported, enums, defaults }
        }),
        launch_security: enum_element(docs, |d| d.features.as_ref()?.launch_security.as_ref()),
    })
}

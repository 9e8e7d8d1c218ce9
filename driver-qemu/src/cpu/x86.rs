//! x86 host-model decoding against libvirt's cpu_map, as libvirt 9.0 does it.
//!
//! Facts used (libvirt `src/cpu/cpu_x86.c`, `src/qemu/qemu_capabilities.c`):
//! * The host CPU is QEMU's static expansion of `host` (KVM) or `max` (TCG), migratable and
//!   non-migratable expansions merged. Its boolean properties become CPUID/MSR bits through
//!   the map's features (QEMU spellings via `source='qemu'` aliases; unknown ones are
//!   ignored), its `vendor` string becomes CPUID leaf 0 and `family`/`model`/`stepping`
//!   the leaf 1 signature.
//! * Every map model QEMU also knows (for this accelerator) is a candidate, newest (last in
//!   the map) first, unless its vendor differs from the host's or it is not meant for
//!   guest CPU decoding. A candidate lists the features the host has beyond the model
//!   (`require`) and the model's features the host lacks, plus the features that block the
//!   model in QEMU (`disable`), each in map order, then the model's removed features as
//!   `disable` when not already listed.
//! * A candidate whose signature matches the host's beats one that does not; otherwise the
//!   one with the lower score wins (score: one per required feature, and for the disabled
//!   ones an increasing penalty starting at 2), ties keeping the earlier-visited (newer)
//!   model.

use serde_json::Value;

use super::cpumap::{DataKey, X86Data, X86Map, X86Model};
use capsd_core::{CpuFeature, FeaturePolicy};

/// The host CPU as QEMU expanded it: merged boolean features and the identification props.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpandedCpu {
    /// `(QEMU property name, enabled, migratable)`, in QEMU's order.
    pub features: Vec<(String, bool, bool)>,
    pub vendor: Option<String>,
    pub family: Option<u64>,
    pub model: Option<u64>,
    pub stepping: Option<u64>,
}

impl ExpandedCpu {
    /// Merge a migratable and a non-migratable static expansion reply (`{"model": {...}}`).
    /// `None` when neither has a model with properties.
    pub fn from_replies(migratable: Option<&Value>, non_migratable: Option<&Value>) -> Option<ExpandedCpu> {
        fn props(v: Option<&Value>) -> Option<&serde_json::Map<String, Value>> {
            v?.get("model")?.get("props")?.as_object()
        }
        let mig = props(migratable);
        let nonmig = props(non_migratable);
        let base = mig.or(nonmig)?;
        let mut cpu = ExpandedCpu::default();
        for (name, value) in base {
            match value {
                Value::Bool(b) => {
                    let in_mig = mig.and_then(|m| m.get(name)).and_then(Value::as_bool);
                    let in_nonmig = nonmig.and_then(|m| m.get(name)).and_then(Value::as_bool);
                    let enabled = *b || in_nonmig == Some(true);
                    let migratable = in_mig.unwrap_or(*b);
                    cpu.features.push((name.clone(), enabled, migratable));
                }
                Value::String(s) if name == "vendor" => cpu.vendor = Some(s.clone()),
                Value::Number(n) => match name.as_str() {
                    "family" => cpu.family = n.as_u64(),
                    "model" => cpu.model = n.as_u64(),
                    "stepping" => cpu.stepping = n.as_u64(),
                    _ => {}
                },
                _ => {}
            }
        }
        Some(cpu)
    }

    /// The enabled feature names (QEMU spelling).
    pub fn enabled(&self) -> impl Iterator<Item = &str> {
        self.features.iter().filter(|f| f.1).map(|f| f.0.as_str())
    }
}

/// A model QEMU offers, with what blocks it (QEMU feature names).
#[derive(Debug, Clone, PartialEq)]
pub struct HvModel {
    pub name: String,
    pub blockers: Vec<String>,
}

/// The result of decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub model: String,
    pub vendor: Option<String>,
    pub features: Vec<CpuFeature>,
}

const LEAF0: DataKey = DataKey::Cpuid { leaf: 0, subleaf: 0 };
const LEAF1: DataKey = DataKey::Cpuid { leaf: 1, subleaf: 0 };
/// Reserved bits masked out of the leaf 1 signature.
const SIGNATURE_MASK: u32 = 0x0fff_3fff;

/// CPUID leaf 0 registers for a 12-character vendor string (`ebx`, `edx`, `ecx` order).
fn vendor_regs(s: &str) -> Option<[u32; 4]> {
    let b = s.as_bytes();
    if b.len() != 12 {
        return None;
    }
    let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Some([0, w(0), w(8), w(4)])
}

/// The leaf 1 `eax` encoding of a signature.
pub fn make_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let mut sig = 0;
    let mut fam = family;
    if fam > 0xf {
        sig |= (fam - 0xf) << 20;
        fam = 0xf;
    }
    sig |= (model >> 4) << 16;
    sig |= fam << 8;
    sig |= (model & 0xf) << 4;
    sig |= stepping & 0xf;
    sig
}

fn split_signature(sig: u32) -> (u32, u32, u32) {
    (((sig >> 20) & 0xff) + ((sig >> 8) & 0xf), ((sig >> 12) & 0xf0) + ((sig >> 4) & 0xf), sig & 0xf)
}

/// The CPUID data of the expanded host CPU.
pub fn host_data(map: &X86Map, cpu: &ExpandedCpu) -> X86Data {
    let mut data = X86Data::default();
    for name in cpu.enabled() {
        if let Some(f) = map.feature_from_qemu(name) {
            data.add(&f.data);
        }
    }
    if let Some(regs) = cpu.vendor.as_deref().and_then(vendor_regs) {
        data.add_item(LEAF0, regs);
    }
    let sig =
        make_signature(cpu.family.unwrap_or(0) as u32, cpu.model.unwrap_or(0) as u32, cpu.stepping.unwrap_or(0) as u32);
    data.add_item(LEAF1, [sig, 0, 0, 0]);
    data
}

/// Find and clear the vendor string in `data`; the vendor's libvirt name.
fn take_vendor(map: &X86Map, data: &mut X86Data) -> Option<String> {
    for v in &map.vendors {
        let Some(regs) = vendor_regs(&v.string) else { continue };
        let mut vd = X86Data::default();
        vd.add_item(LEAF0, regs);
        if data.0.contains_key(&LEAF0) && data.contains(&vd) {
            data.subtract(&vd);
            return Some(v.name.clone());
        }
    }
    None
}

/// Move every map feature fully present in `data` out of it, in map order.
fn take_features(map: &X86Map, data: &mut X86Data, policy: FeaturePolicy, out: &mut Vec<CpuFeature>) {
    for f in &map.features {
        if data.contains(&f.data) {
            data.subtract(&f.data);
            out.push(CpuFeature { policy, name: f.name.clone() });
        }
    }
}

fn model_data(map: &X86Map, m: &X86Model) -> X86Data {
    let mut d = X86Data::default();
    for f in &m.features {
        if let Some(f) = map.feature(f) {
            d.add(&f.data);
        }
    }
    d
}

/// The candidate description of `data` in terms of `model`.
fn candidate(map: &X86Map, data: &X86Data, model: &X86Model, hv: Option<&HvModel>) -> Vec<CpuFeature> {
    let mut extra = data.clone();
    let mut missing = model_data(map, model);
    extra.subtract(&missing);
    missing.subtract(data);
    if let Some(hv) = hv {
        for b in &hv.blockers {
            if let Some(f) = map.feature_from_qemu(b) {
                if !extra.contains(&f.data) {
                    missing.add(&f.data);
                }
            }
        }
    }
    let mut features = Vec::new();
    take_features(map, &mut extra, FeaturePolicy::Require, &mut features);
    take_features(map, &mut missing, FeaturePolicy::Disable, &mut features);
    for r in &model.removed {
        if !features.iter().any(|f| &f.name == r) {
            features.push(CpuFeature { policy: FeaturePolicy::Disable, name: r.clone() });
        }
    }
    features
}

/// libvirt's score of a candidate's feature list: `(total, disabled part)`. The count of
/// enabled features shrinks while the list is walked, so disabled features at the very end
/// of a long disabled tail are not counted: this reproduces libvirt's arithmetic exactly.
fn score(features: &[CpuFeature]) -> (usize, usize) {
    let mut enabled = features.len();
    let mut disabled = 0;
    let mut penalty = 2;
    let mut i = 0;
    while i < enabled {
        if features[i].policy == FeaturePolicy::Disable {
            enabled -= 1;
            disabled += penalty;
            penalty += 1;
        }
        i += 1;
    }
    (enabled + disabled, disabled)
}

fn signature_matches(model: &X86Model, signature: u32) -> bool {
    let (family, m, stepping) = split_signature(signature);
    model.signatures.iter().any(|s| {
        s.family == family
            && s.model == m
            && match &s.steppings {
                None => true,
                Some(st) => st.contains(&stepping),
            }
    })
}

/// Drop TSX features that are broken on some Intel CPUs (by signature).
fn filter_tsx(map: &X86Map, vendor: Option<&str>, data: &mut X86Data) {
    if vendor != Some("Intel") {
        return;
    }
    let (family, model, stepping) = split_signature(data.get(LEAF1)[0]);
    if family == 6 && ((model == 63 && stepping < 4) || model == 60 || model == 69 || model == 70) {
        for name in ["hle", "rtm"] {
            if let Some(f) = map.feature(name) {
                data.subtract(&f.data);
            }
        }
    }
}

/// Decode the expanded host CPU into the closest map model that QEMU offers (`hv_models`,
/// all models of the accelerator). `None` when no model fits.
pub fn decode(map: &X86Map, cpu: &ExpandedCpu, hv_models: &[HvModel]) -> Option<Decoded> {
    let mut data = host_data(map, cpu);
    let vendor = take_vendor(map, &mut data);
    let signature = data.get(LEAF1)[0] & SIGNATURE_MASK;
    filter_tsx(map, vendor.as_deref(), &mut data);

    let mut best: Option<(&X86Model, Vec<CpuFeature>)> = None;
    for model in map.models.iter().rev() {
        let Some(hv) = hv_models.iter().find(|h| h.name == model.name) else { continue };
        if let (Some(v), Some(mv)) = (vendor.as_deref(), model.vendor.as_deref()) {
            if v != mv {
                continue;
            }
        }
        if !model.decode_guest {
            continue;
        }
        let features = candidate(map, &data, model, Some(hv));
        let better = match &best {
            None => true,
            Some((cur, cur_features)) => {
                let cur_sig = signature != 0 && signature_matches(cur, signature);
                let cand_sig = signature != 0 && signature_matches(model, signature);
                if cur_sig && !cand_sig {
                    false
                } else if !cur_sig && cand_sig {
                    true
                } else {
                    let (cand_total, cand_dis) = score(&features);
                    let (cur_total, cur_dis) = score(cur_features);
                    cand_total < cur_total || (cand_total == cur_total && cand_dis < cur_dis)
                }
            }
        };
        if better {
            best = Some((model, features));
        }
    }
    let (model, features) = best?;
    Some(Decoded { model: model.name.clone(), vendor, features })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::cpumap::{X86Feature, X86Signature, X86Vendor};

    fn feat(name: &str, bit: u32) -> X86Feature {
        let mut data = X86Data::default();
        data.add_item(DataKey::Cpuid { leaf: 1, subleaf: 0 }, [0, 0, 0, 1 << bit]);
        X86Feature { name: name.into(), aliases: vec![(format!("{name}-q"), "qemu".into())], migratable: true, data }
    }

    fn model(name: &str, vendor: Option<&str>, features: &[&str]) -> X86Model {
        X86Model {
            name: name.into(),
            decode_host: true,
            decode_guest: true,
            vendor: vendor.map(Into::into),
            signatures: vec![],
            features: features.iter().map(|s| s.to_string()).collect(),
            removed: vec![],
            canonical: None,
        }
    }

    fn map() -> X86Map {
        X86Map {
            vendors: vec![X86Vendor { name: "AMD".into(), string: "AuthenticAMD".into() }],
            features: ["a", "b", "c", "d", "e"].iter().enumerate().map(|(i, n)| feat(n, i as u32)).collect(),
            models: vec![model("old", None, &["a", "b"]), model("new", Some("AMD"), &["a", "b", "c", "d"])],
        }
    }

    fn host(features: &[&str]) -> ExpandedCpu {
        ExpandedCpu {
            features: features.iter().map(|f| (f.to_string(), true, true)).collect(),
            vendor: Some("AuthenticAMD".into()),
            family: Some(25),
            model: Some(1),
            stepping: Some(1),
        }
    }

    fn hv(names: &[&str]) -> Vec<HvModel> {
        names.iter().map(|n| HvModel { name: n.to_string(), blockers: vec![] }).collect()
    }

    #[test]
    fn fewest_changes_wins_and_lists_require_then_disable() {
        let m = map();
        // Host a b c e: "new" needs +e -d (score 1 + 2), "old" needs +c +e (score 2): old wins.
        let d = decode(&m, &host(&["a", "b", "c", "e"]), &hv(&["old", "new"])).unwrap();
        assert_eq!(d.model, "old");
        assert_eq!(d.vendor.as_deref(), Some("AMD"));
        let names: Vec<_> = d.features.iter().map(|f| (f.policy, f.name.as_str())).collect();
        assert_eq!(names, [(FeaturePolicy::Require, "c"), (FeaturePolicy::Require, "e")]);
        // Host a b c d e: new (+e) beats old (+c +d +e).
        let d = decode(&m, &host(&["a-q", "b", "c", "d", "e"]), &hv(&["old", "new"])).unwrap();
        assert_eq!(d.model, "new");
        assert_eq!(d.features, [CpuFeature { policy: FeaturePolicy::Require, name: "e".into() }]);
    }

    #[test]
    fn only_models_qemu_offers_and_same_vendor() {
        let m = map();
        let d = decode(&m, &host(&["a", "b", "c", "d"]), &hv(&["old"])).unwrap();
        assert_eq!(d.model, "old");
        let mut intel = host(&["a", "b", "c", "d"]);
        intel.vendor = Some("GenuineIntel".into());
        // Unknown vendor string: no vendor, both models are candidates.
        assert_eq!(decode(&m, &intel, &hv(&["old", "new"])).unwrap().vendor, None);
        assert!(decode(&m, &host(&["a"]), &[]).is_none());
    }

    #[test]
    fn signature_match_beats_feature_count() {
        let mut m = map();
        m.models[0].signatures = vec![X86Signature { family: 25, model: 1, steppings: None }];
        let d = decode(&m, &host(&["a", "b", "c", "d"]), &hv(&["old", "new"])).unwrap();
        assert_eq!(d.model, "old");
    }

    #[test]
    fn blockers_and_removed_features_are_disabled() {
        let mut m = map();
        m.models[1].removed = vec!["e".into()];
        let hvm = vec![HvModel { name: "new".into(), blockers: vec!["d-q".into()] }];
        let d = decode(&m, &host(&["a", "b", "c"]), &hvm).unwrap();
        let names: Vec<_> = d.features.iter().map(|f| (f.policy, f.name.as_str())).collect();
        assert_eq!(names, [(FeaturePolicy::Disable, "d"), (FeaturePolicy::Disable, "e")]);
    }

    #[test]
    fn score_follows_libvirt_arithmetic() {
        let f = |p| CpuFeature { policy: p, name: String::new() };
        use FeaturePolicy::*;
        assert_eq!(score(&[f(Require), f(Require)]), (2, 0));
        // R R D D D: the walk stops before the last D.
        assert_eq!(score(&[f(Require), f(Require), f(Disable), f(Disable), f(Disable)]), (8, 5));
    }

    #[test]
    fn signatures_round_trip() {
        assert_eq!(split_signature(make_signature(25, 17, 1)), (25, 17, 1));
        assert_eq!(make_signature(6, 85, 4), 0x50654);
    }

    #[test]
    fn merges_migratable_and_non_migratable_expansions() {
        let mig = serde_json::json!({"model": {"name": "base", "props": {"a": true, "invtsc": false, "vendor": "AuthenticAMD", "family": 25}}});
        let non = serde_json::json!({"model": {"name": "base", "props": {"a": true, "invtsc": true}}});
        let cpu = ExpandedCpu::from_replies(Some(&mig), Some(&non)).unwrap();
        assert!(cpu.features.contains(&("invtsc".into(), true, false)));
        assert!(cpu.features.contains(&("a".into(), true, true)));
        assert_eq!(cpu.family, Some(25));
        assert!(ExpandedCpu::from_replies(None, None).is_none());
    }
}

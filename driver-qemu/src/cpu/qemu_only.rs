//! x86 host-model decoding from QEMU alone, used when libvirt's cpu_map is not on the host.
//!
//! The candidates are QEMU's own named models (their static expansions, asked by
//! `plan::stage_models`), compared by feature *names* (QEMU spellings) instead of CPUID
//! bits. The selection mirrors libvirt's: same vendor string as the host only, a model
//! whose family/model equals the host's beats one that does not, then the lowest score
//! (one per required feature, an increasing penalty from 2 per disabled feature), ties
//! going to the model QEMU lists first. Features the model lacks are `require`d and
//! features the host lacks (and the model's QEMU blockers) `disable`d, each group in
//! alphabetical order.
//!
//! Differences from libvirt's answer with cpu_map (documented in `crate::cpu`): model
//! definitions are QEMU's (which can differ from libvirt's copies, e.g. in newer
//! versions of a model), names are QEMU's (`tsc-adjust`, not `tsc_adjust`), paravirtual
//! and other features libvirt does not know are listed, and the order is alphabetical.

use std::collections::BTreeSet;

use serde_json::Value;

use super::x86::{Decoded, ExpandedCpu, HvModel};
use crate::probe_data::Transcript;
use capsd_core::{CpuFeature, FeaturePolicy};

/// libvirt's short name of a CPUID vendor string; other strings are kept as they are.
pub fn vendor_name(cpuid_vendor: &str) -> String {
    match cpuid_vendor {
        "GenuineIntel" => "Intel",
        "AuthenticAMD" => "AMD",
        "HygonGenuine" => "Hygon",
        other => other,
    }
    .to_owned()
}

/// QEMU's definition of one named model, from its static expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuModel {
    pub name: String,
    pub cpu: ExpandedCpu,
}

/// The static expansions of the named models, in `names` order (models QEMU did not expand
/// are skipped).
pub fn qemu_models(t: &Transcript, names: &[&str]) -> Vec<QemuModel> {
    names
        .iter()
        .filter_map(|n| {
            let args = super::plan::static_expansion_args(n, None);
            let reply = t.reply("query-cpu-model-expansion", Some(&args))?;
            Some(QemuModel { name: (*n).to_owned(), cpu: ExpandedCpu::from_replies(Some(reply), None)? })
        })
        .collect()
}

/// The best candidate so far: signature match, score, model, features.
type Best<'a> = (bool, (usize, usize), &'a QemuModel, Vec<CpuFeature>);

fn score(required: usize, disabled: usize) -> (usize, usize) {
    // Same walk as libvirt's (see `x86::score`): the enabled count shrinks while walking.
    let mut enabled = required + disabled;
    let mut dis = 0;
    let mut penalty = 2;
    let mut i = 0;
    while i < enabled {
        if i >= required {
            enabled -= 1;
            dis += penalty;
            penalty += 1;
        }
        i += 1;
    }
    (enabled + dis, dis)
}

/// Decode the host CPU against QEMU's models (`models` in QEMU's order; `hv` the models of
/// this accelerator with their blockers).
pub fn decode(host: &ExpandedCpu, models: &[QemuModel], hv: &[HvModel]) -> Option<Decoded> {
    let host_set: BTreeSet<&str> = host.enabled().collect();
    let host_sig = (host.family, host.model);
    let mut best: Option<Best> = None;
    for m in models {
        let Some(h) = hv.iter().find(|h| h.name == m.name) else { continue };
        if host.vendor.is_some() && m.cpu.vendor.is_some() && host.vendor != m.cpu.vendor {
            continue;
        }
        let model_set: BTreeSet<&str> = m.cpu.enabled().collect();
        let mut disable: BTreeSet<&str> = model_set.difference(&host_set).copied().collect();
        disable.extend(h.blockers.iter().map(String::as_str).filter(|b| !host_set.contains(b)));
        let require: Vec<&str> = host_set.difference(&model_set).copied().collect();
        let sig = host_sig.0.is_some() && (m.cpu.family, m.cpu.model) == host_sig;
        let sc = score(require.len(), disable.len());
        let better = match &best {
            None => true,
            Some((bsig, bsc, _, _)) => {
                (sig && !bsig) || (sig == *bsig && (sc.0 < bsc.0 || (sc.0 == bsc.0 && sc.1 < bsc.1)))
            }
        };
        if better {
            let features = require
                .iter()
                .map(|n| CpuFeature { policy: FeaturePolicy::Require, name: (*n).to_owned() })
                .chain(disable.iter().map(|n| CpuFeature { policy: FeaturePolicy::Disable, name: (*n).to_owned() }))
                .collect();
            best = Some((sig, sc, m, features));
        }
    }
    let (_, _, m, features) = best?;
    Some(Decoded { model: m.name.clone(), vendor: host.vendor.as_deref().map(vendor_name), features })
}

/// The vendor QEMU gives a named model (`None` when it was not expanded or has none).
pub fn model_vendor(t: &Transcript, name: &str) -> Option<String> {
    let args = super::plan::static_expansion_args(name, None);
    let reply = t.reply("query-cpu-model-expansion", Some(&args))?;
    reply.get("model")?.get("props")?.get("vendor").and_then(Value::as_str).map(vendor_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(features: &[&str], family: u64, model: u64) -> ExpandedCpu {
        ExpandedCpu {
            features: features.iter().map(|f| (f.to_string(), true, true)).collect(),
            vendor: Some("AuthenticAMD".into()),
            family: Some(family),
            model: Some(model),
            stepping: Some(0),
        }
    }

    fn hv(names: &[&str]) -> Vec<HvModel> {
        names.iter().map(|n| HvModel { name: n.to_string(), blockers: vec![] }).collect()
    }

    #[test]
    fn picks_the_closest_qemu_model() {
        let models = vec![
            QemuModel { name: "big".into(), cpu: cpu(&["a", "b", "c", "d"], 23, 1) },
            QemuModel { name: "small".into(), cpu: cpu(&["a"], 15, 6) },
        ];
        let d = decode(&cpu(&["a", "b", "c"], 25, 1), &models, &hv(&["big", "small"])).unwrap();
        // big: -d (score 2); small: +b +c (score 2, fewer disabled): small wins.
        assert_eq!(d.model, "small");
        assert_eq!(d.vendor.as_deref(), Some("AMD"));
        assert_eq!(d.features.len(), 2);
        // A matching family/model beats the score.
        let d = decode(&cpu(&["a", "b", "c"], 23, 1), &models, &hv(&["big", "small"])).unwrap();
        assert_eq!(d.model, "big");
        assert_eq!(d.features, [CpuFeature { policy: FeaturePolicy::Disable, name: "d".into() }]);
    }

    #[test]
    fn vendor_must_match_and_model_must_be_offered() {
        let mut intel = cpu(&["a"], 6, 1);
        intel.vendor = Some("GenuineIntel".into());
        let models = vec![QemuModel { name: "amd".into(), cpu: cpu(&["a"], 23, 1) }];
        assert!(decode(&intel, &models, &hv(&["amd"])).is_none());
        assert!(decode(&cpu(&["a"], 23, 1), &models, &[]).is_none());
        assert_eq!(vendor_name("CentaurHauls"), "CentaurHauls");
    }
}

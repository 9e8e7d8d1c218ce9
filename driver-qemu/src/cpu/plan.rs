//! The QMP commands the CPU derivation needs, as probe stages (see `crate::plan`).
//!
//! * [`stage_host`]: `query-cpu-definitions` (custom models, usability, `max`), and on x86
//!   targets the static expansion of the CPU that host-model is computed from (`host` under
//!   KVM, `max` under TCG) once migratable and once with `migratable=false` (libvirt merges
//!   the two: a feature on only in the second is present but not migratable), the full
//!   expansion of `host` with `migratable=false` and `hv-passthrough=true` under KVM, as
//!   libvirt asks it (its `hv-*` properties are the Hyper-V enlightenments KVM supports;
//!   without `hv-passthrough` QEMU reports them all off),
//!   and `qom-list-properties` of `max-x86_64-cpu` (a `migratable` property there is what
//!   makes libvirt offer `hostPassthroughMigratable=on`). On s390 targets the static
//!   expansion of `host` (KVM) or `max` (TCG) once, as libvirt asks it there: its s390
//!   host-model is that answer as it is. (libvirt also asks a full expansion there, only for
//!   the deprecated features it disables when starting a guest; the document does not show
//!   them.) Other targets: nothing more (ppc64's host-model comes from the host CPU, ARM and
//!   the rest have none from QEMU).
//! * [`stage_models`]: on x86 targets, the static expansion of every named CPU model
//!   (unversioned names only when QEMU versions its models). Only the answer without
//!   libvirt's cpu_map uses them: they are QEMU's own definition of each model. About 55
//!   questions on x86_64 (90 ms of a cold KVM run), so the probe asks them only when the
//!   host facts read beside it say that answer is needed (`crate::plan::cpu_model_stages`);
//!   [`models_probed`] tells a transcript that has them.

use serde_json::{json, Value};

use crate::probe_data::{Accel, Transcript};
use crate::qmp::Request;

/// The QOM type whose `migratable` property libvirt looks for.
pub const MAX_X86_64_CPU_TYPE: &str = "max-x86_64-cpu";

/// The target architecture as QEMU names it (`query-target`), when known.
pub fn target_arch(t: &Transcript) -> Option<&str> {
    t.get("query-target")?.get("arch")?.as_str()
}

/// Whether `arch` (QEMU's or libvirt's name) is an s390 target.
pub fn is_s390(arch: &str) -> bool {
    matches!(arch, "s390x" | "s390")
}

/// Whether `arch` (QEMU's or libvirt's name) is an x86 target.
pub fn is_x86(arch: &str) -> bool {
    matches!(arch, "x86_64" | "i386" | "i686")
}

/// The CPU model host-model is computed from: `host` with KVM, `max` with TCG.
pub fn host_model_source(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "host",
        Accel::Tcg => "max",
    }
}

/// Arguments of a static expansion of `model`; `migratable: Some(false)` adds the
/// `migratable=false` property as libvirt does for its second query.
pub fn static_expansion_args(model: &str, migratable: Option<bool>) -> Value {
    match migratable {
        None => json!({"type": "static", "model": {"name": model}}),
        Some(m) => json!({"type": "static", "model": {"name": model, "props": {"migratable": m}}}),
    }
}

/// Arguments of the full expansion the Hyper-V enlightenments are read from: `host` with
/// every enlightenment KVM supports turned on, non-migratable (libvirt's question).
pub fn hyperv_expansion_args() -> Value {
    json!({"type": "full", "model": {"name": "host", "props": {"migratable": false, "hv-passthrough": true}}})
}

/// Arguments of `qom-list-properties` for `typename`.
pub fn qom_list_properties_args(typename: &str) -> Value {
    json!({ "typename": typename })
}

/// Whether QOM type `typename` has property `prop`, from the answer to
/// `qom-list-properties` in `t`; `None` when it was not asked (or the question failed).
pub fn qom_has_property(t: &Transcript, typename: &str, prop: &str) -> Option<bool> {
    let list = t.reply("qom-list-properties", Some(&qom_list_properties_args(typename)))?.as_array()?;
    Some(list.iter().any(|p| p.get("name").and_then(Value::as_str) == Some(prop)))
}

/// First CPU stage: definitions, host/max expansions, Hyper-V, `migratable` support.
pub fn stage_host(accel: Accel, t: &Transcript) -> Vec<Request> {
    let mut out = vec![Request::new("query-cpu-definitions")];
    let Some(arch) = target_arch(t) else { return out };
    let source = host_model_source(accel);
    if is_s390(arch) {
        out.push(Request::with_args("query-cpu-model-expansion", static_expansion_args(source, None)));
        return out;
    }
    if !is_x86(arch) {
        return out;
    }
    out.push(Request::with_args("query-cpu-model-expansion", static_expansion_args(source, None)));
    out.push(Request::with_args("query-cpu-model-expansion", static_expansion_args(source, Some(false))));
    if accel == Accel::Kvm {
        out.push(Request::with_args("query-cpu-model-expansion", hyperv_expansion_args()));
    }
    out.push(Request::with_args("qom-list-properties", qom_list_properties_args(MAX_X86_64_CPU_TYPE)));
    out
}

/// Second CPU stage: QEMU's definition of every named model (x86 only).
pub fn stage_models(_accel: Accel, t: &Transcript) -> Vec<Request> {
    let Some(arch) = target_arch(t) else { return Vec::new() };
    if !is_x86(arch) {
        return Vec::new();
    }
    let Some(defs) = t.get("query-cpu-definitions").and_then(Value::as_array) else { return Vec::new() };
    named_models(defs)
        .into_iter()
        .map(|name| Request::with_args("query-cpu-model-expansion", static_expansion_args(name, None)))
        .collect()
}

/// Whether `t` holds an answer (or an error) to [`stage_models`]'s every question: always on
/// targets that stage asks nothing of; on x86, when every model of [`named_models`] was
/// expanded. A probe where libvirt's cpu_map was there skips them, and its record says so
/// through this.
pub fn models_probed(t: &Transcript) -> bool {
    stage_models(Accel::Tcg, t).iter().all(|r| t.exchange(&r.execute, r.arguments.as_ref()).is_some())
}

/// The models whose QEMU definition the QEMU-only decoding compares with: every model of
/// `query-cpu-definitions` except `host`, `max` and `base`, and, when QEMU versions its
/// models (some entry has `alias-of`), only the unversioned names.
pub fn named_models(defs: &[Value]) -> Vec<&str> {
    let versioned = defs.iter().any(|d| d.get("alias-of").is_some());
    defs.iter()
        .filter(|d| !versioned || d.get("alias-of").is_some())
        .filter_map(|d| d.get("name").and_then(Value::as_str))
        .filter(|n| !matches!(*n, "host" | "max" | "base"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_data::{Exchange, Reply};

    fn transcript(arch: &str, defs: Value) -> Transcript {
        Transcript {
            greeting: Value::Null,
            exchanges: vec![
                Exchange { execute: "query-target".into(), arguments: None, reply: Reply::ok(json!({"arch": arch})) },
                Exchange { execute: "query-cpu-definitions".into(), arguments: None, reply: Reply::ok(defs) },
            ],
        }
    }

    #[test]
    fn x86_kvm_asks_host_expansions_and_hyperv() {
        let t = transcript("x86_64", json!([]));
        let r = stage_host(Accel::Kvm, &t);
        let names: Vec<_> = r.iter().map(|r| (r.execute.as_str(), r.arguments.clone())).collect();
        assert!(names.contains(&("query-cpu-model-expansion", Some(static_expansion_args("host", Some(false))))));
        assert!(names.contains(&("query-cpu-model-expansion", Some(hyperv_expansion_args()))));
        let tcg = stage_host(Accel::Tcg, &t);
        assert!(tcg.iter().any(|r| r.arguments == Some(static_expansion_args("max", None))));
        assert!(!tcg.iter().any(|r| r.arguments == Some(hyperv_expansion_args())));
    }

    #[test]
    fn other_arches_ask_only_definitions() {
        for arch in ["ppc64", "aarch64", "riscv64"] {
            let t = transcript(arch, json!([{"name": "z13"}]));
            assert_eq!(stage_host(Accel::Kvm, &t), vec![Request::new("query-cpu-definitions")], "{arch}");
            assert!(stage_models(Accel::Kvm, &t).is_empty());
        }
    }

    /// libvirt's s390 host-model is QEMU's static expansion of `host` (KVM) or `max` (TCG):
    /// the probe asks it there as libvirt does (and nothing x86 asks).
    #[test]
    fn s390_asks_the_static_host_expansion() {
        let t = transcript("s390x", json!([{"name": "z13"}]));
        let expansion =
            |m: &str| Request::with_args("query-cpu-model-expansion", json!({"type": "static", "model": {"name": m}}));
        assert_eq!(stage_host(Accel::Kvm, &t), vec![Request::new("query-cpu-definitions"), expansion("host")]);
        assert_eq!(stage_host(Accel::Tcg, &t), vec![Request::new("query-cpu-definitions"), expansion("max")]);
        assert!(stage_models(Accel::Kvm, &t).is_empty());
    }

    #[test]
    fn models_stage_keeps_unversioned_names() {
        let defs = json!([
            {"name": "max"}, {"name": "host"}, {"name": "base"},
            {"name": "qemu64-v1"}, {"name": "qemu64", "alias-of": "qemu64-v1"},
            {"name": "EPYC-v2"}, {"name": "EPYC", "alias-of": "EPYC-v2"}
        ]);
        let t = transcript("i386", defs);
        let r = stage_models(Accel::Tcg, &t);
        let models: Vec<_> = r.iter().map(|r| r.arguments.as_ref().unwrap()["model"]["name"].clone()).collect();
        assert_eq!(models, vec![json!("qemu64"), json!("EPYC")]);
    }

    /// A transcript has the model stage's answers when every named model was expanded (an
    /// error counts: QEMU answered); other targets need none.
    #[test]
    fn models_probed_needs_every_named_model_expanded() {
        let defs = json!([{"name": "max"}, {"name": "qemu64"}, {"name": "EPYC"}]);
        let mut t = transcript("x86_64", defs.clone());
        assert!(!models_probed(&t));
        let expand = |m: &str, reply| Exchange {
            execute: "query-cpu-model-expansion".into(),
            arguments: Some(static_expansion_args(m, None)),
            reply,
        };
        t.exchanges.push(expand("qemu64", Reply::ok(json!({"model": {"name": "qemu64"}}))));
        assert!(!models_probed(&t));
        let failed = crate::probe_data::QmpError { class: "GenericError".into(), desc: "no".into() };
        t.exchanges.push(expand("EPYC", Reply::err(failed)));
        assert!(models_probed(&t));
        assert!(models_probed(&transcript("aarch64", defs)));
    }

    #[test]
    fn unversioned_qemu_expands_all_named_models() {
        let defs = json!([{"name": "max"}, {"name": "qemu64"}, {"name": "Nehalem"}]);
        let names = named_models(defs.as_array().unwrap());
        assert_eq!(names, vec!["qemu64", "Nehalem"]);
    }
}

//! The probe plan: which QMP commands a probe sends, in stages. A stage is a function of
//! what was answered so far (so a later stage can, for example, ask
//! `device-list-properties` only for types that `qom-list-types` listed). The probe
//! (`probe.rs`) runs the stages in order; derivation reads the answers from the transcript.
//!
//! Derivation owns its stages (`derive::plan`, `cpu::plan`); this module only joins them.
//! The dependencies go one way: this module uses the stage modules, `derive::plan` uses
//! `cpu::plan` (the `qom-list-properties` arguments both read), and every stage module
//! builds [`crate::qmp::Request`]s; no stage module uses this one.

use crate::probe_data::{Accel, Transcript};
/// The command type the stages build, also reachable here for code outside the stage
/// modules (the stage modules themselves take it from [`crate::qmp`]).
pub use crate::qmp::Request;

/// A stage: given the accelerator and the transcript so far, the commands to send next.
pub type Stage = fn(Accel, &Transcript) -> Vec<Request>;

/// All stages, in the order the probe runs them: [`common_stages`], then
/// [`cpu_model_stages`].
pub fn stages() -> Vec<Stage> {
    let mut all = common_stages();
    all.extend(cpu_model_stages());
    all
}

/// The stages every probe runs.
pub fn common_stages() -> Vec<Stage> {
    vec![base, crate::derive::plan::stage_schema, crate::derive::plan::stage_optional, crate::cpu::plan::stage_host]
}

/// The stages only the CPU decoding from QEMU alone reads (QEMU's definition of every x86
/// model, [`crate::cpu::decodes_from_qemu_alone`]): the probe runs them last, and only when
/// the host facts say that decoding is needed or it is asked to
/// ([`crate::probe::ProbeOptions::all_cpu_models`]). A transcript says whether they ran
/// ([`crate::cpu::plan::models_probed`]).
pub fn cpu_model_stages() -> Vec<Stage> {
    vec![crate::cpu::plan::stage_models]
}

/// Commands every derivation needs first.
fn base(_accel: Accel, _t: &Transcript) -> Vec<Request> {
    ["query-version", "query-target", "query-machines", "qom-list-types", "query-kvm"]
        .into_iter()
        .map(Request::new)
        .collect()
}

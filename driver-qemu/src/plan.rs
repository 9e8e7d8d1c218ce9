//! The probe plan: which QMP commands a probe sends, in stages. A stage is a function of
//! what was answered so far (so a later stage can, for example, ask
//! `device-list-properties` only for types that `qom-list-types` listed). The probe
//! (`probe.rs`) runs the stages in order; derivation reads the answers from the transcript.
//!
//! Derivation owns its stages (`derive::plan`, `cpu::plan`); this module only joins them.

use serde_json::Value;

use crate::probe_data::{Accel, Transcript};

/// One QMP command to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Option<Value>,
}

impl Request {
    pub fn new(execute: &str) -> Self {
        Request { execute: execute.to_owned(), arguments: None }
    }
    pub fn with_args(execute: &str, arguments: Value) -> Self {
        Request { execute: execute.to_owned(), arguments: Some(arguments) }
    }
}

/// A stage: given the accelerator and the transcript so far, the commands to send next.
pub type Stage = fn(Accel, &Transcript) -> Vec<Request>;

/// All stages, in the order the probe runs them.
pub fn stages() -> Vec<Stage> {
    vec![
        base,
        crate::derive::plan::stage_schema,
        crate::derive::plan::stage_optional,
        crate::cpu::plan::stage_host,
        crate::cpu::plan::stage_models,
    ]
}

/// Commands every derivation needs first.
fn base(_accel: Accel, _t: &Transcript) -> Vec<Request> {
    ["query-version", "query-target", "query-machines", "qom-list-types", "query-kvm"]
        .into_iter()
        .map(Request::new)
        .collect()
}

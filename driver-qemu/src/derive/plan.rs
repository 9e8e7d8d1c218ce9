//! The QMP commands derivation needs beyond the base stage, as probe stages.
//!
//! Stage 1 asks for the schema and the TPM lists. Stage 2 reads the schema from the
//! transcript and asks the optional queries (`query-gic-capabilities`,
//! `query-sev-capabilities`, `query-sgx-capabilities`) only where this binary has them,
//! so a probe never sends a command QEMU does not know.

use crate::probe_data::{Accel, Transcript};
use crate::qmp::Request;

use super::schema::Schema;

/// Commands every binary answers that derivation reads. `query-command-line-options`
/// comes after `qom-list-types` (base stage) on purpose: listing the types loads QEMU's
/// modules, and only a loaded module (the spice UI, say) adds its command-line options.
pub fn stage_schema(_accel: Accel, _t: &Transcript) -> Vec<Request> {
    ["query-qmp-schema", "query-tpm-models", "query-tpm-types", "query-command-line-options"]
        .into_iter()
        .map(Request::new)
        .collect()
}

/// The machine types whose QOM properties derivation reads, when the binary has them
/// (`generic-pc-machine`: the PC boards' `i8042` switch; `none-machine`:
/// `confidential-guest-support`).
pub const MACHINE_PROPS_TYPES: [&str; 2] = ["generic-pc-machine", "none-machine"];

/// The optional queries this binary's schema lists.
pub fn stage_optional(_accel: Accel, t: &Transcript) -> Vec<Request> {
    let schema = Schema::new(t.view("query-qmp-schema"));
    let mut out: Vec<Request> = ["query-gic-capabilities", "query-sev-capabilities", "query-sgx-capabilities"]
        .into_iter()
        .filter(|c| schema.has_command(c))
        .map(Request::new)
        .collect();
    let listed = |name: &str| {
        t.view("qom-list-types")
            .into_iter()
            .flat_map(|l| l.array())
            .any(|ty| ty.get("name").and_then(|n| n.as_str()) == Some(name))
    };
    // `generic-pc-machine` is abstract, so `qom-list-types` does not list it: an x86 target
    // has it.
    let x86 = t
        .get("query-target")
        .and_then(|v| v.get("arch"))
        .and_then(|a| a.as_str())
        .is_some_and(|a| matches!(a, "x86_64" | "i386"));
    for ty in MACHINE_PROPS_TYPES {
        if listed(ty) || (ty == "generic-pc-machine" && x86) {
            out.push(Request::with_args("qom-list-properties", crate::cpu::plan::qom_list_properties_args(ty)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_data::{Exchange, Reply};
    use serde_json::json;

    #[test]
    fn optional_queries_follow_the_schema() {
        let t = Transcript {
            greeting: json!({}),
            exchanges: vec![Exchange {
                execute: "query-qmp-schema".into(),
                arguments: None,
                reply: Reply::ok(json!([
                    {"name": "query-gic-capabilities", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
                    {"name": "query-sgx-capabilities", "meta-type": "event"}
                ])),
            }],
        };
        let asked: Vec<String> = stage_optional(Accel::Tcg, &t).into_iter().map(|r| r.execute).collect();
        assert_eq!(asked, ["query-gic-capabilities"]);
        assert!(stage_optional(Accel::Tcg, &Transcript::default()).is_empty());
    }
}

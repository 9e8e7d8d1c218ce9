//! The QMP commands derivation needs beyond the base stage, as probe stages.
//!
//! Stage 1 asks for the schema and the TPM lists. Stage 2 reads the schema from the
//! transcript and asks the optional queries (`query-gic-capabilities`,
//! `query-sev-capabilities`, `query-sgx-capabilities`) only where this binary has them,
//! so a probe never sends a command QEMU does not know.

use crate::plan::Request;
use crate::probe_data::{Accel, Transcript};

use super::schema::Schema;

/// Commands every binary answers that derivation reads.
pub fn stage_schema(_accel: Accel, _t: &Transcript) -> Vec<Request> {
    ["query-qmp-schema", "query-tpm-models", "query-tpm-types"].into_iter().map(Request::new).collect()
}

/// The optional queries this binary's schema lists.
pub fn stage_optional(_accel: Accel, t: &Transcript) -> Vec<Request> {
    let schema = Schema::new(t.view("query-qmp-schema"));
    ["query-gic-capabilities", "query-sev-capabilities", "query-sgx-capabilities"]
        .into_iter()
        .filter(|c| schema.has_command(c))
        .map(Request::new)
        .collect()
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

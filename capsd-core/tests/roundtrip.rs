//! Every reference document read and written again is byte-identical to the input, directly
//! (XML -> model -> XML) and through the JSON form (XML -> model -> JSON -> model -> XML).

#[path = "../../tests/src/reference.rs"]
mod reference;

mod common;

use capsd_core::{json, xml};

#[test]
fn fixtures_round_trip_through_xml() {
    let Some(_) = reference::need("fixtures") else { return };
    let files = common::all_documents();
    // 22 libvirt upstream outputs and 7 libvirt 9.0 host outputs at least (+ /tmp/oracle).
    assert!(files.len() >= 29, "only {} reference documents found", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let text = common::read(f);
        match xml::from_xml(&text) {
            Ok(caps) => {
                let out = xml::to_xml(&caps);
                if !common::same_document(&text, &out) {
                    failures.push(format!("{}: {}", f.display(), common::first_difference(&text, &out)));
                }
                assert!(out.ends_with("</domainCapabilities>\n"), "{}: no trailing newline", f.display());
            }
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} documents do not round-trip:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn fixtures_round_trip_through_json() {
    let Some(_) = reference::need("fixtures") else { return };
    let files = common::all_documents();
    for f in &files {
        let text = common::read(f);
        let caps = xml::from_xml(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let j = json::to_json(&caps);
        let back = json::from_json(&j).unwrap_or_else(|e| panic!("{}: JSON form does not read back: {e}", f.display()));
        assert_eq!(back, caps, "{}: JSON round trip changed the model", f.display());
        let out = xml::to_xml(&back);
        assert!(common::same_document(&text, &out), "{}: {}", f.display(), common::first_difference(&text, &out));
    }
}

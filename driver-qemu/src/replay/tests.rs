//! Hermetic tests of the replay readers: libvirt-style `.replies` text written here (from
//! the repository's own recording of QEMU 7.2), never libvirt's files.

use super::*;
use serde_json::json;

/// A `.replies` text: each command then its reply, `libvirt-N` ids, blank lines between.
fn replies(runs: &[&Transcript]) -> String {
    let mut out = String::new();
    let mut id = 0;
    let mut put = |out: &mut String, cmd: Value, reply: Value| {
        id += 1;
        let mut cmd = cmd;
        let mut reply = reply;
        cmd["id"] = json!(format!("libvirt-{id}"));
        reply["id"] = json!(format!("libvirt-{id}"));
        out.push_str(&serde_json::to_string_pretty(&cmd).unwrap());
        out.push_str("\n\n");
        out.push_str(&serde_json::to_string_pretty(&reply).unwrap());
        out.push_str("\n\n");
    };
    for t in runs {
        put(&mut out, json!({"execute": "qmp_capabilities"}), json!({"return": {}}));
        for e in &t.exchanges {
            let mut cmd = json!({"execute": e.execute});
            if let Some(a) = &e.arguments {
                cmd["arguments"] = a.clone();
            }
            let reply = match e.reply.get() {
                Ok(v) => json!({"return": v}),
                Err(q) => json!({"error": {"class": q.class, "desc": q.desc}}),
            };
            put(&mut out, cmd, reply);
        }
    }
    out
}

fn recorded_x86() -> ProbeData {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qemu-7.2-x86_64.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn query(virt: &str) -> Query {
    Query { virt_type: Some(virt.into()), libvirt: Some("9.0".into()), ..Query::default() }
}

fn doc(rec: &Recording, q: &Query) -> String {
    capsd_core::xml::to_xml(&domain_capabilities(rec, q, crate::cpu::CpuOptions::default()).unwrap())
}

#[test]
fn kvm_then_tcg_runs_are_read_and_the_tcg_run_borrows_the_rest() {
    let data = recorded_x86();
    let kvm = data.run(Accel::Kvm).unwrap();
    // A short TCG run, as libvirt makes it.
    let tcg_full = data.run(Accel::Tcg).unwrap();
    let short: Vec<Exchange> = tcg_full
        .exchanges
        .iter()
        .filter(|e| matches!(e.execute.as_str(), "query-cpu-definitions" | "query-machines"))
        .cloned()
        .collect();
    let tcg = Transcript { greeting: Value::Null, exchanges: short };
    let rec = parse("t.replies", &replies(&[kvm, &tcg])).unwrap();
    assert_eq!(rec.kind, RecordingKind::LibvirtReplies);
    assert_eq!(rec.data.binary, "/usr/bin/qemu-system-x86_64");
    assert_eq!(rec.data.host.host_arch, "x86_64");
    assert!(rec.data.host.kvm_usable);
    let k = rec.data.run(Accel::Kvm).unwrap();
    assert_eq!(k.exchanges.len(), kvm.exchanges.len());
    let t = rec.data.run(Accel::Tcg).unwrap();
    // Its own answers, and the KVM run's schema, but not the KVM run's query-kvm nor its
    // expansions of the `host` model.
    assert_eq!(t.get("query-machines"), tcg_full.get("query-machines"));
    assert_eq!(t.get("query-qmp-schema"), kvm.get("query-qmp-schema"));
    assert!(t.get("query-kvm").is_none());
    assert!(t
        .exchanges
        .iter()
        .all(|e| !accel_dependent(e) || tcg.exchange(&e.execute, e.arguments.as_ref()).is_some()));
}

#[test]
fn a_run_without_kvm_is_the_tcg_run() {
    let data = recorded_x86();
    let tcg = data.run(Accel::Tcg).unwrap();
    let rec = parse("t.replies", &replies(&[tcg])).unwrap();
    assert!(rec.data.run(Accel::Kvm).is_none());
    assert!(!rec.data.host.kvm_usable);
    assert!(rec.data.run(Accel::Tcg).is_some());
}

#[test]
fn a_command_the_transcript_lacks_is_omitted_not_no() {
    let data = recorded_x86();
    let tcg = data.run(Accel::Tcg).unwrap();
    let mut host = HostFacts { host_arch: "x86_64".into(), ..HostFacts::default() };
    host.swtpm = None;
    let full = parse("t.replies", &replies(&[tcg])).unwrap();
    let full_doc = doc(&full, &query("qemu"));
    assert!(full_doc.contains("<tpm supported='yes'>"), "{full_doc}");
    let mut lacking = tcg.clone();
    lacking.exchanges.retain(|e| e.execute != "query-tpm-models");
    let rec = parse("t.replies", &replies(&[&lacking])).unwrap();
    let missing = unanswered(Accel::Tcg, rec.data.run(Accel::Tcg).unwrap());
    assert!(missing.iter().any(|r| r.execute == "query-tpm-models"), "{missing:?}");
    assert!(!unanswered(Accel::Tcg, full.data.run(Accel::Tcg).unwrap())
        .iter()
        .any(|r| r.execute == "query-tpm-models"));
    let d = doc(&rec, &query("qemu"));
    assert!(!d.contains("<tpm"), "{d}");
    // Everything else is as with the full transcript.
    let strip = |s: &str| s.lines().filter(|l| !l.contains("tpm") && !l.contains("backend")).count();
    assert!(strip(&d) > 10);
}

fn err(text: &str) -> String {
    parse("bad.replies", text).unwrap_err().to_string()
}

#[test]
fn malformed_transcripts_name_the_file_and_line() {
    let ok_head =
        "{\"execute\": \"qmp_capabilities\", \"id\": \"libvirt-1\"}\n\n{\"return\": {}, \"id\": \"libvirt-1\"}\n\n";
    // Broken JSON on line 5.
    let e = err(&format!("{ok_head}{{\"execute\": \"query-version\",, }}\n"));
    assert!(e.starts_with("bad.replies:5:"), "{e}");
    // A command without its reply.
    let e = err(&format!("{ok_head}\n{{\"execute\": \"query-version\", \"id\": \"libvirt-2\"}}\n"));
    assert!(e.starts_with("bad.replies:6:") && e.contains("no reply"), "{e}");
    // Ids that do not match.
    let e = err(&format!(
        "{ok_head}{{\"execute\": \"query-kvm\", \"id\": \"libvirt-2\"}}\n\n{{\"return\": {{}}, \"id\": \"libvirt-3\"}}\n"
    ));
    assert!(e.starts_with("bad.replies:7:") && e.contains("libvirt-3"), "{e}");
    // Two commands in a row.
    let e = err(&format!("{ok_head}{{\"execute\": \"query-kvm\"}}\n{{\"execute\": \"query-target\"}}\n"));
    assert!(e.starts_with("bad.replies:6:") && e.contains("query-kvm"), "{e}");
    // A reply first.
    let e = err("\n{\"return\": {}}\n");
    assert!(e.starts_with("bad.replies:2:"), "{e}");
    // Something that is neither.
    let e = err(&format!("{ok_head}[1, 2]\n"));
    assert!(e.starts_with("bad.replies:5:"), "{e}");
    // A command before qmp_capabilities.
    let e = err("{\"execute\": \"query-kvm\"}\n{\"return\": {}}\n");
    assert!(e.contains("before the first qmp_capabilities"), "{e}");
    // An error reply without its members.
    let e = err(&format!("{ok_head}{{\"execute\": \"query-kvm\"}}\n{{\"error\": {{\"class\": 1}}}}\n"));
    assert!(e.starts_with("bad.replies:6:"), "{e}");
    // No query-target: the arch is unknown.
    let e = err(ok_head);
    assert!(e.contains("query-target"), "{e}");
    assert!(err("").contains("empty"));
    assert!(err("   \n\n").contains("empty"));
}

#[test]
fn capsd_recordings_round_trip_and_bad_ones_are_named() {
    let data = recorded_x86();
    let text = recording_json(&data, Some("9.0.0")).unwrap();
    let rec = parse("r.json", &text).unwrap();
    assert_eq!(rec.kind, RecordingKind::Capsd);
    assert_eq!(rec.data, data);
    assert_eq!(rec.libvirt.as_deref(), Some("9.0.0"));
    let e = parse("r.json", &text.replacen("\"format_version\": 1", "\"format_version\": 99", 1)).unwrap_err();
    assert!(e.to_string().contains("format version 99"), "{e}");
    let e = parse("r.json", "{\n  \"format_version\": 1,\n  \"binary\": 3\n}\n").unwrap_err();
    assert!(e.to_string().starts_with("r.json:3:"), "{e}");
    let e = parse("r.json", "{\"something\": \"else\"}").unwrap_err();
    assert!(e.to_string().contains("not a capsd recording"), "{e}");
    let e = parse("r.json", "{\"format_version\": 1, \"binary\": \"/x\", \"runs\": {}, \"host\": {\"host_arch\": \"x86_64\", \"kvm_usable\": false}}").unwrap_err();
    assert!(e.to_string().contains("no QEMU run"), "{e}");
}

#[test]
fn host_facts_replace_and_merge() {
    let base = HostFacts { host_arch: "x86_64".into(), ..HostFacts::default() };
    let f = FactsFile::parse(
        "f.json",
        r#"{"host_arch": "s390x", "kvm_max_vcpus": 7, "sev": {"snp": true}, "host_cpu_model": "POWER8",
            "swtpm": {"swtpm": "/usr/bin/swtpm", "swtpm_setup_features": ["tpm-2.0"]}}"#,
    )
    .unwrap();
    let h = f.apply("f.json", &base).unwrap();
    assert_eq!(h.host_arch, "s390x");
    assert_eq!(h.kvm_max_vcpus, Some(7));
    assert!(h.sev.snp);
    assert_eq!(h.sev.kvm_amd_sev, None);
    assert_eq!(h.host_cpu_model.as_deref(), Some("POWER8"));
    assert_eq!(h.swtpm.unwrap().swtpm_setup_features, ["tpm-2.0"]);
    let e = FactsFile::parse("f.json", "{\"hots_arch\": \"x\"}").unwrap_err();
    assert!(e.to_string().contains("unknown host fact 'hots_arch'"), "{e}");
    let e = FactsFile::parse("f.json", "{\n\"kvm_usable\": tru }\n").unwrap_err();
    assert!(e.to_string().starts_with("f.json:2:"), "{e}");
    let bad = FactsFile::parse("f.json", "{\"kvm_usable\": \"yes\"}").unwrap();
    assert!(bad.apply("f.json", &base).unwrap_err().to_string().contains("f.json"));
    let e =
        FactsFile::parse("f.json", "{\"cpu_map_dir\": \"/nonexistent\"}").unwrap().apply("f.json", &base).unwrap_err();
    assert!(e.to_string().contains("/nonexistent"), "{e}");
}

#[test]
fn truncated_or_damaged_transcripts_are_errors_not_panics() {
    let data = recorded_x86();
    let mut small = data.run(Accel::Tcg).unwrap().clone();
    small.exchanges.retain(|e| matches!(e.execute.as_str(), "query-target" | "query-kvm" | "query-version"));
    let text = replies(&[&small, &small]);
    assert!(parse("t.replies", &text).is_ok());
    for cut in (0..text.len()).filter(|c| text.is_char_boundary(*c)) {
        let _ = parse("t.replies", &text[..cut]);
    }
    let bytes = text.as_bytes();
    for i in (0..bytes.len()).step_by(7) {
        let mut b = bytes.to_vec();
        b[i] = b'}';
        if let Ok(s) = std::str::from_utf8(&b) {
            let _ = parse("t.replies", s);
        }
    }
}

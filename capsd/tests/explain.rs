//! `capsd explain` over every conformance case whose emulator is installed here
//! (`driver-qemu/tests/data/oracle-cases.txt`, `more-cases.txt`), from recordings made by
//! `capsd probe --record` with this host's real QEMU:
//! - every element of the document is accounted for by evidence (a node of its own or of an
//!   ancestor, never only the document's root), and the evidence agrees with the document:
//!   each node it says is present is in the document, each it says is left out is not;
//! - the evidence is causal: for a sample of elements per case whose own evidence is QEMU
//!   listing something (`qom-list-types`, `query-tpm-models`, `query-tpm-types`), removing
//!   those items from the recording changes that element (it, its attributes or what is
//!   below it) in the replayed document;
//! - the cited host facts are true: files said absent are absent, flags read as cited,
//!   programs found where cited, firmware descriptors have or lack the cited feature.

mod agent_support;
mod live_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capsd_core::evidence::{document_nodes, Explanation, Fact, Node, Selection};
use capsd_core::Query;
use live_support::live;
use serde_json::Value;

struct Case {
    name: String,
    args: Vec<String>,
}

impl Case {
    fn arg(&self, flag: &str) -> Option<&str> {
        self.args.iter().position(|a| a == flag).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }

    fn query(&self) -> Query {
        Query {
            emulator: self.arg("--emulatorbin").map(PathBuf::from),
            arch: self.arg("--arch").map(str::to_owned),
            machine: self.arg("--machine").map(str::to_owned),
            virt_type: self.arg("--virttype").map(str::to_owned),
            libvirt: None,
        }
    }

    fn emulator(&self) -> PathBuf {
        match self.arg("--emulatorbin") {
            Some(e) => PathBuf::from(e),
            None => PathBuf::from(format!("/usr/bin/qemu-system-{}", self.arg("--arch").unwrap_or("x86_64"))),
        }
    }
}

fn cases() -> Vec<Case> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../driver-qemu/tests/data");
    let mut out = Vec::new();
    for file in ["oracle-cases.txt", "more-cases.txt"] {
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        for l in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let mut w = l.split_whitespace().map(str::to_owned);
            out.push(Case { name: w.next().unwrap(), args: w.collect() });
        }
    }
    out
}

fn capsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).env("NO_COLOR", "1").output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The document of a recording (its elements with their attributes) and its evidence,
/// derived in this process once with the recorder on; `None` when the query fails.
fn replay(name: &str, text: &str, q: &Query) -> Option<(Vec<(String, String)>, Explanation)> {
    let rec = driver_qemu::replay::parse(name, text).unwrap();
    let (caps, ex) = capsd_core::evidence::record(|| {
        driver_qemu::replay::domain_capabilities(&rec, q, driver_qemu::cpu::CpuOptions::default())
    });
    Some((document_nodes(&caps.ok()?), ex))
}

/// The document's elements at `path` and below it, with their attributes.
fn subtree<'d>(doc: &'d [(String, String)], path: &str) -> Vec<&'d (String, String)> {
    let below = format!("{path}/");
    doc.iter().filter(|(p, _)| p == path || p.starts_with(&below)).collect()
}

fn explain(rec: &Path, args: &[String], selectors: &[&str]) -> Vec<Selection> {
    let mut a = vec!["--no-cache", "explain", "--format", "json", "--replay", rec.to_str().unwrap()];
    a.extend(args.iter().map(String::as_str));
    a.extend(selectors);
    let v: Value = serde_json::from_str(&ok(&capsd(&a), "explain")).unwrap();
    serde_json::from_value(v["selections"].clone()).unwrap()
}

/// Items a node's own evidence says QEMU listed, by command (those the test can remove).
fn listed(n: &Node) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in &n.facts {
        if let Fact::Qmp { command, item, holds: true, .. } = f {
            if matches!(command.as_str(), "qom-list-types" | "query-tpm-models" | "query-tpm-types") {
                out.entry(command.clone()).or_default().push(item.clone());
            }
        }
    }
    out
}

/// Only QMP list facts (and none the test cannot undo) decide the node.
fn only_listed(n: &Node) -> bool {
    n.facts.iter().all(|f| match f {
        Fact::Qmp { command, holds, .. } => {
            !holds || matches!(command.as_str(), "qom-list-types" | "query-tpm-models" | "query-tpm-types")
        }
        Fact::Reply { .. } | Fact::Query { .. } | Fact::Rule { .. } => true,
        Fact::Host { .. } => false,
    }) && !listed(n).is_empty()
}

/// The recording with `remove` taken out of the replies of every run.
fn without(rec: &Value, remove: &BTreeMap<String, Vec<String>>) -> Value {
    let mut rec = rec.clone();
    for run in rec["runs"].as_object_mut().unwrap().values_mut() {
        for ex in run["exchanges"].as_array_mut().unwrap() {
            let Some(items) = remove.get(ex["execute"].as_str().unwrap_or("")) else { continue };
            if let Some(list) = ex["reply"]["Ok"].as_array_mut() {
                list.retain(|e| {
                    let name = e.as_str().or_else(|| e.get("name").and_then(Value::as_str)).unwrap_or("");
                    !items.iter().any(|i| i == name)
                });
            }
        }
    }
    rec
}

#[test]
fn explain_accounts_for_every_element_causally_with_true_host_facts() {
    if !live() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cases = cases();
    let mut recordings: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for c in &cases {
        let emu = c.emulator();
        if recordings.contains_key(&emu) || !emu.exists() {
            continue;
        }
        let file = tmp.path().join(format!("{}.json", emu.file_name().unwrap().to_str().unwrap()));
        let out = capsd(&["probe", "--record", file.to_str().unwrap(), "--emulatorbin", emu.to_str().unwrap()]);
        ok(&out, &format!("recording {}", emu.display()));
        recordings.insert(emu, file);
    }
    let (mut explained, mut causal, mut host_checked, mut skipped, mut failures) = (0, 0, 0, Vec::new(), Vec::new());
    let texts: BTreeMap<&PathBuf, String> =
        recordings.iter().map(|(e, f)| (e, std::fs::read_to_string(f).unwrap())).collect();
    let mut cli_compared = false;
    for c in &cases {
        let Some(text) = texts.get(&c.emulator()) else {
            skipped.push(c.name.clone());
            continue;
        };
        let q = c.query();
        let Some((doc, ex)) = replay(&c.name, text, &q) else { continue };
        explained += 1;
        let paths: Vec<&String> = doc.iter().map(|(p, _)| p).collect();
        // Every element accounted for below the document's root.
        for p in &paths {
            match ex.accounting_for(p) {
                Some(n) if !n.path.is_empty() => {}
                _ => failures.push(format!("{}: no evidence for {p}", c.name)),
            }
        }
        // The evidence agrees with the document.
        for n in ex.nodes.iter().filter(|n| !n.path.is_empty()) {
            let in_doc = paths.contains(&&n.path);
            if n.present != in_doc {
                failures.push(format!("{}: evidence says {} present={}, document {in_doc}", c.name, n.path, n.present));
            }
            if !n.present && n.omitted.is_none() {
                failures.push(format!("{}: {} left out without a reason", c.name, n.path));
            }
        }
        // The CLI prints the same evidence (once).
        if !cli_compared {
            let all = explain(&recordings[&c.emulator()], &c.args, &[]);
            assert_eq!(
                all[0].nodes, ex.nodes,
                "{}: capsd explain --replay differs from the derivation's evidence",
                c.name
            );
            cli_compared = true;
        }
        // Causality, for up to 3 present elements decided by QEMU's lists alone.
        let recording: Value = serde_json::from_str(text).unwrap();
        let sample: Vec<&Node> = ex.nodes.iter().filter(|n| n.present && only_listed(n)).collect();
        let step = (sample.len() / 3).max(1);
        for n in sample.iter().step_by(step).take(3) {
            let altered = serde_json::to_string(&without(&recording, &listed(n))).unwrap();
            let after = replay(&c.name, &altered, &q).map(|(d, _)| d).unwrap_or_default();
            if subtree(&after, &n.path) == subtree(&doc, &n.path) {
                failures.push(format!(
                    "{}: removing {:?} from the recording left {} unchanged",
                    c.name,
                    listed(n),
                    n.path
                ));
            } else {
                causal += 1;
            }
        }
        // Host facts against the host (the recordings were made here).
        for f in ex.nodes.iter().flat_map(|n| &n.facts) {
            let Fact::Host { source, value } = f else { continue };
            match check_host_fact(source, value.as_deref()) {
                Ok(true) => host_checked += 1,
                Ok(false) => {}
                Err(e) => failures.push(format!("{}: host fact {f}: {e}", c.name)),
            }
        }
    }
    eprintln!(
        "{explained} case(s) explained, {causal} causal check(s), {host_checked} host fact check(s); skipped \
         (emulator not installed): {skipped:?}"
    );
    assert!(explained > 0 && causal > 0 && host_checked > 0);
    failures.dedup();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Check one cited host fact against this host: `Ok(true)` checked, `Ok(false)` not a
/// fact a file can confirm (CPUID, an ioctl), `Err` when the host says otherwise.
fn check_host_fact(source: &str, value: Option<&str>) -> Result<bool, String> {
    if let Some(prog) = source.strip_suffix(" in PATH") {
        return match value {
            Some(p) if Path::new(p).is_file() && p.ends_with(&format!("/{prog}")) => Ok(true),
            Some(p) => Err(format!("{p} is not {prog}")),
            None => match std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join(prog))
                .find(|p| p.is_file())
            {
                Some(p) => Err(format!("{} exists", p.display())),
                None => Ok(true),
            },
        };
    }
    if !source.starts_with('/') || source.contains(' ') {
        return Ok(false);
    }
    let path = Path::new(source);
    match value {
        None if path.exists() => Err("cited as absent, but it exists".into()),
        None => Ok(true),
        Some("exists") if path.exists() => Ok(true),
        Some("exists") => Err("cited as existing, but it is absent".into()),
        Some(flag @ ("Y" | "N")) => {
            let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
            let read = if matches!(text.trim(), "1" | "Y" | "y") { "Y" } else { "N" };
            if read == flag {
                Ok(true)
            } else {
                Err(format!("the file says {}", text.trim()))
            }
        }
        Some("not Y") => match std::fs::read_to_string(path) {
            Ok(text) if matches!(text.trim(), "1" | "Y" | "y") => Err("the file says Y".into()),
            _ => Ok(true),
        },
        Some(entries @ ("has entries" | "no entries")) => {
            let has = std::fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(false);
            if has == (entries == "has entries") {
                Ok(true)
            } else {
                Err(format!("the directory {} entries", if has { "has" } else { "has no" }))
            }
        }
        Some(v) if source.ends_with(".json") => {
            let d: Value = serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let features: Vec<&str> =
                d["features"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if let Some(rest) = v.strip_prefix("features ") {
                let (verb, feature) = rest.split_once(' ').unwrap();
                return if features.contains(&feature) == (verb == "has") {
                    Ok(true)
                } else {
                    Err("features differ".into())
                };
            }
            if let Some(types) = v.strip_prefix("interface-types ") {
                let want: Vec<&str> =
                    d["interface-types"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
                return if want.join(" ") == types { Ok(true) } else { Err("interface types differ".into()) };
            }
            if let Some(rest) = v.strip_prefix("image ") {
                let (image, state) = rest.rsplit_once(' ').unwrap();
                return if Path::new(image).exists() == (state == "exists") {
                    Ok(true)
                } else {
                    Err(format!("{image} is not as cited"))
                };
            }
            Err(format!("unknown descriptor fact {v}"))
        }
        Some(_) => Ok(false),
    }
}

#[test]
fn a_selector_that_names_nothing_is_an_error_naming_it() {
    if !live() {
        return;
    }
    let out = capsd(&["explain", "devices/nosuch/enum[@name='x']"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("devices/nosuch/enum[@name='x']"), "{err}");
    let out = capsd(&["explain", "devices/tpm[@name=x]"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("devices/tpm[@name=x]"));
}

/// Percent-encode a query parameter value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_agent_explains_as_the_cli_does() {
    if !live() {
        return;
    }
    let a = agent_support::Agent::start(&[]);
    let sel = ["devices/tpm/enum[@name='backendModel']/value[.='emulator']", "os/loader/enum[@name='secure']"];
    let target = format!("/v1/explain?machine=q35&select={}&select={}", encode(sel[0]), encode(sel[1]));
    let r = a.get(&target);
    assert_eq!(r.status, 200, "{}", r.body);
    let agent: Vec<Selection> = serde_json::from_value(r.json()["selections"].clone()).unwrap();
    let cache = a.dir.path().join("cache");
    let out = capsd(&[
        "--cache-dir",
        cache.to_str().unwrap(),
        "explain",
        "--format",
        "json",
        "--machine",
        "q35",
        sel[0],
        sel[1],
    ]);
    let v: Value = serde_json::from_str(&ok(&out, "explain")).unwrap();
    let cli: Vec<Selection> = serde_json::from_value(v["selections"].clone()).unwrap();
    // The document's own node holds what resolving the query read, which differs with how
    // the probe was found (the agent's memory, the cache); every element's evidence is equal.
    let below_root = |sel: &[Selection]| -> Vec<Selection> {
        sel.iter()
            .map(|s| Selection {
                context: s.context.iter().filter(|n| !n.path.is_empty()).cloned().collect(),
                ..s.clone()
            })
            .collect()
    };
    assert_eq!(below_root(&agent), below_root(&cli));
    assert_eq!(agent.len(), 2);
    assert!(agent[0].nodes.iter().any(|n| n.path == sel[0]), "{agent:?}");
    // A selector naming nothing is a 400 naming it.
    let r = a.get(&format!("/v1/explain?select={}", encode("devices/nosuch")));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["parameter"], "select");
    assert!(r.body.contains("devices/nosuch"), "{}", r.body);
    let r = a.get(&format!("/v1/explain?select={}", encode("devices/tpm[x]")));
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn diff_of_one_recording_under_two_releases_names_the_rules_and_elements() {
    if !live() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("x86.json");
    ok(&capsd(&["probe", "--record", rec.to_str().unwrap(), "--emulatorbin", live_support::X86]), "record");
    let r = rec.to_str().unwrap();
    let out = capsd(&[
        "explain",
        "--format",
        "json",
        "--diff",
        r,
        r,
        "--libvirt-version",
        "9.0",
        "--against-libvirt-version",
        "11.3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let d: capsd_core::evidence::ExplanationDiff = serde_json::from_slice(&out.stdout).unwrap();
    // libvirt 9.1 added <crypto>: the element appears, because of that rule.
    let crypto = d.changed.iter().find(|c| c.path == "devices/crypto").expect("devices/crypto changes");
    assert!(!crypto.in_a && crypto.in_b);
    assert!(crypto.only_b.iter().any(|f| f.contains("rule Crypto") && f.ends_with(" applies")), "{crypto:?}");
    assert!(d.facts_only_b.iter().any(|f| f.contains("rule Crypto")));
    // The same recording and release: nothing differs.
    let out = capsd(&["explain", "--diff", r, r, "--libvirt-version", "9.0"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no difference"));
}

#[test]
fn check_findings_name_the_evidence_that_decided_them() {
    if !live() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dom = tmp.path().join("dom.xml");
    std::fs::write(
        &dom,
        "<domain type='kvm'><name>t</name><memory>1048576</memory>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
         <tpm model='tpm-spapr'><backend type='emulator' version='2.0'/></tpm></devices></domain>",
    )
    .unwrap();
    let cache = tmp.path().join("cache");
    let out = capsd(&["--cache-dir", cache.to_str().unwrap(), "check", "--format", "json", dom.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = |path: &str| v["findings"].as_array().unwrap().iter().find(|f| f["path"] == path).unwrap().clone();
    let cites = |f: &Value, what: &str| {
        f["evidence"].as_array().is_some_and(|e| e.iter().any(|x| x.as_str().unwrap().contains(what)))
    };
    let model = finding("/domain/devices/tpm/@model");
    assert_eq!(model["verdict"], "unsupported");
    assert!(cites(&model, "query-tpm-models (kvm run): lacks tpm-spapr"), "{model}");
    let backend = finding("/domain/devices/tpm/backend/@type");
    // The swtpm tools decide the emulator backend whichever way it goes here.
    assert!(cites(&backend, "swtpm_setup in PATH"), "{backend}");
    // A document read from a file carries no evidence.
    let caps = tmp.path().join("caps.xml");
    let doc = capsd(&["--cache-dir", cache.to_str().unwrap(), "domcapabilities", "--machine", "q35"]);
    std::fs::write(&caps, ok(&doc, "domcapabilities")).unwrap();
    let out = capsd(&["check", "--format", "json", "--caps", caps.to_str().unwrap(), dom.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["findings"].as_array().unwrap().iter().all(|f| f.get("evidence").is_none()), "{v}");
}

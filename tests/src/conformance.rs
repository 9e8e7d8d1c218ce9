//! The conformance suite: the checks every [`DomainCapsDriver`] runs against itself, in-tree
//! or out-of-tree (object_store's `integration::*` idea).
//!
//! ```no_run
//! # fn driver() -> Box<dyn capsd_core::DomainCapsDriver> { unimplemented!() }
//! use capsd_core::Query;
//! let d = driver();
//! let queries = [Query::default(), Query { machine: Some("q35".into()), ..Query::default() }];
//! capsd_tests::conformance::assert_conforms(d.as_ref(), &queries);
//! ```
//!
//! # Rules
//! For an available driver, per query:
//! - [`Rule::NoPanic`]: the driver returns instead of panicking (every call is made under
//!   `catch_unwind`).
//! - [`Rule::Answers`]: the query gets a document (the caller only passes queries the driver
//!   should answer).
//! - [`Rule::Schema`]: the XML form validates against libvirt's `domaincaps.rng` with
//!   `xmllint` (see [`crate::schema`]).
//! - [`Rule::XmlRoundTrip`]: XML -> model gives the same model, and writing it again gives
//!   the same bytes.
//! - [`Rule::JsonRoundTrip`]: JSON -> model gives the same model and the same XML bytes.
//! - [`Rule::Omission`]: the XML states exactly the elements the model states (an omitted
//!   element stays omitted, nothing is invented or dropped; see [`crate::presence`]), and the
//!   JSON form has no `null` (omitted means absent, not null).
//! - [`Rule::EnumNames`]: each `<enum>` name is one libvirt documents for that element, no
//!   enum name repeats inside an element and no value repeats inside an enum.
//! - [`Rule::EnumValues`]: for enums with a closed vocabulary, each value is in it (the table
//!   and its sources are in [`crate::enums`]).
//! - [`Rule::QueryHonoured`]: a requested arch, virt type and emulator come back unchanged in
//!   `<arch>`, `<domain>` and `<path>`; a requested machine comes back as itself or as a
//!   versioned form of it as an alias (`q35` -> `pc-q35-7.2`, `pc` -> `pc-i440fx-7.2`,
//!   `virt` -> `virt-7.2`); with neither arch nor emulator given, `<arch>` is the host's.
//! - [`Rule::Deterministic`]: asking again gives byte-identical XML.
//!
//! Once per driver, derived from the first query: [`Rule::RejectsBogusArch`],
//! [`Rule::RejectsBogusMachine`], [`Rule::RejectsBogusVirtType`] and
//! [`Rule::RejectsBogusEmulator`]: a query for an arch, machine or virt type that cannot
//! exist, or naming an emulator binary that does not exist, fails with `NotSupported` or
//! `InvalidInput` rather than answering (an `Unavailable`, `ProbeFailed` or `Io` error is a
//! failure too: the driver works here, the input is what is wrong).
//!
//! For a driver that reports itself unavailable, every query must fail with
//! [`DriverError::Unavailable`] ([`Rule::UnavailableFailsCleanly`]); [`assert_conforms`]
//! still fails then (the driver was expected to work), [`assert_unavailable`] passes.
//!
//! Every failure names the driver, the query and the rule.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use capsd_core::{json, xml, Availability, DomainCapabilities, DomainCapsDriver, DriverError, Enum, Query};

use crate::enums::{self, Values};
use crate::{presence, schema};

/// One check of the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    NoPanic,
    Answers,
    Schema,
    XmlRoundTrip,
    JsonRoundTrip,
    Omission,
    EnumNames,
    EnumValues,
    QueryHonoured,
    Deterministic,
    RejectsBogusArch,
    RejectsBogusMachine,
    RejectsBogusVirtType,
    RejectsBogusEmulator,
    UnavailableFailsCleanly,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::NoPanic => "no-panic",
            Rule::Answers => "answers",
            Rule::Schema => "schema",
            Rule::XmlRoundTrip => "xml-round-trip",
            Rule::JsonRoundTrip => "json-round-trip",
            Rule::Omission => "omission",
            Rule::EnumNames => "enum-names",
            Rule::EnumValues => "enum-values",
            Rule::QueryHonoured => "query-honoured",
            Rule::Deterministic => "deterministic",
            Rule::RejectsBogusArch => "rejects-bogus-arch",
            Rule::RejectsBogusMachine => "rejects-bogus-machine",
            Rule::RejectsBogusVirtType => "rejects-bogus-virttype",
            Rule::RejectsBogusEmulator => "rejects-bogus-emulator",
            Rule::UnavailableFailsCleanly => "unavailable-fails-cleanly",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The result of one rule on one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub query: Query,
    pub rule: Rule,
    /// `None` when the rule holds, else what was wrong.
    pub failure: Option<String>,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory holding `domaincaps.rng`; default [`schema::schema_dir`].
    pub schema_dir: PathBuf,
    /// The xmllint program; default `xmllint` from `PATH`.
    pub xmllint: String,
    /// Run the bogus arch/machine queries.
    pub negative: bool,
    /// An arch no driver can offer.
    pub bogus_arch: String,
    /// A machine type no driver can offer.
    pub bogus_machine: String,
    /// A virt type no driver can offer.
    pub bogus_virt_type: String,
    /// An emulator path that does not exist.
    pub bogus_emulator: PathBuf,
    /// Enums a driver documents beyond libvirt's (element key as in [`enums::table`], enum
    /// name, allowed values). Use sparingly: every entry is a divergence from libvirt's
    /// vocabulary that the driver must document.
    pub extra_enums: Vec<(String, String, Values)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            schema_dir: schema::schema_dir(),
            xmllint: "xmllint".to_owned(),
            negative: true,
            bogus_arch: "capsd-bogus-arch".to_owned(),
            bogus_machine: "capsd-bogus-machine".to_owned(),
            bogus_virt_type: "capsd-bogus-virttype".to_owned(),
            bogus_emulator: PathBuf::from("/nonexistent/capsd-bogus-emulator"),
            extra_enums: Vec::new(),
        }
    }
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub driver: String,
    /// The driver's availability when the run started.
    pub availability: Availability,
    pub checks: Vec<Check>,
    /// The XML each answered query produced, in query order.
    pub documents: Vec<(Query, String)>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.failure.is_some())
    }

    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// `passed/total` counts.
    pub fn counts(&self) -> (usize, usize) {
        (self.checks.iter().filter(|c| c.failure.is_none()).count(), self.checks.len())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (ok, all) = self.counts();
        writeln!(f, "conformance of driver '{}': {ok}/{all} checks passed", self.driver)?;
        if let Availability::Unavailable { reason } = &self.availability {
            writeln!(f, "  (driver reports unavailable: {reason})")?;
        }
        for c in self.failures() {
            writeln!(
                f,
                "  FAIL driver '{}', query [{}], rule {}: {}",
                self.driver,
                c.query,
                c.rule,
                c.failure.as_deref().unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// Run the suite with default [`Options`].
pub fn run(driver: &dyn DomainCapsDriver, queries: &[Query]) -> Report {
    run_with(driver, queries, &Options::default())
}

/// Panic with the report unless the driver is available and passes every rule.
#[track_caller]
pub fn assert_conforms(driver: &dyn DomainCapsDriver, queries: &[Query]) -> Report {
    assert_conforms_with(driver, queries, &Options::default())
}

/// [`assert_conforms`] with explicit [`Options`].
#[track_caller]
pub fn assert_conforms_with(driver: &dyn DomainCapsDriver, queries: &[Query], opts: &Options) -> Report {
    let report = run_with(driver, queries, opts);
    if !report.availability.is_available() {
        panic!("driver '{}' was expected to be available and conform, but:\n{report}", report.driver);
    }
    if !report.passed() {
        panic!("{report}");
    }
    report
}

/// Panic unless the driver reports itself unavailable and fails every query cleanly with
/// [`DriverError::Unavailable`].
#[track_caller]
pub fn assert_unavailable(driver: &dyn DomainCapsDriver, queries: &[Query]) -> Report {
    let report = run(driver, queries);
    if report.availability.is_available() {
        panic!("driver '{}' was expected to be unavailable on this host but reports itself available", report.driver);
    }
    if !report.passed() {
        panic!("{report}");
    }
    report
}

/// Run the suite.
pub fn run_with(driver: &dyn DomainCapsDriver, queries: &[Query], opts: &Options) -> Report {
    let name = driver.name().to_owned();
    let availability = match catch_unwind(AssertUnwindSafe(|| driver.availability())) {
        Ok(a) => a,
        Err(p) => {
            let check = Check {
                query: Query::default(),
                rule: Rule::NoPanic,
                failure: Some(format!("availability() panicked: {}", panic_message(&p))),
            };
            return Report {
                driver: name,
                availability: Availability::Unavailable { reason: "availability() panicked".into() },
                checks: vec![check],
                documents: Vec::new(),
            };
        }
    };
    let mut r = Report { driver: name, availability: availability.clone(), checks: Vec::new(), documents: Vec::new() };

    if !availability.is_available() {
        for q in queries {
            let failure = match ask(driver, q) {
                Err(p) => Some(format!("panicked: {p}")),
                Ok(Err(DriverError::Unavailable { .. })) => None,
                Ok(Err(e)) => Some(format!("an unavailable driver must fail with Unavailable, got: {e}")),
                Ok(Ok(_)) => Some("an unavailable driver answered the query".to_owned()),
            };
            r.checks.push(Check { query: q.clone(), rule: Rule::UnavailableFailsCleanly, failure });
        }
        return r;
    }

    for q in queries {
        check_query(driver, q, opts, &mut r);
    }
    if opts.negative {
        let base = queries.first().cloned().unwrap_or_default();
        let bogus_arch = Query { arch: Some(opts.bogus_arch.clone()), emulator: None, ..base.clone() };
        rejects(driver, &bogus_arch, Rule::RejectsBogusArch, &mut r);
        let bogus_machine = Query { machine: Some(opts.bogus_machine.clone()), ..base.clone() };
        rejects(driver, &bogus_machine, Rule::RejectsBogusMachine, &mut r);
        let bogus_virt = Query { virt_type: Some(opts.bogus_virt_type.clone()), ..base.clone() };
        rejects(driver, &bogus_virt, Rule::RejectsBogusVirtType, &mut r);
        let bogus_emulator = Query { emulator: Some(opts.bogus_emulator.clone()), ..base };
        rejects(driver, &bogus_emulator, Rule::RejectsBogusEmulator, &mut r);
    }
    r
}

fn push(r: &mut Report, q: &Query, rule: Rule, failure: Option<String>) {
    r.checks.push(Check { query: q.clone(), rule, failure });
}

fn ask(driver: &dyn DomainCapsDriver, q: &Query) -> Result<Result<DomainCapabilities, DriverError>, String> {
    catch_unwind(AssertUnwindSafe(|| driver.domain_capabilities(q))).map_err(|p| panic_message(&p))
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

fn rejects(driver: &dyn DomainCapsDriver, q: &Query, rule: Rule, r: &mut Report) {
    let failure = match ask(driver, q) {
        Err(p) => Some(format!("panicked: {p}")),
        Ok(Err(DriverError::NotSupported { .. } | DriverError::InvalidInput { .. })) => None,
        Ok(Err(e)) => Some(format!("expected NotSupported or InvalidInput, got: {e}")),
        Ok(Ok(caps)) => Some(format!(
            "answered a query it cannot support (domain {}, arch {}, machine {})",
            caps.domain,
            caps.arch,
            caps.machine.as_deref().unwrap_or("-")
        )),
    };
    push(r, q, rule, failure);
}

fn check_query(driver: &dyn DomainCapsDriver, q: &Query, opts: &Options, r: &mut Report) {
    let caps = match ask(driver, q) {
        Err(p) => {
            push(r, q, Rule::NoPanic, Some(format!("panicked: {p}")));
            return;
        }
        Ok(Err(e)) => {
            push(r, q, Rule::NoPanic, None);
            push(r, q, Rule::Answers, Some(format!("failed: {e}")));
            return;
        }
        Ok(Ok(caps)) => caps,
    };
    push(r, q, Rule::NoPanic, None);
    push(r, q, Rule::Answers, None);
    let text = xml::to_xml(&caps);

    push(r, q, Rule::Schema, schema::validate_with(&opts.xmllint, &text, &opts.schema_dir).err());
    push(r, q, Rule::XmlRoundTrip, xml_round_trip(&caps, &text));
    let json_text = json::to_json(&caps);
    push(r, q, Rule::JsonRoundTrip, json_round_trip(&caps, &text, &json_text));
    push(r, q, Rule::Omission, omission(&caps, &text, &json_text));
    let (names, values) = enum_checks(&caps, &opts.extra_enums);
    push(r, q, Rule::EnumNames, join(names));
    push(r, q, Rule::EnumValues, join(values));
    push(r, q, Rule::QueryHonoured, join(honoured(q, &caps)));

    let again = match ask(driver, q) {
        Err(p) => Some(format!("second call panicked: {p}")),
        Ok(Err(e)) => Some(format!("second call failed: {e}")),
        Ok(Ok(c2)) => {
            let t2 = xml::to_xml(&c2);
            (t2 != text).then(|| format!("second answer differs: {}", first_difference(&text, &t2)))
        }
    };
    push(r, q, Rule::Deterministic, again);
    r.documents.push((q.clone(), text));
}

fn join(problems: Vec<String>) -> Option<String> {
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn first_difference(a: &str, b: &str) -> String {
    for (i, (la, lb)) in a.lines().zip(b.lines()).enumerate() {
        if la != lb {
            return format!("line {}: {la:?} vs {lb:?}", i + 1);
        }
    }
    format!("lengths {} vs {} lines", a.lines().count(), b.lines().count())
}

fn xml_round_trip(caps: &DomainCapabilities, text: &str) -> Option<String> {
    match xml::from_xml(text) {
        Err(e) => Some(format!("the driver's own XML does not read back: {e}")),
        Ok(back) if &back != caps => Some("XML read back into a different model".to_owned()),
        Ok(back) => {
            let again = xml::to_xml(&back);
            (again != text).then(|| format!("rewriting changes the XML: {}", first_difference(text, &again)))
        }
    }
}

fn json_round_trip(caps: &DomainCapabilities, text: &str, json_text: &str) -> Option<String> {
    match json::from_json(json_text) {
        Err(e) => Some(format!("the JSON form does not read back: {e}")),
        Ok(back) if &back != caps => Some("JSON read back into a different model".to_owned()),
        Ok(back) => {
            let x = xml::to_xml(&back);
            (x != text).then(|| format!("XML after a JSON round trip differs: {}", first_difference(text, &x)))
        }
    }
}

fn omission(caps: &DomainCapabilities, text: &str, json_text: &str) -> Option<String> {
    let mut problems = Vec::new();
    let want = presence::from_model(caps);
    match presence::from_xml(text) {
        Err(e) => problems.push(format!("XML not well-formed: {e}")),
        Ok(got) => {
            let invented: Vec<&String> = got.difference(&want).collect();
            let dropped: Vec<&String> = want.difference(&got).collect();
            if !invented.is_empty() {
                problems.push(format!("XML states elements the model omits: {invented:?}"));
            }
            if !dropped.is_empty() {
                problems.push(format!("XML omits elements the model states: {dropped:?}"));
            }
        }
    }
    match serde_json::from_str::<serde_json::Value>(json_text) {
        Err(e) => problems.push(format!("JSON form is not JSON: {e}")),
        Ok(v) => {
            let mut nulls = Vec::new();
            find_nulls(&v, "$", &mut nulls);
            if !nulls.is_empty() {
                problems.push(format!("JSON writes omitted elements as null: {nulls:?}"));
            }
        }
    }
    join(problems)
}

fn find_nulls(v: &serde_json::Value, at: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Null => out.push(at.to_owned()),
        serde_json::Value::Array(a) => {
            a.iter().enumerate().for_each(|(i, x)| find_nulls(x, &format!("{at}[{i}]"), out))
        }
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| find_nulls(x, &format!("{at}.{k}"), out)),
        _ => {}
    }
}

/// The enum lists of a document with their element keys (see [`enums::table`]).
pub fn enum_lists(caps: &DomainCapabilities) -> Vec<(String, Vec<Enum>)> {
    let mut out: Vec<(String, Vec<Enum>)> = Vec::new();
    if let Some(os) = &caps.os {
        out.push(("os".into(), os.enums.clone()));
        if let Some(ff) = &os.firmware_features {
            out.push(("os/firmwareFeatures".into(), ff.enums.clone()));
        }
        if let Some(l) = &os.loader {
            out.push(("os/loader".into(), l.enums.clone()));
        }
    }
    if let Some(cpu) = &caps.cpu {
        if let Some(m) = &cpu.host_passthrough {
            out.push(("cpu/mode[host-passthrough]".into(), m.enums.clone()));
        }
        if let Some(m) = &cpu.maximum {
            out.push(("cpu/mode[maximum]".into(), m.enums.clone()));
        }
    }
    if let Some(mb) = &caps.memory_backing {
        out.push(("memoryBacking".into(), mb.enums.clone()));
    }
    if let Some(d) = &caps.devices {
        for (name, e) in d.iter() {
            out.push((format!("devices/{name}"), e.enums.clone()));
        }
    }
    if let Some(f) = &caps.features {
        if let Some(g) = &f.gic {
            out.push(("features/gic".into(), g.enums.clone()));
        }
        if let Some(h) = &f.hyperv {
            out.push(("features/hyperv".into(), h.enums.clone()));
        }
        if let Some(ls) = &f.launch_security {
            out.push(("features/launchSecurity".into(), ls.enums.clone()));
        }
        if let Some(algo) = f.cca.as_ref().and_then(|c| c.measurement_algo.as_ref()) {
            out.push(("features/cca".into(), vec![Enum::new("measurement-algo", algo.iter().cloned())]));
        }
    }
    out
}

fn enum_checks(caps: &DomainCapabilities, extra: &[(String, String, Values)]) -> (Vec<String>, Vec<String>) {
    let mut table: std::collections::BTreeMap<String, Vec<(String, Values)>> = enums::table()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(|(n, vals)| (n.to_owned(), vals)).collect()))
        .collect();
    for (key, name, vals) in extra {
        table.entry(key.clone()).or_default().push((name.clone(), *vals));
    }
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (key, list) in enum_lists(caps) {
        let allowed = table.get(key.as_str()).map(Vec::as_slice).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        for e in &list {
            if !seen.insert(e.name.as_str()) {
                names.push(format!("<{key}> repeats enum '{}'", e.name));
            }
            let Some((_, vals)) = allowed.iter().find(|(n, _)| *n == e.name) else {
                let known: Vec<&str> = allowed.iter().map(|(n, _)| n.as_str()).collect();
                names
                    .push(format!("<{key}> has enum '{}', not one libvirt documents there (known: {known:?})", e.name));
                continue;
            };
            let mut seen_v = std::collections::BTreeSet::new();
            for v in &e.values {
                if !seen_v.insert(v.as_str()) {
                    names.push(format!("<{key}> enum '{}' repeats value '{v}'", e.name));
                }
                if let Values::Closed(ok) = vals {
                    if !ok.contains(&v.as_str()) {
                        values.push(format!("<{key}> enum '{}' has value '{v}' (allowed: {ok:?})", e.name));
                    }
                }
            }
        }
    }
    (names, values)
}

/// The host's architecture in libvirt's spelling.
pub fn host_arch() -> &'static str {
    capsd_core::arch::of_this_build()
}

/// Whether `got` is the machine `requested` names: itself, or a versioned form of it as an
/// alias (`q35` -> `pc-q35-N.M`, `pc` -> `pc-i440fx-N.M`, `X` -> `X-N.M`).
pub fn machine_honoured(requested: &str, got: &str) -> bool {
    requested == got || capsd_core::machine::is_alias_of(requested, got)
}

fn honoured(q: &Query, caps: &DomainCapabilities) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(a) = &q.arch {
        if &caps.arch != a {
            p.push(format!("asked arch '{a}', got '{}'", caps.arch));
        }
    } else if q.emulator.is_none() && caps.arch != host_arch() {
        p.push(format!("no arch or emulator asked: expected the host's arch '{}', got '{}'", host_arch(), caps.arch));
    }
    if let Some(v) = &q.virt_type {
        if &caps.domain != v {
            p.push(format!("asked virt type '{v}', got '{}'", caps.domain));
        }
    }
    if let Some(m) = &q.machine {
        match &caps.machine {
            Some(got) if machine_honoured(m, got) => {}
            Some(got) => p.push(format!("asked machine '{m}', got '{got}'")),
            None => p.push(format!("asked machine '{m}', got a document without <machine>")),
        }
    }
    if let Some(e) = &q.emulator {
        let want = e.to_string_lossy();
        if caps.path.as_deref() != Some(want.as_ref()) {
            p.push(format!("asked emulator '{want}', got path {:?}", caps.path));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_alias_rule() {
        assert!(machine_honoured("q35", "pc-q35-7.2"));
        assert!(machine_honoured("pc", "pc-i440fx-7.2"));
        assert!(machine_honoured("virt", "virt-7.2"));
        assert!(machine_honoured("xenfv", "xenfv"));
        assert!(!machine_honoured("q35", "pc-i440fx-7.2"));
        assert!(!machine_honoured("virt", "virtual"));
        assert!(!machine_honoured("pc", "pc-"));
    }
}

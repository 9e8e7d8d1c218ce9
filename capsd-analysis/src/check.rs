//! `check`: does a libvirt domain definition ask only for what a capabilities document says
//! is supported?
//!
//! Every part of the domain the capabilities speak about becomes one [`Finding`]: where it
//! is in the domain (`/domain/devices/disk[2]/target/@bus`), its value, the part of the
//! capabilities document that decides it (`/domainCapabilities/devices/disk/enum[@name='bus']`)
//! and a [`Verdict`]:
//! - `supported`: the capability is present and lists the value (or says `supported='yes'`);
//! - `unsupported`: the capability says `supported='no'`, or the value is not among the
//!   values of an enum that is present (an empty enum lists nothing);
//! - `unknown`: the element or enum that would decide is omitted: omission means "no
//!   statement", never "no".
//!
//! What is checked, and against what:
//!
//! | domain | capabilities |
//! | --- | --- |
//! | `@type`, `os/type/@arch`, `os/type/@machine` | `domain`, `arch`, `machine` (QEMU aliases `pc`, `q35`, `virt`... match their versioned machine); a mismatch is `unknown`: the document speaks about another target |
//! | `vcpu`, `iothreads` | `vcpu/@max`, `iothreads` |
//! | `os/@firmware`, `os/firmware/feature` (secure-boot, enrolled-keys) | `os` enum `firmware`, `os/firmwareFeatures` enums `secureBoot`, `enrolledKeys` |
//! | `os/loader` `@type`, `@readonly`, `@secure`, path; `os/varstore` | `os/loader` enums and `<value>`s; `os/varstore` |
//! | `cpu/@mode`, `@migratable`, `model`, `feature` | `cpu/mode[@name=...]`, its `*Migratable` enum, custom `model/@usable` (blockers in the note), host-model features and blockers |
//! | `memoryBacking/source/@type` | `memoryBacking` enum `sourceType` |
//! | devices: disk device/bus/model, graphics type, video model, hostdev mode/type/driver/startupPolicy, rng model/backend, filesystem driver, tpm model/backend/version, redirdev bus, channel type, crypto model/type/backend, interface backend, panic model, console type | the device element's enums |
//! | `disk/backingStore[@type]`, `memory[@model='sgx-epc']`, `genid` | `features/backingStoreInput`, `features/sgx`, `features/genid` |
//! | `features/gic/@version`, `features/hyperv/*`, `vmcoreinfo`, `async-teardown`, `ps2` | `features/gic` enum `version`, `hyperv` enum `features`, the flags |
//! | `launchSecurity/@type` | `features/launchSecurity` enum `sectype`, and `sev` (sev, sev-snp), `s390-pv`, `tdx`, `cca` |
//!
//! Only values written in the domain are checked: an attribute left to its default (a disk
//! without `device=`) produces no finding. Each finding reads one capability, so a value
//! `supported` against a [baseline](fn@crate::baseline) is `supported` on every host of it.

use std::collections::{HashMap, HashSet};

use capsd_core::{CpuFeature, DomainCapabilities, Enum, EnumElement, EnumList, FeaturePolicy, Flag, Support, Usable};
use serde::Serialize;

use crate::tree::{self, Element};
use crate::AnalysisError;

/// The answer for one part of the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Supported,
    Unsupported,
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Supported => "supported",
            Verdict::Unsupported => "unsupported",
            Verdict::Unknown => "unknown",
        }
    }
}

/// One checked part of the domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Where in the domain definition: `/domain/devices/disk[2]/target/@bus`.
    pub path: String,
    /// The value found there.
    pub value: String,
    /// The part of the capabilities document that decides: `/domainCapabilities/...`.
    pub capability: String,
    pub verdict: Verdict,
    /// Why, when the verdict is not plain (values listed, blockers, omitted element...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The facts that decided the capability (`capsd explain`'s evidence), when the
    /// document's evidence was at hand ([`Report::attach_evidence`]: a live query of the qemu
    /// driver, CLI or agent). `None` for a document read from a file or from the fleet's
    /// store, which carry no evidence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Vec<String>>,
}

/// All findings for one domain, in domain document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn count(&self, v: Verdict) -> usize {
        self.findings.iter().filter(|f| f.verdict == v).count()
    }
    /// True when some finding is `unsupported` (`capsd check` exits 1).
    pub fn has_unsupported(&self) -> bool {
        self.count(Verdict::Unsupported) > 0
    }
    /// True when every finding is `supported`.
    pub fn all_supported(&self) -> bool {
        self.findings.iter().all(|f| f.verdict == Verdict::Supported)
    }
    /// Human form: one line per finding, then a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!(
                "{:<12} {} = {}\n             by {}",
                f.verdict.as_str(),
                f.path,
                f.value,
                f.capability
            ));
            if let Some(n) = &f.note {
                out.push_str(&format!(": {n}"));
            }
            out.push('\n');
            for e in f.evidence.iter().flatten() {
                out.push_str(&format!("             because {e}\n"));
            }
        }
        out.push_str(&format!(
            "{} findings: {} supported, {} unsupported, {} unknown\n",
            self.findings.len(),
            self.count(Verdict::Supported),
            self.count(Verdict::Unsupported),
            self.count(Verdict::Unknown)
        ));
        out
    }
}

impl Report {
    /// Name, for each finding, the facts that decided its capability: the evidence of the
    /// capability's value node when the derivation considered that value (offered or left
    /// out), else of the capability's element, else of its nearest recorded ancestor; a node
    /// left out says why first. Findings whose capability has no evidence keep `None`.
    pub fn attach_evidence(&mut self, ex: &capsd_core::evidence::Explanation) {
        use capsd_core::evidence::{parent, value_step};
        for f in &mut self.findings {
            let base = f.capability.strip_prefix("/domainCapabilities/").unwrap_or(&f.capability);
            let value_path = format!("{base}/{}", value_step(&f.value));
            let mut path = if ex.get(&value_path).is_some() { value_path.as_str() } else { base };
            let mut facts = Vec::new();
            while !path.is_empty() {
                if let Some(n) = ex.get(path) {
                    if let (false, Some(why)) = (n.present, n.omitted) {
                        facts.push(format!("{path} is left out: {why}"));
                    }
                    facts.extend(n.facts.iter().map(ToString::to_string));
                    if !facts.is_empty() {
                        break;
                    }
                }
                path = parent(path);
            }
            if !facts.is_empty() {
                f.evidence = Some(facts);
            }
        }
    }
}

/// A parsed libvirt domain definition.
#[derive(Debug, Clone)]
pub struct Domain {
    pub root: Element,
}

impl Domain {
    /// Read a domain definition: well-formed XML whose root is `<domain type='...'>`.
    pub fn parse(input: &str) -> Result<Domain, AnalysisError> {
        let root = tree::parse(input)?;
        if root.name != "domain" {
            return Err(AnalysisError::Domain {
                line: root.line,
                path: root.path.clone(),
                message: format!("the root element is <{}>, not <domain>", root.name),
            });
        }
        if root.attr("type").is_none_or(str::is_empty) {
            return Err(AnalysisError::Domain {
                line: root.line,
                path: root.path.clone(),
                message: "<domain> has no type attribute (kvm, qemu, xen...)".into(),
            });
        }
        Ok(Domain { root })
    }
    /// `<domain type=...>`.
    pub fn virt_type(&self) -> &str {
        self.root.attr("type").unwrap_or_default()
    }
    fn os_type(&self) -> Option<&Element> {
        self.root.child("os").and_then(|o| o.child("type"))
    }
    /// `<os><type arch=...>`.
    pub fn arch(&self) -> Option<&str> {
        self.os_type().and_then(|t| t.attr("arch"))
    }
    /// `<os><type machine=...>`.
    pub fn machine(&self) -> Option<&str> {
        self.os_type().and_then(|t| t.attr("machine"))
    }
    /// `<devices><emulator>`.
    pub fn emulator(&self) -> Option<&str> {
        self.root.child("devices").and_then(|d| d.child("emulator")).map(|e| e.text.as_str()).filter(|s| !s.is_empty())
    }
}

/// Check a domain against a capabilities document.
pub fn check(domain: &Domain, caps: &DomainCapabilities) -> Result<Report, AnalysisError> {
    let mut c = Checker { caps, out: Vec::new(), index: Index::default() };
    c.identity(domain);
    c.vcpu(&domain.root)?;
    c.os(&domain.root);
    c.cpu(&domain.root);
    c.memory_backing(&domain.root);
    c.devices(&domain.root);
    c.features(&domain.root);
    c.launch_security(&domain.root);
    Ok(Report { findings: c.out })
}

const CAPS: &str = "/domainCapabilities";

/// What the document says about single CPU features, indexed once per check (a document may
/// list 250,000 of them; a search per domain feature would be quadratic).
struct FeatureFacts<'a> {
    /// Host-model features by name (the first of a name).
    host_model: HashMap<&'a str, &'a CpuFeature>,
    /// Features that block some custom model: the first such model.
    blocked: HashMap<&'a str, &'a str>,
}

impl<'a> FeatureFacts<'a> {
    fn of(caps: &'a DomainCapabilities) -> Self {
        let mut facts = FeatureFacts { host_model: HashMap::new(), blocked: HashMap::new() };
        let cpu = caps.cpu.as_ref();
        for f in cpu.and_then(|c| c.host_model.as_ref()).into_iter().flat_map(|h| &h.features) {
            facts.host_model.entry(f.name.as_str()).or_insert(f);
        }
        let blockers =
            cpu.and_then(|c| c.custom.as_ref()).into_iter().flat_map(|c| &c.models).flat_map(|m| &m.blockers);
        for b in blockers {
            for f in &b.features {
                facts.blocked.entry(f.as_str()).or_insert(b.model.as_str());
            }
        }
        facts
    }
}

struct Checker<'a> {
    caps: &'a DomainCapabilities,
    out: Vec<Finding>,
    index: Index<'a>,
}

/// Long enum lists of the document, indexed on first use: a domain may check 100,000 values
/// against lists a document may make 250,000 long, and a search each time is quadratic.
#[derive(Default)]
struct Index<'a> {
    /// Per enum list (by address): its enums by name (the first of a name).
    enums: HashMap<*const Enum, HashMap<&'a str, &'a [String]>>,
    /// Per value list (by address): its values.
    values: HashMap<*const String, HashSet<&'a str>>,
}

/// Lists up to this long are searched (and shown in notes); longer ones are indexed.
const SEARCHED: usize = 32;

/// The note of a value a list lacks: the list, or its length when it is long (a note per
/// finding repeating 40,000 values made a check of 20,000 devices take 30 s).
fn not_among(vals: &[String]) -> String {
    if vals.len() <= SEARCHED {
        format!("not among: {}", vals.join(", "))
    } else {
        format!("not among the {} values listed", vals.len())
    }
}

impl<'a> Index<'a> {
    fn enum_values(&mut self, enums: &'a [Enum], name: &str) -> Option<&'a [String]> {
        if enums.len() <= SEARCHED {
            return enums.enum_values(name);
        }
        let by_name = self.enums.entry(enums.as_ptr()).or_insert_with(|| {
            let mut m = HashMap::with_capacity(enums.len());
            for e in enums {
                m.entry(e.name.as_str()).or_insert(e.values.as_slice());
            }
            m
        });
        by_name.get(name).copied()
    }

    fn lists(&mut self, values: &'a [String], value: &str) -> bool {
        if values.len() <= SEARCHED {
            return values.iter().any(|v| v == value);
        }
        self.values
            .entry(values.as_ptr())
            .or_insert_with(|| values.iter().map(String::as_str).collect())
            .contains(value)
    }
}

/// What decides one value: an element made of `supported` plus enums (or omitted).
type EnumSource<'a> = Option<(Support, &'a [Enum])>;

fn from_elem(e: Option<&EnumElement>) -> EnumSource<'_> {
    e.map(|e| (e.supported, e.enums.as_slice()))
}

impl<'a> Checker<'a> {
    fn push(&mut self, path: String, value: &str, capability: String, verdict: Verdict, note: Option<String>) {
        self.out.push(Finding { path, value: value.to_owned(), capability, verdict, note, evidence: None });
    }

    /// The value against enum `name` of the element at `base`.
    fn by_enum(&mut self, path: String, value: &str, src: EnumSource<'a>, base: &str, name: &str) {
        let enum_path = format!("{base}/enum[@name='{name}']");
        match src {
            None => self.push(path, value, base.to_owned(), Verdict::Unknown, Some("element omitted".into())),
            Some((Support::No, _)) => self.push(
                path,
                value,
                format!("{base}/@supported"),
                Verdict::Unsupported,
                Some("supported='no'".into()),
            ),
            Some((Support::Yes, enums)) => match self.index.enum_values(enums, name) {
                None => self.push(path, value, enum_path, Verdict::Unknown, Some("enum omitted".into())),
                Some(vals) if self.index.lists(vals, value) => {
                    self.push(path, value, enum_path, Verdict::Supported, None)
                }
                Some(vals) => {
                    let note = if vals.is_empty() { "the enum lists no value".to_owned() } else { not_among(vals) };
                    self.push(path, value, enum_path, Verdict::Unsupported, Some(note))
                }
            },
        }
    }

    /// The value against the `supported` attribute of the element at `base`.
    fn by_support(&mut self, path: String, value: &str, s: Option<Support>, base: &str) {
        match s {
            None => self.push(path, value, base.to_owned(), Verdict::Unknown, Some("element omitted".into())),
            Some(Support::Yes) => self.push(path, value, format!("{base}/@supported"), Verdict::Supported, None),
            Some(Support::No) => self.push(
                path,
                value,
                format!("{base}/@supported"),
                Verdict::Unsupported,
                Some("supported='no'".into()),
            ),
        }
    }

    fn flag(&mut self, path: String, value: &str, f: Option<&Flag>, base: &str) {
        self.by_support(path, value, f.map(|f| f.supported), base)
    }

    /// Domain type, arch and machine: do these capabilities speak about this domain at all?
    fn identity(&mut self, d: &Domain) {
        let caps = self.caps;
        let vt = d.virt_type().to_owned();
        self.matches(d.root.attr_path("type"), &vt, Some(&caps.domain), "domain");
        if let Some(t) = d.os_type() {
            if let Some(a) = t.attr("arch") {
                self.matches(t.attr_path("arch"), a, Some(&caps.arch), "arch");
            }
            if let Some(m) = t.attr("machine") {
                let path = t.attr_path("machine");
                let cap = format!("{CAPS}/machine");
                match &caps.machine {
                    None => self.push(path, m, cap, Verdict::Unknown, Some("element omitted".into())),
                    Some(cm) if cm == m => self.push(path, m, cap, Verdict::Supported, None),
                    Some(cm) if capsd_core::machine::is_alias_of(m, cm) => self.push(
                        path,
                        m,
                        cap,
                        Verdict::Supported,
                        Some(format!("QEMU alias of {cm} (the capabilities' machine)")),
                    ),
                    Some(cm) => self.push(
                        path,
                        m,
                        cap,
                        Verdict::Unknown,
                        Some(format!("the capabilities describe machine {cm}, not this one")),
                    ),
                }
            }
        }
    }

    fn matches(&mut self, path: String, value: &str, caps_value: Option<&String>, el: &str) {
        let cap = format!("{CAPS}/{el}");
        match caps_value {
            Some(v) if v == value => self.push(path, value, cap, Verdict::Supported, None),
            Some(v) => self.push(
                path,
                value,
                cap,
                Verdict::Unknown,
                Some(format!("the capabilities describe {el} {v}, not this one")),
            ),
            None => self.push(path, value, cap, Verdict::Unknown, Some("element omitted".into())),
        }
    }

    fn vcpu(&mut self, root: &Element) -> Result<(), AnalysisError> {
        if let Some(v) = root.child("vcpu") {
            let n: u32 = v.text.parse().map_err(|_| AnalysisError::Domain {
                line: v.line,
                path: v.path.clone(),
                message: format!("'{}' is not a vCPU count", v.text),
            })?;
            let cap = format!("{CAPS}/vcpu/@max");
            match self.caps.vcpu {
                None => self.push(v.path.clone(), &v.text, cap, Verdict::Unknown, Some("element omitted".into())),
                Some(max) if n <= max.max => self.push(v.path.clone(), &v.text, cap, Verdict::Supported, None),
                Some(max) => self.push(
                    v.path.clone(),
                    &v.text,
                    cap,
                    Verdict::Unsupported,
                    Some(format!("more than the maximum of {}", max.max)),
                ),
            }
        }
        if let Some(t) = root.child("iothreads") {
            let n: u32 = t.text.parse().map_err(|_| AnalysisError::Domain {
                line: t.line,
                path: t.path.clone(),
                message: format!("'{}' is not an I/O thread count", t.text),
            })?;
            if n > 0 {
                self.flag(t.path.clone(), &t.text, self.caps.iothreads.as_ref(), &format!("{CAPS}/iothreads"));
            }
        }
        Ok(())
    }

    fn os(&mut self, root: &Element) {
        let Some(os) = root.child("os") else { return };
        let caps_os = self.caps.os.as_ref();
        let base = format!("{CAPS}/os");
        let os_src: EnumSource<'_> = caps_os.map(|o| (o.supported, o.enums.as_slice()));
        if let Some(fw) = os.attr("firmware") {
            self.by_enum(os.attr_path("firmware"), fw, os_src, &base, "firmware");
        }
        if let Some(fwel) = os.child("firmware") {
            for f in fwel.children_named("feature") {
                let (Some(name), Some(enabled)) = (f.attr("name"), f.attr("enabled")) else { continue };
                let enum_name = match name {
                    "secure-boot" => "secureBoot",
                    "enrolled-keys" => "enrolledKeys",
                    _ => continue,
                };
                let path = format!("{}/firmware/feature[@name='{name}']/@enabled", os.path);
                let src = from_elem(caps_os.and_then(|o| o.firmware_features.as_ref()));
                self.by_enum(path, enabled, src, &format!("{base}/firmwareFeatures"), enum_name);
            }
        }
        if let Some(loader) = os.child("loader") {
            let lbase = format!("{base}/loader");
            let caps_loader = caps_os.and_then(|o| o.loader.as_ref());
            let src: EnumSource<'_> = caps_loader.map(|l| (l.supported, l.enums.as_slice()));
            for attr in ["type", "readonly", "secure"] {
                if let Some(v) = loader.attr(attr) {
                    self.by_enum(loader.attr_path(attr), v, src, &lbase, attr);
                }
            }
            if !loader.text.is_empty() {
                let p = loader.path.clone();
                let v = loader.text.as_str();
                match caps_loader {
                    None => self.push(p, v, lbase, Verdict::Unknown, Some("element omitted".into())),
                    Some(l) if l.supported == Support::No => self.push(
                        p,
                        v,
                        format!("{lbase}/@supported"),
                        Verdict::Unsupported,
                        Some("supported='no'".into()),
                    ),
                    Some(l) if l.values.is_empty() => self.push(
                        p,
                        v,
                        format!("{lbase}/value"),
                        Verdict::Unknown,
                        Some("no firmware image listed".into()),
                    ),
                    Some(l) if l.values.iter().any(|x| x == v) => {
                        self.push(p, v, format!("{lbase}/value"), Verdict::Supported, None)
                    }
                    Some(l) => {
                        self.push(p, v, format!("{lbase}/value"), Verdict::Unsupported, Some(not_among(&l.values)))
                    }
                }
            }
        }
        if let Some(vs) = os.child("varstore") {
            self.flag(
                vs.path.clone(),
                "present",
                caps_os.and_then(|o| o.varstore.as_ref()),
                &format!("{base}/varstore"),
            );
        }
    }

    fn cpu(&mut self, root: &Element) {
        let Some(cpu) = root.child("cpu") else { return };
        let model = cpu.child("model").filter(|m| !m.text.is_empty());
        let mode = cpu.attr("mode").or(model.map(|_| "custom"));
        let Some(mode) = mode else { return };
        let caps_cpu = self.caps.cpu.as_ref();
        let mbase = format!("{CAPS}/cpu/mode[@name='{mode}']");
        let mode_path = if cpu.attr("mode").is_some() { cpu.attr_path("mode") } else { format!("{}/@mode", cpu.path) };
        match mode {
            "host-passthrough" | "maximum" => {
                let m =
                    caps_cpu
                        .and_then(|c| if mode == "maximum" { c.maximum.as_ref() } else { c.host_passthrough.as_ref() });
                self.by_support(mode_path, mode, m.map(|m| m.supported), &mbase);
                if let Some(mig) = cpu.attr("migratable") {
                    let ename = if mode == "maximum" { "maximumMigratable" } else { "hostPassthroughMigratable" };
                    self.by_enum(
                        cpu.attr_path("migratable"),
                        mig,
                        m.map(|m| (m.supported, m.enums.as_slice())),
                        &mbase,
                        ename,
                    );
                }
            }
            "host-model" => {
                let m = caps_cpu.and_then(|c| c.host_model.as_ref());
                self.by_support(mode_path, mode, m.map(|m| m.supported), &mbase);
            }
            "custom" => {
                let custom = caps_cpu.and_then(|c| c.custom.as_ref());
                self.by_support(mode_path, mode, custom.map(|m| m.supported), &mbase);
                if let Some(model) = model {
                    let name = model.text.as_str();
                    let p = model.path.clone();
                    match custom {
                        None => self.push(p, name, mbase, Verdict::Unknown, Some("element omitted".into())),
                        Some(c) if c.supported == Support::No => self.push(
                            p,
                            name,
                            format!("{mbase}/@supported"),
                            Verdict::Unsupported,
                            Some("supported='no'".into()),
                        ),
                        Some(c) if c.models.is_empty() => self.push(
                            p,
                            name,
                            format!("{mbase}/model"),
                            Verdict::Unknown,
                            Some("no model listed".into()),
                        ),
                        Some(c) => match c.models.iter().find(|m| m.name == name) {
                            None => self.push(
                                p,
                                name,
                                format!("{mbase}/model"),
                                Verdict::Unsupported,
                                Some(format!("not among the {} models listed", c.models.len())),
                            ),
                            Some(m) => {
                                let cap = format!("{mbase}/model[.='{name}']/@usable");
                                let (v, note) = match m.usable {
                                    Usable::Yes => (Verdict::Supported, None),
                                    Usable::Unknown => (Verdict::Unknown, Some("usable='unknown'".to_owned())),
                                    Usable::No => (
                                        Verdict::Unsupported,
                                        Some(match &m.blockers {
                                            Some(b) if !b.features.is_empty() => {
                                                format!("usable='no', blocked by: {}", b.features.join(", "))
                                            }
                                            _ => "usable='no'".to_owned(),
                                        }),
                                    ),
                                };
                                self.push(p, name, cap, v, note)
                            }
                        },
                    }
                }
            }
            _ => {}
        }
        let facts = FeatureFacts::of(self.caps);
        for f in cpu.children_named("feature") {
            let (Some(name), policy) = (f.attr("name"), f.attr("policy").unwrap_or("require")) else { continue };
            let wants = match policy {
                "require" | "force" => true,
                "forbid" => false,
                _ => continue,
            };
            let path = format!("{}/feature[@name='{name}']/@policy", cpu.path);
            self.cpu_feature(&facts, path, name, policy, wants);
        }
    }

    /// What the document says about the host having one CPU feature: the host-model CPU
    /// requires it (has it) or disables it (lacks it); a blocker lists it (lacks it).
    fn cpu_feature(&mut self, facts: &FeatureFacts<'_>, path: String, name: &str, policy: &str, wants: bool) {
        let hm_base = format!("{CAPS}/cpu/mode[@name='host-model']");
        let mut has: Option<(bool, String)> = None;
        if let Some(f) = facts.host_model.get(name) {
            let cap = format!("{hm_base}/feature[@name='{name}']/@policy");
            match f.policy {
                FeaturePolicy::Require | FeaturePolicy::Force => has = Some((true, cap)),
                FeaturePolicy::Disable | FeaturePolicy::Forbid => has = Some((false, cap)),
                FeaturePolicy::Optional => {}
            }
        }
        if has.is_none() {
            if let Some(model) = facts.blocked.get(name) {
                has = Some((
                    false,
                    format!("{CAPS}/cpu/mode[@name='custom']/blockers[@model='{model}']/feature[@name='{name}']"),
                ));
            }
        }
        let value = format!("{policy} {name}");
        match has {
            None => self.push(
                path,
                &value,
                hm_base,
                Verdict::Unknown,
                Some("the document does not say whether the host has it".into()),
            ),
            Some((h, cap)) if h == wants => self.push(path, &value, cap, Verdict::Supported, None),
            Some((h, cap)) => self.push(
                path,
                &value,
                cap,
                Verdict::Unsupported,
                Some(if h { "the host has it".into() } else { "the host lacks it".into() }),
            ),
        }
    }

    fn memory_backing(&mut self, root: &Element) {
        let Some(src) = root.child("memoryBacking").and_then(|m| m.child("source")) else { return };
        if let Some(t) = src.attr("type") {
            self.by_enum(
                src.attr_path("type"),
                t,
                from_elem(self.caps.memory_backing.as_ref()),
                &format!("{CAPS}/memoryBacking"),
                "sourceType",
            );
        }
    }

    fn devices(&mut self, root: &Element) {
        let Some(devs) = root.child("devices") else { return };
        for d in &devs.children {
            let kind = d.name.as_str();
            let src = from_elem(self.caps.devices.as_ref().and_then(|ds| ds.get(kind)));
            let base = format!("{CAPS}/devices/{kind}");
            // (where in the device, attribute, enum name)
            let checks: Vec<(Option<&Element>, &str, &str)> = match kind {
                "disk" => vec![
                    (Some(d), "device", "diskDevice"),
                    (d.child("target"), "bus", "bus"),
                    (Some(d), "model", "model"),
                ],
                "graphics" => vec![(Some(d), "type", "type")],
                "video" => vec![(d.child("model"), "type", "modelType")],
                "hostdev" => {
                    let mode = d.attr("mode").unwrap_or("subsystem");
                    let mut v = vec![(Some(d), "mode", "mode")];
                    if mode == "capabilities" {
                        v.push((Some(d), "type", "capsType"));
                    } else {
                        v.push((Some(d), "type", "subsysType"));
                        if d.attr("type") == Some("pci") {
                            v.push((d.child("driver"), "name", "pciBackend"));
                        }
                    }
                    v.push((d.child("source"), "startupPolicy", "startupPolicy"));
                    v
                }
                "rng" => vec![(Some(d), "model", "model"), (d.child("backend"), "model", "backendModel")],
                "filesystem" => vec![(d.child("driver"), "type", "driverType")],
                "tpm" => vec![
                    (Some(d), "model", "model"),
                    (d.child("backend"), "type", "backendModel"),
                    (d.child("backend"), "version", "backendVersion"),
                ],
                "redirdev" => vec![(Some(d), "bus", "bus")],
                "channel" => vec![(Some(d), "type", "type")],
                "crypto" => vec![
                    (Some(d), "model", "model"),
                    (Some(d), "type", "type"),
                    (d.child("backend"), "model", "backendModel"),
                ],
                "interface" => vec![(d.child("backend"), "type", "backendType")],
                "panic" => vec![(Some(d), "model", "model")],
                "console" => vec![(Some(d), "type", "type")],
                _ => Vec::new(),
            };
            for (el, attr, ename) in checks {
                let Some(el) = el else { continue };
                let Some(v) = el.attr(attr) else { continue };
                self.by_enum(el.attr_path(attr), v, src, &base, ename);
            }
            let caps_f = self.caps.features.as_ref();
            let fbase = format!("{CAPS}/features");
            // A user-given backing chain (a <backingStore> with a type) needs backingStoreInput.
            if let Some(bs) = d.child("backingStore").filter(|b| b.attr("type").is_some()) {
                let f = caps_f.and_then(|c| c.backing_store_input.as_ref());
                self.flag(bs.path.clone(), "present", f, &format!("{fbase}/backingStoreInput"));
            }
            // SGX enclave page cache memory needs <sgx supported='yes'>.
            if kind == "memory" && d.attr("model") == Some("sgx-epc") {
                let s = caps_f.and_then(|c| c.sgx.as_ref()).map(|s| s.supported);
                self.by_support(d.attr_path("model"), "sgx-epc", s, &format!("{fbase}/sgx"));
            }
        }
    }

    fn features(&mut self, root: &Element) {
        let caps_f = self.caps.features.as_ref();
        let fbase = format!("{CAPS}/features");
        if let Some(g) = root.child("genid") {
            self.flag(g.path.clone(), "present", caps_f.and_then(|f| f.genid.as_ref()), &format!("{fbase}/genid"));
        }
        let Some(feats) = root.child("features") else { return };
        for f in &feats.children {
            let base = format!("{fbase}/{}", f.name);
            match f.name.as_str() {
                "gic" => {
                    let src = from_elem(caps_f.and_then(|c| c.gic.as_ref()));
                    match f.attr("version") {
                        Some(v) => self.by_enum(f.attr_path("version"), v, src, &base, "version"),
                        None => self.by_support(f.path.clone(), "present", src.map(|s| s.0), &base),
                    }
                }
                "hyperv" => {
                    let hv = caps_f.and_then(|c| c.hyperv.as_ref());
                    self.by_support(f.path.clone(), f.attr("mode").unwrap_or("custom"), hv.map(|h| h.supported), &base);
                    let src: EnumSource<'_> = hv.map(|h| (h.supported, h.enums.as_slice()));
                    for e in &f.children {
                        if e.attr("state").is_some_and(|s| s != "on") {
                            continue;
                        }
                        self.by_enum(e.path.clone(), &e.name, src, &base, "features");
                    }
                }
                "vmcoreinfo" if f.attr("state") != Some("off") => {
                    self.flag(f.path.clone(), "on", caps_f.and_then(|c| c.vmcoreinfo.as_ref()), &base)
                }
                "async-teardown" if f.attr("enabled") == Some("yes") => {
                    self.flag(f.attr_path("enabled"), "yes", caps_f.and_then(|c| c.async_teardown.as_ref()), &base)
                }
                "ps2" => {
                    let st = f.attr("state").unwrap_or("on").to_owned();
                    self.flag(f.path.clone(), &st, caps_f.and_then(|c| c.ps2.as_ref()), &base)
                }
                _ => {}
            }
        }
    }

    fn launch_security(&mut self, root: &Element) {
        let Some(ls) = root.child("launchSecurity") else { return };
        let Some(t) = ls.attr("type") else { return };
        let caps_f = self.caps.features.as_ref();
        let fbase = format!("{CAPS}/features");
        let path = ls.attr_path("type");
        self.by_enum(
            path.clone(),
            t,
            from_elem(caps_f.and_then(|c| c.launch_security.as_ref())),
            &format!("{fbase}/launchSecurity"),
            "sectype",
        );
        match t {
            "sev" | "sev-snp" => self.by_support(
                path,
                t,
                caps_f.and_then(|c| c.sev.as_ref()).map(|s| s.supported),
                &format!("{fbase}/sev"),
            ),
            "s390-pv" => self.flag(path, t, caps_f.and_then(|c| c.s390_pv.as_ref()), &format!("{fbase}/s390-pv")),
            "tdx" => self.flag(path, t, caps_f.and_then(|c| c.tdx.as_ref()), &format!("{fbase}/tdx")),
            "cca" => self.by_support(
                path,
                t,
                caps_f.and_then(|c| c.cca.as_ref()).map(|c| c.supported),
                &format!("{fbase}/cca"),
            ),
            _ => {}
        }
    }
}

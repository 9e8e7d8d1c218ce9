//! Recorded probes as input: answering a query from a file instead of the host.
//!
//! Two kinds of file are read ([`load`] tells them apart by their first JSON value):
//!
//! * **capsd recordings** (`capsd probe --record FILE`): one JSON object, the
//!   [`ProbeData`] of one emulator (every accelerator's QMP exchanges and every host fact
//!   capsd consults) plus the libvirt release of the recording host. The format is
//!   documented field by field in `docs/recording.md`; [`RECORDING_FORMAT_VERSION`] is its
//!   version (the `format_version` field).
//! * **libvirt's `.replies` transcripts** (`tests/qemucapabilitiesdata/caps_*.replies` in
//!   libvirt's source tree, written by its `qemucapsprobe`): JSON objects separated by blank
//!   lines, each command (`execute`, `arguments`, `id` `libvirt-N`) followed by its reply
//!   (`return` or `error`, same `id`). A `qmp_capabilities` command starts a QEMU run: the
//!   first run is the KVM run when its `query-kvm` says KVM is present and enabled (else
//!   a run without KVM: TCG, or another accelerator such as hvf when a second run
//!   follows); a second `qmp_capabilities` starts the short TCG run libvirt makes after a
//!   KVM one. libvirt uses the first run's answers for everything its TCG run does not ask
//!   again, so the TCG transcript built here holds the TCG run's answers plus the first
//!   run's answers to every other command, except those that depend on the accelerator
//!   (`query-kvm` and anything about the `host` CPU model). Host facts come from
//!   `--host-facts` ([`FactsFile`]); without it only the host arch (the transcript's) and
//!   whether KVM is usable (its first run) are known, and everything else is unknown.
//!
//! A command the file holds no answer for is exactly a command a live probe asked and got
//! no answer to: derivation omits what depends on it, never answers "no". [`unanswered`]
//! lists them (the CLI logs them with `-v`). Nothing here touches QEMU; only
//! [`FactsFile::apply`] reads the directories the facts file names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use capsd_core::{DomainCapabilities, DriverError, Query};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::host::HostFacts;
use crate::plan::Request;
use crate::probe_data::{Accel, Exchange, ProbeData, QmpError, Reply, Transcript, PROBE_FORMAT_VERSION};

/// Version of the recording file format (`format_version`), the same number as the probe
/// data it holds.
pub const RECORDING_FORMAT_VERSION: u32 = PROBE_FORMAT_VERSION;

/// Why a file could not be replayed. Every variant names the file; a malformed one also
/// the line (1-based) and column.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {what}")]
    Malformed { path: String, line: usize, column: usize, what: String },
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

/// A probe read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording {
    /// The probe: transcripts per accelerator and host facts.
    pub data: ProbeData,
    /// The libvirt release installed on the recording host (`recorded_libvirt`), the
    /// default target of a replay. `None` for `.replies` transcripts and recordings of
    /// hosts without libvirt.
    pub libvirt: Option<String>,
    /// What the file was.
    pub kind: RecordingKind,
}

/// The kind of file a [`Recording`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingKind {
    /// `capsd probe --record`.
    Capsd,
    /// libvirt's `.replies`.
    LibvirtReplies,
}

/// The extra top-level field a recording has beside the probe data's.
#[derive(Deserialize)]
struct RecordingExtra {
    #[serde(default)]
    recorded_libvirt: Option<String>,
}

/// The JSON text of a recording of `data` made on a host whose libvirt is `libvirt`.
pub fn recording_json(data: &ProbeData, libvirt: Option<&str>) -> Result<String, serde_json::Error> {
    let mut v = serde_json::to_value(data)?;
    if let (Some(obj), Some(l)) = (v.as_object_mut(), libvirt) {
        obj.insert("recorded_libvirt".into(), Value::String(l.to_owned()));
    }
    let mut text = serde_json::to_string_pretty(&v)?;
    text.push('\n');
    Ok(text)
}

/// Read `path`: a capsd recording or a libvirt `.replies` transcript.
pub fn load(path: &Path) -> Result<Recording, ReplayError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ReplayError::Io { path: name.clone(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let (line, column) = line_col(&String::from_utf8_lossy(e.as_bytes()), e.utf8_error().valid_up_to());
        ReplayError::Malformed { path: name.clone(), line, column, what: "not UTF-8".into() }
    })?;
    parse(&name, &text)
}

/// [`load`] for text already read; `name` is used in errors.
pub fn parse(name: &str, text: &str) -> Result<Recording, ReplayError> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    match stream.next() {
        None => Err(ReplayError::Invalid {
            path: name.into(),
            what: "empty file: no recording and no QMP transcript".into(),
        }),
        Some(Err(e)) => Err(json_error(name, &e)),
        Some(Ok(first)) if ["execute", "return", "error", "event", "QMP"].iter().any(|k| first.get(k).is_some()) => {
            parse_replies(name, text)
        }
        Some(Ok(_)) => parse_recording(name, text),
    }
}

fn json_error(name: &str, e: &serde_json::Error) -> ReplayError {
    ReplayError::Malformed { path: name.into(), line: e.line(), column: e.column(), what: e.to_string() }
}

/// 1-based line and column of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// A capsd recording (`capsd probe --record`).
pub fn parse_recording(name: &str, text: &str) -> Result<Recording, ReplayError> {
    // The version first, so that a newer format is named as such rather than as whatever
    // field it changed.
    let v: Value = serde_json::from_str(text).map_err(|e| json_error(name, &e))?;
    match v.get("format_version").and_then(Value::as_u64) {
        Some(n) if n == u64::from(RECORDING_FORMAT_VERSION) => {}
        Some(n) => {
            return Err(ReplayError::Invalid {
                path: name.into(),
                what: format!("recording format version {n}; this capsd reads version {RECORDING_FORMAT_VERSION}"),
            })
        }
        None => return Err(ReplayError::Invalid {
            path: name.into(),
            what:
                "not a capsd recording (no format_version) nor a QMP transcript (its first object has no \"execute\")"
                    .into(),
        }),
    }
    let data: ProbeData = serde_json::from_str(text).map_err(|e| json_error(name, &e))?;
    let extra: RecordingExtra = serde_json::from_str(text).map_err(|e| json_error(name, &e))?;
    if data.runs.is_empty() {
        return Err(ReplayError::Invalid { path: name.into(), what: "the recording holds no QEMU run".into() });
    }
    Ok(Recording { data, libvirt: extra.recorded_libvirt, kind: RecordingKind::Capsd })
}

/// One QEMU run of a `.replies` transcript, as read.
#[derive(Default)]
struct RawRun {
    exchanges: Vec<Exchange>,
}

/// A libvirt `.replies` transcript.
pub fn parse_replies(name: &str, text: &str) -> Result<Recording, ReplayError> {
    let malformed = |at: usize, what: String| {
        let (line, column) = line_col(text, at);
        ReplayError::Malformed { path: name.into(), line, column, what }
    };
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut runs: Vec<RawRun> = Vec::new();
    // The command waiting for its reply: (offset where it started, id, execute, arguments).
    let mut pending: Option<(usize, Option<String>, String, Option<Value>)> = None;
    loop {
        // Where the next value starts (after whitespace), for error positions.
        let start =
            stream.byte_offset() + text[stream.byte_offset()..].len() - text[stream.byte_offset()..].trim_start().len();
        let Some(next) = stream.next() else { break };
        let v = next.map_err(|e| json_error(name, &e))?;
        let Value::Object(obj) = v else {
            return Err(malformed(start, "expected a JSON object (a QMP command or reply)".into()));
        };
        let id = match obj.get("id") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(malformed(start, "\"id\" is not a string".into())),
        };
        if obj.contains_key("event") {
            continue;
        }
        if let Some(execute) = obj.get("execute") {
            let Some(execute) = execute.as_str() else {
                return Err(malformed(start, "\"execute\" is not a string".into()));
            };
            if let Some((at, _, cmd, _)) = &pending {
                let (line, _) = line_col(text, *at);
                return Err(malformed(
                    start,
                    format!("a command follows command '{cmd}' (line {line}) before its reply"),
                ));
            }
            let arguments = match obj.get("arguments") {
                None => None,
                Some(a @ Value::Object(_)) => Some(a.clone()),
                Some(_) => return Err(malformed(start, "\"arguments\" is not an object".into())),
            };
            pending = Some((start, id, execute.to_owned(), arguments));
            continue;
        }
        let reply = if let Some(r) = obj.get("return") {
            Reply::ok(r.clone())
        } else if let Some(e) = obj.get("error") {
            let field = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
            match (field("class"), field("desc")) {
                (Some(class), Some(desc)) => Reply::err(QmpError { class, desc }),
                _ => return Err(malformed(start, "\"error\" needs string members \"class\" and \"desc\"".into())),
            }
        } else if obj.contains_key("QMP") {
            // A greeting: not written by libvirt, but harmless.
            continue;
        } else {
            return Err(malformed(start, "neither a command (\"execute\") nor a reply (\"return\", \"error\")".into()));
        };
        let Some((_, cmd_id, execute, arguments)) = pending.take() else {
            return Err(malformed(start, "a reply without a command before it".into()));
        };
        if let (Some(a), Some(b)) = (&cmd_id, &id) {
            if a != b {
                return Err(malformed(start, format!("reply id '{b}' does not match command id '{a}'")));
            }
        }
        if execute == "qmp_capabilities" {
            runs.push(RawRun::default());
            continue;
        }
        match runs.last_mut() {
            Some(run) => run.exchanges.push(Exchange { execute, arguments, reply }),
            None => return Err(malformed(start, format!("command '{execute}' before the first qmp_capabilities"))),
        }
    }
    if let Some((at, _, cmd, _)) = pending {
        return Err(malformed(at, format!("command '{cmd}' has no reply (the file ends)")));
    }
    let invalid = |what: &str| ReplayError::Invalid { path: name.into(), what: what.into() };
    let mut runs = runs.into_iter();
    let first = runs.next().ok_or_else(|| invalid("no qmp_capabilities: not a QMP transcript"))?;
    let second = runs.next();
    if runs.next().is_some() {
        return Err(invalid("more than two QEMU runs (qmp_capabilities seen three times)"));
    }
    let first = Transcript { greeting: Value::Null, exchanges: first.exchanges };
    let kvm = first.get("query-kvm").is_some_and(|k| {
        k.get("enabled").and_then(Value::as_bool) == Some(true)
            && k.get("present").and_then(Value::as_bool) == Some(true)
    });
    let mut map = BTreeMap::new();
    match (kvm, second) {
        (true, None) => {
            map.insert(Accel::Kvm, first);
        }
        (true, Some(tcg)) => {
            let tcg = with_fallback(tcg.exchanges, &first);
            map.insert(Accel::Kvm, first);
            map.insert(Accel::Tcg, tcg);
        }
        (false, None) => {
            map.insert(Accel::Tcg, first);
        }
        // Another accelerator (hvf), then TCG: only the TCG run is one capsd knows.
        (false, Some(tcg)) => {
            map.insert(Accel::Tcg, with_fallback(tcg.exchanges, &first));
        }
    }
    let arch = map
        .values()
        .find_map(|t| crate::cpu::plan::target_arch(t))
        .ok_or_else(|| invalid("no answer to query-target: the emulator's architecture is unknown"))?
        .to_owned();
    let host = HostFacts {
        host_arch: crate::resolve::arch_from_qemu(&arch, crate::libvirt::Target::new(crate::libvirt::NEWEST_KNOWN))
            .unwrap_or_else(|| arch.clone()),
        kvm_usable: map.contains_key(&Accel::Kvm),
        ..HostFacts::default()
    };
    let data = ProbeData {
        format_version: PROBE_FORMAT_VERSION,
        binary: format!("/usr/bin/qemu-system-{arch}"),
        runs: map,
        host,
    };
    Ok(Recording { data, libvirt: None, kind: RecordingKind::LibvirtReplies })
}

/// Whether a command's answer depends on the accelerator it was asked under (so a TCG run
/// must not borrow it from a KVM run).
fn accel_dependent(e: &Exchange) -> bool {
    let host_model = e
        .arguments
        .as_ref()
        .and_then(|a| a.get("model"))
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .is_some_and(|n| n == "host");
    matches!(e.execute.as_str(), "query-kvm" | "query-cpu-definitions" | "query-machines") || host_model
}

/// The TCG run's exchanges plus the other run's answers to everything it did not ask.
fn with_fallback(own: Vec<Exchange>, other: &Transcript) -> Transcript {
    let mut t = Transcript { greeting: Value::Null, exchanges: own };
    let borrowed: Vec<Exchange> = other
        .exchanges
        .iter()
        .filter(|e| !accel_dependent(e) && t.exchange(&e.execute, e.arguments.as_ref()).is_none())
        .cloned()
        .collect();
    t.exchanges.extend(borrowed);
    t
}

/// The commands capsd's probe plan would send in `accel`'s run that `t` holds no answer to
/// (answered with an error counts as answered: QEMU said something). Derivation treats each
/// as a command QEMU did not answer.
pub fn unanswered(accel: Accel, t: &Transcript) -> Vec<Request> {
    let mut out: Vec<Request> = Vec::new();
    for stage in crate::plan::stages() {
        for r in stage(accel, t) {
            if t.exchange(&r.execute, r.arguments.as_ref()).is_none() && !out.contains(&r) {
                out.push(r);
            }
        }
    }
    out
}

/// `--host-facts FILE`: facts a recording lacks, or values to use instead of the recorded
/// ones. Every member is optional; a member that is given replaces the recorded fact.
///
/// Besides the fields of [`HostFacts`] under their own names (`host_arch`, `kvm_usable`,
/// `kvm_max_vcpus`, `firmware`, `vfio`, `sev`, `s390_pv`, `sgx`, `swtpm`, `tdx`,
/// `qemu_rdp`, `phys_addr_bits`, `default_loaders_present`, `host_cpu_model`, `cpu_pvr`; objects such
/// as `sev` are merged member by member), it takes directories to read facts from, the way
/// a probe reads them on a host:
///
/// * `firmware_dirs`: firmware descriptor directories, lowest priority first (as
///   `/usr/share/qemu/firmware`, `/etc/qemu/firmware`, `~/.config/qemu/firmware`): they
///   replace `firmware`. `firmware_images_exist: true` takes every image a descriptor names
///   as present (a recorded host's files, not this one's); otherwise this machine is asked.
/// * `cpu_map_dir`: libvirt's `cpu_map` directory (replaces the recorded map, if any).
///
/// Unknown members are an error, so a misspelt fact is not silently ignored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FactsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_dirs: Option<Vec<PathBuf>>,
    #[serde(default)]
    pub firmware_images_exist: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_map_dir: Option<PathBuf>,
    /// Members naming [`HostFacts`] fields.
    #[serde(flatten)]
    pub facts: Map<String, Value>,
}

impl FactsFile {
    /// Read a facts file; errors name the file and line.
    pub fn load(path: &Path) -> Result<FactsFile, ReplayError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Io { path: name.clone(), source })?;
        Self::parse(&name, &text)
    }

    /// [`FactsFile::load`] for text already read.
    pub fn parse(name: &str, text: &str) -> Result<FactsFile, ReplayError> {
        let f: FactsFile = serde_json::from_str(text).map_err(|e| json_error(name, &e))?;
        let known = serde_json::to_value(HostFacts::default()).unwrap_or_default();
        let known = known.as_object().cloned().unwrap_or_default();
        for k in f.facts.keys() {
            // Fields skipped when empty are not in `known`.
            if !known.contains_key(k)
                && !matches!(k.as_str(), "cpu_map_error" | "phys_addr_bits" | "host_cpu_model" | "cpu_pvr")
            {
                return Err(ReplayError::Invalid { path: name.into(), what: format!("unknown host fact '{k}'") });
            }
            if k == "cpu_map" {
                return Err(ReplayError::Invalid {
                    path: name.into(),
                    what: "give libvirt's cpu_map as a directory (cpu_map_dir), not inline".into(),
                });
            }
        }
        Ok(f)
    }

    /// `host` with these facts applied; `name` (the facts file) is used in errors.
    pub fn apply(&self, name: &str, host: &HostFacts) -> Result<HostFacts, ReplayError> {
        let invalid = |what: String| ReplayError::Invalid { path: name.into(), what };
        let mut base = serde_json::to_value(host).map_err(|e| invalid(e.to_string()))?;
        // The parsed map is carried over as is (it is not JSON text).
        let cpu_map = host.cpu_map.clone();
        if let Some(obj) = base.as_object_mut() {
            obj.remove("cpu_map");
            for (k, v) in &self.facts {
                merge(obj.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        let mut out: HostFacts = serde_json::from_value(base).map_err(|e| invalid(format!("a host fact: {e}")))?;
        out.cpu_map = cpu_map;
        if let Some(dirs) = &self.firmware_dirs {
            let mut descriptors = crate::firmware::read_descriptors(dirs).map_err(|e| invalid(e.to_string()))?;
            if self.firmware_images_exist {
                descriptors.iter_mut().for_each(mark_present);
            }
            out.firmware = descriptors;
        }
        if let Some(dir) = &self.cpu_map_dir {
            match crate::cpu::host::read_cpu_map_from(dir) {
                Ok(m) => {
                    out.cpu_map = Some(m);
                    out.cpu_map_error = None;
                }
                Err(e) => return Err(invalid(format!("cpu_map_dir: {e}"))),
            }
        }
        Ok(out)
    }
}

/// Take every image `d` names as present.
fn mark_present(d: &mut crate::firmware::FirmwareDescriptor) {
    use crate::firmware::FirmwareMapping;
    match &mut d.mapping {
        FirmwareMapping::Flash { executable, nvram_template, .. } => {
            executable.exists = true;
            if let Some(n) = nvram_template {
                n.exists = true;
            }
        }
        FirmwareMapping::Memory { exists, .. } | FirmwareMapping::Kernel { exists, .. } => *exists = true,
    }
}

/// Objects merge member by member; anything else replaces.
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// The document for `query` from a recording: the same resolution and derivation as a live
/// query, with the recording in place of the probe. The emulator is the recorded one
/// (`--emulatorbin` may name it differently: the document's `<path>` is then that name, as a
/// host with the binary there would print); the target release is the query's, else the
/// recording host's libvirt, else the newest known.
pub fn domain_capabilities(
    rec: &Recording,
    query: &Query,
    cpu_options: crate::cpu::CpuOptions,
) -> Result<DomainCapabilities, DriverError> {
    let asked = query.libvirt.as_deref().or(rec.libvirt.as_deref());
    let detected = crate::libvirt::choose(asked, Path::new("/"))
        .map_err(|e| DriverError::invalid("libvirt", asked.unwrap_or_default(), e.to_string()))?;
    let target = crate::libvirt::Target::new(detected.version);
    let recorded = PathBuf::from(&rec.data.binary);
    let find = |n: &str| (recorded.file_name().and_then(|f| f.to_str()) == Some(n)).then(|| recorded.clone());
    let (r, data) = crate::resolve::resolve_query_for(query, target, &rec.data.host.host_arch, find, |b| {
        let mut d = rec.data.clone();
        d.binary = b.display().to_string();
        Ok(d)
    })?;
    if let Some(t) = data.run(r.accel) {
        for req in unanswered(r.accel, t) {
            tracing::info!(
                accel = r.accel.virt_type(),
                command = %req.execute,
                arguments = %req.arguments.as_ref().map(|a| a.to_string()).unwrap_or_default(),
                "the recording has no answer to this command: treated as not answered"
            );
        }
    }
    let options = crate::cpu::CpuOptions { target, ..cpu_options };
    crate::derive::domain_capabilities_with(&data, &r, options)
}

#[cfg(test)]
mod tests;

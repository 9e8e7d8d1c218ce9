//! capsd-fleet: many hosts' domain capabilities in etcd, and the questions a scheduler asks
//! of them ("which hosts can run this domain?", "what does this pool promise for live
//! migration?").
//!
//! # Data model in etcd
//!
//! Everything lives under a prefix `P` (default `/capsd`):
//!
//! | key | value | lease |
//! | --- | --- | --- |
//! | `P/hosts/ID` | the host record ([`HostRecord`], JSON) | the host's |
//! | `P/claims/ID` | which agent holds the host id (a token, see [`publish::owner_token`]) | the host's |
//! | `P/refs/QUERY/ID` | content hash (hex SHA-256) of the document host ID publishes for `QUERY` | the host's |
//! | `P/docs/HASH` | a `<domainCapabilities>` document (libvirt's XML) | none |
//!
//! `QUERY` is `VIRTTYPE/ARCH/MACHINE` ([`QueryKey`]), `MACHINE` being the alias asked
//! (`q35`, `pc`, `virt`...) or `@default` for the arch's default machine. References are
//! keyed query first, so the hosts answering one query are one key range that etcd reads
//! alone (`check` and `baseline` at 100,000 hosts read that range, the host ids, and the few
//! distinct documents). A document is stored once under its hash however many hosts refer
//! to it. A host's keys all hang on one lease that its agent keeps alive: a dead host
//! vanishes after the TTL, a clean stop revokes the lease at once.
//!
//! Writes keep one invariant: **a reference is written in the same transaction as the
//! document it names, or after it** (a nested transaction puts the document when absent).
//! Documents have no lease (they are shared), so they outlive their last host; [`gc`]
//! deletes unreferenced ones in a transaction that is refused when any reference changed
//! since they were read, so a document a host has just started to refer to is never deleted.
//!
//! # Reading
//!
//! Nothing read is trusted ([`store`]): a document is used only when its SHA-256 is its key;
//! a damaged record, reference or document is reported against its host (or as junk) and
//! left out, and the rest of the fleet is answered. A host that publishes no usable document
//! for the query a domain needs is `unknown`, never "no". etcd is reached through its gRPC
//! API ([`etcd`]), over TLS with client certificates and users where configured; the
//! per-host roles of [`grant`] let a host write only its own keys.

pub mod analysis;
pub mod etcd;
pub mod grant;
pub mod publish;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use analysis::{HostVerdict, Selection};
pub use etcd::{Client, EtcdConfig, EtcdError};
pub use publish::{Content, PublishConfig, Publisher};
pub use store::{connect, gc, Docs, Scope, Snapshot};

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// etcd refused or could not be reached.
    #[error("etcd{}: {error}", if endpoints.is_empty() { String::new() } else { format!(" ({endpoints})") })]
    Etcd { endpoints: String, error: etcd::EtcdError },
    /// Another agent holds this host id (its lease is alive).
    #[error("host id '{id}' is held by another agent (lease {lease:x}, alive; its claim: {owner}); stop that agent, pick another --host-id, or start with --take-over")]
    HostIdTaken { id: String, lease: i64, owner: String },
    /// A value given by the user is not acceptable.
    #[error("{what} '{value}': {reason}")]
    Invalid { what: &'static str, value: String, reason: String },
    /// What is stored under a key does not parse.
    #[error("etcd key {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A host asked for by name is not in the store.
    #[error("host '{0}' is not in the store (see `capsd fleet hosts`)")]
    NoSuchHost(String),
    /// A host publishes no document for the query.
    #[error("host '{host}' publishes no document for {query}")]
    NoDocument { host: String, query: String },
    /// The analysis itself refused (bad domain, mismatching documents...).
    #[error(transparent)]
    Analysis(#[from] capsd_analysis::AnalysisError),
}

impl FleetError {
    pub(crate) fn etcd(endpoints: &str, source: etcd::EtcdError) -> Self {
        FleetError::Etcd { endpoints: endpoints.to_owned(), error: source }
    }
}

/// Where a fleet lives: the key prefix, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// `prefix` must start with `/`, and has no trailing `/` (one is removed).
    pub fn new(prefix: &str) -> Result<Layout, FleetError> {
        let p = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || p.contains("//") || p.chars().any(|c| c.is_control() || c == ' ') {
            return Err(FleetError::Invalid {
                what: "etcd prefix",
                value: prefix.to_owned(),
                reason: "must start with '/' and have no spaces, control characters or empty segments".into(),
            });
        }
        Ok(Layout { prefix: p.to_owned() })
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `P/` (everything of this fleet).
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
    /// `P/hosts/` (every host record).
    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }
    /// `P/hosts/ID`.
    pub fn host(&self, id: &str) -> String {
        format!("{}/hosts/{id}", self.prefix)
    }
    /// `P/claims/ID`: which agent holds the host id (on its lease).
    pub fn claim(&self, id: &str) -> String {
        format!("{}/claims/{id}", self.prefix)
    }
    /// `P/claims/`.
    pub fn claims(&self) -> String {
        format!("{}/claims/", self.prefix)
    }
    /// `P/refs/` (every reference).
    pub fn refs(&self) -> String {
        format!("{}/refs/", self.prefix)
    }
    /// The references of one query's hosts: `P/refs/VIRTTYPE/ARCH/MACHINE/`, or of every
    /// machine of an arch (`P/refs/VIRTTYPE/ARCH/`), or every arch (`P/refs/VIRTTYPE/`).
    pub fn refs_of(&self, virt_type: &str, arch: Option<&str>, machine: Option<&str>) -> String {
        match (arch, machine) {
            (Some(a), Some(m)) => format!("{}/refs/{virt_type}/{a}/{m}/", self.prefix),
            (Some(a), None) => format!("{}/refs/{virt_type}/{a}/", self.prefix),
            (None, _) => format!("{}/refs/{virt_type}/", self.prefix),
        }
    }
    /// `P/refs/VIRTTYPE/ARCH/MACHINE/ID`: the hash of the document host ID publishes for the query.
    pub fn host_doc(&self, id: &str, q: &QueryKey) -> String {
        format!("{}/refs/{q}/{id}", self.prefix)
    }
    /// `P/docs/` (every document).
    pub fn docs(&self) -> String {
        format!("{}/docs/", self.prefix)
    }
    /// `P/docs/HASH`.
    pub fn doc(&self, hash: &str) -> String {
        format!("{}/docs/{hash}", self.prefix)
    }
}

/// What capsd publishes: each of these arches (the host's own first) ...
pub const ARCHES: [&str; 8] = ["x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x", "riscv64"];
/// ... each of these virt types ...
pub const VIRT_TYPES: [&str; 2] = ["kvm", "qemu"];
/// ... the default machine and each of these aliases (what virt-install and virt-manager pick).
pub const MACHINES: [&str; 5] = ["pc", "q35", "virt", "pseries", "s390-ccw-virtio"];

/// Every query an agent may publish (the per-host grants of `capsd fleet grant-host` name
/// exactly these keys).
pub fn published_queries() -> Vec<QueryKey> {
    let mut v = Vec::new();
    for arch in ARCHES {
        for vt in VIRT_TYPES {
            for m in std::iter::once(None).chain(MACHINES.into_iter().map(Some)) {
                v.push(QueryKey { virt_type: vt.to_owned(), arch: arch.to_owned(), machine: m.map(str::to_owned) });
            }
        }
    }
    v
}

/// Host ids: letters, digits, `.`, `_`, `-`, `:` (a hostname or a machine id), 1-253 bytes.
pub fn validate_host_id(id: &str) -> Result<(), FleetError> {
    let ok = !id.is_empty()
        && id.len() <= 253
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::Invalid {
            what: "host id",
            value: id.to_owned(),
            reason: "use 1-253 of the characters A-Z a-z 0-9 . _ - : (a hostname or machine id)".into(),
        })
    }
}

/// The query a published document answers: virt type, arch, machine alias or default.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueryKey {
    pub virt_type: String,
    pub arch: String,
    /// The machine asked for (`None`: the arch's default).
    pub machine: Option<String>,
}

/// How the default machine is spelled in keys.
pub const DEFAULT_MACHINE: &str = "@default";

impl QueryKey {
    pub fn new(virt_type: &str, arch: &str, machine: Option<&str>) -> Result<QueryKey, FleetError> {
        for (what, v) in [("virt type", virt_type), ("arch", arch)] {
            check_segment(what, v)?;
        }
        if let Some(m) = machine {
            check_segment("machine", m)?;
        }
        Ok(QueryKey { virt_type: virt_type.to_owned(), arch: arch.to_owned(), machine: machine.map(str::to_owned) })
    }
    /// Read `VIRTTYPE/ARCH/MACHINE` (`@default` for no machine).
    pub fn parse(s: &str) -> Result<QueryKey, FleetError> {
        let parts: Vec<&str> = s.split('/').collect();
        let [vt, arch, m] = parts[..] else {
            return Err(FleetError::Invalid {
                what: "query",
                value: s.to_owned(),
                reason: format!("expected VIRTTYPE/ARCH/MACHINE (machine '{DEFAULT_MACHINE}' for the default)"),
            });
        };
        QueryKey::new(vt, arch, (m != DEFAULT_MACHINE).then_some(m))
    }
}

fn check_segment(what: &'static str, v: &str) -> Result<(), FleetError> {
    if v.is_empty() || v.contains('/') || v.starts_with('@') || v.chars().any(|c| c.is_control() || c == ' ') {
        return Err(FleetError::Invalid {
            what,
            value: v.to_owned(),
            reason: "must be non-empty, without '/', spaces or a leading '@'".into(),
        });
    }
    Ok(())
}

impl fmt::Display for QueryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.virt_type, self.arch, self.machine.as_deref().unwrap_or(DEFAULT_MACHINE))
    }
}

/// What a host says about itself (`P/hosts/ID`, JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub id: String,
    pub capsd_version: String,
    /// The driver whose documents are published (`qemu`, or `test`).
    pub driver: String,
    /// The libvirt release the documents are for, when the driver says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_version: Option<String>,
    /// Emulator binaries named by the documents, with the version each prints.
    #[serde(default)]
    pub emulators: Vec<Emulator>,
    pub cpu: Cpu,
    /// When the published content last changed, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// When the agent last noticed a change of the host's inputs (QEMU binaries, modules,
    /// firmware, kernel, CPU microcode, /dev/kvm), milliseconds since the Unix epoch; absent
    /// until it noticed one. The documents were derived again then, and may be unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs_changed_ms: Option<u64>,
    /// How many queries the host publishes documents for.
    pub documents: usize,
}

/// An emulator binary and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Emulator {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The host CPU.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// libvirt's arch name (`x86_64`, `aarch64`...).
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl HostRecord {
    /// The record as flat `name=value` pairs, for selectors: `id`, `driver`, `capsd_version`,
    /// `libvirt_version`, `arch`, `cpu.vendor`, `cpu.model`, `emulator` (one pair per binary's
    /// file name), `qemu_version` (one per version).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("id", self.id.clone()),
            ("driver", self.driver.clone()),
            ("capsd_version", self.capsd_version.clone()),
            ("arch", self.cpu.arch.clone()),
        ];
        if let Some(l) = &self.libvirt_version {
            v.push(("libvirt_version", l.clone()));
        }
        if let Some(x) = &self.cpu.vendor {
            v.push(("cpu.vendor", x.clone()));
        }
        if let Some(x) = &self.cpu.model {
            v.push(("cpu.model", x.clone()));
        }
        for e in &self.emulators {
            let name = e.path.rsplit('/').next().unwrap_or(&e.path).to_owned();
            v.push(("emulator", name));
            if let Some(ver) = &e.version {
                v.push(("qemu_version", ver.clone()));
            }
        }
        v
    }
}

/// Content hash of a document: lowercase hex SHA-256 of its bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_round_trip_and_refuse_bad_segments() {
        let q = QueryKey::parse("kvm/x86_64/q35").unwrap();
        assert_eq!(q.machine.as_deref(), Some("q35"));
        assert_eq!(q.to_string(), "kvm/x86_64/q35");
        let d = QueryKey::parse("qemu/aarch64/@default").unwrap();
        assert_eq!(d.machine, None);
        assert_eq!(d.to_string(), "qemu/aarch64/@default");
        for bad in ["kvm/x86_64", "kvm//q35", "kvm/x86 64/q35", "kvm/x86_64/q35/x", "@kvm/x86_64/q35"] {
            let e = QueryKey::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) || e.contains("x86 64") || e.contains("@kvm") || e.contains("''"), "{bad}: {e}");
        }
    }

    #[test]
    fn host_ids_and_prefixes_are_checked() {
        validate_host_id("node-01.example:a").unwrap();
        for bad in ["", "a/b", "a b", "ü"] {
            assert!(validate_host_id(bad).unwrap_err().to_string().contains("host id"), "{bad}");
        }
        assert_eq!(
            Layout::new("/capsd/").unwrap().host_doc("h", &QueryKey::parse("kvm/x86_64/pc").unwrap()),
            "/capsd/refs/kvm/x86_64/pc/h"
        );
        assert!(Layout::new("capsd").is_err());
        assert!(Layout::new("/a//b").is_err());
    }

    #[test]
    fn content_hash_is_sha256() {
        assert_eq!(content_hash(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

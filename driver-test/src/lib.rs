//! driver-test: a [`DomainCapsDriver`] that serves golden domain capabilities documents
//! instead of probing a hypervisor. It lets the CLI, the agent, plugins and the conformance
//! suite be exercised without QEMU, Xen or LXC, and lets anyone serve libvirt's own test data
//! (`capsd domcapabilities --driver test --fixtures DIR`).
//!
//! # Fixtures
//! A fixture is one `<domainCapabilities>` document in a `.xml` file (libvirt's format) or a
//! `.json` file (capsd's JSON form). [`TestDriver::from_dir`] reads every such file of a
//! directory (or one file, when given a file); other files are ignored. A fixture that does
//! not parse makes the load fail with an error naming the file; nothing panics.
//! [`TestDriver::builtin`] serves the set embedded from `driver-test/fixtures/` (libvirt 9.0 +
//! QEMU 7.2 on x86_64, aarch64, ppc64, s390x and riscv64; virt types `kvm` and `qemu`;
//! machines `pc`, `q35`, `virt`, `pseries`, `s390-ccw-virtio`).
//!
//! # Which fixture answers a query
//! The query is matched against each document's own `<path>`, `<arch>`, `<domain>` and
//! `<machine>`, in this order, with the same defaults as the other drivers:
//!
//! 1. **emulator** (`--emulatorbin`): when given, only documents whose `<path>` is exactly
//!    that path.
//! 2. **arch**: when given, only documents with that `<arch>`. When not given: if an emulator
//!    was given and its documents all have one arch, that arch; otherwise the host's arch
//!    (Rust's target arch in libvirt's spelling: `x86_64`, `aarch64`, `ppc64`/`ppc64le`,
//!    `s390x`, `riscv64`, `i686`, `armv7l`).
//! 3. **virt type**: when given, only documents with that `<domain>`. When not given: `kvm`
//!    if a remaining document has it, else `qemu`, else the only virt type left.
//! 4. **machine**: when given, a document whose `<machine>` is exactly that name; failing
//!    that, the documents whose machine is a versioned form of it as an alias, newest
//!    version first (`q35` picks the newest `pc-q35-*`; rule in [`machine`]). When not
//!    given: the documents marked *default*: those whose file name has no machine part
//!    ([`fixture::is_default_name`]: `x86_64-kvm-default.xml` and `qemu_7.2.0.x86_64.xml`
//!    are defaults, `x86_64-kvm-q35.xml` is not). When none is marked default and all
//!    remaining documents have the same machine, they are used.
//! 5. **ties**: when several documents are still left (libvirt's test data has, e.g., a
//!    plain, a `-expanded` and a `-supported` variant of one query), the one with the
//!    lexicographically smallest file stem answers, so `qemu_11.1.0-q35.x86_64.xml` wins over
//!    `qemu_11.1.0-q35.x86_64-expanded.xml`. The others stay reachable by loading the single
//!    file (`--fixtures FILE`); [`TestDriver::shadowed`] lists them.
//!
//! A query no document answers is [`DriverError::NotSupported`], whose message lists what
//! the fixtures offer (`virttype/arch/machine` per file).

pub mod fixture;
pub mod machine;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

pub use fixture::{BadFixture, Fixture, Form};

const NAME: &str = "test";

/// Where a driver's fixtures came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The set embedded in the crate.
    Builtin,
    /// A directory, or a single file, given by the user.
    Path(PathBuf),
    /// Documents handed over in memory ([`TestDriver::from_documents`]).
    Memory,
}

/// The test driver: serves the fixture that matches each query.
#[derive(Debug, Clone)]
pub struct TestDriver {
    origin: Origin,
    fixtures: Vec<Fixture>,
    /// Built-in fixtures that failed to parse (always empty for user directories, where a bad
    /// fixture fails the load instead). Non-empty makes the driver unavailable.
    broken: Vec<BadFixture>,
}

impl Default for TestDriver {
    fn default() -> Self {
        Self::builtin()
    }
}

impl TestDriver {
    /// The built-in fixture set (same as [`TestDriver::builtin`]).
    pub fn new() -> Self {
        Self::builtin()
    }

    /// The built-in fixture set. It cannot fail: a built-in document that does not parse
    /// makes the driver report itself unavailable, naming the file.
    pub fn builtin() -> Self {
        let mut fixtures = Vec::new();
        let mut broken = Vec::new();
        for (name, text) in fixture::BUILTIN {
            match fixture::parse(name, PathBuf::from(format!("builtin:{name}")), text) {
                Ok(f) => fixtures.push(f),
                Err(b) => {
                    tracing::warn!(fixture = %b.source.display(), reason = %b.reason, "built-in fixture does not parse");
                    broken.push(b)
                }
            }
        }
        TestDriver { origin: Origin::Builtin, fixtures, broken }
    }

    /// Every `.xml`/`.json` document of directory `path`, or the one document `path` when it
    /// is a file. Fails when the path cannot be read, holds no fixture, or any fixture is bad
    /// (the error names every bad file and why).
    pub fn from_dir(path: &Path) -> Result<Self, DriverError> {
        let meta = std::fs::metadata(path).map_err(|e| DriverError::io(path, e))?;
        let (fixtures, bad) = if meta.is_dir() {
            fixture::read_dir(path).map_err(|e| DriverError::io(path, e))?
        } else {
            match fixture::read_file(path) {
                Ok(f) => (vec![f], Vec::new()),
                Err(b) => (Vec::new(), vec![b]),
            }
        };
        if let [one] = bad.as_slice() {
            return Err(DriverError::invalid("fixture", one.source.display().to_string(), one.reason.clone()));
        }
        if !bad.is_empty() {
            let list: Vec<String> = bad.iter().map(ToString::to_string).collect();
            return Err(DriverError::invalid(
                "fixtures",
                path.display().to_string(),
                format!("{} bad fixtures: {}", bad.len(), list.join("; ")),
            ));
        }
        if fixtures.is_empty() {
            return Err(DriverError::invalid(
                "fixtures",
                path.display().to_string(),
                "holds no .xml or .json domain capabilities document",
            ));
        }
        Ok(TestDriver { origin: Origin::Path(path.to_owned()), fixtures, broken: Vec::new() })
    }

    /// Build a driver from documents held in memory: `(file name, text)` pairs, the file name
    /// choosing the form and the default marking as for files. Fails like [`Self::from_dir`].
    pub fn from_documents<'a>(docs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, DriverError> {
        let mut fixtures = Vec::new();
        let mut bad = Vec::new();
        for (name, text) in docs {
            match fixture::parse(name, PathBuf::from(name), text) {
                Ok(f) => fixtures.push(f),
                Err(b) => bad.push(b.to_string()),
            }
        }
        if !bad.is_empty() {
            return Err(DriverError::invalid("fixture", bad.join("; "), "bad fixture"));
        }
        if fixtures.is_empty() {
            return Err(DriverError::invalid("fixtures", "(none)", "no document given"));
        }
        Ok(TestDriver { origin: Origin::Memory, fixtures, broken: Vec::new() })
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The loaded fixtures, in file name order.
    pub fn fixtures(&self) -> &[Fixture] {
        &self.fixtures
    }

    /// Fixtures no query can select from this driver because another fixture with the same
    /// `<path>`, `<domain>`, `<arch>` and `<machine>` wins the tie-break, each with the
    /// fixture that wins.
    pub fn shadowed(&self) -> Vec<(&Fixture, &Fixture)> {
        let mut out = Vec::new();
        for f in &self.fixtures {
            let winner =
                self.fixtures.iter().filter(|g| same_identity(f, g)).min_by(|a, b| tie_order(a, b)).unwrap_or(f);
            if !std::ptr::eq(winner, f) {
                out.push((f, winner));
            }
        }
        out
    }

    /// The fixture that answers `query`, by the rules in the crate docs.
    pub fn resolve(&self, query: &Query) -> Result<&Fixture, DriverError> {
        if let Some(b) = self.broken.first() {
            return Err(DriverError::Unavailable { driver: NAME.into(), reason: format!("bad built-in fixture {b}") });
        }
        let mut cands: Vec<&Fixture> = self.fixtures.iter().collect();

        if let Some(emu) = &query.emulator {
            let want = emu.to_string_lossy();
            cands.retain(|f| f.caps.path.as_deref() == Some(want.as_ref()));
            if cands.is_empty() {
                return Err(self.not_supported(format!("emulator '{want}'"), &self.fixtures.iter().collect::<Vec<_>>()));
            }
        }

        let arch = match &query.arch {
            Some(a) => a.clone(),
            None => {
                let archs: BTreeSet<&str> = cands.iter().map(|f| f.caps.arch.as_str()).collect();
                match (query.emulator.is_some(), archs.len()) {
                    (true, 1) => archs.into_iter().next().unwrap_or_default().to_owned(),
                    _ => host_arch().to_owned(),
                }
            }
        };
        let before = cands.clone();
        cands.retain(|f| f.caps.arch == arch);
        if cands.is_empty() {
            let how = if query.arch.is_some() { "" } else { " (the host's arch; no --arch given)" };
            return Err(self.not_supported(format!("arch '{arch}'{how}"), &before));
        }

        let virt = match &query.virt_type {
            Some(v) => v.clone(),
            None => {
                let types: BTreeSet<&str> = cands.iter().map(|f| f.caps.domain.as_str()).collect();
                if types.contains("kvm") {
                    "kvm".to_owned()
                } else if types.contains("qemu") || types.len() != 1 {
                    "qemu".to_owned()
                } else {
                    types.into_iter().next().unwrap_or_default().to_owned()
                }
            }
        };
        let before = cands.clone();
        cands.retain(|f| f.caps.domain == virt);
        if cands.is_empty() {
            return Err(self.not_supported(format!("virt type '{virt}' on arch '{arch}'"), &before));
        }

        let before = cands.clone();
        match &query.machine {
            Some(m) => {
                let exact: Vec<&Fixture> =
                    cands.iter().copied().filter(|f| f.caps.machine.as_deref() == Some(m.as_str())).collect();
                if exact.is_empty() {
                    let mut best: Option<machine::MachineVersion> = None;
                    let mut found = Vec::new();
                    for f in &cands {
                        if let Some(machine::MachineMatch::Alias(v)) =
                            f.caps.machine.as_deref().and_then(|c| machine::matches(m, c))
                        {
                            match &best {
                                Some(b) if *b > v => {}
                                Some(b) if *b == v => found.push(*f),
                                _ => {
                                    best = Some(v);
                                    found = vec![*f];
                                }
                            }
                        }
                    }
                    cands = found;
                } else {
                    cands = exact;
                }
                if cands.is_empty() {
                    return Err(self.not_supported(format!("machine '{m}' for {virt}/{arch}"), &before));
                }
            }
            None => {
                let defaults: Vec<&Fixture> = cands.iter().copied().filter(|f| f.is_default).collect();
                if !defaults.is_empty() {
                    cands = defaults;
                } else {
                    let machines: BTreeSet<Option<&str>> = cands.iter().map(|f| f.caps.machine.as_deref()).collect();
                    if machines.len() != 1 {
                        return Err(self.not_supported(
                            format!(
                                "a default machine for {virt}/{arch} (no fixture is marked default; pass --machine)"
                            ),
                            &before,
                        ));
                    }
                }
            }
        }

        cands.sort_by(|a, b| tie_order(a, b));
        let chosen = cands[0];
        if cands.len() > 1 {
            let others: Vec<&str> = cands[1..].iter().map(|f| f.name.as_str()).collect();
            tracing::debug!(chosen = %chosen.name, ?others, "several fixtures answer the query; smallest file stem wins");
        }
        Ok(chosen)
    }

    fn not_supported(&self, what: String, offered: &[&Fixture]) -> DriverError {
        let from = match &self.origin {
            Origin::Builtin => "the built-in fixtures".to_owned(),
            Origin::Path(p) => p.display().to_string(),
            Origin::Memory => "the given documents".to_owned(),
        };
        let mut list: Vec<String> = offered.iter().map(|f| format!("{} ({})", f.key(), f.name)).collect();
        list.dedup();
        DriverError::not_supported(NAME, format!("{what}; {from} offer: {}", list.join(", ")))
    }
}

fn same_identity(a: &Fixture, b: &Fixture) -> bool {
    a.caps.path == b.caps.path
        && a.caps.domain == b.caps.domain
        && a.caps.arch == b.caps.arch
        && a.caps.machine == b.caps.machine
}

fn tie_order(a: &Fixture, b: &Fixture) -> std::cmp::Ordering {
    a.stem().cmp(b.stem()).then_with(|| a.name.cmp(&b.name))
}

/// The host's architecture in libvirt's spelling.
pub fn host_arch() -> &'static str {
    capsd_core::arch::of_this_build()
}

impl DomainCapsDriver for TestDriver {
    fn name(&self) -> &str {
        NAME
    }

    fn availability(&self) -> Availability {
        match self.broken.first() {
            Some(b) => Availability::Unavailable { reason: format!("bad built-in fixture {b}") },
            None => Availability::Available,
        }
    }

    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        let f = self.resolve(query)?;
        tracing::debug!(fixture = %f.source.display(), %query, "serving fixture");
        Ok(f.caps.clone())
    }
}

//! driver-qemu: libvirt's QEMU domain capabilities from real probing.
//!
//! Flow of one query ([`QemuDriver`]): [`resolve::pre_probe`] validates the query and picks
//! the emulator; [`probe::probe`] starts it once per accelerator (KVM and TCG in parallel)
//! and records the QMP answers of every [`plan`] stage plus the [`host::HostFacts`] into a
//! [`probe_data::ProbeData`] (through [`cache::ProbeCache`] when configured);
//! [`resolve::resolve`] applies libvirt's defaults (arch, virt type, default machine,
//! aliases); [`derive::domain_capabilities`] turns the data into the document. Derivation
//! never touches QEMU or the host, so recorded probes replay exactly (`tests/replay.rs`).
//!
//! Architecture invariant: only `probe`, `process`, `spawn`, `binary`, `qmp`, `host`, `firmware`,
//! `cpu::host` and `cache` touch the system ([`replay`] reads only the files it is given);
//! everything downstream of [`probe_data::ProbeData`] is pure.

pub mod binary;
pub mod cache;
pub mod cpu;
pub mod derive;
pub mod firmware;
pub mod host;
pub mod libvirt;
pub mod plan;
pub mod probe;
pub mod probe_data;
pub mod process;
pub mod qmp;
pub mod replay;
pub mod reply;
pub mod resolve;
pub mod spawn;

use std::path::{Path, PathBuf};

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

use crate::cache::ProbeCache;
use crate::probe::ProbeOptions;
use crate::probe_data::ProbeData;
use crate::process::ProbeUser;

const DRIVER: &str = "qemu";

static BEFORE_PROBES: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Run `hook` on the calling thread each time a [`QemuDriver`] is about to probe (before
/// the probe starts any thread or process), never for an answer from the cache: the CLI
/// installs its signal handling there, so a warm answer starts no thread. The first hook
/// set stays.
pub fn before_probes(hook: fn()) {
    let _ = BEFORE_PROBES.set(hook);
}

/// The qemu driver.
#[derive(Debug, Default)]
pub struct QemuDriver {
    cache: Option<ProbeCache>,
    options: ProbeOptions,
    /// Overrides `PATH` for finding `qemu-system-*` (tests).
    search_path: Option<Vec<PathBuf>>,
    /// Output choices for `<cpu>` beyond the target release (the target is set per query).
    cpu_options: cpu::CpuOptions,
    /// Where the installed libvirt is looked for (default `/`).
    libvirt_root: Option<PathBuf>,
    /// Which found `qemu-system-*` files may be picked (all executables when `None`).
    accept: Option<fn(&Path) -> bool>,
    /// When set, every binary is opened once, checked through its descriptor and run from
    /// it ([`binary`]); else run by path.
    check: Option<binary::Check>,
}

impl QemuDriver {
    /// A driver that probes on every query, as [`process::choose_probe_user`] decides
    /// (`CAPSD_PROBE_USER`, libvirt's QEMU user, ...; an unknown name is reported at query
    /// time).
    pub fn new() -> Self {
        QemuDriver::default()
    }

    /// Keep probe results in `dir` (the agent's cache).
    pub fn with_cache_dir(mut self, dir: PathBuf) -> Self {
        self.cache = Some(ProbeCache::new(dir));
        self
    }

    /// Use an already configured cache.
    pub fn with_cache(mut self, cache: ProbeCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Probe options (timeouts, probe user, no-KVM).
    pub fn with_probe_options(mut self, options: ProbeOptions) -> Self {
        self.options = options;
        self
    }

    /// Run probe processes as this user (when running as root). The probe cache keys its
    /// entries by the chosen user ([`cache::KeySources::probe_user`]): with a cache, set
    /// the user there too ([`Self::with_cache`]).
    pub fn with_probe_user(mut self, user: ProbeUser) -> Self {
        self.options.process.user = Some(user);
        self
    }

    /// Look emulators up in these directories instead of `PATH`.
    pub fn with_search_path(mut self, dirs: Vec<PathBuf>) -> Self {
        self.search_path = Some(dirs);
        self
    }

    /// Pick (and list as installed) only the emulators `accept` approves of, e.g. the agent's
    /// rule of root-owned binaries in root-owned directories.
    pub fn with_emulator_filter(mut self, accept: fn(&Path) -> bool) -> Self {
        self.accept = Some(accept);
        self
    }

    /// Open every binary once, let `check` decide on its descriptor, and run (and key the
    /// probe cache by) that descriptor ([`binary`]): for callers that run binaries for
    /// others (the agent). A refusal is an invalid `emulatorbin`.
    pub fn with_binary_check(mut self, check: binary::Check) -> Self {
        self.check = Some(check);
        self
    }

    /// Output choices for `<cpu>`, e.g. newer libvirt's `<blockers>` after each unusable
    /// custom model (libvirt 9.0 prints none, so the default leaves them out).
    pub fn with_cpu_options(mut self, options: cpu::CpuOptions) -> Self {
        self.cpu_options = options;
        self
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        let found = match &self.search_path {
            Some(dirs) => dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p)),
            None => host::find_in_path(name),
        };
        found.filter(|p| self.accepts(p))
    }

    fn accepts(&self, p: &Path) -> bool {
        match self.accept {
            Some(f) => f(p),
            None => true,
        }
    }

    fn emulators(&self) -> Vec<PathBuf> {
        let dirs: Vec<PathBuf> = match &self.search_path {
            Some(d) => d.clone(),
            None => std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        };
        let mut out: Vec<PathBuf> = Vec::new();
        for d in dirs {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            let mut here: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("qemu-system-"))
                        && is_executable(p)
                        && self.accepts(p)
                })
                .collect();
            here.sort();
            out.extend(here);
        }
        // The same file is often reachable twice (`/bin` -> `/usr/bin`): keep the first.
        let mut seen = std::collections::HashSet::new();
        out.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
        out
    }

    /// Every `qemu-system-*` binary found (in search order).
    pub fn installed_emulators(&self) -> Vec<PathBuf> {
        self.emulators()
    }

    /// Probe `binary` now: the probe user is chosen here ([`process::choose_probe_user`]),
    /// not for an answer from the cache (whose key holds what the choice is made from), and
    /// the [`before_probes`] hook runs first.
    fn probe_now(&self, binary: &Path, mut opts: ProbeOptions) -> Result<ProbeData, DriverError> {
        if let Some(hook) = BEFORE_PROBES.get() {
            hook();
        }
        if opts.process.user.is_none() {
            opts.process.user = process::choose_probe_user().map_err(|e| {
                DriverError::invalid(
                    process::PROBE_USER_ENV,
                    std::env::var(process::PROBE_USER_ENV).unwrap_or_default(),
                    e.to_string(),
                )
            })?;
        }
        probe::probe(binary, &opts)
    }

    /// The probe data of `binary`: from the cache when configured and valid, else probed.
    pub fn probe_data(&self, binary: &Path) -> Result<ProbeData, DriverError> {
        let opts = self.options.clone();
        match &self.cache {
            Some(c) => c.get_or_probe(binary, || self.probe_now(binary, opts)).map(|(d, _)| d),
            None => self.probe_now(binary, opts),
        }
    }

    /// The probe data a query needs, and the cache key it is valid for (with a cache).
    ///
    /// A query that can only be answered with KVM (the default virt type or `kvm`) needs the
    /// KVM run alone when KVM is enabled there (the query then resolves to `kvm`) and
    /// derivation will not read the TCG run ([`cpu::kvm_query_reads_tcg_run`]). Such a query
    /// reads the KVM run alone from the cache; when it has to probe, it starts the KVM run
    /// alone and answers from it when that suffices, leaving the TCG run for a query that
    /// needs it (the record says so: [`cache::ProbeCache::get_or_probe_partial`]); when it
    /// does not suffice (KVM not enabled, no KVM run, x86 without libvirt's cpu_map) the TCG
    /// run is started and added. Every other query reads or probes every run, and so does
    /// every query with a binary check (the agent's): the agent's publisher asks every virt
    /// type right away and its requests come concurrently, so a binary probed twice (the KVM
    /// run, then both) would cost it more than the KVM-only first answer saves.
    fn probe_data_for(
        &self,
        binary: &Path,
        query: &Query,
    ) -> Result<(ProbeData, Option<cache::CacheKey>), DriverError> {
        use probe_data::Accel;
        let mut opts = self.options.clone();
        // With a check: the one descriptor that is checked, keyed and run.
        let opened = self.check.as_ref().map(|c| binary::open_checked(binary, c)).transpose()?;
        if let Some(o) = &opened {
            opts.process.exec = Some(o.fd.clone());
        }
        let kvm_query = matches!(
            resolve::parse_virt_type(query.virt_type.as_deref()),
            Ok(resolve::VirtTypeArg::Default | resolve::VirtTypeArg::Accel(Accel::Kvm))
        ) && !opts.no_kvm
            && opts.only.is_none();
        // Whether a probe for it starts the KVM run alone (not for the agent: see above).
        let lazy = kvm_query && self.check.is_none();
        let suffices = |d: &ProbeData| {
            d.runs.contains_key(&Accel::Kvm) && resolve::kvm_enabled(d) && !cpu::kvm_query_reads_tcg_run(d)
        };
        // The KVM run first; the TCG run only when the answer needs it. Returns the data and
        // the runs left unprobed.
        let kvm_first = || -> Result<(ProbeData, Vec<Accel>), DriverError> {
            let partial = |accel| self.probe_now(binary, ProbeOptions { only: Some(accel), ..opts.clone() });
            // Any failure of a run alone (QEMU refusing KVM for a foreign architecture, or TCG
            // as a KVM-only build does, or a timeout) is judged by both runs together, whose
            // rules (`probe::probe_runs`) tell a refusal from a failure.
            let both = |why: Option<DriverError>| {
                if let Some(e) = why {
                    tracing::info!(error = %e, "probing both runs together");
                }
                self.probe_now(binary, opts.clone()).map(|d| (d, Vec::new()))
            };
            let mut d = match partial(Accel::Kvm) {
                Ok(d) => d,
                Err(e) => return both(Some(e)),
            };
            if suffices(&d) {
                return Ok((d, vec![Accel::Tcg]));
            }
            // No KVM run (KVM not usable by the probe): both runs as usual.
            if !d.runs.contains_key(&Accel::Kvm) {
                return both(None);
            }
            match partial(Accel::Tcg) {
                Ok(tcg) => d.runs.extend(tcg.runs),
                Err(e) => return both(Some(e)),
            }
            Ok((d, Vec::new()))
        };
        let Some(cache) = &self.cache else {
            return if lazy {
                kvm_first().map(|(d, _)| (d, None))
            } else {
                self.probe_now(binary, opts.clone()).map(|d| (d, None))
            };
        };
        let pinned = opened.as_ref().map(|o| &o.stat);
        if kvm_query {
            let kvm = [Accel::Kvm];
            let (d, _, key) = if lazy {
                cache.get_or_probe_partial(binary, pinned, cache::Runs::Only(&kvm), kvm_first)?
            } else {
                cache.get_or_probe_keyed(binary, pinned, cache::Runs::Only(&kvm), || {
                    self.probe_now(binary, opts.clone())
                })?
            };
            // Every run is there when there are several, or when the entry has no KVM run.
            let complete = d.runs.len() > 1 || !d.runs.contains_key(&Accel::Kvm);
            if complete || suffices(&d) {
                return Ok((d, Some(key)));
            }
        }
        cache
            .get_or_probe_keyed(binary, pinned, cache::Runs::All, || self.probe_now(binary, opts.clone()))
            .map(|(d, _, key)| (d, Some(key)))
    }

    /// The libvirt release, the first phase of resolution and the description of the query
    /// an answer is kept under ([`cache::ProbeCache::answer`]): everything besides the probe
    /// record that the document depends on.
    fn answer_query(
        &self,
        query: &Query,
        form: &str,
    ) -> Result<(libvirt::Target, resolve::PreProbe, String), DriverError> {
        let target = libvirt::Target::new(self.target(query)?.version);
        let host_arch = host::host_arch();
        let pre = resolve::pre_probe(query, target, &host_arch, |n| self.find(n))?;
        let options = cpu::CpuOptions { target, ..self.cpu_options };
        let id = format!(
            "emulator={:?} arch={:?} host_arch={host_arch:?} machine={:?} virttype={:?} target={:?} options={options:?} form={form:?} driver={}",
            pre.emulator,
            pre.arch,
            query.machine,
            query.virt_type,
            target,
            env!("CARGO_PKG_VERSION"),
        );
        Ok((target, pre, id))
    }
}

impl QemuDriver {
    /// Look for the installed libvirt under this directory instead of `/` (tests).
    pub fn with_libvirt_root(mut self, root: PathBuf) -> Self {
        self.libvirt_root = Some(root);
        self
    }

    fn root(&self) -> PathBuf {
        self.libvirt_root.clone().unwrap_or_else(|| PathBuf::from("/"))
    }

    /// The libvirt release a query's document is for: its `libvirt` when given, else the
    /// installed libvirt's, else the newest known ([`libvirt::choose`]).
    pub fn target(&self, query: &Query) -> Result<libvirt::Detected, DriverError> {
        libvirt::choose(query.libvirt.as_deref(), &self.root())
            .map_err(|e| DriverError::invalid("libvirt", query.libvirt.clone().unwrap_or_default(), e.to_string()))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

impl DomainCapsDriver for QemuDriver {
    fn name(&self) -> &str {
        DRIVER
    }

    fn availability(&self) -> Availability {
        if self.emulators().is_empty() {
            Availability::Unavailable { reason: "no qemu-system-* binary found in PATH".into() }
        } else {
            Availability::Available
        }
    }

    #[tracing::instrument(skip_all, fields(driver = DRIVER, query = %query))]
    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        let target = libvirt::Target::new(self.target(query)?.version);
        let (r, data) = resolve::resolve_query_for(
            query,
            target,
            &host::host_arch(),
            |n| self.find(n),
            |b| self.probe_data_for(b, query).map(|(d, _)| d),
        )?;
        let options = cpu::CpuOptions { target, ..self.cpu_options };
        derive::domain_capabilities_with(&data, &r, options)
    }

    /// With a cache, the rendered answer is kept beside the probe record it was derived
    /// from ([`cache::ProbeCache::answer`]): a warm query checks the key, reads that one
    /// file and loads no probe, derives nothing.
    #[tracing::instrument(skip_all, fields(driver = DRIVER, query = %query, form))]
    fn domain_capabilities_rendered(
        &self,
        query: &Query,
        form: &str,
        render: &dyn Fn(&DomainCapabilities) -> Vec<u8>,
    ) -> Result<Vec<u8>, DriverError> {
        // A binary check (the agent's) opens the binary once and keys that descriptor: the
        // agent keeps its documents in memory and does not come here.
        let Some(cache) = self.cache.as_ref().filter(|_| self.check.is_none()) else {
            return Ok(render(&self.domain_capabilities(query)?));
        };
        let (target, pre, id) = self.answer_query(query, form)?;
        let binary = pre.emulator.clone();
        let key = cache.key_pinned(&binary, None)?;
        if let Some(body) = cache.answer(&binary, &key, &id) {
            return Ok(body);
        }
        let (data, key) = self.probe_data_for(&binary, query)?;
        let r = resolve::resolve(&pre, query.machine.as_deref(), &data)?;
        let options = cpu::CpuOptions { target, ..self.cpu_options };
        // A derivation that warned is not kept: its warning is printed with every answer.
        let (caps, warned) = cache::answer::warned_during(|| derive::domain_capabilities_with(&data, &r, options));
        let body = render(&caps?);
        match key {
            Some(key) if !warned => cache.store_answer(&binary, &key, &id, &body),
            _ => {}
        }
        Ok(body)
    }

    fn details(&self) -> Vec<(String, String)> {
        let d = libvirt::version::detect_or_newest(&self.root());
        libvirt::warn_once_if_beyond_table(&d);
        libvirt::describe_target(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn refuse_aarch64(p: &Path) -> bool {
        !p.ends_with("qemu-system-aarch64")
    }

    #[test]
    fn the_emulator_filter_decides_what_the_driver_picks_and_lists() {
        let tmp = tempfile::tempdir().unwrap();
        for name in ["qemu-system-x86_64", "qemu-system-aarch64"] {
            let p = tmp.path().join(name);
            std::fs::write(&p, "#!/bin/sh\nexit 1\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let all = QemuDriver::new().with_search_path(vec![tmp.path().to_owned()]);
        assert_eq!(all.installed_emulators().len(), 2);
        assert!(all.find("qemu-system-aarch64").is_some());
        let some = QemuDriver::new().with_search_path(vec![tmp.path().to_owned()]).with_emulator_filter(refuse_aarch64);
        assert_eq!(some.installed_emulators(), vec![tmp.path().join("qemu-system-x86_64")]);
        assert_eq!(some.find("qemu-system-aarch64"), None);
        assert_eq!(some.find("qemu-system-x86_64"), Some(tmp.path().join("qemu-system-x86_64")));
    }
}

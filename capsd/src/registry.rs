//! The set of drivers this process can ask: the ones embedded by cargo features, plus
//! out-of-tree plugins. Architecture invariant: nothing outside this module names a
//! concrete driver type.

use std::sync::Arc;

use capsd_core::DomainCapsDriver;

/// Names of every in-tree driver, whether built in or not.
pub const IN_TREE: [&str; 4] = ["qemu", "xen", "lxc", "test"];

/// Each in-tree driver, in [`IN_TREE`] order, and whether this build embeds it.
const EMBEDDED: [(&str, bool); 4] = [
    ("qemu", cfg!(feature = "qemu")),
    ("xen", cfg!(feature = "xen")),
    ("lxc", cfg!(feature = "lxc")),
    ("test", cfg!(feature = "test")),
];

/// The in-tree drivers this build embeds (its cargo features), in [`IN_TREE`] order.
pub fn built_in() -> Vec<&'static str> {
    EMBEDDED.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect()
}

/// Settings that reach driver constructors.
#[derive(Debug, Clone, Default)]
pub struct DriverOptions {
    /// `--fixtures DIR` for driver-test.
    pub test_fixtures: Option<std::path::PathBuf>,
    /// Probe cache directory for driver-qemu; `None`: no cache.
    pub cache_dir: Option<std::path::PathBuf>,
    /// driver-qemu: follow unusable custom CPU models with `<blockers>` (newer libvirt).
    pub cpu_blockers: bool,
    /// driver-qemu: pick emulators only from these directories and only those `accept`
    /// approves of (the agent); `None`: the first executable in `PATH` (the CLI).
    pub emulator_search: Option<EmulatorSearch>,
}

/// Where and which emulators a driver may pick by itself, and the check every binary it
/// runs passes on the descriptor it is run from.
#[derive(Clone)]
pub struct EmulatorSearch {
    pub dirs: Vec<std::path::PathBuf>,
    pub accept: fn(&std::path::Path) -> bool,
    /// Given a binary's resolved path and its descriptor's `fstat`: why it may not run.
    pub check: Arc<OpenedCheck>,
}

/// See [`EmulatorSearch::check`].
pub type OpenedCheck = dyn Fn(&std::path::Path, &nix::sys::stat::FileStat) -> Result<(), String> + Send + Sync;

impl std::fmt::Debug for EmulatorSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorSearch").field("dirs", &self.dirs).finish_non_exhaustive()
    }
}

/// Whether driver `name` may look at or run the file a query names as its emulator: every
/// driver but driver-test, whose `emulatorbin` only selects a recorded document.
pub fn reads_emulator(name: &str) -> bool {
    name != "test"
}

/// Fills driver-qemu's probe cache for one emulator binary (`capsd probe`).
pub type CacheFiller = Box<dyn Fn(&std::path::Path) -> Result<(), capsd_core::DriverError> + Sync>;

/// A [`CacheFiller`] writing to `opts.cache_dir`: probes the binary unless its cache entry
/// is present and valid. Errors when there is no cache directory or no driver-qemu.
pub fn qemu_cache_filler(opts: &DriverOptions) -> anyhow::Result<CacheFiller> {
    let Some(dir) = opts.cache_dir.clone() else {
        anyhow::bail!(
            "there is no probe cache to fill (--no-cache, or no cache directory could be chosen: use --cache-dir)"
        )
    };
    #[cfg(feature = "qemu")]
    {
        let d = driver_qemu::QemuDriver::new().with_cache_dir(dir);
        Ok(Box::new(move |b| d.probe_data(b).map(|_| ())))
    }
    #[cfg(not(feature = "qemu"))]
    {
        let _ = dir;
        anyhow::bail!("driver 'qemu' is not built into this capsd (rebuild with --features qemu)")
    }
}

/// Kill the probes running in this process and remove their private directories (the
/// CLI's SIGINT/SIGTERM path); nothing without driver-qemu.
pub fn abort_probes() {
    #[cfg(feature = "qemu")]
    driver_qemu::process::abort_all();
}

/// The default probe cache directory (driver-qemu's rule), `None` without driver-qemu.
pub fn default_cache_dir() -> Option<std::path::PathBuf> {
    #[cfg(feature = "qemu")]
    return driver_qemu::cache::default_dir();
    #[cfg(not(feature = "qemu"))]
    None
}

/// The embedded driver called `name` alone, `None` when this build has no such driver. A
/// command that asks one driver builds only that one (driver-test, for one, parses its
/// built-in documents when built). Plugins cannot take in-tree names, so an embedded driver
/// is the one a full [`Registry`] would answer with.
pub fn embedded_driver(opts: &DriverOptions, name: &str) -> anyhow::Result<Option<Arc<dyn DomainCapsDriver>>> {
    let _ = opts;
    Ok(match name {
        #[cfg(feature = "qemu")]
        "qemu" => {
            let mut d = driver_qemu::QemuDriver::new()
                .with_cpu_options(driver_qemu::cpu::CpuOptions { blockers: opts.cpu_blockers, ..Default::default() });
            if let Some(s) = &opts.emulator_search {
                d = d
                    .with_search_path(s.dirs.clone())
                    .with_emulator_filter(s.accept)
                    .with_binary_check(driver_qemu::binary::Check(s.check.clone()));
            }
            Some(Arc::new(match &opts.cache_dir {
                Some(dir) => d.with_cache_dir(dir.clone()),
                None => d,
            }))
        }
        #[cfg(feature = "xen")]
        "xen" => Some(Arc::new(driver_xen::XenDriver::new())),
        #[cfg(feature = "lxc")]
        "lxc" => Some(Arc::new(driver_lxc::LxcDriver::new())),
        #[cfg(feature = "test")]
        "test" => Some(match &opts.test_fixtures {
            Some(dir) => Arc::new(driver_test::TestDriver::from_dir(dir)?),
            None => Arc::new(driver_test::TestDriver::builtin()),
        }),
        _ => None,
    })
}

/// The drivers of this process, in listing order.
#[derive(Default)]
pub struct Registry {
    drivers: Vec<Arc<dyn DomainCapsDriver>>,
    /// Plugin files that were not loaded: the file and the reason (shown by `capsd drivers`).
    refused: Vec<(std::path::PathBuf, String)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.drivers.iter().map(|d| d.name().to_owned())).finish()
    }
}

impl Registry {
    /// The embedded drivers chosen at build time.
    pub fn embedded(opts: &DriverOptions) -> anyhow::Result<Self> {
        let mut r = Registry::default();
        for name in IN_TREE {
            if let Some(d) = embedded_driver(opts, name)? {
                r.add(d);
            }
        }
        Ok(r)
    }

    pub fn add(&mut self, driver: Arc<dyn DomainCapsDriver>) {
        self.drivers.push(driver);
    }

    pub fn all(&self) -> &[Arc<dyn DomainCapsDriver>] {
        &self.drivers
    }

    /// Record a plugin file that was refused, with the reason.
    pub fn refuse(&mut self, file: std::path::PathBuf, reason: String) {
        self.refused.push((file, reason));
    }

    /// The refused plugin files, in the order they were met.
    pub fn refused(&self) -> &[(std::path::PathBuf, String)] {
        &self.refused
    }

    /// The driver called `name`, or an error that says whether it is an in-tree driver left
    /// out of this build or an unknown name, and lists the drivers there are.
    pub fn get(&self, name: &str) -> anyhow::Result<Arc<dyn DomainCapsDriver>> {
        if let Some(d) = self.drivers.iter().find(|d| d.name() == name) {
            return Ok(d.clone());
        }
        let have: Vec<&str> = self.drivers.iter().map(|d| d.name()).collect();
        if IN_TREE.contains(&name) {
            anyhow::bail!(
                "driver '{name}' is not built into this capsd (rebuild with --features {name}); drivers here: {}",
                have.join(", ")
            )
        }
        anyhow::bail!("unknown driver '{name}'; drivers here: {}", have.join(", "))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_in_tree_driver_has_its_feature_listed() {
        let names: Vec<&str> = super::EMBEDDED.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, super::IN_TREE);
    }
}

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

/// Run `hook` on the thread about to probe, before each probe of driver-qemu starts (never
/// for an answer from its cache); nothing without driver-qemu.
pub fn before_probes(hook: fn()) {
    #[cfg(feature = "qemu")]
    driver_qemu::before_probes(hook);
    #[cfg(not(feature = "qemu"))]
    let _ = hook;
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

/// The libvirt release a document is printed for and whose rules it follows (driver-qemu's
/// version table): what the agent says in its answer's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtRules {
    /// The target release (asked, or the installed one's, or the newest known).
    pub target: String,
    /// The release whose rules were applied: the target, or the newest release capsd knows
    /// for a target after it.
    pub rules: String,
    /// For a target after every release capsd knows: that later changes are unknown.
    pub warning: Option<String>,
}

/// The [`LibvirtRules`] of `query` for driver `name` (`None` for drivers without a libvirt
/// version table, and for a `libvirt` value the driver refuses).
pub fn libvirt_rules(name: &str, query: &capsd_core::Query) -> Option<LibvirtRules> {
    #[cfg(feature = "qemu")]
    if name == "qemu" {
        use driver_qemu::libvirt;
        let d = libvirt::choose(query.libvirt.as_deref(), std::path::Path::new("/")).ok()?;
        return Some(LibvirtRules {
            target: d.version.to_string(),
            rules: libvirt::rules_of(d.version).to_string(),
            warning: libvirt::beyond_table_warning(d.version),
        });
    }
    let _ = (name, query);
    None
}

/// What `capsd drivers --libvirt-version X` says of driver `name` instead of its own
/// libvirt details: the release asked, its rules and the warning for one after the table.
pub fn libvirt_details(name: &str, requested: &str) -> anyhow::Result<Option<Vec<(String, String)>>> {
    #[cfg(feature = "qemu")]
    if name == "qemu" {
        use driver_qemu::libvirt;
        let d = libvirt::choose(Some(requested), std::path::Path::new("/"))
            .map_err(|e| anyhow::anyhow!("--libvirt-version {requested}: {e}"))?;
        return Ok(Some(libvirt::describe_target(&d)));
    }
    let _ = (name, requested);
    Ok(None)
}

/// How plugin helpers are started: with driver-qemu, the way its probes are
/// (`driver_qemu::spawn`: the helper is the init of a PID namespace of its own, so whatever
/// a plugin starts, `setsid`'d children included, dies with its helper); without it, in a
/// process group of their own (a child that leaves the group can outlive the helper).
pub fn plugin_launcher() -> Arc<dyn capsd_plugin::hosted::Launcher> {
    #[cfg(feature = "qemu")]
    return Arc::new(contained::Launcher);
    #[cfg(not(feature = "qemu"))]
    Arc::new(capsd_plugin::hosted::GroupLauncher)
}

#[cfg(feature = "qemu")]
mod contained {
    use std::ffi::{OsStr, OsString};
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
    use std::path::Path;
    use std::process::ExitStatus;

    use capsd_plugin::hosted::HelperProcess;
    use driver_qemu::spawn::{spawn, Spawned, Spec};

    /// Starts plugin helpers with driver-qemu's probe spawner.
    #[derive(Debug)]
    pub struct Launcher;

    impl capsd_plugin::hosted::Launcher for Launcher {
        fn launch(
            &self,
            program: &Path,
            args: &[OsString],
            socket: BorrowedFd<'_>,
        ) -> std::io::Result<Box<dyn HelperProcess>> {
            let bad = |what: &OsStr| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{} is not UTF-8", Path::new(what).display()),
                )
            };
            let args: Vec<String> =
                args.iter().map(|a| a.to_str().map(str::to_owned).ok_or_else(|| bad(a))).collect::<Result<_, _>>()?;
            // capsd's environment (RUST_LOG, and whatever a plugin reads), as a plain child.
            let env: Vec<(String, OsString)> =
                std::env::vars_os().filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v))).collect();
            let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (k.as_str(), v.as_os_str())).collect();
            let stderr = std::fs::File::from(std::io::stderr().as_fd().try_clone_to_owned()?);
            let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
            let spec = Spec {
                program,
                program_fd: None,
                args: &args,
                env: &env,
                cwd: &cwd,
                stderr: &stderr,
                creds: None,
                pass_fd: Some(socket.as_raw_fd()),
            };
            Ok(Box::new(Contained(spawn(&spec)?)))
        }
    }

    #[derive(Debug)]
    struct Contained(Spawned);

    impl HelperProcess for Contained {
        fn pid(&self) -> u32 {
            self.0.emulator_pid()
        }

        fn ended(&self) -> bool {
            // The helper is the leader's child: it is dead (a zombie until the leader reaps it,
            // or gone) a moment before the leader ends.
            let pid = self.0.emulator_pid();
            let dead = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
                Err(_) => true,
            };
            dead || self.0.has_ended()
        }

        fn kill(mut self: Box<Self>) -> Option<ExitStatus> {
            self.0.kill();
            self.0.status()
        }
    }
}

/// The drivers of this process, in listing order.
#[derive(Default)]
pub struct Registry {
    drivers: Vec<Arc<dyn DomainCapsDriver>>,
    /// Plugin files that were not loaded: the file and the reason (shown by `capsd drivers`).
    refused: Vec<(std::path::PathBuf, String)>,
    /// Plugin files whose helper crashed, exited or hung while loading them: the file and
    /// what happened.
    failed: Vec<(std::path::PathBuf, String)>,
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

    /// Record a plugin file whose helper failed while loading it, with what happened.
    pub fn fail(&mut self, file: std::path::PathBuf, reason: String) {
        self.failed.push((file, reason));
    }

    /// The plugin files whose helper failed while loading them.
    pub fn failed(&self) -> &[(std::path::PathBuf, String)] {
        &self.failed
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

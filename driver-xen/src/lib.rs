//! driver-xen: domain capabilities of a Xen host, as libvirt's libxl driver reports them
//! for the `xenfv`, `xenpv` and `xenpvh` machine types.
//!
//! All host reading goes through [`XenHost`], built from a root directory (`/` on a real
//! host) and a [`CommandRunner`] (which runs `xl info`). Tests replay recorded trees and
//! command outputs with [`XenDriver::with_root`] and [`RecordedRunner`], or hand the facts
//! straight in with [`XenDriver::from_facts`].
//!
//! # Host facts read
//!
//! | fact | source |
//! |---|---|
//! | running on Xen | `/sys/hypervisor/type` is `xen` |
//! | this is dom0 | `/proc/xen/capabilities` lists `control_d` |
//! | toolstack installed | `xl` in `/usr/sbin`, `/usr/bin`, `/sbin`, `/usr/local/sbin` |
//! | guest flavours per arch | `xen_caps` of `xl info` (fallback `/sys/hypervisor/properties/capabilities`) |
//! | Xen version | `xen_major`/`xen_minor` of `xl info` (fallback `/sys/hypervisor/version/*`) |
//! | PCI passthrough | `virt_caps` of `xl info` (`hvm_directio`, `pv_directio`) |
//! | host arch | `machine` of `xl info` |
//! | device model | `/usr/lib/xen/bin/qemu-system-i386` (upstream), `/usr/libexec/xen-qemu-system-i386` (Debian), `/usr/libexec/xen/bin/qemu-system-i386`, `/usr/lib64/xen/bin/qemu-system-i386` |
//! | firmware | `hvmloader` then `ovmf.bin` in `/usr/lib/xen/boot`, `/usr/lib/xen-X.Y/boot` (Debian), `/usr/libexec/xen/boot`, `/usr/lib64/xen/boot`; `/usr/share/ovmf/OVMF.fd` when no `ovmf.bin` exists (Debian's libxl uses it) |
//!
//! How those facts become the document is in [`caps`].

pub mod caps;
pub mod host;
pub mod runner;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

pub use caps::XenMachine;
pub use host::{GuestCap, XenHost, XenProbeError, XlInfo};
pub use runner::{CommandRunner, RecordedRunner, RunError, SystemRunner};

use caps::DRIVER;

/// Where the facts come from.
#[derive(Debug)]
enum Source {
    /// Read from a root directory with a runner, once, on first use.
    Root { root: PathBuf, runner: Arc<dyn CommandRunner>, probed: OnceLock<Result<XenHost, String>> },
    /// Given directly.
    Facts(XenHost),
}

/// The Xen driver.
#[derive(Debug)]
pub struct XenDriver {
    source: Source,
}

impl Default for XenDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl XenDriver {
    /// The driver for this machine: root `/`, commands run for real.
    pub fn new() -> Self {
        Self::with_root_and_runner("/", Arc::new(SystemRunner))
    }

    /// Read host files under `root` and replay commands from `root/../commands` if that
    /// directory exists (the layout of the recorded hosts in `tests/data`), else run them.
    pub fn with_root(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        let commands = root.parent().map(|p| p.join("commands"));
        let runner: Arc<dyn CommandRunner> = match commands {
            Some(dir) if dir.is_dir() => Arc::new(RecordedRunner::from_dir(dir)?),
            _ => Arc::new(SystemRunner),
        };
        Ok(Self::with_root_and_runner(root, runner))
    }

    /// Read host files under `root`, run commands with `runner`.
    pub fn with_root_and_runner(root: impl Into<PathBuf>, runner: Arc<dyn CommandRunner>) -> Self {
        XenDriver { source: Source::Root { root: root.into(), runner, probed: OnceLock::new() } }
    }

    /// Answer from facts gathered elsewhere (a recording, a test).
    pub fn from_facts(host: XenHost) -> Self {
        XenDriver { source: Source::Facts(host) }
    }

    /// The root directory host paths are read under, when the driver reads a host.
    fn root(&self) -> Option<&Path> {
        match &self.source {
            Source::Root { root, .. } => Some(root),
            Source::Facts(_) => None,
        }
    }

    /// All facts (probing once when reading a host).
    pub fn facts(&self) -> Result<XenHost, DriverError> {
        match &self.source {
            Source::Facts(h) => Ok(h.clone()),
            Source::Root { root, runner, probed } => probed
                .get_or_init(|| XenHost::probe(root, runner.as_ref()).map_err(|e| e.to_string()))
                .clone()
                .map_err(|reason| DriverError::probe_failed("xen host", reason)),
        }
    }

    /// Availability from the cheap facts (files only).
    fn availability_of(host: &XenHost) -> Availability {
        let reason = if !host.is_xen() {
            match &host.hypervisor_type {
                None => "not running on Xen (/sys/hypervisor/type is absent)".to_owned(),
                Some(t) => format!("not running on Xen (/sys/hypervisor/type is '{t}')"),
            }
        } else if host.proc_xen_capabilities.is_none() {
            "cannot tell whether this is dom0: /proc/xen/capabilities is absent (xenfs not mounted)".to_owned()
        } else if !host.is_dom0() {
            "this is a Xen guest, not the control domain (/proc/xen/capabilities lacks control_d)".to_owned()
        } else if host.xl_path.is_none() {
            "the xl toolstack is not installed (no xl in /usr/sbin, /usr/bin, /sbin, /usr/local/sbin)".to_owned()
        } else {
            return Availability::Available;
        };
        Availability::Unavailable { reason }
    }
}

impl DomainCapsDriver for XenDriver {
    fn name(&self) -> &str {
        DRIVER
    }

    fn availability(&self) -> Availability {
        let host = match &self.source {
            Source::Facts(h) => h.clone(),
            Source::Root { root, .. } => match XenHost::probe_files(root) {
                Ok(h) => h,
                Err(e) => return Availability::Unavailable { reason: e.to_string() },
            },
        };
        Self::availability_of(&host)
    }

    #[tracing::instrument(skip_all, fields(driver = DRIVER, query = %query))]
    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        let host = self.facts()?;
        if let Availability::Unavailable { reason } = Self::availability_of(&host) {
            return Err(DriverError::Unavailable { driver: DRIVER.to_owned(), reason });
        }
        if host.xl_info.is_none() {
            let reason = host.xl_info_error.clone().unwrap_or_else(|| "xl info was not run".to_owned());
            return Err(DriverError::probe_failed("xl info", reason));
        }
        let root = self.root().map(Path::to_path_buf);
        let exists = |p: &str| match &root {
            Some(r) => r.join(p.trim_start_matches('/')).is_file(),
            None => true,
        };
        let (path, arch, machine) = caps::resolve(&host, query, &exists)?;
        Ok(caps::build(&host, path, &arch, machine))
    }
}

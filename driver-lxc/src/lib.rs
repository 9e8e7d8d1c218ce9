//! driver-lxc: domain capabilities of a container domain (`<domain>lxc</domain>`) on this
//! host. libvirt defines no domain capabilities for LXC; this crate defines them in the
//! same document format, and every document validates against libvirt's `domaincaps.rng`.
//!
//! All host reading goes through a root directory (default `/`), so tests use recorded
//! trees ([`LxcDriver::with_root`]) or facts given directly ([`LxcDriver::from_facts`]).
//!
//! # What decides each value
//!
//! A value is listed when a host fact proves it. When the fact that decides a whole element
//! cannot be read, the element is left out (no statement).
//!
//! | element / enum | value | host fact |
//! |---|---|---|
//! | `<path>` | the query's emulator, else libvirt's container controller | `/usr/lib/libvirt/libvirt_lxc`, `/usr/libexec/libvirt_lxc`, `/usr/lib64/libvirt/libvirt_lxc`; omitted when none exists |
//! | `<domain>` | `lxc` | fixed |
//! | `<machine>` | never present | containers have no machine type |
//! | `<arch>` | host arch | `/proc/sys/kernel/arch`; on the real root (`/`) without it, the arch capsd runs as |
//! | `<vcpu max>` | online CPUs | `/sys/devices/system/cpu/online`; omitted when absent |
//! | `<iothreads>` | `no` | fixed: no emulator, no I/O threads |
//! | `<os>` enum `type` | `exe` | fixed: a container runs an init program |
//! | `<os>` enum `namespaces` | `mnt uts ipc pid net user cgroup time`, those present | entries of `/proc/self/ns` |
//! | `<os>` enum `userns` | `idmap` | `user` namespace present and `/proc/sys/user/max_user_namespaces` > 0 (enum omitted when that file is absent; empty when no `user` namespace) |
//! | | `unprivileged` | also neither `/proc/sys/kernel/unprivileged_userns_clone` = 0 (Debian) nor `/proc/sys/kernel/apparmor_restrict_unprivileged_userns` = 1 (Ubuntu) |
//! | `<os>` enum `cgroup` | `v2` / `v1` | `/sys/fs/cgroup/cgroup.controllers` exists / controller directories under `/sys/fs/cgroup` |
//! | `<os>` enum `cgroupControllers` | controller names | v2: `cgroup.controllers`; v1: the controller directories (`blkio cpu cpuacct cpuset devices freezer hugetlb memory misc net_cls perf_event pids rdma`) |
//! | `<hostdev>` | whole element | omitted when device access control is unknown: v1 `devices` controller, or v2 with `CONFIG_CGROUP_BPF` (kernel config) |
//! | hostdev `mode` | `subsystem` | device control and `/sys/bus/usb` |
//! | | `capabilities` | device control, or a `net` namespace |
//! | hostdev `subsysType` | `usb` | device control and `/sys/bus/usb` |
//! | hostdev `capsType` | `storage misc` / `net` | device control / `net` namespace |
//! | `<filesystem>` `type` | `mount` | always (bind mounts in the container's mount namespace) |
//! | | `block` | device control |
//! | | `file` | a `loop` or `nbd` driver (below) |
//! | | `ram` | `tmpfs` in `/proc/filesystems` |
//! | filesystem `driverType` | `path` | always |
//! | | `loop` | `/dev/loop-control`, or loop driver in the kernel |
//! | | `nbd` | nbd driver in the kernel and `qemu-nbd` installed |
//! | filesystem `procViews` | `meminfo` | FUSE: `/dev/fuse` and `fuse` in `/proc/filesystems` (a per-container `/proc/meminfo` view, as libvirt_lxc and lxcfs give) |
//! | `<interface>` | `supported='no'` | no `net` namespace |
//! | interface `type` | `network bridge ethernet` | veth driver in the kernel |
//! | | `direct` | macvlan driver in the kernel (element omitted when neither veth nor macvlan can be established) |
//! | `<console>` `type` | `pty` | `devpts` in `/proc/filesystems` and `/dev/ptmx`; else `supported='no'`; omitted when `/proc/filesystems` is absent |
//!
//! "Driver in the kernel" means: the module is loaded (`/proc/modules`, `/sys/module`),
//! else the kernel config (`/proc/config.gz`, `/boot/config-<release>`) has it `y` or `m`,
//! else `/lib/modules/<release>/modules.builtin` or `modules.dep` lists it.
//!
//! The driver is available when the kernel has the `mnt`, `uts`, `ipc` and `pid`
//! namespaces and a cgroup hierarchy is mounted.

pub mod caps;
pub mod host;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};

pub use host::{CgroupLayout, Cgroups, LxcHost, LxcProbeError};

use caps::DRIVER;

#[derive(Debug)]
enum Source {
    Root { root: PathBuf, probed: OnceLock<Result<LxcHost, String>> },
    Facts(LxcHost),
}

/// The LXC driver.
#[derive(Debug)]
pub struct LxcDriver {
    source: Source,
}

impl Default for LxcDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl LxcDriver {
    /// The driver for this machine (root `/`).
    pub fn new() -> Self {
        Self::with_root("/")
    }

    /// Read host files under `root` (probed once, on first use).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        LxcDriver { source: Source::Root { root: root.into(), probed: OnceLock::new() } }
    }

    /// Answer from facts given directly.
    pub fn from_facts(host: LxcHost) -> Self {
        LxcDriver { source: Source::Facts(host) }
    }

    /// The host facts (probing once when reading a root).
    pub fn facts(&self) -> Result<LxcHost, DriverError> {
        match &self.source {
            Source::Facts(h) => Ok(h.clone()),
            Source::Root { root, probed } => probed
                .get_or_init(|| LxcHost::probe(root).map_err(|e| e.to_string()))
                .clone()
                .map_err(|reason| DriverError::probe_failed("container host", reason)),
        }
    }

    fn root(&self) -> Option<&Path> {
        match &self.source {
            Source::Root { root, .. } => Some(root),
            Source::Facts(_) => None,
        }
    }

    /// The arch to fall back on when `/proc/sys/kernel/arch` is absent: only on the real
    /// root, where the arch this process runs as is the host's.
    fn arch_fallback(&self) -> Option<&'static str> {
        (self.root() == Some(Path::new("/"))).then_some(capsd_core::arch::of_this_build())
    }
}

impl DomainCapsDriver for LxcDriver {
    fn name(&self) -> &str {
        DRIVER
    }

    fn availability(&self) -> Availability {
        match self.facts() {
            Err(e) => Availability::Unavailable { reason: e.to_string() },
            Ok(h) => match caps::check_usable(&h) {
                Ok(()) => Availability::Available,
                Err(reason) => Availability::Unavailable { reason },
            },
        }
    }

    #[tracing::instrument(skip_all, fields(driver = DRIVER, query = %query))]
    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        let host = self.facts()?;
        caps::check_usable(&host).map_err(|reason| DriverError::Unavailable { driver: DRIVER.to_owned(), reason })?;
        let arch = caps::host_arch(&host, self.arch_fallback())?;
        caps::check_query(query, &arch)?;
        let path = match &query.emulator {
            Some(e) => {
                let s = e.to_string_lossy().into_owned();
                let exists = match self.root() {
                    Some(r) => r.join(s.trim_start_matches('/')).is_file(),
                    None => true,
                };
                if !exists {
                    return Err(DriverError::invalid("emulator", s, "no such file"));
                }
                Some(s)
            }
            None => host.libvirt_lxc.clone(),
        };
        Ok(caps::build(&host, path, arch))
    }
}

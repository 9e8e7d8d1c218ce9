//! capsd-driver-bhyve: an out-of-tree capsd driver for FreeBSD's bhyve, built as a plugin
//! (`cdylib`) against `capsd-plugin`'s C ABI. It is also an `rlib` so its tests can call it
//! directly.
//!
//! The document is derived from bhyve's probe output ([`probe`]) and the firmware directory:
//! - UEFI boot (`-l bootrom`) gives `<loader supported='yes'>` with every file of the
//!   firmware directory as a value, type `pflash` and readonly `yes`; without it the loader is
//!   `supported='no'`;
//! - the `fbuf` device gives VNC graphics and GOP video; without it both are `'no'`;
//! - disks (disk/cdrom on virtio/sata) are always offered; CPU modes, hostdev, iothreads,
//!   gic, vmcoreinfo, genid, sev and sgx are always `'no'`;
//! - bhyve has no machine types: a query naming a machine is refused (`NotSupported`) where
//!   libvirt would echo it.
//!
//! # Inputs
//! - `CAPSD_BHYVE_FACTS=DIR`: replay a recording (`DIR/transcript.txt`, optional
//!   `DIR/bhyve.conf`; see [`transcript`]) instead of probing the host. This is how the driver
//!   runs on hosts without bhyve, and in tests.
//! - Otherwise it runs the query's `--emulatorbin` (which must exist), else `bhyve` from
//!   `PATH` or `/usr/sbin/bhyve`, and reports that binary as `<path>`; it reads `firmware_dir` from
//!   `CAPSD_BHYVE_CONF` or `/usr/local/etc/libvirt/bhyve.conf` (default firmware directory
//!   `/usr/local/share/uefi-firmware`).

pub mod probe;
pub mod transcript;

use std::path::{Path, PathBuf};

use capsd_core::{
    Availability, Cpu, Devices, DomainCapabilities, DomainCapsDriver, DriverError, EnumElement, Features, Flag, Loader,
    Os, Query, Support,
};

use probe::{BhyveCaps, Host, LiveHost, ReplayHost};

/// The driver's name (`--driver bhyve`).
pub const DRIVER: &str = "bhyve";
/// Environment variable naming a recorded-facts directory.
pub const FACTS_ENV: &str = "CAPSD_BHYVE_FACTS";
/// Environment variable naming the driver configuration file.
pub const CONF_ENV: &str = "CAPSD_BHYVE_CONF";
/// Where libvirt keeps bhyve's configuration on FreeBSD.
pub const DEFAULT_CONF: &str = "/usr/local/etc/libvirt/bhyve.conf";
/// Where FreeBSD installs bhyve; used when `PATH` has none.
pub const DEFAULT_EMULATOR: &str = "/usr/sbin/bhyve";

/// Where this driver instance takes its facts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Probe the host: `bhyve` in `PATH`, this configuration file.
    Live { config: PathBuf },
    /// Replay a recorded-facts directory.
    Replay { dir: PathBuf },
}

/// The bhyve driver.
#[derive(Debug, Clone)]
pub struct BhyveDriver {
    source: Source,
}

impl BhyveDriver {
    /// Choose the source from the environment (see the crate docs).
    pub fn from_env() -> Self {
        let source = match std::env::var_os(FACTS_ENV).filter(|v| !v.is_empty()) {
            Some(dir) => Source::Replay { dir: dir.into() },
            None => Source::Live {
                config: std::env::var_os(CONF_ENV).filter(|v| !v.is_empty()).map_or(DEFAULT_CONF.into(), PathBuf::from),
            },
        };
        BhyveDriver { source }
    }

    pub fn new(source: Source) -> Self {
        BhyveDriver { source }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The facts source for a query, checking the query's emulator against it.
    fn host(&self, emulator: Option<&Path>) -> Result<Box<dyn Host>, DriverError> {
        match &self.source {
            Source::Replay { dir } => {
                let host = ReplayHost::open(dir)?;
                if let Some(e) = emulator {
                    host.check_emulator(e)?;
                }
                Ok(Box::new(host))
            }
            Source::Live { config } => Ok(Box::new(LiveHost::for_query(emulator, config)?)),
        }
    }
}

pub(crate) fn no_bhyve_reason() -> String {
    format!("no bhyve in PATH (bhyve is FreeBSD's hypervisor; set {FACTS_ENV} to replay a recording)")
}

/// The guest architecture for a query: the given one or the host's, which must be x86.
fn guest_arch(query: &Query) -> Result<String, DriverError> {
    let arch = match &query.arch {
        Some(a) => a.clone(),
        None => capsd_core::arch::of_this_build().to_owned(),
    };
    match arch.as_str() {
        "x86_64" | "i686" => Ok(arch),
        _ => Err(DriverError::not_supported(DRIVER, format!("arch '{arch}' (bhyve runs x86_64 and i686 guests)"))),
    }
}

/// Check the query and build the document from probed facts: `bhyve` is the binary probed
/// (reported as `<path>`). Pure: no host access.
pub fn build(
    query: &Query,
    bhyve: &Path,
    caps: &BhyveCaps,
    firmwares: &[String],
) -> Result<DomainCapabilities, DriverError> {
    if let Some(v) = &query.virt_type {
        if v != "bhyve" {
            return Err(DriverError::invalid("virttype", v, "the bhyve driver only offers virt type 'bhyve'"));
        }
    }
    if let Some(m) = &query.machine {
        // libvirt's bhyve driver echoes any machine string; bhyve has no machine types, so a
        // machine cannot be offered and is refused instead (as a machine that does not exist).
        return Err(DriverError::not_supported(DRIVER, format!("machine '{m}' (bhyve has no machine types)")));
    }
    let arch = guest_arch(query)?;
    let path = bhyve.display().to_string();

    let loader = if caps.lpc_bootrom {
        Loader {
            supported: Support::Yes,
            values: firmwares.to_vec(),
            enums: vec![capsd_core::Enum::new("type", ["pflash"]), capsd_core::Enum::new("readonly", ["yes"])],
        }
    } else {
        Loader { supported: Support::No, values: Vec::new(), enums: Vec::new() }
    };
    let (graphics, video) = if caps.fbuf {
        (
            EnumElement::new(Support::Yes).with_enum("type", ["vnc"]),
            EnumElement::new(Support::Yes).with_enum("modelType", ["gop"]),
        )
    } else {
        (EnumElement::unsupported(), EnumElement::unsupported())
    };
    Ok(DomainCapabilities {
        path: Some(path),
        domain: "bhyve".into(),
        machine: None,
        arch,
        vcpu: None,
        iothreads: Some(Flag::no()),
        os: Some(Os {
            supported: Support::Yes,
            enums: Vec::new(),
            firmware_features: None,
            loader: Some(loader),
            varstore: None,
        }),
        cpu: Some(Cpu::unsupported()),
        memory_backing: None,
        devices: Some(Devices {
            disk: Some(
                EnumElement::new(Support::Yes)
                    .with_enum("diskDevice", ["disk", "cdrom"])
                    .with_enum("bus", ["virtio", "sata"])
                    .with_enum("model", Vec::<String>::new()),
            ),
            graphics: Some(graphics),
            video: Some(video),
            hostdev: Some(EnumElement::unsupported()),
            ..Devices::default()
        }),
        features: Some(Features::unsupported()),
    })
}

impl DomainCapsDriver for BhyveDriver {
    fn name(&self) -> &str {
        DRIVER
    }

    fn availability(&self) -> Availability {
        match &self.source {
            Source::Replay { dir } => match ReplayHost::open(dir) {
                Ok(_) => Availability::Available,
                Err(e) => Availability::Unavailable { reason: format!("recorded facts ({FACTS_ENV}): {e}") },
            },
            Source::Live { .. } => match LiveHost::find_bhyve() {
                Some(_) => Availability::Available,
                None => Availability::Unavailable { reason: no_bhyve_reason() },
            },
        }
    }

    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        // Reject bad queries before touching the host.
        build(query, Path::new(DEFAULT_EMULATOR), &BhyveCaps::default(), &[])?;
        let host = self.host(query.emulator.as_deref())?;
        let caps = probe::probe_caps(host.as_ref())?;
        let origin = match &self.source {
            Source::Replay { dir } => dir.join("bhyve.conf"),
            Source::Live { config } => config.clone(),
        };
        let dir = probe::firmware_dir(host.config()?.as_deref(), &origin)?;
        let firmwares = probe::firmwares(host.as_ref(), &dir)?;
        build(query, &host.bhyve_path(), &caps, &firmwares)
    }
}

capsd_plugin::export_driver!(BhyveDriver::from_env);

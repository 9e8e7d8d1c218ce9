//! `capsd domcapabilities`: ask one driver for the document, like `virsh domcapabilities`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use capsd_core::{DomainCapsDriver, Query};

use crate::output::Format;
use crate::registry::{DriverOptions, Registry};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which driver answers (see `capsd drivers`).
    #[arg(long, default_value = "qemu")]
    driver: String,
    /// Emulator binary (default: chosen from --arch, or the host's arch).
    #[arg(long = "emulatorbin", value_name = "PATH")]
    emulatorbin: Option<PathBuf>,
    /// Guest architecture (default: from the emulator, or the host's arch).
    #[arg(long)]
    arch: Option<String>,
    /// Machine type or alias (default: the emulator's default machine for the arch).
    #[arg(long)]
    machine: Option<String>,
    /// Virtualization type: kvm, qemu, xen, lxc... (default: the best one usable here).
    #[arg(long = "virttype", value_name = "TYPE")]
    virttype: Option<String>,
    /// The libvirt release whose document to print (X.Y or X.Y.Z, 9.0 or newer). Default:
    /// the installed libvirt's (read from its library's file name, else dpkg's records),
    /// else the newest release capsd knows (see `capsd drivers`).
    #[arg(long = "libvirt-version", value_name = "X.Y[.Z]")]
    libvirt_version: Option<String>,
    /// Output form.
    #[arg(long, value_enum, default_value_t = Format::Xml)]
    format: Format,
    /// driver-test: directory of golden documents to serve.
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
    /// qemu: answer from a recorded probe instead of this host: a `capsd probe --record`
    /// file, or a libvirt `.replies` QMP transcript (its tests' `caps_*.replies`). Nothing is
    /// probed or read from this host (but what --host-facts names); a command the file has
    /// no answer to is treated as QEMU not answering (omitted; listed with -v). The target
    /// release is --libvirt-version, else the recording host's libvirt, else the newest known.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["fixtures"])]
    replay: Option<PathBuf>,
    /// With --replay: a JSON file of host facts that replace or complete the recorded ones
    /// (host_arch, host_cpu_model, kvm_usable, firmware_dirs, cpu_map_dir, swtpm, sev, ...;
    /// every field is documented in docs/recording.md).
    #[arg(long, value_name = "FACTS.json", requires = "replay")]
    host_facts: Option<PathBuf>,
    /// qemu: follow each unusable custom CPU model with `<blockers>` naming the features that
    /// keep it from running (newer libvirt's form; libvirt 9.0 prints none).
    #[arg(long)]
    cpu_blockers: bool,
}

/// The embedded drivers plus the plugins of `--plugin-dir` / `CAPSD_PLUGIN_DIR`, or of
/// [`capsd_plugin::DEFAULT_PLUGIN_DIR`] when that exists. Each plugin that passes the checks
/// is loaded in a helper process of its own (this binary, `capsd plugin-host`), all at once
/// and within one `--plugin-timeout-ms`, for the CLI as for the agent; no plugin code runs in
/// this process. Refused plugin files and plugins whose helper crashed, exited or hung while
/// loading are logged and recorded in the registry; they never stop capsd.
pub fn registry(ctx: &super::Context, opts: &DriverOptions) -> Result<Registry> {
    let mut reg = Registry::embedded(opts)?;
    let dir = match &ctx.plugin_dir {
        Some(d) => Some(d.clone()),
        None => Some(PathBuf::from(capsd_plugin::DEFAULT_PLUGIN_DIR)).filter(|d| d.exists()),
    };
    if let Some(dir) = dir {
        // In-tree names stay reserved even when that driver is not built in.
        let mut taken: Vec<String> = crate::registry::IN_TREE.iter().map(|n| n.to_string()).collect();
        taken.extend(reg.all().iter().map(|d| d.name().to_owned()));
        let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
        let mut host = capsd_plugin::HostOptions::new("/proc/self/exe", ["plugin-host"]);
        host.timeout = ctx.plugin_timeout;
        host.launcher = crate::registry::plugin_launcher();
        let report = capsd_plugin::start_dir(&dir, &taken, &host);
        for plugin in report.plugins {
            reg.add(Arc::new(plugin));
        }
        for err in report.refused {
            reg.refuse(err.path().to_owned(), err.to_string());
        }
        for f in report.failed {
            reg.fail(f.path, f.reason);
        }
    }
    Ok(reg)
}

/// The driver called `name`: an embedded one is built alone (driver-test, for one, parses
/// its built-in documents when built); the whole registry, plugins too, only for other names.
pub fn driver(ctx: &super::Context, opts: &DriverOptions, name: &str) -> Result<Arc<dyn DomainCapsDriver>> {
    match crate::registry::embedded_driver(opts, name)? {
        Some(d) => Ok(d),
        None => registry(ctx, opts)?.get(name),
    }
}

pub fn run(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    if args.replay.is_some() {
        return replay(args);
    }
    let opts = DriverOptions {
        test_fixtures: args.fixtures.clone(),
        cache_dir: ctx.cache_dir.clone(),
        cpu_blockers: args.cpu_blockers,
        ..DriverOptions::default()
    };
    let driver = driver(ctx, &opts, &args.driver)?;
    let query = Query {
        emulator: args.emulatorbin,
        arch: args.arch,
        machine: args.machine,
        virt_type: args.virttype,
        libvirt: args.libvirt_version,
    };
    // Rendered by the driver's call: a driver that keeps rendered answers (qemu, with its
    // cache) returns the bytes it kept without deriving the document again.
    let format = args.format;
    let render = move |caps: &capsd_core::DomainCapabilities| format.render(caps).into_bytes();
    let body = driver
        .domain_capabilities_rendered(&query, format.name(), &render)
        .with_context(|| format!("driver '{}', query {query}", args.driver))?;
    std::io::stdout().lock().write_all(&body).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

/// `--replay FILE [--host-facts FACTS]`: the qemu driver's derivation from a recording.
#[cfg(feature = "qemu")]
fn replay(args: Args) -> Result<ExitCode> {
    use driver_qemu::replay;
    if args.driver != "qemu" {
        anyhow::bail!("--replay answers for the qemu driver only, not '{}'", args.driver);
    }
    let file = args.replay.as_deref().context("--replay needs a file")?;
    let mut rec = replay::load(file)?;
    if let Some(f) = &args.host_facts {
        let facts = replay::FactsFile::load(f)?;
        rec.data.host = facts.apply(&f.display().to_string(), &rec.data.host)?;
    }
    let query = Query {
        emulator: args.emulatorbin,
        arch: args.arch,
        machine: args.machine,
        virt_type: args.virttype,
        libvirt: args.libvirt_version,
    };
    let options = driver_qemu::cpu::CpuOptions { blockers: args.cpu_blockers, ..Default::default() };
    let caps = replay::domain_capabilities(&rec, &query, options)
        .with_context(|| format!("replaying {}, query {query}", file.display()))?;
    std::io::stdout().lock().write_all(args.format.render(&caps).as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "qemu"))]
fn replay(_args: Args) -> Result<ExitCode> {
    anyhow::bail!("--replay needs the qemu driver, which this capsd was built without")
}

/// `domcapabilities`' own options in their plain forms, for the warm path's parser
/// (`parse_plain` in main.rs), which leaves to clap every command line it might read
/// differently.
#[derive(Debug)]
pub(crate) struct PlainArgs(Args);

impl PlainArgs {
    /// Every option at its default.
    pub(crate) fn new() -> Self {
        PlainArgs(Args {
            driver: "qemu".to_owned(),
            emulatorbin: None,
            arch: None,
            machine: None,
            virttype: None,
            libvirt_version: None,
            format: Format::Xml,
            fixtures: None,
            replay: None,
            host_facts: None,
            cpu_blockers: false,
        })
    }

    /// Whether `name` is one of the options taken here that takes a value.
    pub(crate) fn takes_value(name: &str) -> bool {
        matches!(name, "driver" | "emulatorbin" | "arch" | "machine" | "virttype" | "libvirt-version" | "format")
    }

    /// Take `--name VALUE` (`value` is `Some`) or the flag `--name`; `false` when `name`
    /// is not taken here, is given twice, or has a value clap might read otherwise. The
    /// options with rules between them (`--fixtures`, `--replay`, `--host-facts`) are not
    /// taken: clap checks those. Neither is an option spelling its default (`--driver
    /// qemu`, `--format xml`), which cannot be told from its absence here when repeated.
    pub(crate) fn take(&mut self, name: &str, value: Option<&str>) -> bool {
        fn once<T>(slot: &mut Option<T>, v: T) -> bool {
            slot.replace(v).is_none()
        }
        let a = &mut self.0;
        match (name, value) {
            ("driver", Some(v)) if a.driver == "qemu" && v != "qemu" => {
                v.clone_into(&mut a.driver);
                true
            }
            ("emulatorbin", Some(v)) => once(&mut a.emulatorbin, PathBuf::from(v)),
            ("arch", Some(v)) => once(&mut a.arch, v.to_owned()),
            ("machine", Some(v)) => once(&mut a.machine, v.to_owned()),
            ("virttype", Some(v)) => once(&mut a.virttype, v.to_owned()),
            ("libvirt-version", Some(v)) => once(&mut a.libvirt_version, v.to_owned()),
            ("format", Some("json")) if a.format == Format::Xml => {
                a.format = Format::Json;
                true
            }
            ("cpu-blockers", None) if !a.cpu_blockers => {
                a.cpu_blockers = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn finish(self) -> Args {
        self.0
    }
}

//! `capsd check DOMAIN.xml`: does a libvirt domain definition ask only for what the
//! capabilities support? Exit 0: nothing unsupported; 1: something unsupported (or, with
//! `--strict`, unknown); 2: bad input; 3: the capabilities could not be obtained (driver not
//! built in or not usable here, a combination it does not offer, probing failed).
//! Also holds the capabilities source (`--caps FILE` or a driver query) that `labels` and
//! `traits` share.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use capsd_analysis::Domain;
use capsd_core::{DomainCapabilities, DriverError, ErrorKind, Query};

use crate::registry::DriverOptions;

/// Where the capabilities come from: a document, or a driver asked with a query.
#[derive(Debug, Clone, clap::Args)]
pub struct CapsSource {
    /// Capabilities document (XML or JSON, `-` for standard input) instead of asking a driver.
    #[arg(long, value_name = "FILE")]
    caps: Option<PathBuf>,
    /// Which driver answers when --caps is not given (see `capsd drivers`); default: the
    /// one for the domain's type (kvm/qemu: qemu, xen: xen, lxc: lxc), else qemu.
    #[arg(long)]
    driver: Option<String>,
    /// Emulator binary for the driver query.
    #[arg(long = "emulatorbin", value_name = "PATH")]
    emulatorbin: Option<PathBuf>,
    /// Guest architecture for the driver query.
    #[arg(long)]
    arch: Option<String>,
    /// Machine type or alias for the driver query.
    #[arg(long)]
    machine: Option<String>,
    /// Virtualization type for the driver query.
    #[arg(long = "virttype", value_name = "TYPE")]
    virttype: Option<String>,
    /// The libvirt release whose document to print (X.Y or X.Y.Z, 9.0 or newer). Default:
    /// the installed libvirt's (read from its library's file name, else dpkg's records),
    /// else the newest release capsd knows (see `capsd drivers`).
    #[arg(long = "libvirt-version", value_name = "X.Y[.Z]")]
    libvirt_version: Option<String>,
    /// driver-test: directory of golden documents to serve.
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
}

impl CapsSource {
    /// The document from --caps, or from the driver with the query flags, each flag left
    /// out taken from `defaults`.
    pub fn load(&self, ctx: &super::Context, defaults: Query) -> Result<DomainCapabilities> {
        self.load_with_evidence(ctx, defaults).map(|(caps, _)| caps)
    }

    /// [`Self::load`], with the evidence the derivation recorded when the qemu driver
    /// answered (`capsd explain`); `None` for a document read from a file or another driver.
    pub fn load_with_evidence(
        &self,
        ctx: &super::Context,
        defaults: Query,
    ) -> Result<(DomainCapabilities, Option<capsd_core::evidence::Explanation>)> {
        let driver_name = self.driver.clone().unwrap_or_else(|| {
            match self.virttype.as_deref().or(defaults.virt_type.as_deref()) {
                Some("xen") => "xen",
                Some("lxc") => "lxc",
                Some("bhyve") => "bhyve",
                _ => "qemu",
            }
            .to_owned()
        });
        if let Some(path) = &self.caps {
            let (name, text) = super::fmt::read_input(path)?;
            return capsd_core::parse_any(&text)
                .map(|caps| (caps, None))
                .with_context(|| format!("{name}: not a valid domain capabilities document"));
        }
        let opts = DriverOptions {
            test_fixtures: self.fixtures.clone(),
            cache_dir: ctx.cache_dir.clone(),
            ..DriverOptions::default()
        };
        // An in-tree driver left out of this build is unavailable, an unknown name bad input.
        let driver = super::domcaps::driver(ctx, &opts, &driver_name).map_err(|e| {
            if crate::registry::IN_TREE.contains(&driver_name.as_str()) {
                e.context(Unobtainable)
            } else {
                e
            }
        })?;
        let query = Query {
            emulator: self.emulatorbin.clone().or(defaults.emulator),
            arch: self.arch.clone().or(defaults.arch),
            machine: self.machine.clone().or(defaults.machine),
            virt_type: self.virttype.clone().or(defaults.virt_type),
            libvirt: self.libvirt_version.clone(),
        };
        let (caps, evidence) = capsd_core::evidence::record(|| driver.domain_capabilities(&query));
        let evidence = (driver_name == "qemu").then_some(evidence);
        caps.map(|caps| (caps, evidence)).map_err(|e: DriverError| {
            let bad_input = e.kind() == ErrorKind::InvalidInput;
            let e = anyhow::Error::new(e).context(format!("driver '{driver_name}', query {query}"));
            if bad_input {
                e
            } else {
                e.context(Unobtainable)
            }
        })
    }
}

/// Marks an error as "the capabilities could not be obtained" (not the input's fault).
#[derive(Debug)]
pub struct Unobtainable;

impl std::fmt::Display for Unobtainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the capabilities could not be obtained")
    }
}

/// `--format text|json` for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReportFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The libvirt domain definition (`<domain type=...>`), or `-` for standard input.
    domain: PathBuf,
    #[command(flatten)]
    source: CapsSource,
    /// Output form.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Exit 1 also when something is unknown (the capabilities make no statement about it).
    #[arg(long)]
    strict: bool,
}

/// Exit code for bad input (unreadable or invalid domain or capabilities).
pub const BAD_INPUT: u8 = 2;
/// Exit code when the capabilities could not be obtained ([`Unobtainable`]).
pub const NO_CAPABILITIES: u8 = 3;

pub fn run(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    match check(ctx, &args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("capsd: error: {e:#}");
            let code = if e.downcast_ref::<Unobtainable>().is_some() { NO_CAPABILITIES } else { BAD_INPUT };
            Ok(ExitCode::from(code))
        }
    }
}

fn check(ctx: &super::Context, args: &Args) -> Result<ExitCode> {
    let (name, text) = super::fmt::read_input(&args.domain)?;
    let domain = Domain::parse(&text).with_context(|| format!("{name}: not a usable domain definition"))?;
    // The domain's own type, arch, machine and emulator make the default query.
    let defaults = Query {
        emulator: domain.emulator().map(PathBuf::from),
        arch: domain.arch().map(str::to_owned),
        machine: domain.machine().map(str::to_owned),
        virt_type: Some(domain.virt_type().to_owned()),
        libvirt: None,
    };
    let (caps, evidence) = args.source.load_with_evidence(ctx, defaults)?;
    let mut report =
        capsd_analysis::check(&domain, &caps).with_context(|| format!("{name}: not a usable domain definition"))?;
    if let Some(ex) = &evidence {
        report.attach_evidence(ex);
    }
    let out = match args.format {
        ReportFormat::Text => report.to_text(),
        ReportFormat::Json => {
            let v = serde_json::json!({
                "domain": name,
                "capabilities": { "domain": caps.domain, "arch": caps.arch, "machine": caps.machine, "path": caps.path },
                "findings": report.findings,
                "summary": {
                    "supported": report.count(capsd_analysis::Verdict::Supported),
                    "unsupported": report.count(capsd_analysis::Verdict::Unsupported),
                    "unknown": report.count(capsd_analysis::Verdict::Unknown),
                },
            });
            serde_json::to_string_pretty(&v)? + "\n"
        }
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    let failed = report.has_unsupported() || (args.strict && !report.all_supported());
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

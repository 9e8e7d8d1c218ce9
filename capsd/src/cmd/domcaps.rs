//! `capsd domcapabilities`: ask one driver for the document, like `virsh domcapabilities`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use capsd_core::Query;

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
    /// Output form.
    #[arg(long, value_enum, default_value_t = Format::Xml)]
    format: Format,
    /// driver-test: directory of golden documents to serve.
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
}

/// The embedded drivers plus the plugins of `--plugin-dir`.
pub fn registry(ctx: &super::Context, opts: &DriverOptions) -> Result<Registry> {
    let reg = Registry::embedded(opts)?;
    let _ = &ctx.plugin_dir;
    Ok(reg)
}

pub fn run(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    let opts = DriverOptions { test_fixtures: args.fixtures.clone() };
    let reg = registry(ctx, &opts)?;
    let driver = reg.get(&args.driver)?;
    let query = Query { emulator: args.emulatorbin, arch: args.arch, machine: args.machine, virt_type: args.virttype };
    let caps =
        driver.domain_capabilities(&query).with_context(|| format!("driver '{}', query {query}", args.driver))?;
    std::io::stdout().lock().write_all(args.format.render(&caps).as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

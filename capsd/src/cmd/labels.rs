//! `capsd labels` and `capsd traits`: Kubernetes node labels (KubeVirt's conventions) and
//! placement traits (OpenStack Nova's) from a capabilities document or a driver query. See
//! the capsd-analysis crate docs for the mapping and its sources.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use capsd_core::Query;

use super::check::{CapsSource, ReportFormat};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: CapsSource,
    /// Output form: `text` is one `key=value` (labels) or one name (traits) per line.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
}

pub fn run_labels(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    let caps = args.source.load(ctx, Query::default())?;
    let labels = capsd_analysis::kubevirt_labels(&caps);
    let out = match args.format {
        ReportFormat::Text => labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect::<String>(),
        ReportFormat::Json => serde_json::to_string_pretty(&labels)? + "\n",
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_traits(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    let caps = args.source.load(ctx, Query::default())?;
    let traits = capsd_analysis::nova_traits(&caps);
    let out = match args.format {
        ReportFormat::Text => traits.iter().map(|t| format!("{t}\n")).collect::<String>(),
        ReportFormat::Json => serde_json::to_string_pretty(&traits)? + "\n",
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

//! `capsd diff A B`: what one capabilities document states that the other does not, fact by
//! fact. Exit 0: identical facts; 1: different; 2: bad input (like diff(1)).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use capsd_core::DomainCapabilities;

use super::check::{ReportFormat, BAD_INPUT};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// First document (XML or JSON).
    a: PathBuf,
    /// Second document (XML or JSON).
    b: PathBuf,
    /// Output form.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
}

/// Read one capabilities document (XML or JSON) from a file or `-`.
pub fn load(path: &std::path::Path) -> Result<(String, DomainCapabilities)> {
    let (name, text) = super::fmt::read_input(path)?;
    let caps =
        capsd_core::parse_any(&text).with_context(|| format!("{name}: not a valid domain capabilities document"))?;
    Ok((name, caps))
}

pub fn run(args: Args) -> Result<ExitCode> {
    let loaded = load(&args.a).and_then(|a| Ok((a, load(&args.b)?)));
    let ((an, a), (bn, b)) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("capsd: error: {e:#}");
            return Ok(ExitCode::from(BAD_INPUT));
        }
    };
    let d = capsd_analysis::diff(&a, &b);
    let out = match args.format {
        ReportFormat::Text => d.to_text(&an, &bn),
        ReportFormat::Json => {
            let v = serde_json::json!({ "a": an, "b": bn, "identical": d.is_empty(), "diff": d });
            serde_json::to_string_pretty(&v)? + "\n"
        }
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(if d.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

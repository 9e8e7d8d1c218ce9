//! `capsd baseline A B ...`: the capabilities document every given host satisfies.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::output::Format;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The hosts' documents (XML or JSON), one per host; all of one domain type and arch.
    #[arg(required = true, num_args = 1..)]
    docs: Vec<PathBuf>,
    /// Output form.
    #[arg(long, value_enum, default_value_t = Format::Xml)]
    format: Format,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let mut docs = Vec::new();
    let mut names = Vec::new();
    for p in &args.docs {
        let (name, caps) = super::diff::load(p)?;
        names.push(name);
        docs.push(caps);
    }
    let base = capsd_analysis::baseline(&docs).with_context(|| format!("baseline of {}", names.join(", ")))?;
    std::io::stdout().lock().write_all(args.format.render(&base).as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

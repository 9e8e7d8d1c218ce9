//! `capsd fmt`: read a document (XML or JSON, detected) and write it in the chosen form.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::output::Format;

/// Largest document accepted (libvirt's own are under 100 KiB).
const MAX_INPUT: u64 = 16 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output form.
    #[arg(long, value_enum, default_value_t = Format::Xml)]
    format: Format,
    /// The document to read, or `-` for standard input.
    file: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (name, text) = read_input(&args.file)?;
    let caps =
        capsd_core::parse_any(&text).with_context(|| format!("{name}: not a valid domain capabilities document"))?;
    let out = args.format.render(&caps);
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to standard output")?;
    Ok(ExitCode::SUCCESS)
}

/// Read a file or stdin, refusing inputs larger than [`MAX_INPUT`] without reading them whole.
pub fn read_input(path: &std::path::Path) -> Result<(String, String)> {
    let (name, reader): (String, Box<dyn Read>) = if path.as_os_str() == "-" {
        ("<stdin>".to_owned(), Box::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        (path.display().to_string(), Box::new(f))
    };
    let mut buf = Vec::new();
    reader.take(MAX_INPUT + 1).read_to_end(&mut buf).with_context(|| format!("reading {name}"))?;
    if buf.len() as u64 > MAX_INPUT {
        anyhow::bail!("{name}: input larger than {} MiB", MAX_INPUT / (1024 * 1024));
    }
    let text = String::from_utf8(buf).with_context(|| format!("{name}: not UTF-8 text"))?;
    Ok((name, text))
}

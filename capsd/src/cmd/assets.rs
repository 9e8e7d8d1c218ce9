//! `capsd generate-assets` (hidden, not in the pages or completions): the man pages and shell completions of this very binary,
//! written from its clap definitions, so `--help`, the pages and the completions cannot drift
//! apart, and the agent's OpenAPI description, the very bytes its `/v1/openapi.json` serves.
//! `cargo xtask deb` runs it on the binary it packages (same features, same version).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write a section 1 man page for capsd and for each subcommand (capsd-SUBCOMMAND.1) here.
    #[arg(long, value_name = "DIR")]
    man: Option<PathBuf>,
    /// Write completions here: capsd.bash, _capsd (zsh) and capsd.fish.
    #[arg(long, value_name = "DIR")]
    completions: Option<PathBuf>,
    /// Write the agent's OpenAPI 3.1 description (what `capsd serve` answers at
    /// /v1/openapi.json) to this file, replacing it whole.
    #[arg(long, value_name = "FILE")]
    openapi: Option<PathBuf>,
}

/// Write what `args` asks for, from the CLI's definitions.
pub fn run(args: Args) -> Result<ExitCode> {
    let cmd = <crate::Cli as clap::CommandFactory>::command();
    if args.man.is_none() && args.completions.is_none() && args.openapi.is_none() {
        bail!("nothing to write: give --man DIR, --completions DIR and/or --openapi FILE");
    }
    if let Some(file) = &args.openapi {
        write_whole(file, crate::agent::openapi::json().as_bytes())
            .with_context(|| format!("--openapi {}: cannot write the OpenAPI description", file.display()))?;
    }
    if let Some(dir) = &args.man {
        existing_dir(dir, "--man")?;
        let source = format!("capsd {}", cmd.get_version().unwrap_or_default());
        let mut pages = cmd.clone().disable_help_subcommand(true);
        // Gives each subcommand its display name (capsd-serve), which names its page.
        pages.build();
        write_pages(pages, dir, &source).with_context(|| format!("writing man pages to {}", dir.display()))?;
    }
    if let Some(dir) = &args.completions {
        existing_dir(dir, "--completions")?;
        let mut cmd = without_hidden_subcommands(&cmd);
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            clap_complete::generate_to(shell, &mut cmd, "capsd", dir)
                .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The page of `cmd` and of each visible subcommand, each footed with capsd's version
/// (clap_mangen's own walk would foot a subcommand's page with its bare name).
fn write_pages(cmd: clap::Command, dir: &Path, source: &str) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, source)?;
    }
    clap_mangen::Man::new(cmd).source(source.to_owned()).manual("capsd manual").generate_to(dir)?;
    Ok(())
}

/// `cmd` with its arguments and visible subcommands only: clap_complete would offer the
/// hidden ones (`capsd plugin-host`) too, and clap has no way to remove a subcommand.
fn without_hidden_subcommands(cmd: &clap::Command) -> clap::Command {
    let mut out = clap::Command::new("capsd").version(crate::VERSION);
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    out.args(cmd.get_arguments().cloned()).subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Write `bytes` to `file`. A regular file (or one to be made) is written through a
/// temporary file beside it, renamed into place: it is either the old one or the whole new
/// one, never half-written. A link is followed first (the link stays); a device or pipe
/// (`/dev/stdout`) is written in place; a directory is refused.
fn write_whole(file: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let file = match std::fs::canonicalize(file) {
        Ok(resolved) => resolved,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => file.to_path_buf(),
        Err(e) => return Err(e.into()),
    };
    match std::fs::metadata(&file) {
        Ok(m) if m.is_dir() => bail!("is a directory"),
        Ok(m) if !m.is_file() => {
            std::fs::OpenOptions::new().write(true).open(&file)?.write_all(bytes)?;
            return Ok(());
        }
        _ => {}
    }
    let name = file.file_name().context("not a file name")?;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    existing_dir(dir, "the directory of")?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

fn existing_dir(dir: &Path, flag: &str) -> Result<()> {
    if !dir.is_dir() {
        bail!("{flag} {}: not an existing directory", dir.display());
    }
    Ok(())
}

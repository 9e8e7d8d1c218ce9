//! `capsd probe`: fill the probe cache ahead of queries, for the named emulators or every
//! `qemu-system-*` on `PATH`, several at a time, with progress (a bar on a terminal, one
//! line per emulator otherwise). An entry that is present and valid is not probed again.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::registry::DriverOptions;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Every `qemu-system-*` binary found on PATH.
    #[arg(long, conflicts_with = "emulatorbin")]
    all: bool,
    /// Emulator binaries to probe.
    #[arg(long = "emulatorbin", value_name = "PATH", num_args = 1..)]
    emulatorbin: Vec<PathBuf>,
    /// Probe the one emulator named with --emulatorbin afresh (the cache is neither read nor
    /// written) and write everything the probe learnt to FILE: each accelerator's QMP
    /// exchanges, every host fact capsd consults (libvirt's cpu_map included) and the
    /// installed libvirt's release, as JSON (format: docs/recording.md). `capsd
    /// domcapabilities --replay FILE` answers from it on any machine.
    #[arg(long, value_name = "FILE", conflicts_with = "all")]
    record: Option<PathBuf>,
    /// Emulators probed at once (default: one per CPU).
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
}

/// Every `qemu-system-*` executable in the `PATH` directories (first one of each name), plus
/// `/usr/libexec/qemu-kvm` where it exists.
pub fn find_emulators() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for dir in std::env::split_paths(&path) {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut here: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("qemu-system-"))
            .map(|e| e.path())
            .filter(|p| is_executable(p))
            .collect();
        here.sort();
        for p in here {
            if names.insert(p.file_name().map(|n| n.to_owned())) {
                out.push(p);
            }
        }
    }
    let kvm = Path::new("/usr/libexec/qemu-kvm");
    if is_executable(kvm) {
        out.push(kvm.to_owned());
    }
    out
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Progress output: indicatif's bar on a terminal (result lines printed above it), plain
/// numbered lines otherwise (logs, CI).
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { total: usize, done: AtomicUsize },
}

impl Progress {
    fn new(total: usize) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {elapsed}") {
                bar.set_style(style.progress_chars("#>."));
            }
            Progress::Bar(bar)
        } else {
            Progress::Lines { total, done: AtomicUsize::new(0) }
        }
    }

    fn finished(&self, binary: &Path, result: &Result<Duration, String>) {
        let line = match result {
            Ok(d) => format!("ok    {} ({:.2} s)", binary.display(), d.as_secs_f64()),
            Err(e) => format!("FAIL  {}: {e}", binary.display()),
        };
        match self {
            Progress::Bar(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            Progress::Lines { total, done } => {
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "[{n}/{total}] {line}");
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

pub fn run(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    if let Some(file) = &args.record {
        let [binary] = args.emulatorbin.as_slice() else {
            bail!("--record writes one emulator's probe: name exactly one with --emulatorbin PATH");
        };
        return record(binary, file);
    }
    let binaries = if args.all {
        let found = find_emulators();
        if found.is_empty() {
            bail!("--all: no qemu-system-* binary on PATH");
        }
        found
    } else if args.emulatorbin.is_empty() {
        bail!("name the emulators to probe with --emulatorbin PATH..., or use --all");
    } else {
        args.emulatorbin.clone()
    };
    let fill = crate::registry::qemu_cache_filler(&DriverOptions {
        cache_dir: ctx.cache_dir.clone(),
        ..DriverOptions::default()
    })?;
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())).max(1);
    let progress = Progress::new(binaries.len());
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.min(binaries.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(b) = binaries.get(i) else { break };
                let started = Instant::now();
                let r = fill(b).map(|()| started.elapsed()).map_err(|e| e.to_string());
                if r.is_err() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                progress.finished(b, &r);
            });
        }
    });
    progress.finish();
    let failed = failures.load(Ordering::SeqCst);
    println!(
        "probed {} emulator(s) in {:.1} s: {} ok, {failed} failed",
        binaries.len(),
        t.elapsed().as_secs_f64(),
        binaries.len() - failed
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `--record FILE`: probe `binary` and write the recording, atomically (a temporary file in
/// FILE's directory, renamed over it), so a failed probe or write leaves nothing behind.
#[cfg(feature = "qemu")]
fn record(binary: &Path, file: &Path) -> Result<ExitCode> {
    use anyhow::Context as _;
    let driver = driver_qemu::QemuDriver::new();
    let t = Instant::now();
    let data = driver.probe_data(binary).with_context(|| format!("probing {}", binary.display()))?;
    let detected = driver.target(&capsd_core::Query::default())?;
    let libvirt = match detected.source {
        driver_qemu::libvirt::version::VersionSource::NewestKnown => None,
        _ => Some(detected.version.to_string()),
    };
    let text = driver_qemu::replay::recording_json(&data, libvirt.as_deref())?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", file.display()));
    }
    eprintln!(
        "recorded {} ({} run(s), {} KiB) in {:.2} s to {}",
        binary.display(),
        data.runs.len(),
        text.len() / 1024,
        t.elapsed().as_secs_f64(),
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "qemu"))]
fn record(_binary: &Path, _file: &Path) -> Result<ExitCode> {
    bail!("--record needs the qemu driver, which this capsd was built without")
}

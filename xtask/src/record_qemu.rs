//! `cargo xtask record-qemu [--out DIR] [--oracle DIR] BINARY...`: probe real QEMU binaries
//! and write each probe (full QMP transcript of every run + host facts) as a JSON fixture,
//! `qemu-<major>.<minor>-<suffix>.json` (suffix: the binary name after `qemu-system-`), into
//! `driver-qemu/tests/data/`. With `--oracle DIR` (the output of
//! `/work/shared/tools/libvirt-oracle.sh` run with `driver-qemu/tests/data/oracle-cases.txt`),
//! also copies the libvirt documents of the cases that use these binaries into
//! `driver-qemu/tests/data/expected/<case>.xml`. `all` as the only binary records every
//! binary that a case of the case file uses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use driver_qemu::probe::{probe_many, ProbeOptions};
use driver_qemu::probe_data::ProbeData;

use crate::test::workspace_root;

/// The case file and data directory, relative to the workspace root.
pub const DATA_DIR: &str = "driver-qemu/tests/data";
pub const CASES: &str = "driver-qemu/tests/data/oracle-cases.txt";

/// One oracle case: its name and its `virsh domcapabilities` arguments.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub args: Vec<String>,
}

impl Case {
    /// The value of `--flag` in the arguments.
    pub fn arg(&self, flag: &str) -> Option<&str> {
        self.args.iter().position(|a| a == flag).and_then(|i| self.args.get(i + 1)).map(String::as_str)
    }
}

/// Read a case file (name then arguments per line; `#` comments).
pub fn read_cases(path: &Path) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut w = l.split_whitespace().map(str::to_owned);
            let name = w.next().unwrap_or_default();
            Case { name, args: w.collect() }
        })
        .collect())
}

/// The fixture file name for a probe.
pub fn fixture_name(data: &ProbeData) -> String {
    let bin = Path::new(&data.binary).file_name().and_then(|n| n.to_str()).unwrap_or("unknown");
    let suffix = bin.strip_prefix("qemu-system-").unwrap_or(bin);
    let version = data
        .runs
        .values()
        .find_map(|t| t.get("query-version"))
        .and_then(|v| Some(format!("{}.{}", v["qemu"]["major"].as_u64()?, v["qemu"]["minor"].as_u64()?)))
        .unwrap_or_else(|| "unknown".into());
    format!("qemu-{version}-{suffix}.json")
}

pub fn run(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let mut out = root.join(DATA_DIR);
    let mut oracle: Option<PathBuf> = None;
    let mut binaries: Vec<PathBuf> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(it.next().context("--out needs a directory")?),
            "--oracle" => oracle = Some(PathBuf::from(it.next().context("--oracle needs a directory")?)),
            s if s.starts_with('-') => bail!("unknown option '{s}'"),
            b => binaries.push(PathBuf::from(b)),
        }
    }
    let cases = read_cases(&root.join(CASES))?;
    if binaries.len() == 1 && binaries[0] == Path::new("all") {
        binaries = cases.iter().filter_map(|c| c.arg("--emulatorbin").map(PathBuf::from)).collect();
        binaries.sort();
        binaries.dedup();
    }
    if binaries.is_empty() {
        bail!("usage: cargo xtask record-qemu [--out DIR] [--oracle DIR] BINARY...|all");
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let t0 = std::time::Instant::now();
    // Every model's QEMU definition: replays without libvirt's cpu_map decode from them.
    let opts = ProbeOptions { all_cpu_models: true, ..ProbeOptions::default() };
    let results = probe_many(&binaries, &opts);
    println!("probed {} binaries in {:.2?}", binaries.len(), t0.elapsed());
    let mut failed = 0;
    for (bin, r) in binaries.iter().zip(results) {
        let mut data = match r {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", bin.display());
                failed += 1;
                continue;
            }
        };
        // libvirt's cpu_map is LGPL data of the recording host: it must not be committed.
        // Replays read it from the machine they run on (`driver_qemu::cpu::host`).
        data.host.cpu_map = None;
        data.host.cpu_map_error = None;
        let path = out.join(fixture_name(&data));
        let mut text = serde_json::to_string(&data)?;
        text.push('\n');
        std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
        println!("{}: {} ({} KiB)", bin.display(), path.display(), text.len() / 1024);
    }
    if let Some(dir) = oracle {
        let expected = out.join("expected");
        std::fs::create_dir_all(&expected)?;
        for c in &cases {
            let Some(bin) = c.arg("--emulatorbin") else { continue };
            if !binaries.iter().any(|b| b == Path::new(bin)) {
                continue;
            }
            let src = dir.join(format!("{}.xml", c.name));
            if src.exists() {
                std::fs::copy(&src, expected.join(format!("{}.xml", c.name)))
                    .with_context(|| format!("copying {}", src.display()))?;
            } else {
                eprintln!("case {}: no oracle output in {}", c.name, dir.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} binaries could not be probed");
    }
    Ok(())
}

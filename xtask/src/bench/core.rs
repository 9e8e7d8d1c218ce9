//! `cargo xtask bench core`: how long capsd-core takes to read (`from_xml`) and write
//! (`to_xml`) the largest reference document, and the same for the JSON form.
//!
//! Figures only mean something in an optimised build: when xtask itself was built without
//! optimisations, this group re-runs itself through `cargo run --release` (set
//! `CAPSD_BENCH_IN_PLACE=1` to measure the current build anyway).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Time spent per operation (after warm-up), and the least number of iterations.
const BUDGET: Duration = Duration::from_millis(1500);
const MIN_ITERS: usize = 200;

pub fn run() -> Result<()> {
    if super::rerun_in_release("core")? {
        return Ok(());
    }

    let (path, text) = largest_fixture()?;
    let caps = capsd_core::xml::from_xml(&text).with_context(|| format!("{}: does not parse", path.display()))?;
    let json = capsd_core::json::to_json(&caps);
    if capsd_core::xml::to_xml(&caps).trim_end() != text.trim_end() {
        bail!("{}: does not round-trip; refusing to time a wrong writer", path.display());
    }
    let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!(
        "bench core: {} ({} bytes XML, {} lines; {} bytes JSON), {profile} build",
        path.display(),
        text.len(),
        text.lines().count(),
        json.len()
    );
    println!(
        "{:<16} {:>8} {:>12} {:>12} {:>12} {:>12} {:>10}",
        "op", "iters", "mean µs", "median µs", "min µs", "p95 µs", "MB/s"
    );
    report("xml parse", text.len(), || {
        let _ = black_box(capsd_core::xml::from_xml(black_box(&text)).map(drop));
    });
    report("xml format", text.len(), || {
        black_box(capsd_core::xml::to_xml(black_box(&caps)));
    });
    report("json parse", json.len(), || {
        let _ = black_box(capsd_core::json::from_json(black_box(&json)).map(drop));
    });
    report("json format", json.len(), || {
        black_box(capsd_core::json::to_json(black_box(&caps)));
    });
    Ok(())
}

/// The biggest `*.xml` under the upstream domaincaps fixtures.
fn largest_fixture() -> Result<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/libvirt-upstream/domaincaps");
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("fixture directory {}", dir.display()))? {
        let p = entry?.path();
        if p.extension().is_some_and(|x| x == "xml") {
            let len = p.metadata()?.len();
            match &best {
                Some((l, _)) if *l >= len => {}
                _ => best = Some((len, p)),
            }
        }
    }
    let Some((_, path)) = best else { bail!("no *.xml fixture in {}", dir.display()) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path.canonicalize().unwrap_or(path), text))
}

/// Time `op` repeatedly and print one line of statistics.
fn report(name: &str, bytes: usize, mut op: impl FnMut()) {
    for _ in 0..20 {
        op();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < MIN_ITERS || start.elapsed() < BUDGET {
        let t = Instant::now();
        op();
        samples.push(t.elapsed());
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let median = samples[samples.len() / 2];
    let p95 = samples[samples.len() * 95 / 100];
    let mbps = bytes as f64 / mean.as_secs_f64() / 1e6;
    println!(
        "{name:<16} {:>8} {:>12.1} {:>12.1} {:>12.1} {:>12.1} {:>10.1}",
        samples.len(),
        us(mean),
        us(median),
        us(samples[0]),
        us(p95),
        mbps
    );
}

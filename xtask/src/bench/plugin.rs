//! `cargo xtask bench plugin`: what running a plugin in a helper process costs.
//!
//! The C test plugin `c-minimal` (a small JSON document) and the bhyve example plugin (a
//! libvirt XML document, from the `fbuf` recording) are each called
//! `CAPSD_BENCH_PLUGIN_CALLS` times (default 20000): in this process through the C ABI (what
//! capsd did before plugins moved out of process), and through a helper process (the release
//! `capsd plugin-host`, as the agent and CLI do now): median and p99 per
//! `domain_capabilities` call, both including reading the document with capsd-core's
//! reader. Also the start of a helper (spawn, exec, load, hello) with its first call, over
//! `CAPSD_BENCH_RUNS` fresh helpers (default 50).
//!
//! Plugins are built like the tests build them (`capsd-plugin/tests/support`).

#[path = "../../../capsd-plugin/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use capsd_core::{DomainCapsDriver, Query};
use capsd_plugin::{load_file, HostOptions, HostedPlugin};

use super::agent::{build_capsd, env_num};

pub fn run() -> Result<()> {
    if super::rerun_in_release("plugin")? {
        return Ok(());
    }
    let capsd = build_capsd()?;
    // The bhyve plugin reads its host facts from this recording (the helper inherits it).
    std::env::set_var("CAPSD_BHYVE_FACTS", support::bhyve_facts("fbuf"));
    let dir = support::plugin_dir(&["tp_c_minimal", "capsd_driver_bhyve"]);
    let calls: usize = env_num("CAPSD_BENCH_PLUGIN_CALLS", 20_000).max(1);
    let runs: usize = env_num("CAPSD_BENCH_RUNS", 50).max(1);
    let bhyve_query = Query { arch: Some("x86_64".into()), virt_type: Some("bhyve".into()), ..Query::default() };
    for (lib, query) in [("tp_c_minimal", Query::default()), ("capsd_driver_bhyve", bhyve_query)] {
        let path = dir.path().join(format!("lib{lib}.so"));
        let host = HostOptions::new(&capsd, ["plugin-host"]);
        let in_process = load_file(&path).with_context(|| format!("loading {}", path.display()))?;
        let name = in_process.name().to_owned();
        let (i50, i99) = per_call(&in_process, &query, calls)?;
        let hosted = HostedPlugin::new(load_file(&path)?, host.clone());
        let (h50, h99) = per_call(&hosted, &query, calls)?;
        println!(
            "bench plugin: {name} domain_capabilities, {calls} calls: in process median {i50:.2?} p99 {i99:.2?}; through its helper process median {h50:.2?} p99 {h99:.2?} (+{:.2?} median)",
            h50.saturating_sub(i50)
        );
        let mut starts = Vec::with_capacity(runs);
        for _ in 0..runs {
            let fresh = HostedPlugin::new(load_file(&path)?, host.clone());
            let t = Instant::now();
            fresh.domain_capabilities(&query).with_context(|| format!("{name} through a fresh helper"))?;
            starts.push(t.elapsed());
        }
        let (s50, s99) = quantiles(&mut starts);
        println!(
            "bench plugin: {name} helper start (spawn, exec, load, hello) + first call, {runs} runs: median {s50:.2?} p99 {s99:.2?}"
        );
    }
    Ok(())
}

/// Median and p99 of `n` calls.
fn per_call(driver: &dyn DomainCapsDriver, query: &Query, n: usize) -> Result<(Duration, Duration)> {
    driver.domain_capabilities(query).with_context(|| format!("{} answering {query}", driver.name()))?;
    let mut ts = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let caps = driver.domain_capabilities(query);
        ts.push(t.elapsed());
        caps?;
    }
    Ok(quantiles(&mut ts))
}

fn quantiles(ts: &mut [Duration]) -> (Duration, Duration) {
    ts.sort();
    let p99 = ts[((ts.len() - 1) as f64 * 0.99).round() as usize];
    (ts[ts.len() / 2], p99)
}

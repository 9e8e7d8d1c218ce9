//! Publishing this host's documents to etcd (`capsd serve --etcd ... --host-id ...`).
//!
//! What is published: for each arch in [`ARCHES`] (the host's first), each virt type
//! (`kvm`, `qemu`) and the default machine plus each alias in [`MACHINES`], the document the
//! agent serves for that query with the publishing driver (`--publish-driver`, default
//! `qemu`); queries the driver does not offer here (no emulator for the arch, KVM not
//! usable, a machine the emulator lacks) are left out. The documents come from the agent's
//! own memo ([`Agent::document`]), so publishing probes nothing the agent would not, and
//! answers stay shared. The content is handed to a [`capsd_fleet::Publisher`] after each
//! arch, so the first documents are in the store before every emulator is probed.
//!
//! Staying current: every 100 ms the task compares the agent's watch generation (bumped by
//! the watcher when host inputs change, see [`Agent::watch`]); a new generation collects
//! again (the record's `inputs_changed_ms` says when) and the publisher writes what
//! changed, so a change the watcher notices is in the store well within a second of being
//! noticed. A query whose derivation failed (a probe that timed out or crashed, not one the
//! driver does not offer) is left out, and the queries are asked again after
//! [`Options::retry`] (doubling up to [`RETRY_MAX`], back to the first delay once nothing
//! fails): a probe that failed once under load does not keep that arch out of the store
//! until the host's inputs change. etcd itself is the publisher's business
//! (lease, keep-alive, backoff, catch-up): nothing here waits for it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use capsd_core::Query;
use capsd_fleet::{Content, Cpu, Emulator, HostRecord, PublishConfig, Publisher, QueryKey};

use super::{Agent, DocKey};

/// Arches, virt types and machine aliases asked: capsd-fleet's list (its per-host grants
/// name exactly these queries' keys).
pub use capsd_fleet::{ARCHES, MACHINES, VIRT_TYPES};

/// The first delay before asking again the queries that failed (see the module's text).
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
/// The longest delay between two such attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(600);

/// `capsd serve`'s publishing options.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PublishConfig,
    /// The driver whose documents are published.
    pub driver: String,
    /// The first delay before failed queries are asked again ([`RETRY_FIRST`]).
    pub retry: Duration,
}

/// Publish until `stop` turns true, then revoke the lease. When the publisher is refused
/// for good (the host id is another agent's), the reason goes to `refused` and this ends.
pub async fn run(
    agent: Arc<Agent>,
    opts: Options,
    mut stop: tokio::sync::watch::Receiver<bool>,
    refused: tokio::sync::mpsc::Sender<String>,
) {
    let publisher = match Publisher::start(opts.config.clone()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "etcd: not publishing");
            return;
        }
    };
    let mut seen = None;
    let mut inputs_changed_ms = None;
    let mut refusal = publisher.refused.clone();
    // When to ask again the queries that failed, and the delay that led there.
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let g = agent.generation();
        let due = retry.is_some_and(|(at, _)| tokio::time::Instant::now() >= at);
        if seen != Some(g) || due {
            if seen.is_some() && seen != Some(g) {
                inputs_changed_ms = Some(capsd_fleet::now_ms());
            }
            if let Some((_, after)) = retry.filter(|_| due && seen == Some(g)) {
                tracing::info!(after_ms = after.as_millis() as u64, "etcd: asking again the queries that failed");
            }
            seen = Some(g);
            let failed = collect(&agent, &opts, &publisher, &stop, inputs_changed_ms).await;
            // The first failure waits `opts.retry`, each one after it twice the delay before.
            retry = (failed > 0).then(|| {
                let d = retry.map_or(opts.retry, |(_, d)| (d * 2).min(RETRY_MAX.max(opts.retry)));
                (tokio::time::Instant::now() + d, d)
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => break,
            Ok(()) = refusal.changed() => {
                let why = refusal.borrow().clone();
                if let Some(why) = why {
                    let _ = refused.send(why).await;
                    return;
                }
            }
        }
        if *stop.borrow() {
            break;
        }
    }
    publisher.stop(Duration::from_secs(3)).await;
}

/// Ask every query, handing the content over after each arch; how many failed (see the
/// module's text).
async fn collect(
    agent: &Arc<Agent>,
    opts: &Options,
    publisher: &Publisher,
    stop: &tokio::sync::watch::Receiver<bool>,
    inputs_changed_ms: Option<u64>,
) -> usize {
    let driver = match agent.registry.get(&opts.driver) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "etcd: nothing to publish");
            return 0;
        }
    };
    let mut failed = 0;
    let host_arch = capsd_core::arch::of_this_build();
    let arches = std::iter::once(host_arch).chain(ARCHES.into_iter().filter(|a| *a != host_arch));
    let mut docs: BTreeMap<QueryKey, Arc<str>> = BTreeMap::new();
    for arch in arches {
        for vt in VIRT_TYPES {
            for m in std::iter::once(None).chain(MACHINES.into_iter().map(Some)) {
                if *stop.borrow() {
                    return failed;
                }
                let query = Query {
                    arch: Some(arch.to_owned()),
                    virt_type: Some(vt.to_owned()),
                    machine: m.map(str::to_owned),
                    ..Query::default()
                };
                let key = DocKey { driver: opts.driver.clone(), query };
                match agent.document(key, driver.clone()).await {
                    Ok(doc) => {
                        let Ok(q) = QueryKey::new(vt, arch, m) else { continue };
                        docs.insert(q, Arc::from(String::from_utf8_lossy(&doc.xml).as_ref()));
                    }
                    Err(e) if e.kind() == capsd_core::ErrorKind::ProbeFailed => {
                        failed += 1;
                        tracing::warn!(error = %e, arch, virt_type = vt, "etcd: not publishing a query that failed (asked again later)")
                    }
                    Err(e) => tracing::debug!(error = %e, arch, virt_type = vt, machine = ?m, "not offered here"),
                }
            }
        }
        let mut record = record(opts, driver.details(), &docs).await;
        record.inputs_changed_ms = inputs_changed_ms;
        publisher.update(Content { record, docs: docs.clone() });
    }
    failed
}

/// The host record for `docs`.
async fn record(opts: &Options, details: Vec<(String, String)>, docs: &BTreeMap<QueryKey, Arc<str>>) -> HostRecord {
    let paths: BTreeSet<String> = docs.values().filter_map(|x| element_text(x, "path")).collect();
    // Only the QEMU driver's paths are binaries that ran here (driver-test's name the
    // machine its documents were recorded on).
    let run = opts.driver == "qemu";
    let emulators = tokio::task::spawn_blocking(move || {
        paths.into_iter().map(|p| Emulator { version: run.then(|| emulator_version(&p)).flatten(), path: p }).collect()
    })
    .await
    .unwrap_or_default();
    HostRecord {
        id: opts.config.host_id.clone(),
        capsd_version: env!("CARGO_PKG_VERSION").to_owned(),
        driver: opts.driver.clone(),
        libvirt_version: details.into_iter().find(|(k, _)| k == "libvirt_version").map(|(_, v)| v),
        emulators,
        cpu: host_cpu(),
        updated_ms: 0,
        inputs_changed_ms: None,
        documents: 0,
    }
}

/// The text of the first `<name>` element of a libvirt XML document.
fn element_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find('<')? + start;
    Some(xml[start..end].to_owned())
}

/// `QEMU emulator version 7.2.19 (Debian ...)` → `7.2.19`, from `BINARY --version`.
fn emulator_version(path: &str) -> Option<String> {
    let out = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.lines().next()?.split(" version ").nth(1)?;
    rest.split_whitespace().next().map(str::to_owned)
}

/// The host CPU from /proc/cpuinfo (vendor and model name where the kernel gives them).
fn host_cpu() -> Cpu {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    Cpu {
        arch: capsd_core::arch::of_this_build().to_owned(),
        vendor: field("vendor_id").or_else(|| field("CPU implementer")),
        model: field("model name").or_else(|| field("cpu model")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_text_reads_the_first_element() {
        let x = "<domainCapabilities>\n  <path>/usr/bin/qemu-system-x86_64</path>\n  <domain>kvm</domain>";
        assert_eq!(element_text(x, "path").as_deref(), Some("/usr/bin/qemu-system-x86_64"));
        assert_eq!(element_text(x, "machine"), None);
    }
}

/// The integration tests' real etcd, for the test below.
#[cfg(test)]
#[path = "../../tests/etcd_support/mod.rs"]
mod etcd_support;

#[cfg(test)]
mod retry_tests {
    use super::etcd_support;
    use super::*;
    use crate::registry::Registry;
    use capsd_core::{DomainCapabilities, DomainCapsDriver, DriverError};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Offers one query, the host arch's KVM default machine, whose first `failures`
    /// derivations fail as a probe that timed out does; everything else is not offered.
    struct Flaky {
        failures: usize,
        calls: AtomicUsize,
    }

    impl DomainCapsDriver for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }

        fn availability(&self) -> capsd_core::Availability {
            capsd_core::Availability::Available
        }

        fn domain_capabilities(&self, q: &Query) -> Result<DomainCapabilities, DriverError> {
            let host = capsd_core::arch::of_this_build();
            if q.arch.as_deref() != Some(host) || q.virt_type.as_deref() != Some("kvm") || q.machine.is_some() {
                return Err(DriverError::not_supported("flaky", "one query only"));
            }
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                return Err(DriverError::probe_failed("/usr/bin/qemu-flaky", "timed out"));
            }
            Ok(DomainCapabilities { arch: host.to_owned(), domain: "kvm".into(), ..DomainCapabilities::default() })
        }
    }

    /// The hash host `id` publishes for `q`, if any.
    async fn published(
        cfg: &capsd_fleet::EtcdConfig,
        layout: &capsd_fleet::Layout,
        id: &str,
        q: &QueryKey,
    ) -> Option<String> {
        let client = capsd_fleet::store::connect(cfg).await.ok()?;
        let snap = capsd_fleet::store::Snapshot::read(&client, layout, &capsd_fleet::store::Scope::All).await.ok()?;
        snap.hosts.get(id)?.docs.get(q).cloned()
    }

    /// A query whose probe failed is asked again (with no change of the host's inputs) and
    /// published once it succeeds; before, it stayed out of the store until the inputs changed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_that_failed_is_asked_again_and_published() {
        let etcd = etcd_support::Etcd::start(1);
        let flaky = Arc::new(Flaky { failures: 2, calls: AtomicUsize::new(0) });
        let mut registry = Registry::default();
        registry.add(flaky.clone());
        let agent = Arc::new(Agent::new(registry));
        let cfg = capsd_fleet::EtcdConfig::new(vec![etcd.endpoints()]);
        let layout = capsd_fleet::Layout::new("/capsd").unwrap();
        let opts = Options {
            config: PublishConfig {
                etcd: cfg.clone(),
                layout: layout.clone(),
                host_id: "flaky-host".into(),
                ttl: Duration::from_secs(10),
                owner: "test".into(),
                take_over: false,
            },
            driver: "flaky".into(),
            retry: Duration::from_millis(200),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (refused_tx, _refused_rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(run(agent.clone(), opts, stop_rx, refused_tx));
        let q = QueryKey::new("kvm", capsd_core::arch::of_this_build(), None).unwrap();
        let t = std::time::Instant::now();
        let hash = loop {
            if let Some(h) = published(&cfg, &layout, "flaky-host", &q).await {
                break h;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{q} not published within 60 s ({} derivations)",
                flaky.calls.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "two failures, then the document");
        assert_eq!(agent.generation(), 0, "the host's inputs did not change");
        assert_eq!(hash.len(), 64);
        // Nothing fails any more: no more derivations (the document is kept, no retry is due).
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        stop_tx.send(true).unwrap();
        task.await.unwrap();
    }
}

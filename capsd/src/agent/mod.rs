//! The host agent (`capsd serve`): the CLI's answers over HTTP, warm ones from memory.
//!
//! A document is derived once per (driver, query) and kept rendered (XML and JSON) in
//! memory, so a warm request is a map lookup. What makes a kept document stale is what
//! makes a probe stale (see `driver_qemu::cache`): a watcher re-reads those host inputs
//! plus the identity of every emulator binary a kept document names, every
//! `recheck` interval, off the request path; a change drops every kept document (the next
//! request derives again, through the driver and its probe cache, which re-checks its own
//! key in full). Answers can thus lag a host change by at most one interval.
//!
//! - [`server`]: listeners (Unix socket, loopback TCP), routes, errors as HTTP statuses.
//! - [`metrics`]: counters and histograms for `/metrics`.
//! - [`openapi`]: the OpenAPI description of the routes (`/v1/openapi.json`).
//! - [`flight`]: one derivation per key at a time; its failure goes to the requests that
//!   waited for it.
//! - [`emulators`]: which `emulatorbin` the agent runs.
//! - [`auth`]: the bearer token of loopback TCP.
//! - [`conn`]: connections under limits and timeouts.
//! - [`publish`]: this host's documents into etcd (`--etcd`), kept current.
//!
//! Work is bounded: at most [`Limits::max_probes`] derivations (each may probe) run at once,
//! on blocking threads; more wait for a turn as async tasks, holding no thread. Kept
//! documents are bounded in count and bytes; past either bound the least recently used go.

pub mod activation;
pub mod auth;
pub mod conn;
pub mod emulators;
pub mod flight;
pub mod metrics;
pub mod openapi;
pub mod publish;
pub mod server;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use capsd_core::{DomainCapsDriver, DriverError, Query};

use crate::registry::Registry;

/// What a document is kept under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocKey {
    pub driver: String,
    pub query: Query,
}

/// A derived document in both forms.
#[derive(Debug)]
pub struct Doc {
    pub xml: Bytes,
    pub json: Bytes,
    /// The answer's headers naming the libvirt release it was printed for and by which
    /// release's rules (qemu), made when it was kept.
    pub headers: Vec<(axum::http::HeaderName, axum::http::HeaderValue)>,
    /// The watch generation it was derived in.
    generation: u64,
}

/// A failed derivation: when it ended, and its error.
type Failure = (Instant, DriverError);

/// Bounds on the agent's work and memory.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Derivations (and so probes) running at once.
    pub max_probes: usize,
    /// Documents kept in memory.
    pub cache_entries: usize,
    /// Bytes of kept documents (XML and JSON forms together).
    pub cache_bytes: usize,
    /// How long a request may wait for a derivation (or the driver listing) before it is
    /// answered 504; the derivation goes on.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_probes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cache_entries: 1024,
            cache_bytes: 64 << 20,
            request_timeout: Duration::from_secs(60),
        }
    }
}

/// A kept document and when it was last used (a tick of [`DocCache::clock`]).
#[derive(Debug)]
struct Kept {
    doc: Arc<Doc>,
    used: AtomicU64,
}

/// Kept documents, least recently used first out.
#[derive(Debug, Default)]
struct DocCache {
    map: HashMap<DocKey, Kept>,
    bytes: usize,
}

impl DocCache {
    fn insert(&mut self, key: DocKey, doc: Arc<Doc>, now: u64, limits: &Limits) -> usize {
        self.bytes += doc.size();
        if let Some(old) = self.map.insert(key.clone(), Kept { doc, used: AtomicU64::new(now) }) {
            self.bytes -= old.doc.size();
        }
        let mut evicted = 0;
        // The new document stays (ties in recency must not evict it).
        while self.map.len() > limits.cache_entries.max(1) || (self.bytes > limits.cache_bytes && self.map.len() > 1) {
            let Some(oldest) = self
                .map
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, k)| k.used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(k) = self.map.remove(&oldest) {
                self.bytes -= k.doc.size();
                evicted += 1;
            }
        }
        evicted
    }
}

/// Shared state of the agent.
pub struct Agent {
    pub registry: Registry,
    pub metrics: Arc<metrics::Metrics>,
    /// Which `emulatorbin` may be run.
    pub policy: emulators::EmulatorPolicy,
    limits: Limits,
    /// Turns to derive (`limits.max_probes`).
    turns: Arc<tokio::sync::Semaphore>,
    docs: RwLock<DocCache>,
    /// Ticks for least-recently-used order: one per kept insert.
    clock: AtomicU64,
    /// Per key: the last derivation failure, for the requests that waited for it.
    flights: flight::Flights<DocKey, Option<Failure>>,
    generation: AtomicU64,
    /// Emulator binaries named by kept documents (their `<path>`), with their identity when
    /// first seen.
    watched: Mutex<BTreeMap<PathBuf, String>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("registry", &self.registry).finish_non_exhaustive()
    }
}

impl Doc {
    fn size(&self) -> usize {
        self.xml.len() + self.json.len()
    }
}

impl Agent {
    /// An agent with the default limits and no `--emulator`.
    #[cfg(test)]
    pub fn new(registry: Registry) -> Self {
        let policy = emulators::EmulatorPolicy::new(&[]).expect("no configured emulators to check");
        Self::with_limits(registry, policy, Limits::default())
    }

    pub fn with_limits(registry: Registry, policy: emulators::EmulatorPolicy, limits: Limits) -> Self {
        Agent {
            registry,
            metrics: Arc::default(),
            policy,
            limits,
            turns: Arc::new(tokio::sync::Semaphore::new(limits.max_probes.max(1))),
            docs: RwLock::new(DocCache::default()),
            clock: AtomicU64::new(0),
            flights: flight::Flights::default(),
            generation: AtomicU64::new(0),
            watched: Mutex::new(BTreeMap::new()),
        }
    }

    /// The document for `key`: from memory when kept and current, else derived by `driver`
    /// (one derivation per key at a time). The derivation finishes and is kept even when
    /// the client that asked goes away, and holds the key until then: a request that comes
    /// meanwhile waits for it instead of deriving a second time. When it fails, the requests
    /// that were waiting get its error rather than each deriving (and probing) again in turn.
    pub async fn document(
        self: &Arc<Self>,
        key: DocKey,
        driver: Arc<dyn DomainCapsDriver>,
    ) -> Result<Arc<Doc>, DriverError> {
        if let Some(d) = self.hit(&key) {
            return Ok(d);
        }
        let waiting_since = Instant::now();
        let mut ticket = self.flights.enter(&key).await;
        if let Some(d) = self.kept(&key) {
            self.metrics.doc_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(d);
        }
        if let Some((at, e)) = ticket.as_ref() {
            if *at >= waiting_since {
                return Err(share(e));
            }
        }
        self.metrics.doc_misses.fetch_add(1, Ordering::Relaxed);
        // Wait for a turn without holding a thread.
        let turn = self
            .turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DriverError::probe_failed(key.driver.clone(), "the agent is shutting down".to_owned()))?;
        let me = self.clone();
        let driver_name = key.driver.clone();
        tokio::task::spawn_blocking(move || {
            let doc = me.derive(key, driver.as_ref());
            drop(turn);
            *ticket = match &doc {
                Ok(_) => None,
                Err(e) => Some((Instant::now(), share(e))),
            };
            drop(ticket);
            doc
        })
        .await
        .map_err(|e| DriverError::probe_failed(driver_name, format!("driver task failed: {e}")))?
    }

    /// Ask the driver, render both forms, keep the result.
    fn derive(&self, key: DocKey, driver: &dyn DomainCapsDriver) -> Result<Arc<Doc>, DriverError> {
        // Taken before deriving: a change seen during derivation makes this entry stale.
        let generation = self.generation.load(Ordering::Acquire);
        let caps = match driver.domain_capabilities(&key.query) {
            Ok(c) => {
                self.metrics.driver_ok.fetch_add(1, Ordering::Relaxed);
                c
            }
            Err(e) => {
                self.metrics.driver_err.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let xml = Bytes::from(capsd_core::xml::to_xml(&caps));
        let json = Bytes::from(capsd_core::json::to_json(&caps));
        if let Some(p) = caps.path {
            let p = PathBuf::from(p);
            let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
            w.entry(p).or_insert_with_key(|p| file_stamp(p));
        }
        let headers = crate::registry::libvirt_rules(&key.driver, &key.query)
            .map(|l| server::libvirt_headers(&l))
            .unwrap_or_default();
        let doc = Arc::new(Doc { xml, json, headers, generation });
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let evicted = self.docs.write().unwrap_or_else(|e| e.into_inner()).insert(key, doc.clone(), now, &self.limits);
        self.metrics.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        Ok(doc)
    }

    /// The kept, current document for `key`, counted as a hit.
    pub fn hit(&self, key: &DocKey) -> Option<Arc<Doc>> {
        let d = self.kept(key)?;
        self.metrics.doc_hits.fetch_add(1, Ordering::Relaxed);
        Some(d)
    }

    pub fn request_timeout(&self) -> Duration {
        self.limits.request_timeout
    }

    fn kept(&self, key: &DocKey) -> Option<Arc<Doc>> {
        let g = self.generation.load(Ordering::Acquire);
        let docs = self.docs.read().unwrap_or_else(|e| e.into_inner());
        let k = docs.map.get(key).filter(|k| k.doc.generation == g)?;
        // Recency in ticks of inserts (the only time anything is evicted): a hit reads the
        // clock and writes only when the stamp changes, so hot documents stay read-shared.
        let now = self.clock.load(Ordering::Relaxed);
        if k.used.load(Ordering::Relaxed) != now {
            k.used.store(now, Ordering::Relaxed);
        }
        Some(k.doc.clone())
    }

    /// The watch generation: changes whenever kept documents were dropped.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drop every kept document.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        *self.docs.write().unwrap_or_else(|e| e.into_inner()) = DocCache::default();
        self.metrics.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a watched binary changed since it was first seen (and remember the new
    /// identities).
    fn binaries_changed(&self) -> bool {
        let snapshot: Vec<(PathBuf, String)> = self
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect();
        let changed: Vec<(PathBuf, String)> = snapshot
            .into_iter()
            .filter_map(|(p, old)| Some(file_stamp(&p)).filter(|now| *now != old).map(|now| (p, now)))
            .collect();
        let mut w = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        for (p, now) in &changed {
            tracing::info!(binary = %p.display(), "emulator binary changed");
            w.insert(p.clone(), now.clone());
        }
        !changed.is_empty()
    }

    /// Re-read the watched inputs every `every`; drop kept documents when they change.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut last = tokio::task::spawn_blocking(host_fingerprint).await.unwrap_or_default();
        loop {
            tokio::time::sleep(every).await;
            let me = self.clone();
            let Ok((host, binaries)) =
                tokio::task::spawn_blocking(move || (host_fingerprint(), me.binaries_changed())).await
            else {
                continue;
            };
            if host != last || binaries {
                tracing::info!("host inputs changed; dropping in-memory documents");
                self.invalidate_all();
                last = host;
            }
        }
    }
}

/// The same error again, for another request (`DriverError` is not `Clone`: an I/O error is
/// carried over as its kind and text).
fn share(e: &DriverError) -> DriverError {
    match e {
        DriverError::Unavailable { driver, reason } => {
            DriverError::Unavailable { driver: driver.clone(), reason: reason.clone() }
        }
        DriverError::NotSupported { driver, what } => DriverError::not_supported(driver, what.clone()),
        DriverError::InvalidInput { field, value, reason } => {
            DriverError::invalid(field, value.clone(), reason.clone())
        }
        DriverError::ProbeFailed { target, reason } => DriverError::probe_failed(target.clone(), reason.clone()),
        DriverError::Io { path, source } => {
            DriverError::io(path.clone(), std::io::Error::new(source.kind(), source.to_string()))
        }
        other => DriverError::probe_failed("driver", other.to_string()),
    }
}

/// Identity of a file (size, times, inode), or `absent`.
fn file_stamp(p: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) => format!(
            "{}|{}.{}|{}.{}|{}|{}",
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino(),
            m.dev()
        ),
        Err(_) => "absent".to_owned(),
    }
}

/// The host part of the probe cache key (QEMU modules, firmware descriptors, kernel, CPU
/// microcode, KVM), when the qemu driver is built in.
#[cfg(feature = "qemu")]
fn host_fingerprint() -> String {
    use driver_qemu::cache::{HostKey, KeySources};
    serde_json::to_string(&HostKey::read(&KeySources::host(), env!("CARGO_PKG_VERSION"))).unwrap_or_default()
}

#[cfg(not(feature = "qemu"))]
fn host_fingerprint() -> String {
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A driver that takes a while and counts its derivations.
    struct Slow {
        calls: AtomicUsize,
    }

    impl DomainCapsDriver for Slow {
        fn name(&self) -> &str {
            "slow"
        }

        fn availability(&self) -> capsd_core::Availability {
            capsd_core::Availability::Available
        }

        fn domain_capabilities(&self, _: &Query) -> Result<capsd_core::DomainCapabilities, DriverError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            Ok(capsd_core::DomainCapabilities::default())
        }
    }

    /// A driver that takes a while to fail and counts its attempts.
    struct SlowFailure {
        calls: AtomicUsize,
    }

    impl DomainCapsDriver for SlowFailure {
        fn name(&self) -> &str {
            "slow-failure"
        }

        fn availability(&self) -> capsd_core::Availability {
            capsd_core::Availability::Available
        }

        fn domain_capabilities(&self, _: &Query) -> Result<capsd_core::DomainCapabilities, DriverError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            Err(DriverError::probe_failed("/usr/bin/qemu-broken", "timed out"))
        }
    }

    #[test]
    fn the_newest_document_survives_a_tie_in_recency() {
        let limits = Limits { max_probes: 1, cache_entries: 2, cache_bytes: usize::MAX, ..Limits::default() };
        let key = |m: &str| DocKey { driver: "t".into(), query: Query { machine: Some(m.into()), ..Query::default() } };
        let doc = || {
            Arc::new(Doc {
                xml: Bytes::from_static(b"<x/>"),
                json: Bytes::from_static(b"{}"),
                headers: Vec::new(),
                generation: 0,
            })
        };
        let mut c = DocCache::default();
        c.insert(key("a"), doc(), 5, &limits);
        c.insert(key("b"), doc(), 5, &limits);
        // All three equally recent: one of the older two goes.
        assert_eq!(c.insert(key("c"), doc(), 5, &limits), 1);
        assert!(c.map.contains_key(&key("c")));
        assert_eq!((c.map.len(), c.bytes), (2, 12));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_for_a_failing_derivation_share_its_error() {
        let agent = Arc::new(Agent::new(Registry::default()));
        let failing = Arc::new(SlowFailure { calls: AtomicUsize::new(0) });
        let key = DocKey { driver: "slow-failure".into(), query: Query::default() };
        let asks: Vec<_> = (0..4)
            .map(|_| {
                let (agent, failing, key) = (agent.clone(), failing.clone(), key.clone());
                tokio::spawn(async move { agent.document(key, failing).await })
            })
            .collect();
        for a in asks {
            let e = a.await.unwrap().unwrap_err();
            assert!(matches!(&e, DriverError::ProbeFailed { target, .. } if target == "/usr/bin/qemu-broken"), "{e}");
        }
        assert_eq!(failing.calls.load(Ordering::SeqCst), 1, "each waiting request derived again");
        // A request that comes after the failure tries again.
        assert!(agent.document(key, failing.clone()).await.is_err());
        assert_eq!(failing.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_after_its_client_left_waits_for_the_running_derivation() {
        let agent = Arc::new(Agent::new(Registry::default()));
        let slow = Arc::new(Slow { calls: AtomicUsize::new(0) });
        let key = DocKey { driver: "slow".into(), query: Query::default() };
        // The first client gives up while its derivation runs.
        let gone = tokio::time::timeout(Duration::from_millis(50), agent.document(key.clone(), slow.clone())).await;
        assert!(gone.is_err(), "the slow derivation answered within 50 ms");
        // The next request for the same key gets that derivation's document.
        agent.document(key, slow.clone()).await.unwrap();
        assert_eq!(slow.calls.load(Ordering::SeqCst), 1, "derived twice");
    }
}

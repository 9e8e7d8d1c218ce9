//! The agent's counters and latency histograms, rendered in the Prometheus text format
//! (`GET /metrics`). Plain atomics: a request records in a few nanoseconds and nothing here
//! allocates on the request path except the first time an (endpoint, status) pair is seen.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The endpoints, as metric labels. Anything else is `other`.
pub const ENDPOINTS: [&str; 5] = ["domcapabilities", "drivers", "healthz", "metrics", "other"];

/// Upper bounds (seconds) of the request latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// A histogram with fixed buckets (cumulated only when rendered).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| s <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

/// Everything the agent counts.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Vec<Histogram>,
    /// Documents answered from memory / derived (memory miss).
    pub doc_hits: AtomicU64,
    pub doc_misses: AtomicU64,
    /// Driver calls, by outcome.
    pub driver_ok: AtomicU64,
    pub driver_err: AtomicU64,
    /// Times the watched inputs changed and the memory cache was dropped.
    pub invalidations: AtomicU64,
    /// Kept documents dropped to stay within the cache bounds.
    pub evictions: AtomicU64,
    /// Connections closed at once because the connection limit was reached.
    pub connections_refused: AtomicU64,
    /// Connections closed for a slow request head or idleness.
    pub connections_timed_out: AtomicU64,
    /// Requests answered 504 because they took longer than the request timeout.
    pub requests_timed_out: AtomicU64,
    /// Requests on loopback TCP refused for a missing or wrong token.
    pub unauthorized: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            latency: ENDPOINTS.iter().map(|_| Histogram::new(&LATENCY_BUCKETS)).collect(),
            doc_hits: AtomicU64::new(0),
            doc_misses: AtomicU64::new(0),
            driver_ok: AtomicU64::new(0),
            driver_err: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            connections_timed_out: AtomicU64::new(0),
            requests_timed_out: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
        }
    }
}

/// The label of a request path.
pub fn endpoint_of(path: &str) -> &'static str {
    match path {
        "/v1/domcapabilities" => "domcapabilities",
        "/v1/drivers" => "drivers",
        "/healthz" => "healthz",
        "/metrics" => "metrics",
        _ => "other",
    }
}

impl Metrics {
    pub fn record_request(&self, endpoint: &'static str, status: u16, took: Duration) {
        let i = ENDPOINTS.iter().position(|e| *e == endpoint).unwrap_or(ENDPOINTS.len() - 1);
        self.latency[i].observe(took);
        let mut m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry((endpoint, status)).or_insert(0) += 1;
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP capsd_http_requests_total HTTP requests answered, by endpoint and status code.\n");
        out.push_str("# TYPE capsd_http_requests_total counter\n");
        for ((e, code), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "capsd_http_requests_total{{endpoint=\"{e}\",code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP capsd_http_request_duration_seconds Time to answer a request, by endpoint.\n");
        out.push_str("# TYPE capsd_http_request_duration_seconds histogram\n");
        for (e, h) in ENDPOINTS.iter().zip(&self.latency) {
            h.render(&mut out, "capsd_http_request_duration_seconds", &format!("endpoint=\"{e}\""));
        }
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP capsd_document_cache_total Domain capabilities documents answered from memory (hit) or derived (miss).\n");
        out.push_str("# TYPE capsd_document_cache_total counter\n");
        let _ = writeln!(out, "capsd_document_cache_total{{result=\"hit\"}} {}", load(&self.doc_hits));
        let _ = writeln!(out, "capsd_document_cache_total{{result=\"miss\"}} {}", load(&self.doc_misses));
        out.push_str("# HELP capsd_driver_calls_total Calls into a driver for a document, by outcome.\n");
        out.push_str("# TYPE capsd_driver_calls_total counter\n");
        let _ = writeln!(out, "capsd_driver_calls_total{{result=\"ok\"}} {}", load(&self.driver_ok));
        let _ = writeln!(out, "capsd_driver_calls_total{{result=\"error\"}} {}", load(&self.driver_err));
        counter(
            &mut out,
            "capsd_invalidations_total",
            "Times a watched host input changed and the in-memory documents were dropped.",
            load(&self.invalidations),
        );
        for (name, help, v) in [
            (
                "capsd_document_evictions_total",
                "Kept documents dropped to stay within --cache-entries/--cache-mib.",
                &self.evictions,
            ),
            (
                "capsd_connections_refused_total",
                "Connections closed at once: --max-connections reached.",
                &self.connections_refused,
            ),
            (
                "capsd_connections_timed_out_total",
                "Connections closed: request head too slow or idle too long.",
                &self.connections_timed_out,
            ),
            (
                "capsd_requests_timed_out_total",
                "Requests answered 504 after --request-timeout-ms.",
                &self.requests_timed_out,
            ),
            (
                "capsd_unauthorized_total",
                "Loopback TCP requests refused for a missing or wrong token.",
                &self.unauthorized,
            ),
        ] {
            counter(&mut out, name, help, load(v));
        }
        render_probe_cache(&mut out);
        out
    }
}

#[cfg(feature = "qemu")]
fn render_probe_cache(out: &mut String) {
    use driver_qemu::cache::{stats, PROBE_BUCKETS};
    let s = stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    out.push_str(
        "# HELP capsd_probe_cache_lookups_total QEMU probe cache lookups: hits from memory or disk, misses (probed).\n",
    );
    out.push_str("# TYPE capsd_probe_cache_lookups_total counter\n");
    let _ = writeln!(out, "capsd_probe_cache_lookups_total{{result=\"hit\",tier=\"memory\"}} {}", load(&s.memory_hits));
    let _ = writeln!(out, "capsd_probe_cache_lookups_total{{result=\"hit\",tier=\"disk\"}} {}", load(&s.disk_hits));
    let _ = writeln!(out, "capsd_probe_cache_lookups_total{{result=\"miss\",tier=\"none\"}} {}", load(&s.misses));
    out.push_str("# HELP capsd_probe_cache_rejected_total Cache files not used: damaged (checksum/parse) or stale (key changed).\n");
    out.push_str("# TYPE capsd_probe_cache_rejected_total counter\n");
    let _ = writeln!(out, "capsd_probe_cache_rejected_total{{reason=\"damaged\"}} {}", load(&s.damaged));
    let _ = writeln!(out, "capsd_probe_cache_rejected_total{{reason=\"stale\"}} {}", load(&s.stale));
    out.push_str("# HELP capsd_probes_total QEMU probes run, by result.\n# TYPE capsd_probes_total counter\n");
    let _ = writeln!(out, "capsd_probes_total{{result=\"ok\"}} {}", load(&s.probes_ok));
    let _ = writeln!(out, "capsd_probes_total{{result=\"error\"}} {}", load(&s.probes_failed));
    out.push_str("# HELP capsd_probe_duration_seconds Time one QEMU probe took.\n# TYPE capsd_probe_duration_seconds histogram\n");
    let mut cum = 0;
    for (i, b) in PROBE_BUCKETS.iter().enumerate() {
        cum += load(&s.probe_buckets[i]);
        let _ = writeln!(out, "capsd_probe_duration_seconds_bucket{{le=\"{b}\"}} {cum}");
    }
    cum += load(&s.probe_buckets[PROBE_BUCKETS.len()]);
    let _ = writeln!(out, "capsd_probe_duration_seconds_bucket{{le=\"+Inf\"}} {cum}");
    let _ = writeln!(out, "capsd_probe_duration_seconds_sum {}", load(&s.probe_micros_sum) as f64 / 1e6);
    let _ = writeln!(out, "capsd_probe_duration_seconds_count {cum}");
}

#[cfg(not(feature = "qemu"))]
fn render_probe_cache(_out: &mut String) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let m = Metrics::default();
        m.record_request("healthz", 200, Duration::from_micros(40));
        m.record_request("healthz", 200, Duration::from_micros(700));
        m.record_request("healthz", 404, Duration::from_secs(100));
        let text = m.render();
        assert!(text.contains("capsd_http_requests_total{endpoint=\"healthz\",code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("capsd_http_requests_total{endpoint=\"healthz\",code=\"404\"} 1\n"), "{text}");
        assert!(
            text.contains("capsd_http_request_duration_seconds_bucket{endpoint=\"healthz\",le=\"0.00005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("capsd_http_request_duration_seconds_bucket{endpoint=\"healthz\",le=\"0.001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("capsd_http_request_duration_seconds_bucket{endpoint=\"healthz\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("capsd_http_request_duration_seconds_count{endpoint=\"healthz\"} 3\n"), "{text}");
    }
}

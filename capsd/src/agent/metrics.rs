//! The agent's counters and latency histograms, written in the OpenMetrics text format by
//! prometheus-client (`GET /metrics`). The counting itself stays plain atomics: a request
//! records in a few nanoseconds, without the lock prometheus-client's `Histogram` takes per
//! observation; at scrape time [`Snapshot`] hands the values to prometheus-client's encoder.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

/// The endpoints, as metric labels. Anything else is `other`.
pub const ENDPOINTS: [&str; 5] = ["domcapabilities", "drivers", "healthz", "metrics", "other"];

/// Upper bounds (seconds) of the request latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0];

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A histogram with fixed buckets (cumulated by the encoder).
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

    /// Sum (seconds), count, and (upper bound, count) per bucket, `f64::MAX` standing for
    /// `+Inf` as prometheus-client wants it.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(&self.counts)
            .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        (self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6, count, buckets)
    }
}

/// The statuses the agent answers, counted per endpoint in atomics; any other status (none
/// today) is counted in a map under a lock.
const STATUSES: [u16; 11] = [200, 400, 401, 403, 404, 405, 500, 501, 502, 503, 504];

/// Everything the agent counts.
#[derive(Debug)]
pub struct Metrics {
    /// Requests per endpoint (index in [`ENDPOINTS`]) and status (index in [`STATUSES`]):
    /// a request adds to one atomic, no lock taken on the request path.
    requests: Vec<[AtomicU64; STATUSES.len()]>,
    /// Requests with a status not in [`STATUSES`].
    other_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
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
            requests: ENDPOINTS.iter().map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            other_requests: Mutex::new(BTreeMap::new()),
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
        match STATUSES.iter().position(|s| *s == status) {
            Some(j) => {
                self.requests[i][j].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut m = self.other_requests.lock().unwrap_or_else(|e| e.into_inner());
                *m.entry((ENDPOINTS[i], status)).or_insert(0) += 1;
            }
        }
    }

    /// Requests answered so far, by endpoint and status (those seen), in that order.
    fn requests(&self) -> BTreeMap<(&'static str, u16), u64> {
        let mut all = self.other_requests.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (endpoint, counts) in ENDPOINTS.iter().zip(&self.requests) {
            for (status, n) in STATUSES.iter().zip(counts) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    all.insert((*endpoint, *status), n);
                }
            }
        }
        all
    }

    /// The OpenMetrics text of every metric ([`CONTENT_TYPE`]).
    pub fn render(self: &Arc<Self>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Snapshot(self.clone())));
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail; an encoder error would be a bug in our labels.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// The agent's metrics as prometheus-client reads them at scrape time.
#[derive(Debug)]
struct Snapshot(Arc<Metrics>);

/// One counter metric with samples per label set (names without `_total`: the encoder adds it).
fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, samples: &[(&[(&str, &str)], u64)]) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One histogram metric, per label set.
fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(&[(&str, &str)], &Histogram)],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in samples {
        let (sum, count, buckets) = h.snapshot();
        if labels.is_empty() {
            return m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None);
        }
        m.encode_family(labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let m = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let requests: Vec<(&str, String, u64)> =
            m.requests().iter().map(|((e, code), n)| (*e, code.to_string(), *n)).collect();
        let labels: Vec<[(&str, &str); 2]> =
            requests.iter().map(|(e, code, _)| [("endpoint", *e), ("code", code.as_str())]).collect();
        let samples: Vec<(&[(&str, &str)], u64)> =
            labels.iter().zip(&requests).map(|(l, (_, _, n))| (l.as_slice(), *n)).collect();
        counter(&mut enc, "capsd_http_requests", "HTTP requests answered, by endpoint and status code.", &samples)?;
        let endpoints: Vec<[(&str, &str); 1]> = ENDPOINTS.iter().map(|e| [("endpoint", *e)]).collect();
        let samples: Vec<(&[(&str, &str)], &Histogram)> =
            endpoints.iter().zip(&m.latency).map(|(l, h)| (l.as_slice(), h)).collect();
        histogram(&mut enc, "capsd_http_request_duration_seconds", "Time to answer a request, by endpoint.", &samples)?;
        counter(
            &mut enc,
            "capsd_document_cache",
            "Domain capabilities documents answered from memory (hit) or derived (miss).",
            &[(&[("result", "hit")], load(&m.doc_hits)), (&[("result", "miss")], load(&m.doc_misses))],
        )?;
        counter(
            &mut enc,
            "capsd_driver_calls",
            "Calls into a driver for a document, by outcome.",
            &[(&[("result", "ok")], load(&m.driver_ok)), (&[("result", "error")], load(&m.driver_err))],
        )?;
        for (name, help, v) in [
            (
                "capsd_invalidations",
                "Times a watched host input changed and the in-memory documents were dropped.",
                &m.invalidations,
            ),
            (
                "capsd_document_evictions",
                "Kept documents dropped to stay within --cache-entries/--cache-mib.",
                &m.evictions,
            ),
            (
                "capsd_connections_refused",
                "Connections refused: a pool full (--max-connections, --max-unauthenticated), closed at once or answered 503.",
                &m.connections_refused,
            ),
            (
                "capsd_connections_timed_out",
                "Connections closed: request head too slow or idle too long.",
                &m.connections_timed_out,
            ),
            ("capsd_requests_timed_out", "Requests answered 504 after --request-timeout-ms.", &m.requests_timed_out),
            ("capsd_unauthorized", "Loopback TCP requests refused for a missing or wrong token.", &m.unauthorized),
        ] {
            counter(&mut enc, name, help, &[(&[], load(v))])?;
        }
        encode_probe_cache(&mut enc)
    }
}

#[cfg(feature = "qemu")]
fn encode_probe_cache(enc: &mut DescriptorEncoder) -> fmt::Result {
    use driver_qemu::cache::{stats, PROBE_BUCKETS};
    let s = stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    counter(
        enc,
        "capsd_probe_cache_lookups",
        "QEMU probe cache lookups: hits from memory or disk, misses (probed).",
        &[
            (&[("result", "hit"), ("tier", "memory")], load(&s.memory_hits)),
            (&[("result", "hit"), ("tier", "disk")], load(&s.disk_hits)),
            (&[("result", "miss"), ("tier", "none")], load(&s.misses)),
        ],
    )?;
    counter(
        enc,
        "capsd_probe_cache_rejected",
        "Cache files not used: damaged (checksum/parse) or stale (key changed).",
        &[(&[("reason", "damaged")], load(&s.damaged)), (&[("reason", "stale")], load(&s.stale))],
    )?;
    counter(
        enc,
        "capsd_probes",
        "QEMU probes run, by result.",
        &[(&[("result", "ok")], load(&s.probes_ok)), (&[("result", "error")], load(&s.probes_failed))],
    )?;
    let buckets: Vec<(f64, u64)> = PROBE_BUCKETS
        .iter()
        .copied()
        .chain(std::iter::once(f64::MAX))
        .zip(s.probe_buckets.iter())
        .map(|(b, c)| (b, load(c)))
        .collect();
    let count = buckets.iter().map(|(_, c)| c).sum();
    let sum = load(&s.probe_micros_sum) as f64 / 1e6;
    enc.encode_descriptor("capsd_probe_duration_seconds", "Time one QEMU probe took.", None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

#[cfg(not(feature = "qemu"))]
fn encode_probe_cache(_: &mut DescriptorEncoder) -> fmt::Result {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let m = Arc::new(Metrics::default());
        m.record_request("healthz", 200, Duration::from_micros(40));
        m.record_request("healthz", 200, Duration::from_micros(700));
        m.record_request("healthz", 404, Duration::from_secs(100));
        // A status outside the atomics' table is counted all the same.
        m.record_request("other", 418, Duration::from_micros(40));
        let text = m.render();
        assert!(text.contains("capsd_http_requests_total{endpoint=\"other\",code=\"418\"} 1\n"), "{text}");
        assert!(text.contains("capsd_http_requests_total{endpoint=\"healthz\",code=\"200\"} 2\n"), "{text}");
        assert!(text.contains("capsd_http_requests_total{endpoint=\"healthz\",code=\"404\"} 1\n"), "{text}");
        assert!(
            text.contains("capsd_http_request_duration_seconds_bucket{le=\"0.00005\",endpoint=\"healthz\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("capsd_http_request_duration_seconds_bucket{le=\"0.001\",endpoint=\"healthz\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("capsd_http_request_duration_seconds_bucket{le=\"+Inf\",endpoint=\"healthz\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("capsd_http_request_duration_seconds_count{endpoint=\"healthz\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE capsd_http_requests counter\n") && text.ends_with("# EOF\n"), "{text}");
    }
}

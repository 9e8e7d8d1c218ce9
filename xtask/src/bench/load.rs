//! A small HTTP/1.1 load generator for the agent: a fixed number of keep-alive connections
//! (Unix socket or loopback TCP only), each a closed loop of GETs, bounded by a deadline and
//! a total request count, stopping by itself. Latency is measured per request, from writing
//! the request to having read the whole body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Where the agent listens. TCP targets must be loopback addresses.
#[derive(Debug, Clone)]
pub enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A load run's limits.
#[derive(Debug, Clone)]
pub struct Load {
    pub target: Target,
    /// Request target, e.g. `/v1/domcapabilities?arch=x86_64`.
    pub path: String,
    pub connections: usize,
    pub duration: Duration,
    pub max_requests: u64,
    /// Sent as `Authorization: Bearer TOKEN` (the agent's TCP listeners need it).
    pub token: Option<String>,
}

/// What a load run measured.
#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Sorted latencies, microseconds.
    pub latencies_us: Vec<u32>,
    pub body_bytes: usize,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    /// The `q` quantile (0..=1) in microseconds.
    pub fn quantile_us(&self, q: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        self.latencies_us[i]
    }

    /// The run in one line: duration, requests, errors, rate, latency quantiles, body size.
    pub fn summary(&self) -> String {
        format!(
            "{:.1} s: {} requests ({} errors), {:.0} req/s, p50 {} us, p99 {} us, max {} us, body {} bytes",
            self.elapsed.as_secs_f64(),
            self.requests,
            self.errors,
            self.rate(),
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.quantile_us(1.0),
            self.body_bytes
        )
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(t: &Target) -> Result<Box<dyn Stream + Send>> {
    Ok(match t {
        Target::Unix(p) => Box::new(UnixStream::connect(p).with_context(|| format!("connecting to {}", p.display()))?),
        Target::Tcp(a) => {
            if !a.ip().is_loopback() {
                bail!("load generator: {a} is not a loopback address");
            }
            let s = TcpStream::connect(a).with_context(|| format!("connecting to {a}"))?;
            s.set_nodelay(true)?;
            Box::new(s)
        }
    })
}

/// Read one response; returns (status, body length).
fn read_response(r: &mut impl BufRead, line: &mut String) -> Result<(u16, usize)> {
    line.clear();
    if r.read_line(line)? == 0 {
        bail!("connection closed");
    }
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
    let mut len = None;
    loop {
        line.clear();
        r.read_line(line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let len = len.context("response without content-length")?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((status, len))
}

/// Run the load; fails when a connection cannot be opened.
pub fn run(load: &Load) -> Result<Report> {
    let deadline = Instant::now() + load.duration;
    let issued = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let auth = load.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {} HTTP/1.1\r\nHost: capsd\r\n{auth}\r\n", load.path);
    let mut streams = Vec::new();
    for _ in 0..load.connections.max(1) {
        streams.push(connect(&load.target)?);
    }
    let start = Instant::now();
    let results: Vec<(Vec<u32>, usize)> = std::thread::scope(|s| {
        let hs: Vec<_> = streams
            .into_iter()
            .map(|stream| {
                let (issued, errors, request) = (&issued, &errors, &request);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(1 << 16);
                    let mut body_len = 0;
                    let mut r = BufReader::with_capacity(64 * 1024, stream);
                    let mut line = String::new();
                    while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < load.max_requests {
                        let t = Instant::now();
                        if r.get_mut().write_all(request.as_bytes()).is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        match read_response(&mut r, &mut line) {
                            Ok((200, n)) => {
                                body_len = n;
                                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                            }
                            Ok(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                    (lat, body_len)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let elapsed = start.elapsed();
    let body_bytes = results.iter().map(|r| r.1).max().unwrap_or(0);
    let mut latencies_us: Vec<u32> = results.into_iter().flat_map(|r| r.0).collect();
    latencies_us.sort_unstable();
    Ok(Report {
        requests: latencies_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
        body_bytes,
    })
}

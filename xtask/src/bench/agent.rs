//! `cargo xtask bench agent`: warm answers.
//!
//! 1. Whole-process time of a warm `capsd domcapabilities` (probe cache filled, x86_64
//!    defaults) against a warm `virsh -c qemu:///system domcapabilities`, each run
//!    `CAPSD_BENCH_RUNS` times (default 200): median and p99. capsd runs from a copy of the
//!    build output, as installed (see `installed_copy`); the build output's own time is
//!    printed too.
//! 2. `capsd serve` under load from [`super::load`]: keep-alive connections on the Unix
//!    socket, then on loopback TCP, each for `CAPSD_BENCH_SECONDS` (default 5) or
//!    `CAPSD_BENCH_REQUESTS` requests (default 500000), whichever comes first, with
//!    `CAPSD_BENCH_CONNECTIONS` connections (default 4): p50/p99 latency and requests/s.
//!
//! 3. In process, what a warm lookup costs: the invalidation key, reading and parsing the
//!    whole cache file (every run) or one run's segment, and dropping the data.
//!
//! 4. The agent's resident memory (`VmRSS`): idle after start-up and the warm-up request,
//!    right after the load, and 30 s later (`CAPSD_BENCH_SETTLE_SECONDS`).
//!
//! 5. The peer of the load figures, while the agent settles: capsd's `bench-peer` example,
//!    the smallest hyper server on the same runtime and allocator answering the same bytes,
//!    under the same load from the same client on the same cores. What the agent cannot beat
//!    on this machine without leaving hyper; the summary prints the agent's rate beside it.
//!    `CAPSD_BENCH_THREADS=N` gives both servers N async worker threads (default: one per
//!    CPU, the agent's default).
//!
//! Uses the release build of `capsd` (built first); like `bench qemu`, a debug xtask re-runs
//! itself with `--release` for the in-process figures (`CAPSD_BENCH_IN_PLACE=1` measures
//! the current build). Targets (issue 21), on the 2-core reference machine: warm CLI median
//! <= 2 ms and <= 0.1 of virsh's in the same run; agent over the Unix socket >= 100,000
//! requests/s with p99 <= 0.5 ms; idle RSS <= 16 MB, back to <= 1.5x idle within 30 s
//! after the load. The last lines print each figure beside its peer and target.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::load::{self, Load, Target};

const QUERY: &str = "/v1/domcapabilities";

pub(super) fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

pub(super) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_owned).unwrap_or_else(|| PathBuf::from("."))
}

/// Build capsd's `bench-peer` example (release) and return its path.
fn build_peer() -> Result<PathBuf> {
    build_release(&["--example", "bench-peer"], "release/examples/bench-peer")
}

pub(crate) fn build_capsd() -> Result<PathBuf> {
    build_release(&[], "release/capsd")
}

/// `cargo build --release -p capsd` with `extra` arguments; the path of `built` under the
/// target directory.
fn build_release(extra: &[&str], built: &str) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "--release", "--quiet", "--package", "capsd"])
        .args(extra)
        .status()
        .with_context(|| format!("building capsd --release {}", extra.join(" ")))?;
    if !st.success() {
        bail!("cargo build --release -p capsd {} failed: {st}", extra.join(" "));
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join(built))
}

/// Median and p99 of `runs` whole-process runs of `cmd` (output discarded).
fn time_process(cmd: &[&str], runs: usize) -> Result<(Duration, Duration)> {
    time_process_cpu(cmd, runs).map(|(m, p, _)| (m, p))
}

/// Median and p99 wall time of `runs` whole-process runs of `cmd` (output discarded), and
/// the mean CPU time (user + system) one run took: on a machine others load, the wall time
/// includes waiting for a core, the CPU time does not (from the children's times in
/// `/proc/self/stat`, in clock ticks, so a mean over the runs).
fn time_process_cpu(cmd: &[&str], runs: usize) -> Result<(Duration, Duration, Option<Duration>)> {
    let cpu0 = children_cpu_ticks();
    let mut ts = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let st = Command::new(cmd[0]).args(&cmd[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status()?;
        ts.push(t.elapsed());
        if !st.success() {
            bail!("{} failed: {st}", cmd.join(" "));
        }
    }
    let cpu = cpu0.zip(children_cpu_ticks()).map(|(a, b)| {
        // USER_HZ is 100 on Linux.
        Duration::from_secs_f64(b.saturating_sub(a) as f64 / 100.0 / runs as f64)
    });
    ts.sort();
    let p99 = ts[((ts.len() - 1) as f64 * 0.99).round() as usize];
    Ok((ts[ts.len() / 2], p99, cpu))
}

/// User + system time of this process's waited-for children, clock ticks (`cutime` and
/// `cstime` of `/proc/self/stat`).
fn children_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: the 3rd field of the line (state) first; cutime is the 16th, cstime the 17th.
    Some(f.get(13)?.parse::<u64>().ok()? + f.get(14)?.parse::<u64>().ok()?)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_loopback_port() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

pub fn run() -> Result<()> {
    if super::rerun_in_release("agent")? {
        return Ok(());
    }
    let capsd = build_capsd()?;
    let dir = std::env::temp_dir().join(format!("capsd-bench-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&capsd, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A copy of `built` in `dir`, written as an installation writes it (`cp`, `install`,
/// dpkg): what users run. The linker's own output file is slower to start, by about 0.3 ms
/// on the reference machine (the kernel maps a file written through `mmap` in smaller
/// pieces than one written whole), so the warm CLI is timed on the copy and the build
/// output's time is printed beside it.
fn installed_copy(built: &Path, dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join("bin/capsd");
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::copy(built, &to).with_context(|| format!("copying {} to {}", built.display(), to.display()))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
    Ok(to)
}

/// Run `cli` (a `capsd ... domcapabilities` line) once, so that its cache is filled.
fn fill_cache(cli: &[&str]) -> Result<()> {
    let out = Command::new(cli[0]).args(&cli[1..]).output().with_context(|| format!("running {}", cli[0]))?;
    if !out.status.success() {
        bail!("capsd domcapabilities failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn bench(built: &Path, dir: &Path) -> Result<()> {
    let runs: usize = env_num("CAPSD_BENCH_RUNS", 200).max(1);
    let capsd = &installed_copy(built, dir)?;
    let cache = dir.join("cache");
    let bin = capsd.to_str().context("capsd path is not UTF-8")?;
    let cache_s = cache.to_str().context("temp path is not UTF-8")?;
    let cli = [bin, "--cache-dir", cache_s, "domcapabilities"];

    // Fill the cache (a real probe), then time warm runs.
    let t = Instant::now();
    fill_cache(&cli)?;
    println!("bench agent: cold capsd domcapabilities (probe, cache filled): {:.0?}", t.elapsed());
    let cpu = |c: Option<Duration>| c.map_or_else(|| "?".to_owned(), |c| format!("{c:.2?}"));
    let (c50, c99, ccpu) = time_process_cpu(&cli, runs)?;
    println!(
        "bench agent: warm capsd domcapabilities (installed copy), {runs} runs: median {c50:.2?} p99 {c99:.2?}, CPU per run {}",
        cpu(ccpu)
    );
    // The build output itself (its own cache: the key holds the executable).
    let built_cache = dir.join("cache-built");
    let built_s = built.to_str().context("capsd path is not UTF-8")?;
    let built_cli =
        [built_s, "--cache-dir", built_cache.to_str().context("temp path is not UTF-8")?, "domcapabilities"];
    fill_cache(&built_cli)?;
    let (b50, b99, _) = time_process_cpu(&built_cli, runs)?;
    println!(
        "bench agent: the same from the build output {}, not installed: median {b50:.2?} p99 {b99:.2?}",
        built.display()
    );
    let (f50, f99, fcpu) = time_process_cpu(&[bin, "--version"], runs)?;
    println!(
        "bench agent: floor (capsd --version, process start-up), {runs} runs: median {f50:.2?} p99 {f99:.2?}, CPU per run {}",
        cpu(fcpu)
    );
    let (t50, _, _) = time_process_cpu(&["true"], runs)?;
    println!("bench agent: floor of any process (true), {runs} runs: median {t50:.2?}");
    cache_load(&cache, capsd)?;
    let virsh = ["virsh", "-c", "qemu:///system", "domcapabilities"];
    let mut summary: Vec<String> = Vec::new();
    match Command::new("virsh").args(&virsh[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(st) if st.success() => {
            let (v50, v99) = time_process(&virsh, runs)?;
            println!("bench agent: warm virsh domcapabilities, {runs} runs: median {v50:.2?} p99 {v99:.2?}");
            let ratio = c50.as_secs_f64() / v50.as_secs_f64();
            println!("bench agent: capsd/virsh median ratio {ratio:.3} (target <= 0.10)");
            summary.push(format!(
                "warm CLI median: capsd {c50:.2?} (CPU {}) | virsh {v50:.2?} | ratio {ratio:.3} | `true` {t50:.2?} | target <= 2 ms and <= 0.10: {}",
                cpu(ccpu),
                verdict(c50 <= Duration::from_millis(2) && ratio <= 0.10)
            ));
        }
        _ => {
            println!("bench agent: virsh cannot reach qemu:///system here; no comparison");
            summary.push(format!(
                "warm CLI median: capsd {c50:.2?} (CPU {}) | virsh: not reachable | `true` {t50:.2?} | target <= 2 ms: {}",
                cpu(ccpu),
                verdict(c50 <= Duration::from_millis(2))
            ));
        }
    }

    // The agent.
    let socket = dir.join("capsd.sock");
    let tcp = free_loopback_port()?;
    // TCP needs a token (any 16+ printable characters, in a file others cannot read).
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let token = format!("bench-{}-{nanos}", std::process::id());
    let token_file = dir.join("token");
    std::fs::write(&token_file, &token)?;
    std::fs::set_permissions(&token_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let threads: Option<usize> = std::env::var("CAPSD_BENCH_THREADS").ok().and_then(|v| v.parse().ok());
    let thread_args: Vec<String> = threads.map(|n| vec!["--threads".to_owned(), n.to_string()]).unwrap_or_default();
    let child = Command::new(bin)
        .args(["--cache-dir", cache_s, "serve", "--socket"])
        .arg(&socket)
        .args(["--listen", &tcp.to_string(), "--token-file"])
        .arg(&token_file)
        .args(&thread_args)
        .stdout(Stdio::null())
        .spawn()
        .context("starting capsd serve")?;
    let server_pid = child.id();
    let _server = Server(child);
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("capsd serve did not listen on {} within 20 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut idle_rss = None;
    let mut agent_rate = 0.0;
    let connections: usize = env_num("CAPSD_BENCH_CONNECTIONS", 4);
    let seconds: f64 = env_num("CAPSD_BENCH_SECONDS", 5.0_f64).clamp(0.1, 60.0);
    let max_requests: u64 = env_num("CAPSD_BENCH_REQUESTS", 500_000).min(5_000_000);
    for (name, target) in [("unix", Target::Unix(socket.clone())), ("tcp", Target::Tcp(tcp))] {
        // Warm: the first request derives (from the probe cache) and keeps the document.
        let warm = load::run(&Load {
            target: target.clone(),
            path: QUERY.into(),
            connections: 1,
            duration: Duration::from_secs(30),
            max_requests: 1,
            token: Some(token.clone()),
        })?;
        if warm.requests != 1 {
            bail!("the warm-up request failed ({} errors)", warm.errors);
        }
        if idle_rss.is_none() {
            idle_rss = rss_kib(server_pid);
        }
        let r = load::run(&Load {
            target,
            path: QUERY.into(),
            connections,
            duration: Duration::from_secs_f64(seconds),
            max_requests,
            token: Some(token.clone()),
        })?;
        println!(
            "bench agent: serve over {name}, {connections} connections, {} (targets over unix: p99 <= 500 us, >= 100000 req/s)",
            r.summary()
        );
        if name == "unix" {
            let (rate, p99) = (r.rate(), r.quantile_us(0.99));
            agent_rate = rate;
            summary.push(format!(
                "agent over the Unix socket, {connections} connections: {rate:.0} req/s, p99 {p99} us | target >= 100000 req/s, p99 <= 500 us: {}",
                verdict(rate >= 100_000.0 && p99 <= 500)
            ));
        }
    }
    let after = rss_kib(server_pid);
    let settle: u64 = env_num("CAPSD_BENCH_SETTLE_SECONDS", 30);
    let settling = Instant::now();
    // The peer runs while the agent settles (its own process; the agent is idle meanwhile).
    let body = dir.join("body.xml");
    std::fs::write(&body, &Command::new(bin).args(&cli[1..]).output()?.stdout)?;
    let peer_socket = dir.join("peer.sock");
    let mut peer_cmd = Command::new(build_peer()?);
    peer_cmd.arg(&peer_socket).arg(&body);
    if let Some(n) = threads {
        peer_cmd.arg(n.to_string());
    }
    let peer = Server(peer_cmd.stdout(Stdio::null()).spawn().context("starting bench-peer")?);
    let t = Instant::now();
    while std::os::unix::net::UnixStream::connect(&peer_socket).is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("bench-peer did not listen on {} within 20 s", peer_socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let target = Target::Unix(peer_socket.clone());
    let load_of = |connections, duration, max_requests| Load {
        target: target.clone(),
        path: QUERY.into(),
        connections,
        duration,
        max_requests,
        token: None,
    };
    load::run(&load_of(1, Duration::from_secs(30), 1))?;
    let r = load::run(&load_of(connections, Duration::from_secs_f64(seconds), max_requests))?;
    drop(peer);
    println!(
        "bench agent: peer (bench-peer: minimal hyper server, same body) over unix, {connections} connections, {}",
        r.summary()
    );
    summary.push(format!(
        "peer over the Unix socket (minimal hyper server, same client, same cores): {:.0} req/s, p99 {} us | agent/peer {:.2}",
        r.rate(),
        r.quantile_us(0.99),
        agent_rate / r.rate()
    ));
    std::thread::sleep(Duration::from_secs(settle).saturating_sub(settling.elapsed()));
    let settled = rss_kib(server_pid);
    // At least `settle` (more when the peer's run took longer).
    let settle = settling.elapsed().as_secs();
    let mb = |k: Option<u64>| k.map_or_else(|| "?".to_owned(), |k| format!("{:.1} MB", k as f64 / 1024.0));
    println!(
        "bench agent: serve RSS idle {}, after the load {}, {settle} s later {}",
        mb(idle_rss),
        mb(after),
        mb(settled)
    );
    if let (Some(idle), Some(settled)) = (idle_rss, settled) {
        summary.push(format!(
            "agent RSS: idle {} | {settle} s after the load {} ({:.2}x idle) | target idle <= 16 MB, back to <= 1.5x: {}",
            mb(Some(idle)),
            mb(Some(settled)),
            settled as f64 / idle as f64,
            verdict(idle <= 16 * 1024 && settled as f64 <= 1.5 * idle as f64)
        ));
    }
    println!("bench agent: summary (one run, {})", super::machine());
    for line in summary {
        println!("bench agent:   {line}");
    }
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// `VmRSS` of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// In-process cost of a warm lookup of the x86_64 emulator in `cache` (filled by the CLI).
fn cache_load(cache: &Path, capsd: &Path) -> Result<()> {
    use driver_qemu::cache::{CacheOptions, KeySources, ProbeCache, Runs};
    use driver_qemu::probe_data::Accel;
    let x86 = Path::new("/usr/bin/qemu-system-x86_64");
    // The key as capsd computes it: its own executable is part of it.
    let opts = CacheOptions {
        sources: KeySources { app_binary: Some(capsd.to_owned()), ..KeySources::host() },
        ..CacheOptions::default()
    };
    // The default (KVM) query probed the KVM run alone; a TCG query completes the record,
    // so that "every run" has every run to load.
    let st = Command::new(capsd)
        .arg("--cache-dir")
        .arg(cache)
        .args(["domcapabilities", "--virttype", "qemu"])
        .stdout(Stdio::null())
        .status()
        .context("running capsd domcapabilities --virttype qemu")?;
    if !st.success() {
        bail!("capsd domcapabilities --virttype qemu failed: {st}");
    }
    let pc = ProbeCache::with_options(cache.to_owned(), opts.clone());
    let file = pc.file_for(x86);
    let size = std::fs::metadata(&file).with_context(|| format!("no cache file {}", file.display()))?.len();
    let never = || Err(capsd_core::DriverError::probe_failed("bench", "the cache must answer"));
    let n = 20;
    let mut key = Vec::new();
    let mut all = Vec::new();
    let mut one = Vec::new();
    let mut drop_all = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        pc.key(x86)?;
        key.push(t.elapsed());
        let t = Instant::now();
        let (d, _) = pc.get_or_probe(x86, never)?;
        all.push(t.elapsed());
        let t = Instant::now();
        drop(d);
        drop_all.push(t.elapsed());
        // A fresh cache each time: no memory hit.
        let fresh = ProbeCache::with_options(cache.to_owned(), opts.clone());
        let t = Instant::now();
        let (d, _) = fresh.get_or_probe_runs(x86, Runs::Only(&[Accel::Kvm]), never)?;
        one.push(t.elapsed());
        drop(d);
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "bench agent: probe cache of {} ({size} bytes), median of {n}: key {:.2?}, load every run {:.2?} (+ drop {:.2?}), load the kvm run only {:.2?}",
        x86.display(),
        med(&mut key),
        med(&mut all),
        med(&mut drop_all),
        med(&mut one)
    );
    Ok(())
}

//! `capsd serve`: run the agent (HTTP on a Unix socket, loopback TCP on request) until
//! SIGINT/SIGTERM. See `agent` for what it serves and how answers stay current. Started by
//! a systemd `.socket` unit, it serves the sockets systemd passes instead (`agent::activation`).
//!
//! Signals: SIGTERM and SIGINT stop accepting, give requests in flight [`GRACE`] to finish,
//! then exit whatever still runs (a hung probe is killed with its process group when the
//! process goes: probe processes have a parent-death signal); the socket file is removed
//! in every case. SIGHUP reads `--token-file` again (the old token stays when the new one
//! is not acceptable) and is otherwise only logged.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::agent::activation::{self, Inherited};
use crate::agent::auth::TokenFile;
use crate::agent::conn::{self, ConnLimits, Pool, Pools};
use crate::agent::emulators::EmulatorPolicy;
use crate::agent::server::{self, RouterOptions};
use crate::agent::{Agent, Limits};
use crate::registry::{DriverOptions, EmulatorSearch};

/// How long requests in flight get to finish after SIGTERM/SIGINT.
const GRACE: Duration = Duration::from_millis(1000);

#[derive(Debug, clap::Args)]
#[command(after_help = "Access: whoever can open the socket (--socket-mode, --socket-group) may ask; \
on TCP every /v1/ request needs the --token-file token.\n\
Connection budgets: the Unix socket and authenticated TCP each have --max-connections (256) slots; \
a TCP connection that has not yet sent a request with the token takes one of --max-unauthenticated (16) \
and must send a request head within --unauthenticated-timeout-ms (2000) of being accepted or answered, \
so unauthenticated clients never take the Unix socket's slots nor the token holders' once connected, \
and each holds a TCP slot briefly.\n\
Signals: SIGTERM/SIGINT stop (requests in flight get 1 s, then the agent exits anyway and removes the \
socket it bound); SIGHUP reads --token-file again.\n\
Socket activation: started by systemd with sockets passed (LISTEN_FDS, LISTEN_PID; \
capsd.socket), capsd serves those and binds nothing itself; --socket and --listen are then refused, and \
the socket's mode and group are the .socket unit's; a TCP socket passed needs --token-file too.")]
pub struct Args {
    /// Unix socket to serve on (default: /run/capsd/capsd.sock for root, else
    /// $XDG_RUNTIME_DIR/capsd.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also serve on this loopback TCP address (127.0.0.1:PORT or [::1]:PORT); repeatable.
    /// Needs --token-file: every /v1/ request on TCP must carry the token.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    listen: Vec<SocketAddr>,
    /// File holding the bearer token TCP clients send as 'Authorization: Bearer TOKEN' (at
    /// least 16 printable characters; the file must not be readable by others nor writable
    /// by group or others). Read again on SIGHUP. /healthz and /metrics need no token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Also run this emulator binary when a query names it (repeatable). Without it the
    /// agent runs only the qemu-system-* binaries in /usr/bin, /usr/local/bin, /usr/libexec
    /// and /bin owned by root and not writable by group or others; any other emulatorbin is
    /// refused with 403. Checked at start-up: an executable file owned by root or this user,
    /// not writable by group or others, in directories likewise (sticky ones excepted).
    #[arg(long = "emulator", value_name = "PATH")]
    emulators: Vec<PathBuf>,
    /// Derivations (each may probe an emulator) running at once; more requests wait their
    /// turn. Default: the number of CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_probes: Option<u32>,
    /// Documents kept in memory (least recently used ones go first).
    #[arg(long, value_name = "N", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    cache_entries: u32,
    /// Memory for kept documents, in MiB (least recently used ones go first).
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    cache_mib: u32,
    /// Connections served at once, per pool: the Unix socket has a pool of this size, and
    /// TCP connections that sent the token have another (so TCP clients never hold the Unix
    /// socket's slots); one more in a pool is closed at once.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// TCP connections that have not yet sent a request with the token, at once: a small
    /// pool of their own; one more is closed at once. A request with the token moves its
    /// connection into the --max-connections pool.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    max_unauthenticated: u32,
    /// Header and idle timeout of TCP connections that have not yet sent the token: such a
    /// connection is closed after this many milliseconds without a whole request head (from
    /// its acceptance or its last answer, whether it sent bytes or not).
    #[arg(long, value_name = "MS", default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    unauthenticated_timeout_ms: u64,
    /// A client must send a whole request head within this many milliseconds of its first
    /// byte, or the connection is closed.
    #[arg(long, value_name = "MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    header_timeout_ms: u64,
    /// A connection with no request in flight is closed after this many milliseconds
    /// without a byte from the client (keep-alive idle time).
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_ms: u64,
    /// A request not answered within this many milliseconds gets 504 (a derivation it
    /// started goes on and its document is kept for the next request).
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    request_timeout_ms: u64,
    /// Permission bits of the socket, octal.
    #[arg(long, value_name = "MODE", default_value = "0660", value_parser = parse_mode)]
    socket_mode: u32,
    /// Group that owns the socket (name or number); default: the process's group.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// How often to re-check the host inputs behind in-memory answers (QEMU modules,
    /// firmware descriptors, kernel, CPU microcode, /dev/kvm, the emulator binaries), in
    /// milliseconds; an answer can lag a host change by this much. 0: never re-check (kept
    /// answers then last until restart).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    recheck_ms: u64,
    /// Async worker threads (default: one per CPU). Derivations run on --max-probes more.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// driver-test: directory of golden documents to serve.
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
    /// Publish this host's documents to etcd: endpoints, comma-separated
    /// (http://HOST:PORT, https://HOST:PORT or HOST:PORT). Needs --host-id. See `capsd fleet --help`.
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', requires = "host_id", env = "CAPSD_ETCD")]
    etcd: Vec<String>,
    /// This host's name in the fleet (letters, digits, . _ - :), with --etcd.
    #[arg(long, value_name = "ID", env = "CAPSD_HOST_ID")]
    host_id: Option<String>,
    /// Key prefix of the fleet in etcd.
    #[arg(long, value_name = "P", default_value = "/capsd", env = "CAPSD_ETCD_PREFIX")]
    etcd_prefix: String,
    /// Lease time to live in seconds: how long the host stays listed after it died (a
    /// clean stop removes it at once).
    #[arg(long, value_name = "SECS", default_value_t = 10, env = "CAPSD_ETCD_TTL",
          value_parser = clap::value_parser!(u64).range(2..=3600))]
    etcd_ttl: u64,
    /// The driver whose documents are published.
    #[arg(long, value_name = "NAME", default_value = "qemu")]
    publish_driver: String,
    #[command(flatten)]
    etcd_auth: super::fleet::EtcdAuthArgs,
    /// Publish even when another agent holds --host-id (its lease alive): its keys are
    /// removed. Without, such an agent is refused at start.
    #[arg(long)]
    take_over: bool,
}

/// The publishing options, when --etcd was given (bad values named).
fn publish_options(args: &Args, state_dir: Option<&std::path::Path>) -> Result<Option<crate::agent::publish::Options>> {
    if args.etcd.is_empty() {
        return Ok(None);
    }
    let host_id = args.host_id.clone().context("--etcd needs --host-id")?;
    capsd_fleet::validate_host_id(&host_id)?;
    let config = capsd_fleet::PublishConfig {
        etcd: args.etcd_auth.config(&args.etcd)?,
        layout: capsd_fleet::Layout::new(&args.etcd_prefix).context("--etcd-prefix")?,
        // The claim's identity: this agent's state (its cache directory, else its socket).
        owner: capsd_fleet::publish::owner_token(
            state_dir.or(args.socket.as_deref()).unwrap_or(std::path::Path::new("")),
            &host_id,
        ),
        host_id,
        ttl: Duration::from_secs(args.etcd_ttl),
        take_over: args.take_over,
    };
    Ok(Some(crate::agent::publish::Options {
        config,
        driver: args.publish_driver.clone(),
        retry: crate::agent::publish::RETRY_FIRST,
    }))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let m =
        u32::from_str_radix(s.trim_start_matches("0o"), 8).map_err(|e| format!("'{s}' is not an octal mode: {e}"))?;
    if m > 0o777 {
        return Err(format!("'{s}': mode bits beyond 0777"));
    }
    Ok(m)
}

fn default_socket() -> Result<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/run/capsd/capsd.sock"));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("capsd.sock"))
        .context("no --socket given and XDG_RUNTIME_DIR is not set")
}

pub fn run(ctx: &super::Context, args: Args) -> Result<ExitCode> {
    // First, while this is the only thread: it removes the variables from the environment.
    let inherited = activation::take().context("socket activation")?;
    if !inherited.is_empty() && (args.socket.is_some() || !args.listen.is_empty()) {
        anyhow::bail!(
            "systemd passed {} listening socket(s) (LISTEN_FDS): --socket and --listen cannot be used as well; \
             configure ListenStream= in the .socket unit instead",
            inherited.len()
        );
    }
    // Everything that can be refused is checked before anything is bound or started.
    let policy = EmulatorPolicy::new(&args.emulators)?;
    let token = args.token_file.as_deref().map(TokenFile::load).transpose().map_err(anyhow::Error::msg)?;
    if token.is_none() && inherited.iter().any(|l| matches!(l, Inherited::Tcp(_))) {
        anyhow::bail!(
            "systemd passed a TCP socket: serving TCP needs --token-file (every /v1/ request there must carry the token)"
        );
    }
    let opts = DriverOptions {
        test_fixtures: args.fixtures.clone(),
        cache_dir: ctx.cache_dir.clone(),
        emulator_search: Some(EmulatorSearch {
            dirs: policy.system_dirs().to_vec(),
            accept: EmulatorPolicy::picks,
            check: {
                let policy = policy.clone();
                Arc::new(move |resolved: &std::path::Path, st: &nix::sys::stat::FileStat| {
                    policy.check_opened(resolved, st)
                })
            },
        }),
        ..DriverOptions::default()
    };
    let registry = super::domcaps::registry(ctx, &opts)?;
    let publish = publish_options(&args, ctx.cache_dir.as_deref())?;
    let socket = match (args.socket.clone(), inherited.is_empty()) {
        (Some(s), _) => Some(s),
        (None, true) => Some(default_socket()?),
        (None, false) => None,
    };
    let limits = Limits {
        max_probes: args.max_probes.map_or(Limits::default().max_probes, |n| n as usize),
        cache_entries: args.cache_entries as usize,
        cache_bytes: (args.cache_mib as usize) << 20,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    // Derivations take at most `max_probes` blocking threads; the rest is the watcher and
    // the driver listing.
    rt.max_blocking_threads(limits.max_probes + 4);
    let rt = rt.build().context("starting the async runtime")?;
    let agent = Arc::new(Agent::with_limits(registry, policy, limits));
    let result = rt.block_on(serve(agent, socket, inherited, token.map(Arc::new), args, publish));
    // A derivation still blocked (a hung probe) does not hold up the exit; its probe is
    // killed (with all it started) and its private directory removed here.
    rt.shutdown_timeout(Duration::from_millis(100));
    crate::registry::abort_probes();
    result.map(|()| ExitCode::SUCCESS)
}

/// Removes the socket file when dropped: on a normal stop, an error, or a panic.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        server::remove_socket(&self.0);
    }
}

/// Serve on `socket` (bound here, removed at exit) or, when socket-activated, on the
/// `inherited` sockets (systemd's: neither bound nor removed here).
async fn serve(
    agent: Arc<Agent>,
    socket: Option<PathBuf>,
    inherited: Vec<Inherited>,
    token: Option<Arc<TokenFile>>,
    args: Args,
    publish: Option<crate::agent::publish::Options>,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first: a signal that comes while starting up is not lost (nor fatal).
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut unix = Vec::new();
    let mut _socket_file = None;
    if let Some(path) = &socket {
        unix.push(server::bind_unix(&server::SocketOptions {
            path: path.clone(),
            mode: args.socket_mode,
            group: args.socket_group.clone(),
        })?);
        _socket_file = Some(SocketFile(path.clone()));
    }
    let mut tcp = Vec::new();
    for a in &args.listen {
        tcp.push(server::bind_tcp(*a).await?);
    }
    for l in inherited {
        match l {
            Inherited::Unix(l) => {
                l.set_nonblocking(true).context("inherited Unix socket")?;
                tracing::info!(addr = ?l.local_addr().ok(), "serving on a socket passed by systemd");
                unix.push(tokio::net::UnixListener::from_std(l).context("inherited Unix socket")?);
            }
            Inherited::Tcp(l) => {
                l.set_nonblocking(true).context("inherited TCP socket")?;
                tcp.push(tokio::net::TcpListener::from_std(l).context("inherited TCP socket")?);
            }
        }
    }
    let limits = ConnLimits {
        max_connections: args.max_connections as usize,
        header_timeout: Duration::from_millis(args.header_timeout_ms),
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
    };
    let short = Duration::from_millis(args.unauthenticated_timeout_ms);
    // One pool per kind of client: the Unix socket's, authenticated TCP's, and the small one
    // of TCP connections that have not sent the token yet (`agent::conn`).
    let unix_pools = Pools { main: Pool::new(limits), unauthenticated: None };
    let tcp_pools = Pools {
        main: Pool::new(limits),
        unauthenticated: Some(Pool::new(ConnLimits {
            max_connections: args.max_unauthenticated as usize,
            header_timeout: short.min(limits.header_timeout),
            idle_timeout: short.min(limits.idle_timeout),
        })),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let unix_router = server::router(agent.clone(), &RouterOptions { token: None });
    for l in unix {
        tasks.spawn(conn::serve(l, unix_router.clone(), unix_pools.clone(), agent.metrics.clone(), stop_rx.clone()));
    }
    let tcp_router = server::router(agent.clone(), &RouterOptions { token: token.clone() });
    for l in tcp {
        tracing::info!(addr = ?l.local_addr().ok(), "listening on loopback TCP (token required)");
        tasks.spawn(conn::serve(l, tcp_router.clone(), tcp_pools.clone(), agent.metrics.clone(), stop_rx.clone()));
    }
    if args.recheck_ms > 0 {
        tokio::spawn(agent.clone().watch(Duration::from_millis(args.recheck_ms)));
    }
    // A publisher refused for good (the host id is another agent's) stops the agent.
    let (refused_tx, mut refused_rx) = tokio::sync::mpsc::channel::<String>(1);
    let publishing =
        publish.map(|o| tokio::spawn(crate::agent::publish::run(agent.clone(), o, stop_rx.clone(), refused_tx)));
    let mut refused = None;
    tracing::info!(socket = ?socket, drivers = ?agent.registry, limits = ?agent_limits(&args), "capsd agent serving");
    server::notify_ready();
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => match &token {
                Some(t) => match t.reload() {
                    Ok(()) => tracing::info!(file = %t.path().display(), "SIGHUP: token file read again"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: token file not usable; the old token stays"),
                },
                None => tracing::info!("SIGHUP: no --token-file to read again; nothing else to do"),
            },
            Some(e) = refused_rx.recv() => { refused = Some(e); break; }
            r = tasks.join_next() => {
                if let Some(Err(e)) = r {
                    tracing::error!(error = %e, "a listener task failed; shutting down");
                }
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    // Requests in flight get a short grace; blocked ones (a hung probe) are left behind.
    if tokio::time::timeout(GRACE, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!("requests still in flight after {GRACE:?}; exiting anyway");
    }
    // The publisher revokes its lease (bounded: etcd may be gone).
    if let Some(p) = publishing {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
    match refused {
        Some(e) => Err(anyhow::anyhow!("not publishing: {e}")),
        None => Ok(()),
    }
}

/// The limits as logged at start-up.
fn agent_limits(args: &Args) -> String {
    format!(
        "max-probes {:?}, cache {} documents / {} MiB, {} connections per pool (Unix, TCP with the token), \
         {} TCP without the token yet ({} ms), timeouts: head {} ms, idle {} ms, request {} ms",
        args.max_probes,
        args.cache_entries,
        args.cache_mib,
        args.max_connections,
        args.max_unauthenticated,
        args.unauthenticated_timeout_ms,
        args.header_timeout_ms,
        args.idle_timeout_ms,
        args.request_timeout_ms
    )
}

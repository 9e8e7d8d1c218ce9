//! `capsd serve`: run the agent (HTTP on a Unix socket, loopback TCP on request) until
//! SIGINT/SIGTERM. See `agent` for what it serves and how answers stay current. Started by
//! a systemd `.socket` unit, it serves the sockets systemd passes instead (`agent::activation`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::agent::activation::{self, Inherited};
use crate::agent::{server, Agent};
use crate::registry::DriverOptions;

#[derive(Debug, clap::Args)]
#[command(after_help = "Socket activation: started by systemd with sockets passed (LISTEN_FDS, LISTEN_PID; \
capsd.socket), capsd serves those and binds nothing itself; --socket and --listen are then refused, and \
the socket's mode and group are the .socket unit's.")]
pub struct Args {
    /// Unix socket to serve on (default: /run/capsd/capsd.sock for root, else
    /// $XDG_RUNTIME_DIR/capsd.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Also serve on this loopback TCP address (127.0.0.1:PORT or [::1]:PORT); repeatable.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
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
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// driver-test: directory of golden documents to serve.
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
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
    let opts = DriverOptions {
        test_fixtures: args.fixtures.clone(),
        cache_dir: ctx.cache_dir.clone(),
        ..DriverOptions::default()
    };
    let registry = super::domcaps::registry(ctx, &opts)?;
    let socket = match (args.socket.clone(), inherited.is_empty()) {
        (Some(s), _) => Some(s),
        (None, true) => Some(default_socket()?),
        (None, false) => None,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().context("starting the async runtime")?;
    rt.block_on(serve(registry, socket, inherited, args))?;
    Ok(ExitCode::SUCCESS)
}

/// Serve on `socket` (bound here, removed at exit) or, when socket-activated, on the
/// `inherited` sockets (systemd's: neither bound nor removed here).
async fn serve(
    registry: crate::registry::Registry,
    socket: Option<PathBuf>,
    inherited: Vec<Inherited>,
    args: Args,
) -> Result<()> {
    let agent = Arc::new(Agent::new(registry));
    let mut unix = Vec::new();
    let mut tcp = Vec::new();
    if let Some(path) = &socket {
        unix.push(server::bind_unix(&server::SocketOptions {
            path: path.clone(),
            mode: args.socket_mode,
            group: args.socket_group.clone(),
        })?);
    }
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let router = server::router(agent.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for l in unix {
        let mut rx = stop_rx.clone();
        let r = router.clone();
        tasks.spawn(async move {
            axum::serve(l, r)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        });
    }
    for l in tcp {
        let addr = l.local_addr().ok();
        let mut rx = stop_rx.clone();
        let r = router.clone();
        tracing::info!(addr = ?addr, "listening on loopback TCP");
        tasks.spawn(async move {
            axum::serve(l, r)
                .with_graceful_shutdown(async move {
                    let _ = rx.changed().await;
                })
                .await
        });
    }
    if args.recheck_ms > 0 {
        tokio::spawn(agent.clone().watch(Duration::from_millis(args.recheck_ms)));
    }
    tracing::info!(socket = ?socket, drivers = ?agent.registry, "capsd agent serving");
    server::notify_ready();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = term.recv() => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("serving")),
            Err(e) => Err(anyhow::Error::new(e).context("server task")),
        },
    };
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
    if let Some(path) = &socket {
        server::remove_socket(path);
    }
    outcome
}

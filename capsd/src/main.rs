//! capsd: the command-line tool and host agent. Each subcommand lives in its own module under
//! `cmd/`; driver selection (cargo features, plugins) lives in `registry`.

mod agent;
mod cmd;
mod output;
mod registry;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as _, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Chosen when a warm `capsd domcapabilities` spent most of its time allocating and freeing
/// the JSON trees of the cached probe (mimalloc did that about twice as fast as glibc's
/// malloc). Since the cache decodes replies only when read (`driver_qemu::cache`), far
/// fewer values are allocated and the gain is smaller.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// capsd answers what this host's hypervisors can do, as libvirt's `<domainCapabilities>`
/// document, from real probing of the host.
#[derive(Debug, Parser)]
#[command(name = "capsd", version = VERSION, long_version = long_version(), about, long_about = None)]
pub(crate) struct Cli {
    /// Directory of out-of-tree driver plugins to load (shared libraries).
    #[arg(long, global = true, env = "CAPSD_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,

    /// How long loading a plugin and each call into it may take, in milliseconds (each
    /// plugin is loaded and runs in a helper process of its own, all loaded at start-up
    /// together; a helper past this is killed: a plugin that does not load in time is listed
    /// as failed, a call past it fails).
    #[arg(long, global = true, env = "CAPSD_PLUGIN_TIMEOUT_MS", value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    plugin_timeout_ms: u64,

    /// Probe cache directory (default: /var/cache/capsd for root, else
    /// $XDG_CACHE_HOME/capsd or ~/.cache/capsd).
    #[arg(long, global = true, env = "CAPSD_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Neither read nor write the probe cache: probe every time.
    #[arg(long, global = true)]
    no_cache: bool,

    /// Log verbosity: -v info, -vv debug (or RUST_LOG for fine-grained filters).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the domain capabilities for an emulator, arch, machine and virt type.
    #[command(name = "domcapabilities", alias = "domcaps")]
    DomCapabilities(cmd::domcaps::Args),
    /// List the drivers built in or loaded, and whether each is available on this host.
    Drivers(cmd::drivers::Args),
    /// Read a domain capabilities document (XML or JSON) and write it in the chosen form.
    Fmt(cmd::fmt::Args),
    /// Fill the probe cache for some or all emulators, with progress.
    Probe(cmd::probe::Args),
    /// Run the agent: the same answers over HTTP on a Unix socket (and loopback TCP).
    Serve(cmd::serve::Args),
    /// Check a libvirt domain definition against the capabilities (exit 1: unsupported parts,
    /// 2: bad input, 3: the capabilities could not be obtained).
    Check(cmd::check::Args),
    /// Why each element of the qemu document is there or not: the QMP replies, host facts
    /// and libvirt release rules that decided it (`--diff`: what changes between two
    /// recordings or releases).
    Explain(cmd::explain::Args),
    /// Compare two capabilities documents fact by fact (exit 1: different).
    Diff(cmd::diff::Args),
    /// The capabilities document every given host satisfies.
    Baseline(cmd::baseline::Args),
    /// Kubernetes node labels in KubeVirt's conventions.
    Labels(cmd::labels::Args),
    /// Placement traits in OpenStack Nova's conventions.
    Traits(cmd::labels::Args),
    /// Many hosts' capabilities in etcd (published by `capsd serve --etcd`): hosts, check a
    /// domain across them, baseline, diff two hosts.
    Fleet(cmd::fleet::Args),
    /// Internal: the helper process one plugin runs in, started by capsd itself.
    #[command(name = "plugin-host", hide = true)]
    PluginHost(cmd::plugin_host::Args),
}

/// `capsd -V`: the version and the git commit built from.
pub(crate) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("CAPSD_GIT_COMMIT"), ")");

/// `capsd --version`: the version, the git commit and the drivers built in.
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{}\ncommit: {}\ndrivers built in: {}",
            env!("CARGO_PKG_VERSION"),
            env!("CAPSD_GIT_COMMIT"),
            registry::built_in().join(", ")
        )
    })
}

/// The hidden subcommand that writes man pages and completions: added to the parser only, so
/// `Cli::command()`, which they are written from, does not list it.
const GENERATE_ASSETS: &str = "generate-assets";

fn main() -> ExitCode {
    let assets = cmd::assets::Args::augment_args(clap::Command::new(GENERATE_ASSETS).hide(true));
    let matches = Cli::command().subcommand(assets).get_matches();
    let parsed = match matches.subcommand() {
        Some((GENERATE_ASSETS, m)) => {
            return finish(cmd::assets::Args::from_arg_matches(m).map_err(Into::into).and_then(cmd::assets::run))
        }
        _ => Cli::from_arg_matches(&matches),
    };
    let cli = parsed.unwrap_or_else(|e| e.exit());
    init_tracing(cli.verbose);
    let cache_dir = if cli.no_cache { None } else { cli.cache_dir.or_else(registry::default_cache_dir) };
    let ctx = cmd::Context {
        plugin_dir: cli.plugin_dir,
        cache_dir,
        plugin_timeout: std::time::Duration::from_millis(cli.plugin_timeout_ms),
    };
    // The agent and the fleet page handle their signals themselves, the plugin helper needs no cleanup; every other
    // command removes its probes on them. `domcapabilities`, which starts no thread before it
    // probes and is mostly answered from the cache, sets that up only when a probe starts.
    if matches!(cli.command, Command::DomCapabilities(_)) {
        signals::cleanup_on_signals_before_probes();
    } else if !matches!(cli.command, Command::Serve(_) | Command::PluginHost(_))
        && !matches!(&cli.command, Command::Fleet(f) if f.serves())
    {
        if let Err(e) = signals::cleanup_on_signals() {
            tracing::warn!(error = %format!("{e:#}"), "an interrupted probe may leave files behind");
        }
    }
    let result = match cli.command {
        Command::DomCapabilities(a) => cmd::domcaps::run(&ctx, a),
        Command::Drivers(a) => cmd::drivers::run(&ctx, a),
        Command::Fmt(a) => cmd::fmt::run(a),
        Command::Probe(a) => cmd::probe::run(&ctx, a),
        Command::Serve(a) => cmd::serve::run(&ctx, a),
        Command::Check(a) => cmd::check::run(&ctx, a),
        Command::Explain(a) => cmd::explain::run(&ctx, a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Baseline(a) => cmd::baseline::run(a),
        Command::Labels(a) => cmd::labels::run_labels(&ctx, a),
        Command::Traits(a) => cmd::labels::run_traits(&ctx, a),
        Command::Fleet(a) => cmd::fleet::run(a),
        Command::PluginHost(a) => cmd::plugin_host::run(a),
    };
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("capsd: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Quiet by default on the CLI (warnings only); `-v`/`RUST_LOG` raise it. Logs go to stderr,
/// coloured only when stderr is a terminal (not in a journal or a log file).
fn init_tracing(verbose: u8) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

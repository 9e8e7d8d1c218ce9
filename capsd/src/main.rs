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

/// mimalloc's settings, made before its first allocation (see [`allocator`]).
#[used]
#[link_section = ".preinit_array"]
static CONFIGURE_ALLOCATOR: extern "C" fn() = allocator::configure;

/// What mimalloc is told before it starts. Its first allocation reserves an arena of
/// `arena_reserve` (1 GiB by default) and sets up that arena's bitmaps: about 36 page faults
/// on every run of a CLI that allocates well under 1 MiB. A smaller first arena costs the
/// agent nothing (mimalloc reserves further arenas as it needs them, each larger).
///
/// It runs from `.preinit_array`: before every constructor of the executable, mimalloc's
/// initialisation (which reads its options) among them. Environment variables
/// (`MIMALLOC_ARENA_RESERVE`) are not consulted for what is set here.
mod allocator {
    use std::ffi::{c_int, c_long};

    /// `mi_option_arena_reserve` in `mimalloc.h` (mimalloc keeps each option's number: retired
    /// options keep their slots). In KiB. A test reads it back through mimalloc.
    pub(crate) const ARENA_RESERVE: c_int = 23;
    /// The first arena's size, KiB.
    pub(crate) const ARENA_RESERVE_KIB: c_long = 16 * 1024;

    extern "C" {
        fn mi_option_set(option: c_int, value: c_long);
        #[cfg(test)]
        pub(crate) fn mi_option_get(option: c_int) -> c_long;
    }

    pub(crate) extern "C" fn configure() {
        // SAFETY: mi_option_set stores a value in mimalloc's static option table; it takes
        // any option number (out of range: ignored) and allocates nothing. Nothing runs
        // concurrently this early (no thread exists yet).
        unsafe { mi_option_set(ARENA_RESERVE, ARENA_RESERVE_KIB) };
    }
}

/// capsd answers what this host's hypervisors can do, as libvirt's `<domainCapabilities>`
/// document, from real probing of the host.
#[derive(Debug, Parser)]
#[command(name = "capsd", version = VERSION, long_version = long_version(), about, long_about = None)]
pub(crate) struct Cli {
    #[command(flatten)]
    globals: Globals,

    #[command(subcommand)]
    command: Command,
}

// The options every subcommand takes (no doc comment: a flattened struct's would become the
// command's about text).
#[derive(Debug, clap::Args)]
struct Globals {
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
}

/// The parser of `capsd [OPTIONS] domcapabilities ...` alone: the same global options and the
/// same subcommand as [`Cli`], without the other subcommands. Building every subcommand's
/// arguments, with their help texts, was most of the heap a warm `capsd domcapabilities`
/// touched and a quarter of its instructions (issue 21). It has no help or version of its
/// own: whatever it does not parse cleanly (help, version, an error, another subcommand) is
/// parsed again by [`Cli`], which answers exactly as before.
#[derive(Debug, Parser)]
#[command(name = "capsd", disable_help_flag = true, disable_help_subcommand = true)]
struct DomCapsCli {
    #[command(flatten)]
    globals: Globals,

    #[command(subcommand)]
    command: DomCapsCommand,
}

#[derive(Debug, Subcommand)]
enum DomCapsCommand {
    // Named as in `Command::DomCapabilities`; a test compares the two parsers.
    #[command(name = "domcapabilities", alias = "domcaps", disable_help_flag = true)]
    DomCapabilities(cmd::domcaps::Args),
}

impl DomCapsCli {
    /// `args` parsed as [`Cli`] would parse them, when they run `domcapabilities` and parse
    /// without an error, help or version; `None` otherwise (then [`Cli`] parses them).
    fn parse_from<I, T>(args: I) -> Option<Cli>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let parsed = DomCapsCli::try_parse_from(args).ok()?;
        let DomCapsCommand::DomCapabilities(a) = parsed.command;
        Some(Cli { globals: parsed.globals, command: Command::DomCapabilities(a) })
    }
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

fn main() {
    exit_now(run())
}

/// Ends the process with `code` once standard output is flushed, without libc's `exit`:
/// every command has dropped what it owns (files, helper processes, runtimes) when it
/// returns, and what `exit` would still do is the allocator's collection of every page it
/// holds, returned to the kernel page by page (about 0.2 ms of a warm `domcapabilities`,
/// issue 21) for a process that is about to end. A flush that fails is ignored, as at a
/// normal exit.
fn exit_now(code: ExitCode) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().lock().flush();
    let status = exit_status(code);
    // SAFETY: `_exit` ends the process at once; no Rust state is used after it.
    unsafe { nix::libc::_exit(status) }
}

/// The number `code` stands for (an `ExitCode` does not tell it otherwise).
fn exit_status(code: ExitCode) -> i32 {
    (0..=u8::MAX).find(|n| ExitCode::from(*n) == code).map_or(1, i32::from)
}

fn run() -> ExitCode {
    let cli = match DomCapsCli::parse_from(std::env::args_os()) {
        Some(cli) => cli,
        None => {
            let assets = cmd::assets::Args::augment_args(clap::Command::new(GENERATE_ASSETS).hide(true));
            let matches = Cli::command().subcommand(assets).get_matches();
            let parsed = match matches.subcommand() {
                Some((GENERATE_ASSETS, m)) => {
                    return finish(
                        cmd::assets::Args::from_arg_matches(m).map_err(Into::into).and_then(cmd::assets::run),
                    )
                }
                _ => Cli::from_arg_matches(&matches),
            };
            parsed.unwrap_or_else(|e| e.exit())
        }
    };
    let cli_globals = cli.globals;
    init_tracing(cli_globals.verbose);
    let cache_dir =
        if cli_globals.no_cache { None } else { cli_globals.cache_dir.or_else(registry::default_cache_dir) };
    let ctx = cmd::Context {
        plugin_dir: cli_globals.plugin_dir,
        cache_dir,
        plugin_timeout: std::time::Duration::from_millis(cli_globals.plugin_timeout_ms),
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
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        _ => LevelFilter::DEBUG,
    };
    let ansi = std::io::stderr().is_terminal();
    // Without RUST_LOG the filter is one level for every target: a plain level filter says
    // that, without building an `EnvFilter` (its directives and their tables) on every run.
    match std::env::var_os(EnvFilter::DEFAULT_ENV) {
        None => tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(ansi).init(),
        Some(_) => {
            let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level.to_string()));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allocator_is_configured_before_it_starts() {
        // The test harness is this executable too: its `.preinit_array` ran, and the number
        // set is the arena option's (a wrong number would leave mimalloc's 1 GiB default).
        // SAFETY: reads one entry of mimalloc's option table.
        let kib = unsafe { allocator::mi_option_get(allocator::ARENA_RESERVE) };
        assert_eq!(kib, allocator::ARENA_RESERVE_KIB);
    }

    #[test]
    fn exit_codes_keep_their_numbers() {
        assert_eq!(exit_status(ExitCode::SUCCESS), 0);
        assert_eq!(exit_status(ExitCode::FAILURE), 1);
        for n in [2u8, 3, 64, 255] {
            assert_eq!(exit_status(ExitCode::from(n)), i32::from(n));
        }
    }

    /// What `capsd ARGS` parses to, as text, or the kind of error or display it gives.
    fn full(args: &[&str]) -> Result<String, clap::error::ErrorKind> {
        let assets = cmd::assets::Args::augment_args(clap::Command::new(GENERATE_ASSETS).hide(true));
        let m = Cli::command().subcommand(assets).try_get_matches_from(args).map_err(|e| e.kind())?;
        Cli::from_arg_matches(&m).map(|c| format!("{c:?}")).map_err(|e| e.kind())
    }

    #[test]
    fn the_domcapabilities_parser_agrees_with_the_whole_one() {
        Cli::command().debug_assert();
        DomCapsCli::command().debug_assert();
        let taken: &[&[&str]] = &[
            &["capsd", "domcapabilities"],
            &["capsd", "domcaps"],
            &["capsd", "--cache-dir", "/c", "domcapabilities", "--format", "json"],
            &["capsd", "domcapabilities", "--cache-dir=/c", "-vv", "--no-cache"],
            &["capsd", "-v", "domcaps", "--arch", "aarch64", "--machine", "virt", "--virttype", "qemu"],
            &["capsd", "domcapabilities", "--emulatorbin", "/usr/bin/qemu-system-x86_64", "--libvirt-version", "10.0"],
            &["capsd", "--plugin-dir", "/p", "--plugin-timeout-ms", "9", "domcapabilities", "--driver", "test"],
            &["capsd", "domcapabilities", "--replay", "/r", "--host-facts", "/f", "--cpu-blockers"],
        ];
        for args in taken {
            let warm = DomCapsCli::parse_from(args.iter()).map(|c| format!("{c:?}"));
            assert_eq!(warm, Some(full(args).unwrap()), "{args:?}");
        }
        // Everything else is left to the whole parser, which answers as it always did.
        let left: &[&[&str]] = &[
            &["capsd"],
            &["capsd", "--help"],
            &["capsd", "-V"],
            &["capsd", "--version", "domcapabilities"],
            &["capsd", "domcapabilities", "--help"],
            &["capsd", "domcaps", "-h"],
            &["capsd", "help", "domcapabilities"],
            &["capsd", "domcapabilities", "--bogus"],
            &["capsd", "domcapabilities", "extra"],
            &["capsd", "domcapabilities", "--host-facts", "/f"],
            &["capsd", "domcapabilities", "--replay", "/r", "--fixtures", "/d"],
            &["capsd", "domcapabilities", "--format", "yaml"],
            &["capsd", "--plugin-timeout-ms", "0", "domcapabilities"],
            &["capsd", "--cache-dir", "domcapabilities"],
            &["capsd", "domcapbilities"],
            &["capsd", "drivers"],
            &["capsd", "fmt", "domcapabilities"],
            &["capsd", "generate-assets", "--man", "/m"],
        ];
        for args in left {
            assert!(DomCapsCli::parse_from(args.iter()).is_none(), "{args:?}");
            assert!(!full(args).is_ok_and(|c| c.contains("DomCapabilities")), "{args:?}");
        }
    }
}

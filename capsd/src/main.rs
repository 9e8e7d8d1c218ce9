//! capsd: the command-line tool and host agent. Each subcommand lives in its own module under
//! `cmd/`; driver selection (cargo features, plugins) lives in `registry`.
//!
//! The process starts at [`main`], a C entry point, not at std's: see [`startup`].
#![cfg_attr(not(test), no_main)]
// The unit tests' harness has std's entry point, which calls none of `main`'s callees.
#![cfg_attr(test, allow(dead_code))]

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

// The unwinder (panics, backtraces) linked in from GCC's static `libgcc_eh` instead of
// loaded from `libgcc_s.so.1` at every start: one shared library fewer to map and
// relocate, and its constructor, which asks the CPU for its features by `cpuid` (a trap
// to the hypervisor in a VM), no longer runs: about 0.1 ms of a warm `capsd
// domcapabilities` (issue 21). Named before std's `-lgcc_s` on the link line, it provides
// every unwinding symbol, and `--as-needed` then drops `libgcc_s`. The same code; a test
// checks the executable needs no `libgcc_s` and that a panic still unwinds.
#[link(name = "gcc_eh", kind = "static")]
extern "C" {}

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
/// initialisation (which reads its options) among them. It sets the default: an
/// environment variable (`MIMALLOC_ARENA_RESERVE`) still overrides it.
mod allocator {
    use std::ffi::{c_int, c_long};

    /// `mi_option_arena_reserve` in `mimalloc.h` (mimalloc keeps each option's number: retired
    /// options keep their slots). In KiB. A test reads it back through mimalloc.
    pub(crate) const ARENA_RESERVE: c_int = 23;
    /// The first arena's size, KiB.
    pub(crate) const ARENA_RESERVE_KIB: c_long = 16 * 1024;

    extern "C" {
        fn mi_option_set_default(option: c_int, value: c_long);
        #[cfg(test)]
        pub(crate) fn mi_option_get(option: c_int) -> c_long;
    }

    pub(crate) extern "C" fn configure() {
        // SAFETY: mi_option_set_default stores a value in mimalloc's static option table;
        // it takes any option number (out of range: ignored) and allocates nothing. Nothing
        // runs concurrently this early (no thread exists yet).
        unsafe { mi_option_set_default(ARENA_RESERVE, ARENA_RESERVE_KIB) };
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

/// The environment variables clap reads for the global options: while any is set, clap
/// parses (so that its rules for them, empty values included, stay the only ones).
const GLOBAL_ENV: [&str; 3] = ["CAPSD_PLUGIN_DIR", "CAPSD_PLUGIN_TIMEOUT_MS", "CAPSD_CACHE_DIR"];

/// `capsd [GLOBALS] domcapabilities [OPTIONS]` read without clap, for the command line a
/// warm query has: long options as `--name VALUE` or `--name=VALUE`, `-v`/`-vv`/`--verbose`,
/// each option at most once. Building even [`DomCapsCli`]'s parser was about a tenth of a
/// warm `capsd domcapabilities` (issue 21). `None` for anything clap might read another way
/// (help, version, another subcommand, a value that starts with `-` or is empty, a repeated
/// option, the options with rules between them, a global option's environment variable set
/// (`env_set`), anything not UTF-8): then clap parses, and a test holds that whatever this
/// takes, clap reads the same.
fn parse_plain<I>(args: I, env_set: impl Fn(&str) -> bool) -> Option<Cli>
where
    I: IntoIterator<Item = std::ffi::OsString>,
{
    if GLOBAL_ENV.iter().any(|v| env_set(v)) {
        return None;
    }
    let mut globals =
        Globals { plugin_dir: None, plugin_timeout_ms: 5000, cache_dir: None, no_cache: false, verbose: 0 };
    let mut timeout_given = false;
    // `-v` counted before and after the subcommand: clap keeps the subcommand's count when
    // both are given, so such a line is left to clap.
    let (mut v_before, mut v_after) = (0u8, 0u8);
    let mut own: Option<cmd::domcaps::PlainArgs> = None;
    let mut tokens = args.into_iter().skip(1);
    while let Some(token) = tokens.next() {
        let token = token.into_string().ok()?;
        if own.is_none() && (token == "domcapabilities" || token == "domcaps") {
            own = Some(cmd::domcaps::PlainArgs::new());
            continue;
        }
        if let Some(vs) = token.strip_prefix('-').filter(|v| !v.is_empty() && v.bytes().all(|b| b == b'v')) {
            let count = if own.is_none() { &mut v_before } else { &mut v_after };
            *count = count.checked_add(u8::try_from(vs.len()).ok()?).filter(|n| *n <= 8)?;
            continue;
        }
        let (name, inline) = match token.strip_prefix("--")?.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (token[2..].to_owned(), None),
        };
        let global_value = matches!(name.as_str(), "plugin-dir" | "plugin-timeout-ms" | "cache-dir");
        let value = if global_value || cmd::domcaps::PlainArgs::takes_value(&name) {
            let v = match inline {
                Some(v) => v,
                None => tokens.next()?.into_string().ok()?,
            };
            if v.is_empty() || v.starts_with('-') {
                return None;
            }
            Some(v)
        } else if inline.is_some() {
            return None;
        } else {
            None
        };
        match (name.as_str(), value) {
            ("plugin-dir", Some(v)) if globals.plugin_dir.is_none() => globals.plugin_dir = Some(v.into()),
            ("cache-dir", Some(v)) if globals.cache_dir.is_none() => globals.cache_dir = Some(v.into()),
            ("plugin-timeout-ms", Some(v)) if !timeout_given && v.bytes().all(|b| b.is_ascii_digit()) => {
                globals.plugin_timeout_ms = v.parse().ok().filter(|ms| (1..=3_600_000).contains(ms))?;
                timeout_given = true;
            }
            ("no-cache", None) if !globals.no_cache => globals.no_cache = true,
            ("verbose", None) => {
                let count = if own.is_none() { &mut v_before } else { &mut v_after };
                *count = count.checked_add(1).filter(|n| *n <= 8)?;
            }
            (name, value) => {
                if !own.as_mut()?.take(name, value.as_deref()) {
                    return None;
                }
            }
        }
    }
    if v_before > 0 && v_after > 0 {
        return None;
    }
    globals.verbose = v_before + v_after;
    Some(Cli { globals, command: Command::DomCapabilities(own?.finish()) })
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

/// The entry point libc calls. std's own (`lang_start`) would first find the main thread's
/// stack by reading `/proc/self/maps` and set up a handler that names a stack overflow:
/// about a tenth of a warm `capsd domcapabilities` (issue 21). What else it does, [`startup`]
/// does; a panic ends the process with status 101, as under std's entry point.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    startup::prepare();
    // std reads the arguments by itself (glibc hands them to its initialiser too).
    let code = std::panic::catch_unwind(run).unwrap_or(ExitCode::from(101));
    exit_now(code)
}

/// What std's entry point does before `main` that capsd needs, without the rest.
///
/// - Standard input, output and error that are closed get `/dev/null`: a file capsd opens
///   later must never become its standard output (capsd runs as root).
/// - `SIGPIPE` is ignored: writing to a closed pipe or socket is an error (`EPIPE`) that the
///   code handles, not the end of the process. (std still restores it to the default in the
///   children it starts, as before.)
///
/// Left out: the handler that prints "has overflowed its stack" (an overflow still ends
/// the process, by `SIGSEGV`, without that line), and the main thread's name ("main") in
/// panic messages.
mod startup {
    use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
    use nix::sys::signal::{signal, SigHandler, Signal};
    use nix::sys::stat::Mode;

    pub(crate) fn prepare() {
        for fd in 0..=2 {
            if fcntl(fd, FcntlArg::F_GETFD) == Err(nix::errno::Errno::EBADF) {
                // The lowest free descriptor: this one.
                match open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
                    Ok(got) if got == fd => {}
                    _ => std::process::abort(),
                }
            }
        }
        // SAFETY: SIG_IGN runs no code of ours; no other thread exists yet.
        if unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) }.is_err() {
            std::process::abort();
        }
    }
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
    let plain = parse_plain(std::env::args_os(), |v| std::env::var_os(v).is_some());
    let cli = match plain.or_else(|| DomCapsCli::parse_from(std::env::args_os())) {
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
    fn a_panic_still_unwinds_with_the_static_unwinder() {
        // This harness links `libgcc_eh` as the executable does.
        let dropped = std::sync::atomic::AtomicBool::new(false);
        struct Flag<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Flag<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _flag = Flag(&dropped);
            panic!("unwinding through a frame with a destructor");
        }));
        assert!(caught.is_err());
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the frame's destructor did not run");
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

    fn plain(args: &[&str]) -> Option<String> {
        parse_plain(args.iter().map(std::ffi::OsString::from), |_| false).map(|c| format!("{c:?}"))
    }

    /// Lines a warm query has, which both the plain parser and `DomCapsCli` take.
    const WARM_LINES: &[&[&str]] = &[
        &["capsd", "domcapabilities"],
        &["capsd", "domcaps"],
        &["capsd", "--cache-dir", "/c", "domcapabilities", "--format", "json"],
        &["capsd", "domcapabilities", "--cache-dir=/c", "-vv", "--no-cache"],
        &["capsd", "-v", "domcaps", "--arch", "aarch64", "--machine", "virt", "--virttype", "qemu"],
        &["capsd", "domcapabilities", "--emulatorbin", "/usr/bin/qemu-system-x86_64", "--libvirt-version", "10.0"],
        &["capsd", "--plugin-dir", "/p", "--plugin-timeout-ms", "9", "domcapabilities", "--driver", "test"],
    ];

    #[test]
    fn the_plain_parser_reads_what_clap_reads() {
        let more: &[&[&str]] = &[
            &["capsd", "domcapabilities", "--emulatorbin=/e", "--virttype=kvm", "--cpu-blockers", "--verbose", "-v"],
            &["capsd", "-vv", "--verbose", "domcapabilities"],
        ];
        for args in WARM_LINES.iter().chain(more) {
            assert_eq!(plain(args), Some(full(args).unwrap()), "{args:?}");
        }
        let left: &[&[&str]] = &[
            &["capsd"],
            &["capsd", "-V"],
            &["capsd", "domcapabilities", "--help"],
            &["capsd", "domcaps", "-h"],
            &["capsd", "domcapabilities", "--arch", "x86_64", "--arch", "aarch64"],
            &["capsd", "domcapabilities", "--arch", "-x"],
            &["capsd", "domcapabilities", "--arch="],
            &["capsd", "domcapabilities", "--no-cache=true"],
            &["capsd", "domcapabilities", "--format", "xml"],
            &["capsd", "domcapabilities", "--replay", "/r"],
            &["capsd", "domcapabilities", "--fixtures", "/d", "--driver", "test"],
            &["capsd", "--plugin-timeout-ms", "+5", "domcapabilities"],
            &["capsd", "--plugin-timeout-ms", "0", "domcapabilities"],
            &["capsd", "--arch", "x86_64", "domcapabilities"],
            &["capsd", "domcapabilities", "--", "--arch"],
            &["capsd", "domcapabilities", "extra"],
            &["capsd", "drivers"],
            // clap keeps the subcommand's count of a global flag given on both sides.
            &["capsd", "-v", "domcapabilities", "-v"],
            &["capsd", "-vv", "domcaps", "--verbose"],
            &["capsd", "--verbose", "domcapabilities", "-vvv"],
            // More than 8 (no wrapping around).
            &["capsd", "domcapabilities", "-vvvvv", "-vvvv"],
        ];
        for args in left {
            assert_eq!(plain(args), None, "{args:?}");
        }
        let many_v = format!("-{}", "v".repeat(255));
        assert_eq!(plain(&["capsd", "domcapabilities", "-v", &many_v]), None);
        // A global option's environment variable leaves the line to clap.
        let args = ["capsd", "domcapabilities"].map(std::ffi::OsString::from);
        assert!(parse_plain(args.clone(), |v| v == "CAPSD_CACHE_DIR").is_none());
        assert!(parse_plain(args, |_| false).is_some());

        // Whatever it takes of many command lines made of these words, clap reads the same
        // (and it takes a good share of them: otherwise this would test nothing).
        let words = [
            "domcapabilities",
            "domcaps",
            "drivers",
            "--arch",
            "x86_64",
            "--arch=aarch64",
            "--arch=",
            "-v",
            "-vv",
            "-vx",
            "--verbose",
            "--no-cache",
            "--no-cache=1",
            "--cache-dir",
            "/c",
            "--cache-dir=/d",
            "--format",
            "json",
            "xml",
            "--format=json",
            "--emulatorbin",
            "/e",
            "--machine",
            "q35",
            "--virttype",
            "kvm",
            "--cpu-blockers",
            "--driver",
            "test",
            "qemu",
            "--plugin-timeout-ms",
            "9",
            "0",
            "+5",
            "--plugin-dir",
            "--libvirt-version",
            "10.0",
            "--",
            "-x",
            "",
            "--help",
            "-h",
            "--replay",
            "--fixtures",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            usize::try_from(seed % n as u64).unwrap()
        };
        let mut agreed = 0;
        for _ in 0..4000 {
            let len = 1 + next(6);
            let mut args = vec!["capsd"];
            for i in 0..len {
                // Mostly a subcommand first, so that many lines are domcapabilities ones.
                args.push(if i == 1 && next(3) == 0 || i == 0 && next(3) > 0 {
                    "domcapabilities"
                } else {
                    words[next(words.len())]
                });
            }
            if let Some(p) = plain(&args) {
                assert_eq!(Ok(p), full(&args), "{args:?}");
                agreed += 1;
            }
        }
        assert!(agreed > 400, "only {agreed} lines taken");
    }

    #[test]
    fn the_domcapabilities_parser_agrees_with_the_whole_one() {
        Cli::command().debug_assert();
        DomCapsCli::command().debug_assert();
        let more: &[&[&str]] =
            &[&["capsd", "domcapabilities", "--replay", "/r", "--host-facts", "/f", "--cpu-blockers"]];
        for args in WARM_LINES.iter().chain(more) {
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

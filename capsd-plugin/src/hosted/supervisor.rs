//! capsd's side: one helper process per plugin, started for all plugins at once when capsd
//! starts ([`start_dir`]: the helper loads the plugin and makes the handshake, so the
//! plugin's name is known and no plugin code runs in capsd), one request at a time, every
//! call bounded by a deadline, and a helper that crashed, exited, hung or broke the protocol
//! replaced (with backoff) on a later request.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::Signal;

use super::helper::HELPER_FD;
use super::launch::{launch_from_keeper, GroupLauncher, HelperProcess, Launcher};
use super::proto::{read_frame, write_frame, Frame, ProtoError, MAX_FROM_HELPER};
use crate::loader::{query_json, vet_dir, FileIdentity, PluginDriver, PluginError, PluginId, Received, Vetted};

/// How helpers are started and supervised.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// The helper program (capsd uses `/proc/self/exe`: itself, the very binary running).
    pub program: PathBuf,
    /// Arguments before the ones naming the plugin (capsd: `plugin-host`). The helper gets
    /// `--plugin PATH --plugin-dev DEV --plugin-ino INO` after them.
    pub args: Vec<OsString>,
    /// Deadline of one call, from the moment it is made: waiting for the helper, starting
    /// it, and the plugin's answer.
    pub timeout: Duration,
    /// Wait before restarting a helper after its first failure in a row; doubled after each
    /// further one, up to `backoff_max`. A success resets it.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// How a helper is started and its process tree ended ([`GroupLauncher`] by default).
    pub launcher: Arc<dyn Launcher>,
}

impl HostOptions {
    /// Helpers started as `program args...`, a 5 s deadline, backoff from 100 ms to 10 s.
    pub fn new(program: impl Into<PathBuf>, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        HostOptions {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(5),
            backoff_first: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            launcher: Arc::new(GroupLauncher),
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self.backoff_first.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.backoff_max)
    }
}

/// A running helper: the process and capsd's end of its socket.
#[derive(Debug)]
struct Helper {
    child: Box<dyn HelperProcess>,
    sock: UnixStream,
}

impl Helper {
    fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Whether the helper has ended (not reaped yet, see [`HelperProcess::ended`]).
    fn ended(&self) -> bool {
        self.child.ended()
    }

    /// Kill the helper and what it started (the plugin's own children too), then reap it:
    /// its exit status (a helper that had ended already keeps its own).
    fn kill(self) -> Option<ExitStatus> {
        self.child.kill()
    }

    /// The helper closed its socket: wait briefly for it to finish dying, then end its
    /// process group. `None`: it was still alive and was killed.
    fn reap(self) -> Option<ExitStatus> {
        let until = Instant::now() + Duration::from_secs(1);
        while !self.ended() {
            if Instant::now() >= until {
                self.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill()
    }
}

/// What is shared between the calls of one plugin.
#[derive(Default)]
struct State {
    /// A call is using the helper; others wait for it (one request at a time).
    busy: bool,
    helper: Option<Helper>,
    /// Failures in a row, and when the next start may happen.
    failures: u32,
    retry_at: Option<Instant>,
    last_failure: String,
}

/// A vetted plugin run in a helper process, usable as any other driver.
pub struct HostedPlugin {
    id: PluginId,
    identity: FileIdentity,
    opts: HostOptions,
    state: Mutex<State>,
    freed: Condvar,
    /// A library loaded into this process by the caller of [`HostedPlugin::new`] (never by
    /// capsd, see [`start_dir`]). Kept loaded, never called: unloading foreign code is its
    /// own risk.
    _in_process: Option<PluginDriver>,
}

impl std::fmt::Debug for HostedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostedPlugin").field("name", &self.id.name).field("path", &self.id.path).finish()
    }
}

/// The plugin call a request makes, for messages.
fn call_name(frame: &Frame, query: Option<&Query>) -> String {
    match (frame, query) {
        (Frame::Availability, _) => "availability".to_owned(),
        (_, Some(q)) => format!("domain_capabilities for query {q}"),
        _ => "domain_capabilities".to_owned(),
    }
}

fn describe(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig).map(Signal::as_str).unwrap_or("unknown");
        let core = if status.core_dumped() { ", core dumped" } else { "" };
        format!("was killed by signal {name} ({sig}{core})")
    } else if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else {
        format!("ended ({status})")
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

impl HostedPlugin {
    /// Run a plugin that [`crate::load_file`] loaded into this process through helper
    /// processes (benchmarks, tests). capsd uses [`start_dir`], which loads nothing here.
    pub fn new(vetted: PluginDriver, opts: HostOptions) -> Self {
        HostedPlugin {
            id: vetted.id().clone(),
            identity: vetted.identity(),
            opts,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
            _in_process: Some(vetted),
        }
    }

    /// A plugin whose helper said hello as `name` at start-up; that helper answers the
    /// first call.
    fn started(name: String, file: Vetted, helper: Helper, opts: HostOptions) -> Self {
        HostedPlugin {
            id: PluginId { name, path: file.path },
            identity: file.identity,
            opts,
            state: Mutex::new(State { helper: Some(helper), ..State::default() }),
            freed: Condvar::new(),
            _in_process: None,
        }
    }

    /// The library file of the plugin.
    pub fn path(&self) -> &std::path::Path {
        &self.id.path
    }

    /// Send one request and wait for its reply within the deadline.
    fn call(&self, request: Frame, query: Option<&Query>) -> Result<Received, DriverError> {
        let until = Instant::now() + self.opts.timeout;
        let what = call_name(&request, query);
        let helper = self.take_turn(until)?.and_then(|h| self.alive(h));
        let mut turn = Turn { plugin: self, helper: None, failure: None };
        let mut helper = match helper {
            Some(h) => h,
            None => match self.start(until, &what) {
                Ok(h) => h,
                Err(e) => {
                    turn.failure = Some(reason_of(&e));
                    return Err(e);
                }
            },
        };
        match self.exchange(&mut helper, &request, until) {
            Ok(Frame::Reply { kind, code, data }) => {
                turn.helper = Some(helper);
                Ok(Received { kind, code, data: Ok(data) })
            }
            Ok(Frame::HostError { message }) => {
                turn.helper = Some(helper);
                Ok(Received { kind: 0, code: 0, data: Err(message) })
            }
            Ok(Frame::Ended { status }) => {
                let e = self.id.failure(ended(helper, status, &what));
                turn.failure = Some(reason_of(&e));
                Err(e)
            }
            Ok(other) => {
                let pid = helper.pid();
                helper.kill();
                let e = self.id.failure(format!(
                    "its helper process (pid {pid}) answered {what} with an unexpected {} frame and was killed",
                    other.kind_name()
                ));
                turn.failure = Some(reason_of(&e));
                Err(e)
            }
            Err(e) => {
                let e = self.fail(helper, e, &what);
                turn.failure = Some(reason_of(&e));
                Err(e)
            }
        }
    }

    /// The idle helper, unless it ended since its last answer (then it is reaped, with its
    /// process group, and a new one starts).
    fn alive(&self, helper: Helper) -> Option<Helper> {
        if !helper.ended() {
            return Some(helper);
        }
        let pid = helper.pid();
        let how = helper.kill().map(describe).unwrap_or_else(|| "ended".to_owned());
        tracing::warn!(plugin = %self.id.name, pid, "idle plugin helper {how}; starting a new one");
        None
    }

    /// Wait (within the deadline) until no other call uses the helper, and take it (`None`:
    /// none is running). Also waits out the restart backoff when it ends within the deadline.
    fn take_turn(&self, until: Instant) -> Result<Option<Helper>, DriverError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.busy {
            let now = Instant::now();
            if now >= until {
                return Err(self.id.failure(format!(
                    "its helper process was busy with earlier requests for the whole {} ms deadline",
                    ms(self.opts.timeout)
                )));
            }
            st = self.freed.wait_timeout(st, until - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        let helper = st.helper.take();
        if helper.is_none() {
            if let Some(at) = st.retry_at.filter(|at| *at > Instant::now()) {
                if at > until {
                    let calls = match st.failures {
                        1 => "the last call".to_owned(),
                        n => format!("the last {n} calls"),
                    };
                    return Err(self.id.failure(format!(
                        "its helper process failed on {calls}, most recently: {}; the next start is in {} ms, past this request's deadline",
                        st.last_failure,
                        ms(at - Instant::now())
                    )));
                }
                st.busy = true;
                drop(st);
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                return Ok(None);
            }
        }
        st.busy = true;
        Ok(helper)
    }

    /// Start a helper and wait for its hello.
    fn start(&self, until: Instant, what: &str) -> Result<Helper, DriverError> {
        let mut helper = launch(&self.opts, &self.id.path, self.identity).map_err(|e| self.id.failure(e))?;
        let pid = helper.pid();
        match read_until(&mut helper.sock, until) {
            Ok(Frame::Hello { name }) if name == self.id.name => {
                tracing::debug!(plugin = %self.id.name, pid, "plugin helper started");
                Ok(helper)
            }
            Ok(Frame::Hello { name }) => {
                helper.kill();
                Err(self.id.failure(format!(
                    "its helper process loaded a plugin called '{name}' from the file, not '{}' as capsd checked it",
                    self.id.name
                )))
            }
            Ok(Frame::LoadFailed { message }) => {
                let end = helper.reap().map(describe).unwrap_or_else(|| "was killed".to_owned());
                Err(self
                    .id
                    .failure(format!("its helper process (pid {pid}) could not load the plugin ({message}) and {end}")))
            }
            Ok(Frame::Ended { status }) => {
                Err(self.id.failure(ended(helper, status, &format!("loading the plugin (before {what})"))))
            }
            Ok(other) => {
                helper.kill();
                Err(self.id.failure(format!(
                    "its helper process (pid {pid}) sent a {} frame instead of a hello",
                    other.kind_name()
                )))
            }
            Err(e) => Err(self.fail(helper, e, &format!("loading the plugin (before {what})"))),
        }
    }

    fn exchange(&self, helper: &mut Helper, request: &Frame, until: Instant) -> Result<Frame, ProtoError> {
        helper.sock.set_write_timeout(Some(until.saturating_duration_since(Instant::now()).max(MIN_WAIT)))?;
        write_frame(&mut helper.sock, request)?;
        read_until(&mut helper.sock, until)
    }

    /// The helper failed `what` with `e`: end it, and say how it ended.
    fn fail(&self, helper: Helper, e: ProtoError, what: &str) -> DriverError {
        self.id.failure(helper_failure(helper, e, what, self.opts.timeout))
    }
}

/// Why a helper failed `what` with `e` (it is ended, and how it ended is said).
fn helper_failure(helper: Helper, e: ProtoError, what: &str, timeout: Duration) -> String {
    let pid = helper.pid();
    if e.is_timeout() {
        helper.kill();
        return format!("no answer to {what} within {} ms; its helper process (pid {pid}) was killed", ms(timeout));
    }
    match e {
        ProtoError::Closed | ProtoError::Io(_) => match helper.reap() {
            Some(st) => format!("its helper process (pid {pid}) {} during {what}", describe(st)),
            None => format!("its helper process (pid {pid}) closed its connection during {what} and was killed"),
        },
        e => {
            helper.kill();
            format!("its helper process (pid {pid}) broke the protocol during {what} ({e}) and was killed")
        }
    }
}

/// The helper's init said its worker was ended by a signal (raw wait `status`) during
/// `what`: end what is left, and say so.
fn ended(helper: Helper, status: i32, what: &str) -> String {
    let pid = helper.pid();
    helper.kill();
    format!("its helper process (pid {pid}) {} during {what}", describe(ExitStatus::from_raw(status)))
}

/// Start a helper for the vetted file `path` (`identity`), with its socket.
fn launch(opts: &HostOptions, path: &Path, identity: FileIdentity) -> Result<Helper, String> {
    // Both ends close-on-exec; the child's end is moved to HELPER_FD by the launcher, from a
    // number above it (were it 0 to 2, the child's standard streams would replace it).
    let pair_failed = |e: std::io::Error| format!("cannot create a socket pair for its helper process: {e}");
    let (ours, low) = UnixStream::pair().map_err(pair_failed)?;
    let theirs = fcntl(low.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(HELPER_FD + 1)).map_err(|e| pair_failed(e.into()))?;
    // Only the copy may stay open here: capsd sees the helper end when no end of its own is
    // left open.
    drop(low);
    // SAFETY: `theirs` is the descriptor fcntl just created; nothing else owns it.
    let theirs = unsafe { OwnedFd::from_raw_fd(theirs) };
    let mut args = opts.args.clone();
    args.extend([
        OsString::from("--plugin"),
        path.as_os_str().to_owned(),
        OsString::from("--plugin-dev"),
        OsString::from(identity.dev.to_string()),
        OsString::from("--plugin-ino"),
        OsString::from(identity.ino.to_string()),
    ]);
    // `theirs` is closed here once the launcher has returned (the child holds its copy).
    let child = launch_from_keeper(&opts.launcher, &opts.program, &args, theirs)
        .map_err(|e| format!("cannot start its helper process ({}): {e}", opts.program.display()))?;
    Ok(Helper { child, sock: ours })
}

/// A plugin that could not be started: its file and what happened to its helper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

/// The outcome of [`start_dir`].
#[derive(Debug, Default)]
pub struct StartReport {
    /// Plugins whose helper loaded them, in file name order.
    pub plugins: Vec<HostedPlugin>,
    /// Files refused by the checks, by the handshake in the helper (no entry point, another
    /// ABI version, a bad or taken name).
    pub refused: Vec<PluginError>,
    /// Files whose helper crashed, exited or hung while loading the plugin.
    pub failed: Vec<StartFailure>,
}

/// Check the plugin files of `dir` here (nothing is loaded into this process), then start
/// one helper per file, all at once, each loading its plugin and answering with its name:
/// the whole start-up takes at most one `opts.timeout` (past it a helper still loading is
/// killed, and its plugin reported failed). Names in `taken` (capsd's own drivers) cannot
/// be claimed; neither can a name an earlier file (in name order) has. Refusals and
/// failures are logged and returned, never fatal.
pub fn start_dir(dir: &Path, taken: &[&str], opts: &HostOptions) -> StartReport {
    let vetted = vet_dir(dir);
    let mut report = StartReport { refused: vetted.refused, ..StartReport::default() };
    let until = Instant::now() + opts.timeout;
    let mut launched = Vec::new();
    for file in vetted.files {
        match launch(opts, &file.path, file.identity) {
            Ok(helper) => launched.push((file, helper)),
            Err(reason) => report.failed.push(StartFailure { path: file.path, reason }),
        }
    }
    // The helpers load at the same time; their hellos are awaited at the same time too (one
    // thread each, for the start-up only), each by the one deadline.
    let hellos: Vec<(Vetted, Helper, Result<Frame, ProtoError>)> = std::thread::scope(|s| {
        let waits: Vec<_> = launched
            .into_iter()
            .map(|(file, mut helper)| {
                s.spawn(move || {
                    let got = read_until(&mut helper.sock, until);
                    (file, helper, got)
                })
            })
            .collect();
        waits.into_iter().filter_map(|w| w.join().ok()).collect()
    });
    for (file, helper, got) in hellos {
        let pid = helper.pid();
        match got {
            Ok(Frame::Hello { name }) => {
                let clash = taken.iter().find(|t| **t == name).map(|t| format!("capsd's own driver '{t}'"));
                let clash = clash.or_else(|| report.plugins.iter().find(|p| p.id.name == name).map(|p| p.id.origin()));
                if let Some(taken_by) = clash {
                    helper.kill();
                    let err = PluginError::DuplicateName { path: file.path, name, taken_by };
                    tracing::warn!(path = %err.path().display(), "plugin refused: {err}");
                    report.refused.push(err);
                    continue;
                }
                tracing::info!(driver = %name, path = %file.path.display(), pid, "plugin loaded in its helper process");
                report.plugins.push(HostedPlugin::started(name, file, helper, opts.clone()));
            }
            Ok(Frame::LoadFailed { message }) => {
                helper.reap();
                let err = PluginError::InHelper { path: file.path, message };
                tracing::warn!(path = %err.path().display(), "plugin refused: {err}");
                report.refused.push(err);
            }
            Ok(Frame::Ended { status }) => {
                let reason = ended(helper, status, "loading the plugin");
                report.failed.push(StartFailure { path: file.path, reason });
            }
            Ok(other) => {
                helper.kill();
                let reason =
                    format!("its helper process (pid {pid}) sent a {} frame instead of a hello", other.kind_name());
                report.failed.push(StartFailure { path: file.path, reason });
            }
            Err(e) => {
                let reason = helper_failure(helper, e, "loading the plugin", opts.timeout);
                report.failed.push(StartFailure { path: file.path, reason });
            }
        }
    }
    for f in &report.failed {
        tracing::warn!(path = %f.path.display(), "plugin failed: {}", f.reason);
    }
    report
}

/// What went wrong, without the "probing plugin ... failed" every failure of this plugin
/// starts with (for the "last failure" of a later message).
fn reason_of(e: &DriverError) -> String {
    match e {
        DriverError::ProbeFailed { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The shortest socket timeout set (zero means "no timeout" to the socket API).
const MIN_WAIT: Duration = Duration::from_millis(1);

/// Read one frame from a helper, giving up at `until`.
fn read_until(sock: &mut UnixStream, until: Instant) -> Result<Frame, ProtoError> {
    struct Deadlined<'a> {
        sock: &'a UnixStream,
        until: Instant,
    }
    impl Read for Deadlined<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            self.sock.set_read_timeout(Some(left.max(MIN_WAIT)))?;
            (&*self.sock).read(buf)
        }
    }
    read_frame(&mut Deadlined { sock, until }, MAX_FROM_HELPER)
}

/// Gives the helper slot back when a call ends, however it ends, and records the outcome
/// for the restart backoff.
struct Turn<'a> {
    plugin: &'a HostedPlugin,
    /// The helper to keep for the next call (none after a failure).
    helper: Option<Helper>,
    /// Why the call failed because of the helper (starts the backoff).
    failure: Option<String>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let p = self.plugin;
        let mut st = p.state.lock().unwrap_or_else(|e| e.into_inner());
        st.busy = false;
        st.helper = self.helper.take();
        match self.failure.take() {
            Some(why) => {
                st.failures = st.failures.saturating_add(1);
                let wait = p.opts.backoff(st.failures);
                st.retry_at = Some(Instant::now() + wait);
                tracing::warn!(plugin = %p.id.name, failures = st.failures, retry_in_ms = ms(wait) as u64, "plugin helper failed: {why}");
                st.last_failure = why;
            }
            None if st.helper.is_some() => {
                st.failures = 0;
                st.retry_at = None;
            }
            None => {}
        }
        drop(st);
        p.freed.notify_one();
    }
}

impl Drop for HostedPlugin {
    fn drop(&mut self) {
        let helper = self.state.get_mut().unwrap_or_else(|e| e.into_inner()).helper.take();
        if let Some(h) = helper {
            h.kill();
        }
    }
}

impl DomainCapsDriver for HostedPlugin {
    fn name(&self) -> &str {
        &self.id.name
    }

    fn availability(&self) -> Availability {
        match self.call(Frame::Availability, None) {
            Ok(got) => self.id.availability_from(got),
            Err(e) => Availability::Unavailable { reason: e.to_string() },
        }
    }

    fn domain_capabilities(&self, query: &Query) -> Result<DomainCapabilities, DriverError> {
        let json = query_json(query)?;
        let got = self.call(Frame::DomainCapabilities { query: json }, Some(query))?;
        self.id.document_from(got)
    }

    /// The plugin's file and the state of its helper process (`capsd drivers`,
    /// `/v1/drivers`): which process answers, and failures in a row with the last one.
    fn details(&self) -> Vec<(String, String)> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let helper = match (&st.helper, st.busy) {
            (_, true) => "answering a call".to_owned(),
            (Some(h), false) => format!("pid {}, idle", h.pid()),
            (None, false) => "not running (starts on the next call)".to_owned(),
        };
        let mut d = vec![("file".to_owned(), self.id.origin()), ("helper".to_owned(), helper)];
        if st.failures > 0 {
            d.push(("helper failures in a row".to_owned(), format!("{}, last: {}", st.failures, st.last_failure)));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let o = HostOptions::new("/bin/false", ["x"]);
        let got: Vec<u128> = (1..=10).map(|n| o.backoff(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]);
        assert_eq!(o.backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn exit_statuses_are_named() {
        assert_eq!(describe(ExitStatus::from_raw(3 << 8)), "exited with status 3");
        assert_eq!(describe(ExitStatus::from_raw(11)), "was killed by signal SIGSEGV (11)");
        assert_eq!(describe(ExitStatus::from_raw(6 | 0x80)), "was killed by signal SIGABRT (6, core dumped)");
    }
}

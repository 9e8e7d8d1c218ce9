//! capsd's side: one helper process per plugin, started on demand, one request at a time,
//! every call bounded by a deadline, and a helper that crashed, exited, hung or broke the
//! protocol replaced (with backoff) on a later request.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use capsd_core::{Availability, DomainCapabilities, DomainCapsDriver, DriverError, Query};
use nix::fcntl::{fcntl, FcntlArg};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::helper::HELPER_FD;
use super::proto::{read_frame, write_frame, Frame, ProtoError, MAX_FROM_HELPER};
use crate::loader::{query_json, FileIdentity, PluginDriver, PluginId, Received};

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
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doubled = self.backoff_first.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        doubled.min(self.backoff_max)
    }
}

/// A running helper: the process and capsd's end of its socket.
struct Helper {
    child: Child,
    sock: UnixStream,
}

impl Helper {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the helper has ended. It is not reaped: until then its pid, which is also its
    /// process group's id, cannot be reused, so killing that group never hits a stranger.
    fn ended(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(waitid(Id::Pid(Pid::from_raw(self.child.id() as i32)), flags), Ok(WaitStatus::StillAlive))
    }

    /// Kill the helper's process group (the plugin's own children too), then reap it: its
    /// exit status (a helper that had ended already keeps its own).
    fn kill(mut self) -> Option<ExitStatus> {
        let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        self.child.wait().ok()
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
    /// The library as capsd vetted it (ownership, permissions, ABI handshake). Kept loaded,
    /// never called: unloading foreign code is its own risk.
    _vetted: PluginDriver,
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
    /// Run a plugin that [`crate::load_file`] vetted through helper processes.
    pub fn new(vetted: PluginDriver, opts: HostOptions) -> Self {
        HostedPlugin {
            id: vetted.id().clone(),
            identity: vetted.identity(),
            opts,
            state: Mutex::new(State::default()),
            freed: Condvar::new(),
            _vetted: vetted,
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
        // Both ends close-on-exec; the child's end is moved to HELPER_FD before exec, from a
        // number above it (were it 0 to 2, the child's standard streams would replace it).
        let pair_failed =
            |e: std::io::Error| self.id.failure(format!("cannot create a socket pair for its helper process: {e}"));
        let (ours, low) = UnixStream::pair().map_err(pair_failed)?;
        let theirs =
            fcntl(low.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(HELPER_FD + 1)).map_err(|e| pair_failed(e.into()))?;
        // Only the copy may stay open here: capsd sees the helper end when no end of its own
        // is left open.
        drop(low);
        // SAFETY: `theirs` is the descriptor fcntl just created; nothing else owns it.
        let theirs = unsafe { OwnedFd::from_raw_fd(theirs) };
        let mut cmd = Command::new(&self.opts.program);
        cmd.args(&self.opts.args)
            .arg("--plugin")
            .arg(&self.id.path)
            .arg("--plugin-dev")
            .arg(self.identity.dev.to_string())
            .arg("--plugin-ino")
            .arg(self.identity.ino.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let fd = theirs.as_raw_fd();
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid, fcntl, dup2, close_range); it
        // allocates nothing and takes no lock.
        unsafe { cmd.pre_exec(move || prepare_child(fd, parent)) };
        let child = spawn_from_keeper(cmd).map_err(|e| {
            self.id.failure(format!("cannot start its helper process ({}): {e}", self.opts.program.display()))
        })?;
        drop(theirs);
        let mut helper = Helper { child, sock: ours };
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
        let pid = helper.pid();
        if e.is_timeout() {
            helper.kill();
            return self.id.failure(format!(
                "no answer to {what} within {} ms; its helper process (pid {pid}) was killed",
                ms(self.opts.timeout)
            ));
        }
        let reason = match e {
            ProtoError::Closed | ProtoError::Io(_) => match helper.reap() {
                Some(st) => format!("its helper process (pid {pid}) {} during {what}", describe(st)),
                None => format!("its helper process (pid {pid}) closed its connection during {what} and was killed"),
            },
            e => {
                helper.kill();
                format!("its helper process (pid {pid}) broke the protocol during {what} ({e}) and was killed")
            }
        };
        self.id.failure(reason)
    }
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

/// In the forked child, before exec: die with capsd, never gain privileges, keep only the
/// socket (moved to [`HELPER_FD`]) and the standard descriptors.
fn prepare_child(fd: i32, parent: u32) -> std::io::Result<()> {
    use nix::libc;
    // PR_SET_PDEATHSIG: SIGKILL when the thread that forked us ends (see `spawn_from_keeper`).
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // capsd died between fork and prctl: nobody would ever kill us.
    // SAFETY: getppid has no arguments.
    if unsafe { libc::getppid() } as u32 != parent {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `fd` is above HELPER_FD (see `start`).
    // SAFETY: dup2 on descriptor numbers; the new descriptor has no close-on-exec.
    if unsafe { libc::dup2(fd, HELPER_FD) } != HELPER_FD {
        return Err(std::io::Error::last_os_error());
    }
    // Every other descriptor closes at exec, whoever opened it (a plugin capsd loaded, an
    // fd capsd inherited): mark them close-on-exec rather than closing them, so std's own
    // exec-status pipe keeps working.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with integer arguments.
    let r = unsafe {
        libc::syscall(libc::SYS_close_range, HELPER_FD as libc::c_uint + 1, libc::c_uint::MAX, CLOSE_RANGE_CLOEXEC)
    };
    if r != 0 {
        // Kernels before 5.11: one by one, as far as descriptors usually go.
        for other in (HELPER_FD + 1)..65536 {
            // SAFETY: fcntl on a descriptor number; EBADF for closed ones is ignored.
            unsafe { libc::fcntl(other, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

type SpawnJob = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Start `cmd` from one thread that lives as long as capsd: `PR_SET_PDEATHSIG` fires when
/// the *thread* that forked the child ends, and the agent's blocking threads come and go.
fn spawn_from_keeper(cmd: Command) -> std::io::Result<Child> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new().name("capsd-plugin-spawner".into()).spawn(move || {
            for (mut cmd, answer) in rx {
                let _ = answer.send(cmd.spawn());
            }
        });
        if let Err(e) = started {
            tracing::error!("cannot start the plugin helper spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    keeper
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("the plugin helper spawner thread is gone"))?;
    rx.recv().map_err(|_| std::io::Error::other("the plugin helper spawner thread is gone"))?
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

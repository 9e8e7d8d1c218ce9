//! Starting a probe process so that nothing it starts can outlive it, with the least
//! privilege: the low-level half of [`crate::process`].
//!
//! The child of `fork` (the *leader*) makes its own process group and, where the kernel
//! allows, a new PID namespace (`unshare(CLONE_NEWPID)`, and `CLONE_NEWUSER` with it when
//! capsd is not root). It then forks the emulator, which is PID 1 of that namespace, and only
//! waits for it and passes its exit status on. When the emulator (the namespace's init) dies,
//! the kernel kills every process left in the namespace, double-forked and `setsid` ones too,
//! before its parent can reap it: once the leader is reaped, nothing the probe started runs.
//! The emulator dies with the leader (`PR_SET_PDEATHSIG`), and the leader with the thread
//! that started it. Where no PID namespace can be made (a seccomp filter, systemd's
//! `RestrictNamespaces=`), the leader runs the emulator itself, the process group is all that
//! is killed, and a warning says so once.
//!
//! The emulator gets the probe user's uid, gid and supplementary groups (as libvirt starts
//! QEMU), `PR_SET_NO_NEW_PRIVS`, default signal handling, and no descriptor but 0, 1 and 2
//! (every other one is marked close-on-exec with `close_range`). The leader keeps nothing
//! of capsd's open: it closes every descriptor it does not need.
//!
//! Between `fork` and `exec` only async-signal-safe system calls are made: everything that
//! allocates (paths, arguments, environment, group list) is prepared before `fork`.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::{ForkResult, Pid};

/// The identity the emulator runs as.
#[derive(Debug, Clone)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// What to start (the probed emulator, or capsd's plugin helper: `capsd` reuses this to
/// contain plugins the way probes are contained).
#[derive(Debug)]
pub struct Spec<'a> {
    /// The binary's path: `argv[0]`, and what is executed unless `program_fd` is given.
    pub program: &'a Path,
    /// Execute this descriptor of the binary (`execveat(fd, "", AT_EMPTY_PATH)`) instead of
    /// looking `program` up again: the file a caller checked is the file run.
    pub program_fd: Option<RawFd>,
    pub args: &'a [String],
    pub env: &'a [(&'a str, &'a OsStr)],
    pub cwd: &'a Path,
    pub stderr: &'a File,
    /// `None`: keep this process's identity.
    pub creds: Option<&'a Creds>,
    /// A descriptor the program gets as its descriptor 3 (it must be above 3, or be 3), on
    /// top of 0 to 2; `None`: none.
    pub pass_fd: Option<RawFd>,
}

/// How probes are contained here, decided once per process by a trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    /// A new PID namespace (with a user namespace when not root): nothing survives.
    PidNamespace { user_ns: bool },
    /// Process group only: a child that leaves the group can survive the probe.
    ProcessGroup,
}

/// The containment this process gets (trying `unshare` in a throw-away child once).
pub fn containment() -> Containment {
    static MODE: OnceLock<Containment> = OnceLock::new();
    *MODE.get_or_init(|| {
        let root = nix::unistd::geteuid().is_root();
        let user_ns = !root;
        let mode = if unshare_works(namespace_flags(user_ns)) {
            Containment::PidNamespace { user_ns }
        } else {
            tracing::warn!(
                "cannot create a PID namespace for probes here (unshare refused): a process a probed \
                 emulator starts outside its process group may outlive the probe"
            );
            Containment::ProcessGroup
        };
        tracing::debug!(?mode, "probe containment");
        mode
    })
}

fn namespace_flags(user_ns: bool) -> CloneFlags {
    if user_ns {
        CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWPID
    } else {
        CloneFlags::CLONE_NEWPID
    }
}

/// Whether `unshare(flags)` succeeds, tried in a child that exits at once.
fn unshare_works(flags: CloneFlags) -> bool {
    // SAFETY: the child makes two system calls (unshare, _exit) and touches nothing else.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let code = i32::from(nix::sched::unshare(flags).is_err());
            // SAFETY: _exit ends the child without running anything of the parent's.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            matches!(wait_raw(child, 0), Ok(Some(st)) if ExitStatus::from_raw(st).code() == Some(0))
        }
        Err(_) => false,
    }
}

/// A started probe: its leader (our child) and the emulator's pid as this process sees it.
#[derive(Debug)]
pub struct Spawned {
    leader: Pid,
    emulator: Pid,
    status: Option<ExitStatus>,
}

/// Messages from the children on the status pipe: `P` + the emulator's pid, `E` + errno.
const MSG_PID: u8 = b'P';
const MSG_ERR: u8 = b'E';

/// Start `spec` as described in the module docs.
pub fn spawn(spec: &Spec<'_>) -> io::Result<Spawned> {
    let mode = containment();
    let prep = Prepared::new(spec)?;
    let (status_r, status_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Tells the emulator whether the leader still lives (EOF once it has died).
    let (alive_r, alive_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    let parent = nix::unistd::getpid();
    // SAFETY: the child only runs `leader`, which makes async-signal-safe system calls on
    // data prepared before the fork, and never returns.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => leader(&prep, mode, parent, status_w.as_raw_fd(), &alive_r, &alive_w),
        ForkResult::Parent { child } => {
            drop((status_w, alive_r, alive_w));
            let mut spawned = Spawned { leader: child, emulator: child, status: None };
            match read_status(status_r) {
                Ok(pid) => {
                    spawned.emulator = pid;
                    Ok(spawned)
                }
                Err(e) => {
                    spawned.kill();
                    Err(e)
                }
            }
        }
    }
}

/// Read the status pipe to its end: the emulator's pid, or the errno a child reported.
fn read_status(fd: OwnedFd) -> io::Result<Pid> {
    use std::io::Read;
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes)?;
    let mut pid = None;
    for msg in bytes.chunks(5) {
        let value = msg.get(1..5).and_then(|b| b.try_into().ok()).map(i32::from_le_bytes);
        match (msg[0], value) {
            (MSG_PID, Some(p)) => pid = Some(Pid::from_raw(p)),
            (MSG_ERR, Some(e)) => return Err(io::Error::from_raw_os_error(e)),
            _ => return Err(io::Error::other("malformed message from a starting probe")),
        }
    }
    pid.ok_or_else(|| io::Error::other("the probe's leader ended before starting the emulator"))
}

/// Everything the children need, built before `fork`.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// With `program_fd`: NULL-terminated pointers into `argv` and `envp` for `execveat`
    /// (built here: nothing is allocated after `fork`).
    exec_fd: Option<(RawFd, Vec<*const libc::c_char>, Vec<*const libc::c_char>)>,
    cwd: CString,
    stderr: RawFd,
    pass_fd: Option<RawFd>,
    devnull: File,
    creds: Option<(nix::unistd::Uid, nix::unistd::Gid, Vec<nix::unistd::Gid>)>,
}

impl Prepared {
    fn new(spec: &Spec<'_>) -> io::Result<Prepared> {
        let c = |b: &[u8]| CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"));
        // Absolute: the emulator starts in the private directory.
        let program = std::path::absolute(spec.program)?;
        let mut argv = vec![c(program.as_os_str().as_bytes())?];
        for a in spec.args {
            argv.push(c(a.as_bytes())?);
        }
        let envp = spec
            .env
            .iter()
            .map(|(k, v)| c(&[k.as_bytes(), b"=", v.as_bytes()].concat()))
            .collect::<io::Result<Vec<_>>>()?;
        // The pointers stay valid when `argv` and `envp` move into `Prepared`: they point
        // into each CString's own heap buffer.
        let ptrs = |v: &[CString]| v.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect::<Vec<_>>();
        let exec_fd = spec.program_fd.map(|fd| (fd, ptrs(&argv), ptrs(&envp)));
        Ok(Prepared {
            program: c(program.as_os_str().as_bytes())?,
            argv,
            envp,
            exec_fd,
            cwd: c(spec.cwd.as_os_str().as_bytes())?,
            stderr: spec.stderr.as_raw_fd(),
            pass_fd: spec.pass_fd,
            devnull: File::options().read(true).write(true).open("/dev/null")?,
            creds: spec.creds.map(|c| {
                (
                    nix::unistd::Uid::from_raw(c.uid),
                    nix::unistd::Gid::from_raw(c.gid),
                    c.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect(),
                )
            }),
        })
    }
}

/// Report `e` on the status pipe (best effort) and end this child.
fn fail(status_w: RawFd, e: Errno) -> ! {
    report(status_w, MSG_ERR, e as i32);
    // SAFETY: ends the forked child without running anything of the parent's.
    unsafe { libc::_exit(127) }
}

fn report(fd: RawFd, kind: u8, value: i32) {
    let v = value.to_le_bytes();
    let msg = [kind, v[0], v[1], v[2], v[3]];
    // SAFETY: writes 5 bytes from a live stack buffer to a descriptor we own.
    let _ = unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// The forked child: own process group, stdio, the namespace, then the emulator (in a
/// grandchild, or itself without a namespace).
fn leader(p: &Prepared, mode: Containment, parent: Pid, status_w: RawFd, alive_r: &OwnedFd, alive_w: &OwnedFd) -> ! {
    let step = |r: nix::Result<()>| {
        if let Err(e) = r {
            fail(status_w, e)
        }
    };
    step(nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)));
    step(nix::unistd::dup2(p.devnull.as_raw_fd(), 0).map(drop));
    step(nix::unistd::dup2(p.devnull.as_raw_fd(), 1).map(drop));
    step(nix::unistd::dup2(p.stderr, 2).map(drop));
    // Die with the thread that started us; if it is already gone, stop here.
    step(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL));
    if nix::unistd::getppid() != parent {
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(127) }
    }
    let user_ns = match mode {
        Containment::PidNamespace { user_ns } => user_ns,
        Containment::ProcessGroup => {
            report(status_w, MSG_PID, nix::unistd::getpid().as_raw());
            emulator(p, status_w, Guard::Parent(parent))
        }
    };
    step(nix::sched::unshare(namespace_flags(user_ns)));
    // SAFETY: the grandchild runs `emulator` (async-signal-safe calls, then exec).
    match unsafe { nix::unistd::fork() } {
        Err(e) => fail(status_w, e),
        Ok(ForkResult::Child) => {
            // PID 1 of the new namespace: dies with the leader (see `Guard::Pipe`).
            let _ = nix::unistd::close(alive_w.as_raw_fd());
            emulator(p, status_w, Guard::Pipe(alive_r.as_raw_fd()))
        }
        Ok(ForkResult::Parent { child }) => {
            report(status_w, MSG_PID, child.as_raw());
            // Keep only the pipe that tells the emulator we live.
            let keep = alive_w.as_raw_fd() as u32;
            close_from(3, keep);
            close_from(keep + 1, u32::MAX);
            pass_on_exit(child)
        }
    }
}

/// How the emulator checks, once its parent-death signal is set, that the parent it should
/// die with has not died already (then the signal would never come).
#[derive(Clone, Copy)]
enum Guard {
    /// Its parent is capsd's thread with this pid.
    Parent(Pid),
    /// Its parent is the leader, which holds the other end of this non-blocking pipe (in a
    /// new PID namespace the parent's pid reads as 0, so the pipe tells instead: EOF once the
    /// leader is gone).
    Pipe(RawFd),
}

impl Guard {
    fn parent_gone(self) -> bool {
        match self {
            Guard::Parent(p) => nix::unistd::getppid() != p,
            Guard::Pipe(fd) => {
                let mut b = [0u8; 1];
                nix::unistd::read(fd, &mut b) == Ok(0)
            }
        }
    }
}

/// Close the descriptors `first..last` (`last` exclusive; `u32::MAX`: all from `first`).
fn close_from(first: u32, last: u32) {
    if first >= last {
        return;
    }
    // SAFETY: close_range only closes descriptors of this (single-threaded) child.
    if unsafe { libc::close_range(first, last - 1, 0) } != 0 {
        for fd in first..last.min(first.saturating_add(65536)) {
            let _ = nix::unistd::close(fd as RawFd);
        }
    }
}

/// Wait for the emulator and end the same way (its exit code, or its signal).
fn pass_on_exit(child: Pid) -> ! {
    let st = loop {
        match wait_raw(child, 0) {
            Ok(Some(st)) => break ExitStatus::from_raw(st),
            Err(Errno::EINTR) | Ok(None) => continue,
            // SAFETY: ends the leader.
            Err(_) => unsafe { libc::_exit(127) },
        }
    };
    if let Some(sig) = st.signal() {
        // SAFETY: marks this process not dumpable (a crashed emulator's signal raised again
        // here must not dump a core of this fork of capsd, nor take the time to), resets one
        // signal's disposition, unblocks all and raises it in this single-threaded process;
        // _exit follows for a signal that does not end it.
        unsafe {
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            libc::signal(sig, libc::SIG_DFL);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            libc::raise(sig);
            libc::_exit(128 + sig)
        }
    }
    // SAFETY: ends the leader with the emulator's code.
    unsafe { libc::_exit(st.code().unwrap_or(127)) }
}

/// Become the emulator: identity, no new privileges, clean signals, no inherited
/// descriptors, private directory, exec.
fn emulator(p: &Prepared, status_w: RawFd, guard: Guard) -> ! {
    let step = |r: nix::Result<()>| {
        if let Err(e) = r {
            fail(status_w, e)
        }
    };
    if let Some((uid, gid, groups)) = &p.creds {
        step(nix::unistd::setgroups(groups));
        step(nix::unistd::setgid(*gid));
        step(nix::unistd::setuid(*uid));
    }
    // After the change of identity, which clears it.
    step(nix::sys::prctl::set_pdeathsig(Signal::SIGKILL));
    if guard.parent_gone() {
        // SAFETY: ends the forked child.
        unsafe { libc::_exit(127) }
    }
    step(nix::sys::prctl::set_no_new_privs());
    // SAFETY: plain system calls on this single-threaded child's own signal state and
    // descriptor table.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        for sig in [libc::SIGPIPE, libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let keep = match p.pass_fd {
        Some(fd) => {
            // dup2 clears close-on-exec on the copy; a descriptor already at 3 is kept as is.
            let r = if fd == 3 {
                nix::fcntl::fcntl(3, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).map(drop)
            } else {
                nix::unistd::dup2(fd, 3).map(drop)
            };
            step(r);
            4
        }
        None => 3,
    };
    // SAFETY: plain system calls on this single-threaded child's descriptor table.
    unsafe {
        if libc::close_range(keep, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) != 0 {
            for fd in keep as i32..65536 {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
    }
    // SAFETY: chdir to a path prepared before the fork.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } != 0 {
        fail(status_w, Errno::last());
    }
    if let Some((fd, argv, envp)) = &p.exec_fd {
        exec_descriptor(*fd, argv, envp);
        fail(status_w, Errno::last())
    }
    let _ = nix::unistd::execve(&p.program, &p.argv, &p.envp);
    fail(status_w, Errno::last())
}

/// `execveat(fd, "", argv, envp, AT_EMPTY_PATH)`; returns only on failure (`errno` set). A
/// script's interpreter opens it as `/dev/fd/N`, which close-on-exec would close first (the
/// kernel then refuses with `ENOENT`): for a script the descriptor is left open across exec.
fn exec_descriptor(fd: RawFd, argv: &[*const libc::c_char], envp: &[*const libc::c_char]) {
    let exec = || {
        // SAFETY: NUL-terminated empty path, and NULL-terminated pointer arrays into
        // CStrings prepared before the fork and alive for this call.
        unsafe {
            libc::syscall(libc::SYS_execveat, fd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH)
        }
    };
    exec();
    if Errno::last() == Errno::ENOENT {
        // SAFETY: clears close-on-exec of a descriptor this child owns.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        exec();
    }
}

/// `waitpid` returning the raw status (`None`: still running, with `WNOHANG`).
fn wait_raw(pid: Pid, flags: i32) -> Result<Option<i32>, Errno> {
    let mut st = 0;
    // SAFETY: waitpid writes the status into a live local.
    let r = unsafe { libc::waitpid(pid.as_raw(), &mut st, flags) };
    match r {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        _ => Ok(Some(st)),
    }
}

impl Spawned {
    /// The leader's pid (our child; it leads the process group).
    pub fn pid(&self) -> u32 {
        self.leader.as_raw() as u32
    }

    /// The emulator's pid as this process sees it (the leader's without a namespace).
    pub fn emulator_pid(&self) -> u32 {
        self.emulator.as_raw() as u32
    }

    /// Whether the probe has ended, without reaping its leader (so its pids stay ours until
    /// [`Spawned::kill`] or [`Spawned::try_wait`]).
    pub fn has_ended(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let flags = nix::sys::wait::WaitPidFlag::WEXITED
            | nix::sys::wait::WaitPidFlag::WNOHANG
            | nix::sys::wait::WaitPidFlag::WNOWAIT;
        !matches!(
            nix::sys::wait::waitid(nix::sys::wait::Id::Pid(self.leader), flags),
            Ok(nix::sys::wait::WaitStatus::StillAlive)
        )
    }

    /// The exit status once [`Spawned::kill`] or [`Spawned::try_wait`] reaped the probe.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// The exit status when the probe has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = wait_raw(self.leader, libc::WNOHANG) {
                self.status = Some(ExitStatus::from_raw(st));
            }
        }
        self.status
    }

    /// Kill the emulator (and with it its namespace) and the process group, then reap the
    /// leader: when this returns, nothing the probe started runs. Idempotent.
    pub fn kill(&mut self) {
        if self.status.is_some() {
            return;
        }
        // Only the leader reaps the emulator, and only once it ended; a leader that has not
        // ended has not reaped it (but for the instant between its wait and its exit), so
        // the pid is still the emulator's.
        if self.emulator != self.leader && self.try_wait().is_some() {
            return;
        }
        let st = kill_and_reap(self.emulator.as_raw() as u32, self.leader.as_raw() as u32);
        self.status = Some(st.unwrap_or_else(|| ExitStatus::from_raw(0)));
    }
}

/// Kill a probe started by [`spawn`] (its emulator and leader pids) and reap the leader:
/// when this returns, nothing the probe started runs. With a PID namespace the emulator is
/// its init: its death kills the rest of the namespace, and the leader ends once it has
/// reaped it. `None` when the leader was reaped elsewhere.
pub(crate) fn kill_and_reap(emulator: u32, leader: u32) -> Option<ExitStatus> {
    let (emulator, leader) = (Pid::from_raw(emulator as i32), Pid::from_raw(leader as i32));
    if emulator != leader {
        let _ = nix::sys::signal::kill(emulator, Signal::SIGKILL);
    } else {
        let _ = nix::sys::signal::killpg(leader, Signal::SIGKILL);
        let _ = nix::sys::signal::kill(leader, Signal::SIGKILL);
    }
    loop {
        match wait_raw(leader, 0) {
            Ok(Some(st)) => return Some(ExitStatus::from_raw(st)),
            Err(Errno::EINTR) | Ok(None) => continue,
            Err(_) => return None,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `path` opens read-write with `creds`, tried in a child that takes that identity
/// (so the mode bits, the groups and ACLs decide, as for the probe itself). Needs root to
/// take another identity; `false` when the child cannot.
pub(crate) fn can_open_as(path: &Path, creds: &Creds) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else { return false };
    let groups: Vec<nix::unistd::Gid> = creds.groups.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    // SAFETY: the child makes only system calls on data prepared before the fork, then _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let ok = nix::unistd::setgroups(&groups).is_ok()
                && nix::unistd::setgid(nix::unistd::Gid::from_raw(creds.gid)).is_ok()
                && nix::unistd::setuid(nix::unistd::Uid::from_raw(creds.uid)).is_ok()
                // SAFETY: open of a NUL-terminated path prepared before the fork.
                && unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) } >= 0;
            // SAFETY: ends the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(ForkResult::Parent { child }) => loop {
            match wait_raw(child, 0) {
                Ok(Some(st)) => return ExitStatus::from_raw(st).code() == Some(0),
                Err(Errno::EINTR) | Ok(None) => continue,
                Err(_) => return false,
            }
        },
        Err(_) => false,
    }
}

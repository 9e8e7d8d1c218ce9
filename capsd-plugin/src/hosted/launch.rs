//! How a helper process is started and ended: [`Launcher`] starts one, [`HelperProcess`] is
//! the started one as capsd sees it. [`GroupLauncher`], this crate's own, gives the helper a
//! process group of its own; capsd plugs in driver-qemu's probe spawner instead (a PID
//! namespace whose init is the helper, so a child the plugin starts and `setsid`s dies with
//! it; see `capsd/src/registry.rs`).
//!
//! Every launch runs on one thread that lives as long as the process ([`launch_from_keeper`]):
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, and the agent's
//! blocking threads come and go.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::helper::HELPER_FD;

/// Starts helper processes.
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Start `program args` with `socket` as its descriptor [`HELPER_FD`] (`socket` is above
    /// it), standard input and output on `/dev/null`, standard error this process's,
    /// `PR_SET_NO_NEW_PRIVS`, a parent-death signal, every other descriptor closed, this
    /// process's user and environment. Called on one long-lived thread.
    fn launch(
        &self,
        program: &Path,
        args: &[OsString],
        socket: BorrowedFd<'_>,
    ) -> std::io::Result<Box<dyn HelperProcess>>;
}

/// A started helper process.
pub trait HelperProcess: Send + std::fmt::Debug {
    /// The helper's pid (as this process sees it; named in messages and `capsd drivers`).
    fn pid(&self) -> u32;
    /// Whether the helper has ended, without reaping it (until [`HelperProcess::kill`], no
    /// pid of it can be reused, so ending what it started never hits a stranger).
    fn ended(&self) -> bool;
    /// End the helper and everything it started, reap it, and give its exit status (its
    /// own when it had ended already; `None` when it could not be reaped).
    fn kill(self: Box<Self>) -> Option<ExitStatus>;
}

/// Helpers as plain children in a process group of their own: ending the helper kills the
/// group, so a child that leaves it (`setsid`) can outlive the helper.
#[derive(Debug, Default, Clone, Copy)]
pub struct GroupLauncher;

impl Launcher for GroupLauncher {
    fn launch(
        &self,
        program: &Path,
        args: &[OsString],
        socket: BorrowedFd<'_>,
    ) -> std::io::Result<Box<dyn HelperProcess>> {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit()).process_group(0);
        let fd = socket.as_raw_fd();
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid, fcntl, dup2, close_range); it
        // allocates nothing and takes no lock.
        unsafe { cmd.pre_exec(move || prepare_child(fd, parent)) };
        Ok(Box::new(GroupChild(cmd.spawn()?)))
    }
}

#[derive(Debug)]
struct GroupChild(Child);

impl HelperProcess for GroupChild {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn ended(&self) -> bool {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(waitid(Id::Pid(Pid::from_raw(self.0.id() as i32)), flags), Ok(WaitStatus::StillAlive))
    }

    fn kill(mut self: Box<Self>) -> Option<ExitStatus> {
        let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
        self.0.wait().ok()
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Run `launcher.launch(...)` on the one long-lived launching thread (see the module docs).
pub(crate) fn launch_from_keeper(
    launcher: &Arc<dyn Launcher>,
    program: &Path,
    args: &[OsString],
    socket: OwnedFd,
) -> std::io::Result<Box<dyn HelperProcess>> {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("capsd-plugin-spawner".into()).spawn(move || {
            for job in rx {
                job();
            }
        });
        if let Err(e) = started {
            tracing::error!("cannot start the plugin helper spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    let (launcher, program, args): (Arc<dyn Launcher>, PathBuf, Vec<OsString>) =
        (launcher.clone(), program.to_owned(), args.to_vec());
    let job: Job = Box::new(move || {
        let _ = tx.send(launcher.launch(&program, &args, socket.as_fd()));
    });
    keeper
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| std::io::Error::other("the plugin helper spawner thread is gone"))?;
    rx.recv().map_err(|_| std::io::Error::other("the plugin helper spawner thread is gone"))?
}

/// In the forked child, before exec: die with capsd, never gain privileges, keep only the
/// socket (moved to [`HELPER_FD`]) and the standard descriptors.
fn prepare_child(fd: i32, parent: u32) -> std::io::Result<()> {
    use nix::libc;
    // PR_SET_PDEATHSIG: SIGKILL when the thread that forked us ends (see `launch_from_keeper`).
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
    // `fd` is above HELPER_FD (see `Launcher::launch`).
    // SAFETY: dup2 on descriptor numbers; the new descriptor has no close-on-exec.
    if unsafe { libc::dup2(fd, HELPER_FD) } != HELPER_FD {
        return Err(std::io::Error::last_os_error());
    }
    // Every other descriptor closes at exec, whoever opened it (one capsd opened, an
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

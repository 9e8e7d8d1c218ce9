//! Running an emulator binary as a capability probe: the command line libvirt uses for the
//! same purpose (`-S -no-user-config -nodefaults -nographic -machine none,accel=...`), a QMP
//! socket in a private 0700 temporary directory, stderr captured to a file there, and a
//! guarantee that the process is gone when the [`ProbeProcess`] is dropped (SIGKILL to its
//! whole process group, then reap), on every path including panics.
//!
//! Differences from libvirt, on purpose: no `-daemonize`/pidfile (we own the child and poll
//! for the socket instead), and one accelerator per process (`accel=kvm` or `accel=tcg`)
//! so that the KVM and TCG probes can run at the same time.
//!
//! Privileges: when running as root the probe can be started as an unprivileged user
//! ([`ProbeUser`], or `CAPSD_PROBE_USER`), with `PR_SET_NO_NEW_PRIVS` and no supplementary
//! groups. The default is to stay root, because `/dev/kvm` is often root-only (it is on the
//! development host: `crw------- root root`), and a KVM probe as another user then fails.

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::probe_data::Accel;
use crate::qmp::{QmpClient, QmpClientError, Timeouts};

/// Environment variable naming the user to run probes as (when capsd runs as root).
pub const PROBE_USER_ENV: &str = "CAPSD_PROBE_USER";

/// Why a probe process failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    #[error("cannot create a private directory for probing: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{binary} exited ({status}) before its QMP socket was ready{}", stderr_suffix(.stderr))]
    ExitedEarly { binary: PathBuf, status: String, stderr: String },
    #[error("{binary} did not open its QMP socket within {timeout:?}{}", stderr_suffix(.stderr))]
    StartTimeout { binary: PathBuf, timeout: Duration, stderr: String },
    #[error("{binary}: {source}{}", stderr_suffix(.stderr))]
    Qmp {
        binary: PathBuf,
        #[source]
        source: QmpClientError,
        stderr: String,
    },
    #[error("unknown probe user '{0}'")]
    UnknownUser(String),
}

impl ProcessError {
    /// QEMU began a second QMP session on the probe's connection (a greeting came where a
    /// reply was due): seen once on a loaded host with a GLib assertion on QEMU's stderr. The
    /// binary is fine; a new process answers.
    pub fn is_session_restart(&self) -> bool {
        matches!(self, ProcessError::Qmp { source: QmpClientError::Garbage { line, .. }, .. }
            if serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("QMP").is_some()))
    }
}

fn stderr_suffix(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!("; stderr: {}", s.lines().take(5).collect::<Vec<_>>().join(" | "))
    }
}

/// An unprivileged identity for probe processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeUser {
    pub uid: u32,
    pub gid: u32,
}

impl ProbeUser {
    /// Look a user up by name (its primary group is used).
    pub fn from_name(name: &str) -> Result<ProbeUser, ProcessError> {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(ProbeUser { uid: u.uid.as_raw(), gid: u.gid.as_raw() }),
            _ => Err(ProcessError::UnknownUser(name.to_owned())),
        }
    }

    /// The user named by `CAPSD_PROBE_USER`, when set, non-empty and not `root`.
    pub fn from_env() -> Result<Option<ProbeUser>, ProcessError> {
        match std::env::var(PROBE_USER_ENV) {
            Ok(n) if !n.is_empty() && n != "root" => ProbeUser::from_name(&n).map(Some),
            _ => Ok(None),
        }
    }
}

/// How probe processes are started.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// Longest wait for the QMP socket to accept a connection.
    pub start_timeout: Duration,
    /// QMP timeouts once connected.
    pub qmp: Timeouts,
    /// Run as this user (only applied when we are root). `None`: the current user.
    pub user: Option<ProbeUser>,
    /// Where private directories are created (default: the system temp dir).
    pub temp_root: Option<PathBuf>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions { start_timeout: Duration::from_secs(10), qmp: Timeouts::default(), user: None, temp_root: None }
    }
}

/// A running probe process. Dropping it kills the process group and reaps the child.
#[derive(Debug)]
pub struct ProbeProcess {
    binary: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// The arguments of a capability probe run.
pub fn probe_args(accel: Accel, socket: &Path) -> Vec<String> {
    let accel = match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    };
    vec![
        "-S".into(),
        "-no-user-config".into(),
        "-nodefaults".into(),
        "-nographic".into(),
        "-machine".into(),
        format!("none,accel={accel}"),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", socket.display()),
    ]
}

impl ProbeProcess {
    /// Start `binary` for probing with `accel`.
    pub fn start(binary: &Path, accel: Accel, opts: &ProcessOptions) -> Result<ProbeProcess, ProcessError> {
        let mut b = tempfile::Builder::new();
        b.prefix("capsd-probe-");
        b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let dir = match &opts.temp_root {
            Some(root) => b.tempdir_in(root),
            None => b.tempdir(),
        }
        .map_err(ProcessError::TempDir)?;
        let socket = dir.path().join("qmp.sock");
        let stderr_path = dir.path().join("stderr");
        let stderr = File::create(&stderr_path).map_err(ProcessError::TempDir)?;
        let as_user = opts.user.filter(|_| nix::unistd::geteuid().is_root());
        if let Some(u) = as_user {
            let own = Some(nix::unistd::Uid::from_raw(u.uid));
            let grp = Some(nix::unistd::Gid::from_raw(u.gid));
            nix::unistd::chown(dir.path(), own, grp).map_err(|e| ProcessError::TempDir(e.into()))?;
            nix::unistd::chown(&stderr_path, own, grp).map_err(|e| ProcessError::TempDir(e.into()))?;
        }

        let mut cmd = Command::new(binary);
        cmd.args(probe_args(accel, &socket))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("LC_ALL", "C")
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .process_group(0);
        if let Some(u) = as_user {
            cmd.uid(u.uid).gid(u.gid);
        }
        let drop_privs = as_user.is_some();
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl); it touches no locks or allocations.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
                if drop_privs {
                    nix::sys::prctl::set_no_new_privs().map_err(std::io::Error::from)?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn { binary: binary.to_owned(), source })?;
        tracing::debug!(binary = %binary.display(), pid = child.id(), ?accel, "probe process started");
        Ok(ProbeProcess { binary: binary.to_owned(), child: Some(child), dir })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The private directory (socket, stderr).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(self.dir.path().join("stderr"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Wait for the QMP socket and complete the QMP handshake.
    pub fn connect(&mut self, opts: &ProcessOptions) -> Result<QmpClient, ProcessError> {
        let socket = self.dir.path().join("qmp.sock");
        let start = Instant::now();
        let mut pause = Duration::from_micros(500);
        let stream = loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(ProcessError::ExitedEarly {
                    binary: self.binary.clone(),
                    status: status.to_string(),
                    stderr: self.stderr(),
                });
            }
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < opts.start_timeout => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(10));
                }
                Err(_) => {
                    self.kill();
                    return Err(ProcessError::StartTimeout {
                        binary: self.binary.clone(),
                        timeout: opts.start_timeout,
                        stderr: self.stderr(),
                    });
                }
            }
        };
        QmpClient::handshake(stream, opts.qmp).map_err(|source| self.qmp_error(source))
    }

    /// Wrap a QMP failure with this process's identity and stderr (killing it first so that
    /// stderr is complete).
    pub fn qmp_error(&mut self, source: QmpClientError) -> ProcessError {
        self.kill();
        ProcessError::Qmp { binary: self.binary.clone(), source, stderr: self.stderr() }
    }

    /// Kill the process group and reap the child. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            // The child leads its own process group (process_group(0)), so this also
            // reaches anything it forked.
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// This process's identity in names of files and directories it creates and may leave
/// behind when killed: `<pid>.<start time>` (the start time in clock ticks since boot, from
/// `/proc/self/stat`, so a reused pid is not taken for this process).
pub fn owner_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}.{}", start_time(pid).unwrap_or(0))
    })
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), `None` when it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by an [`owner_tag`] at the start of `name` has ended
/// (`false` when `name` holds no tag: it is not ours to judge).
pub fn owner_gone(name: &str) -> bool {
    let mut parts = name.splitn(3, ['.', '-']);
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else { return false };
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else { return false };
    start_time(pid) != Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_match_libvirt_probe_shape() {
        let a = probe_args(Accel::Tcg, Path::new("/x/qmp.sock"));
        assert_eq!(
            a.join(" "),
            "-S -no-user-config -nodefaults -nographic -machine none,accel=tcg -qmp unix:/x/qmp.sock,server=on,wait=off"
        );
        assert!(probe_args(Accel::Kvm, Path::new("/s")).contains(&"none,accel=kvm".to_owned()));
    }

    #[test]
    fn missing_binary_is_spawn_error() {
        let e =
            ProbeProcess::start(Path::new("/nonexistent/qemu"), Accel::Tcg, &ProcessOptions::default()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/qemu"), "{e}");
    }

    #[test]
    fn drop_kills_the_process_group_even_on_panic() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-qemu");
        std::fs::write(&script, "#!/bin/sh\nsleep 1000 &\nexec sleep 1000\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r = std::panic::catch_unwind(|| {
            let p = ProbeProcess::start(&script, Accel::Tcg, &ProcessOptions::default()).unwrap();
            tx.send(p.pid().unwrap()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            panic!("probe code panicked while QEMU ran");
        });
        assert!(r.is_err());
        let pid = rx.recv().unwrap();
        // Reaped, so the pid no longer exists; and nothing is left in its process group.
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} survived the panic");
        // Killed members may linger as zombies until init reaps them; none may be running.
        // SIGKILL reaches a re-parented grandchild asynchronously: on a loaded machine it can
        // still show as running for a moment, so allow a bounded grace period.
        let running_in_group = || -> Vec<String> {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    // pid (comm) state ppid pgrp ...
                    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                    let f: Vec<&str> = after.split_whitespace().collect();
                    f.len() > 2 && f[2] == pid.to_string() && f[0] != "Z"
                })
                .collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut left = running_in_group();
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = running_in_group();
        }
        assert!(left.is_empty(), "processes of group {pid} survived: {left:?}");
    }

    #[test]
    fn unknown_user() {
        assert!(matches!(ProbeUser::from_name("no-such-user-capsd"), Err(ProcessError::UnknownUser(_))));
        assert_eq!(ProbeUser::from_name("root").unwrap().uid, 0);
    }

    #[test]
    fn private_dir_removed_and_mode_0700() {
        use std::os::unix::fs::PermissionsExt;
        let mut p = ProbeProcess::start(Path::new("/bin/sleep"), Accel::Tcg, &ProcessOptions::default());
        // /bin/sleep rejects the QEMU arguments and exits; the directory still exists until drop.
        let p = p.as_mut().unwrap();
        let dir = p.dir().to_owned();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let opts = ProcessOptions { start_timeout: Duration::from_secs(5), ..Default::default() };
        let e = p.connect(&opts).unwrap_err();
        assert!(matches!(e, ProcessError::ExitedEarly { .. }), "{e}");
        assert!(e.to_string().contains("sleep"), "{e}");
        drop(std::mem::replace(p, ProbeProcess::start(Path::new("/bin/true"), Accel::Tcg, &opts).unwrap()));
        assert!(!dir.exists());
    }
}

#[cfg(test)]
mod session_restart_tests {
    use super::*;

    fn garbage(line: &str) -> ProcessError {
        ProcessError::Qmp {
            binary: "/usr/bin/qemu-system-sh4".into(),
            source: QmpClientError::Garbage {
                during: "waiting for the reply to 'qmp_capabilities'".into(),
                line: line.into(),
            },
            stderr: String::new(),
        }
    }

    #[test]
    fn only_a_second_greeting_is_a_session_restart() {
        assert!(garbage(r#"{"QMP":{"capabilities":["oob"],"version":{}}}"#).is_session_restart());
        assert!(!garbage("not json at all").is_session_restart());
        assert!(!garbage(r#"{"return":{}}"#).is_session_restart());
        let eof = ProcessError::Qmp {
            binary: "/bin/true".into(),
            source: QmpClientError::Eof { during: "reading".into() },
            stderr: String::new(),
        };
        assert!(!eof.is_session_restart());
    }
}

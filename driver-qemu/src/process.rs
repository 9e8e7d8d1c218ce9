//! Running an emulator binary as a capability probe: the command line libvirt uses for the
//! same purpose (`-S -no-user-config -nodefaults -nographic -machine none,accel=...`), a QMP
//! socket in a private temporary directory, stderr captured to a file there, and a guarantee
//! that the process and everything it started are gone when the [`ProbeProcess`] is dropped,
//! on every path including panics (see [`crate::spawn`]: a PID namespace where the kernel
//! allows one, else the process group).
//!
//! Differences from libvirt, on purpose: no `-daemonize`/pidfile (we own the child and poll
//! for the socket instead), and one accelerator per process (`accel=kvm` or `accel=tcg`)
//! so that the KVM and TCG probes can run at the same time.
//!
//! Privileges ([`choose_probe_user`]): when capsd runs as root, probes run as the user and
//! group libvirt runs QEMU as (`user`/`group` of `/etc/libvirt/qemu.conf`, default
//! `libvirt-qemu`, Debian's build) when libvirt's QEMU driver is installed, so that KVM is
//! usable for capsd's probe exactly when it is for libvirt's; else as the user `capsd` when
//! it exists; else as `nobody`. `CAPSD_PROBE_USER` overrides (`root` keeps root). The
//! probe always gets `PR_SET_NO_NEW_PRIVS`, the user's supplementary groups (as libvirt
//! gives them) and no descriptor of capsd's but stdin, stdout and stderr.
//!
//! Leftovers: the private directory is named `capsd-probe-<pid>.<start time>-XXXXXX` after
//! the process that made it; a later probe removes those of processes that have ended
//! (killed before they could clean up), and [`abort_all`] (the CLI's SIGINT/SIGTERM path)
//! kills the running probes and removes their directories at once.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::probe_data::Accel;
use crate::qmp::{QmpClient, QmpClientError, Timeouts};
use crate::spawn::{Creds, Spawned};

/// Environment variable naming the user to run probes as (when capsd runs as root); `root`
/// keeps root.
pub const PROBE_USER_ENV: &str = "CAPSD_PROBE_USER";

/// libvirt's QEMU driver configuration, read for the user and group it runs QEMU as.
pub const LIBVIRT_QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// The user and group libvirt runs QEMU as when `qemu.conf` does not say (Debian builds
/// libvirt with `qemu_user` and `qemu_group` both `libvirt-qemu`; README.Debian says so).
pub const LIBVIRT_DEFAULT_QEMU_USER: &str = "libvirt-qemu";

/// The dedicated probe user used when libvirt is not installed.
pub const CAPSD_USER: &str = "capsd";

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
    /// QEMU ended before its QMP session was set up (before or after opening its socket,
    /// before or after its greeting). `code` is its exit code, `None` when a signal ended it.
    #[error("{binary} exited ({status}) before its QMP session was set up{}", stderr_suffix(.stderr))]
    ExitedEarly { binary: PathBuf, status: String, code: Option<i32>, stderr: String },
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
    #[error("unknown probe group '{0}'")]
    UnknownGroup(String),
    #[error("probing was aborted (capsd is stopping)")]
    Aborted,
}

impl ProcessError {
    /// QEMU refused to start with the accelerator asked (built without it, or KVM for a
    /// foreign architecture, or its accelerator module missing): it exited with code 1,
    /// QEMU's code for a failed initialisation, before its QMP session was set up. This is
    /// the only failure of a run that says something about the accelerator. A timeout, a broken QMP session with QEMU still
    /// running, a signal, an exit 0 (QEMU ended by SIGTERM, as `systemctl stop` sends it),
    /// 127 (the probe's leader failing; an abort as PID 1 where no fault follows) or a
    /// failure to start the process say only that this probe failed: on a loaded host a KVM
    /// run that timed out was once taken for "no KVM", and the answer silently became TCG's.
    pub fn refused_accel(&self) -> bool {
        matches!(self, ProcessError::ExitedEarly { code: Some(1), .. })
    }

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

/// The identity of probe processes: a user, a group and the user's supplementary groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUser {
    /// The user's name (as configured), for logs and the cache key.
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's groups in the group database (with `gid`), as
    /// libvirt gives QEMU; empty when they cannot be read.
    pub groups: Vec<u32>,
}

impl ProbeUser {
    /// A user by name (or `+UID`), with its primary group.
    pub fn from_name(name: &str) -> Result<ProbeUser, ProcessError> {
        Self::with_group(name, None)
    }

    /// A user by name (or `+UID`) with `group` (name or `+GID`; `None`: the user's primary
    /// group), as libvirt's `qemu.conf` names them.
    pub fn with_group(name: &str, group: Option<&str>) -> Result<ProbeUser, ProcessError> {
        use nix::unistd::{Gid, Group, Uid, User};
        let unknown = || ProcessError::UnknownUser(name.to_owned());
        let user = match name.strip_prefix('+') {
            Some(n) => User::from_uid(Uid::from_raw(n.parse().map_err(|_| unknown())?)),
            None => User::from_name(name),
        };
        let user = user.ok().flatten().ok_or_else(unknown)?;
        let gid = match group {
            None => user.gid,
            Some(g) => {
                let unknown = || ProcessError::UnknownGroup(g.to_owned());
                let found = match g.strip_prefix('+') {
                    Some(n) => Group::from_gid(Gid::from_raw(n.parse().map_err(|_| unknown())?)),
                    None => Group::from_name(g),
                };
                found.ok().flatten().ok_or_else(unknown)?.gid
            }
        };
        let groups = std::ffi::CString::new(user.name.as_str())
            .ok()
            .and_then(|n| nix::unistd::getgrouplist(&n, gid).ok())
            .map(|gs| gs.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_default();
        Ok(ProbeUser { name: name.to_owned(), uid: user.uid.as_raw(), gid: gid.as_raw(), groups })
    }

    /// `name:gid` for logs and the cache key.
    pub fn label(&self) -> String {
        format!("{}:{}", self.name, self.gid)
    }

    /// Whether this user can open `device` read-write: tried for real, in a child with this
    /// identity (as libvirt decides whether its QEMU user can use `/dev/kvm`), so modes,
    /// groups and ACLs all count. Only root can take another identity: elsewhere `false`.
    pub fn can_open(&self, device: &Path) -> bool {
        crate::spawn::can_open_as(device, &self.creds())
    }

    fn creds(&self) -> Creds {
        Creds { uid: self.uid, gid: self.gid, groups: self.groups.clone() }
    }

    /// The user named by `CAPSD_PROBE_USER`: `None` when unset or empty, `Some(None)` for
    /// `root`, `Some(Some(user))` otherwise.
    pub fn from_env() -> Result<Option<Option<ProbeUser>>, ProcessError> {
        match std::env::var(PROBE_USER_ENV) {
            Ok(n) if n == "root" => Ok(Some(None)),
            Ok(n) if !n.is_empty() => ProbeUser::from_name(&n).map(|u| Some(Some(u))),
            _ => Ok(None),
        }
    }
}

/// Where [`choose_probe_user_from`] looks.
#[derive(Debug, Clone)]
pub struct UserSources {
    /// `CAPSD_PROBE_USER`'s value.
    pub env: Option<String>,
    /// libvirt's `qemu.conf`.
    pub qemu_conf: PathBuf,
    /// Whether libvirt's QEMU driver is installed (it then runs QEMU as the default user
    /// even without `qemu.conf`).
    pub libvirt_installed: bool,
}

impl UserSources {
    /// The real host.
    pub fn host() -> Self {
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        let module = |dir: &str| Path::new(dir).join(LIBVIRT_QEMU_MODULE).exists();
        UserSources {
            env: std::env::var(PROBE_USER_ENV).ok().filter(|v| !v.is_empty()),
            qemu_conf: PathBuf::from(LIBVIRT_QEMU_CONF),
            libvirt_installed: Path::new(LIBVIRT_QEMU_CONF).exists()
                || module(&format!("/usr/lib/{triplet}"))
                || module("/usr/lib64"),
        }
    }
}

/// Who probe processes run as on this host: `None` for capsd's own identity (not root, or
/// root by configuration). See the module docs for the order. Quiet: a fallback is only
/// explained (a warning) by [`explain_probe_user`], when a probe actually runs.
pub fn choose_probe_user() -> Result<Option<ProbeUser>, ProcessError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    choose(&UserSources::host(), false)
}

/// What decides [`choose_probe_user`]'s answer, without looking any user up: `None` when
/// capsd is not root (probes then run as capsd itself), else `CAPSD_PROBE_USER`'s value or
/// `host` (the choice is then made from [`PROBE_USER_FILES`]). The probe cache keys entries
/// by this and by the stamps of [`PROBE_USER_FILES`] instead of by the chosen user, so a
/// query answered from the cache parses neither `qemu.conf` nor the user and group
/// databases: the chosen user can only differ when one of those inputs did.
pub fn probe_user_inputs() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    Some(match std::env::var(PROBE_USER_ENV).ok().filter(|v| !v.is_empty()) {
        Some(v) => format!("{PROBE_USER_ENV}={v}"),
        None => "host".to_owned(),
    })
}

/// The files [`choose_probe_user`] reads, or whose presence it tests, as root: libvirt's
/// `qemu.conf` and QEMU driver module (the two places [`UserSources::host`] looks), the
/// user and group databases (names to ids, supplementary groups) and how they are looked
/// up (`nsswitch.conf`).
pub fn probe_user_files() -> Vec<PathBuf> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut files: Vec<PathBuf> = PROBE_USER_FILES.iter().map(PathBuf::from).collect();
    for dir in [format!("/usr/lib/{triplet}"), "/usr/lib64".to_owned()] {
        files.push(Path::new(&dir).join(LIBVIRT_QEMU_MODULE));
    }
    files
}

/// See [`probe_user_files`].
pub const PROBE_USER_FILES: [&str; 4] = [LIBVIRT_QEMU_CONF, "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"];

/// libvirt's QEMU driver, under a library directory.
const LIBVIRT_QEMU_MODULE: &str = "libvirt/connection-driver/libvirt_driver_qemu.so";

/// Log why probes run as the user [`choose_probe_user`] picks, with a warning when it had to
/// fall back (libvirt's QEMU user missing, or `nobody`). Called when probing, not on every
/// query answered from the cache.
pub fn explain_probe_user() {
    if nix::unistd::geteuid().is_root() {
        match choose(&UserSources::host(), true) {
            Ok(u) => tracing::debug!(user = ?u.as_ref().map(ProbeUser::label), "probe user"),
            Err(e) => tracing::debug!(error = %e, "probe user"),
        }
    }
}

/// [`choose_probe_user`] reading `src` (as root).
pub fn choose_probe_user_from(src: &UserSources) -> Result<Option<ProbeUser>, ProcessError> {
    choose(src, false)
}

fn choose(src: &UserSources, explain: bool) -> Result<Option<ProbeUser>, ProcessError> {
    if let Some(name) = &src.env {
        return if name == "root" { Ok(None) } else { ProbeUser::from_name(name).map(Some) };
    }
    if src.libvirt_installed {
        let conf = std::fs::read_to_string(&src.qemu_conf).unwrap_or_default();
        let user = conf_value(&conf, "user").unwrap_or_else(|| LIBVIRT_DEFAULT_QEMU_USER.to_owned());
        let group = conf_value(&conf, "group").unwrap_or_else(|| LIBVIRT_DEFAULT_QEMU_USER.to_owned());
        if matches!(user.as_str(), "root" | "+0") {
            return Ok(None);
        }
        match ProbeUser::with_group(&user, Some(&group)) {
            Ok(u) => return Ok(Some(u)),
            Err(e) if explain => tracing::warn!(
                conf = %src.qemu_conf.display(), error = %e,
                "libvirt's QEMU user does not exist here (libvirt could not start QEMU either); not probing as it"
            ),
            Err(_) => {}
        }
    }
    if let Ok(u) = ProbeUser::from_name(CAPSD_USER) {
        return Ok(Some(u));
    }
    if explain {
        tracing::warn!(
            "probing as 'nobody': no libvirt QEMU user and no user '{CAPSD_USER}' here (create \
             '{CAPSD_USER}' in the group that may open /dev/kvm, or set {PROBE_USER_ENV}=root)"
        );
    }
    ProbeUser::from_name("nobody").map(Some)
}

/// The value of `key = "value"` in a libvirt configuration file (last one wins, as there),
/// `None` when absent or commented out.
fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            if k.trim() != key {
                return None;
            }
            let v = v.split('#').next()?.trim();
            Some(v.strip_prefix('"')?.strip_suffix('"')?.to_owned())
        })
        .next_back()
}

/// How probe processes are started.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// Longest wait for the QMP socket to accept a connection. Default 30 s, libvirt's own
    /// wait for a monitor: a probe that gives up sooner than libvirt fails on a loaded host
    /// (the likely cause of a KVM run lost in a loaded TCG guest, with 10 s).
    pub start_timeout: Duration,
    /// QMP timeouts once connected.
    pub qmp: Timeouts,
    /// Run as this user (only applied when we are root). `None`: the current user.
    pub user: Option<ProbeUser>,
    /// Where private directories are created (default: the system temp dir).
    pub temp_root: Option<PathBuf>,
    /// The binary opened and checked once ([`crate::binary`]): this descriptor is executed,
    /// the path given to [`ProbeProcess::start`] is only its `argv[0]` and its name in
    /// messages. `None`: the path is executed.
    pub exec: Option<Arc<OwnedFd>>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            start_timeout: Duration::from_secs(30),
            qmp: Timeouts::default(),
            user: None,
            temp_root: None,
            exec: None,
        }
    }
}

/// A running probe process. Dropping it kills it (and all it started) and removes its
/// private directory.
#[derive(Debug)]
pub struct ProbeProcess {
    binary: PathBuf,
    child: Spawned,
    /// The private directory: `stderr` (ours) and `run/` (the probe user's: socket, HOME).
    dir: tempfile::TempDir,
    /// Key in [`LIVE`].
    live_id: u64,
}

/// The running probes of this process, for [`abort_all`]: per probe, its emulator and
/// leader pids and its private directory. `closed` once aborted: no probe starts after that.
#[derive(Default)]
struct Live {
    closed: bool,
    probes: HashMap<u64, (u32, u32, PathBuf)>,
}

static LIVE: Mutex<Option<Live>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<Live>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kill every running probe of this process (waiting until it and all it started are gone)
/// and remove its private directory; probes starting afterwards fail. For a process about
/// to exit on a signal (the CLI's SIGINT/SIGTERM handling). A probe being started waits for
/// this, or this for it (both hold the same lock), so none is missed.
pub fn abort_all() {
    let mut guard = live();
    let state = guard.get_or_insert_with(Live::default);
    state.closed = true;
    for (_, (emulator, leader, dir)) in state.probes.drain() {
        crate::spawn::kill_and_reap(emulator, leader);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

const DIR_PREFIX: &str = "capsd-probe-";

/// Remove the private directories under `root` that a capsd process left when it was killed
/// (its pid, from the name, no longer runs that process): only directories this user owns.
fn remove_abandoned_dirs(root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(root) else { return };
    let me = nix::unistd::geteuid().as_raw();
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name();
        let Some(tag) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else { continue };
        // Not followed: a link or another user's directory is not ours to remove.
        let ours = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && owner_gone(tag) {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::info!(dir = %e.path().display(), "removed a killed probe's directory"),
                Err(err) => tracing::debug!(dir = %e.path().display(), error = %err, "cannot remove"),
            }
        }
    }
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

/// How long a QEMU that closed its QMP connection during the handshake is given to be seen
/// exiting before the failure counts as a broken session (see `handshake_error`).
const EXIT_GRACE: Duration = Duration::from_secs(5);

impl ProbeProcess {
    /// Start `binary` for probing with `accel`.
    pub fn start(binary: &Path, accel: Accel, opts: &ProcessOptions) -> Result<ProbeProcess, ProcessError> {
        let root = opts.temp_root.clone().unwrap_or_else(std::env::temp_dir);
        remove_abandoned_dirs(&root);
        // Held until the probe is registered: `abort_all` either sees it or runs first (and
        // then nothing starts).
        let mut guard = live();
        let state = guard.get_or_insert_with(Live::default);
        if state.closed {
            return Err(ProcessError::Aborted);
        }
        let mut b = tempfile::Builder::new();
        let prefix = format!("{DIR_PREFIX}{}-", owner_tag());
        b.prefix(&prefix);
        // Traversable, so that the probe user reaches `run/`; nothing else to read here.
        b.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o711));
        let dir = b.tempdir_in(&root).map_err(ProcessError::TempDir)?;
        let run = dir.path().join("run");
        std::fs::DirBuilder::new().create(&run).map_err(ProcessError::TempDir)?;
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(ProcessError::TempDir)?;
        let socket = run.join("qmp.sock");
        let stderr = File::create(dir.path().join("stderr")).map_err(ProcessError::TempDir)?;
        let as_user = opts.user.as_ref().filter(|_| nix::unistd::geteuid().is_root());
        if let Some(u) = as_user {
            let own = Some(nix::unistd::Uid::from_raw(u.uid));
            let grp = Some(nix::unistd::Gid::from_raw(u.gid));
            nix::unistd::chown(&run, own, grp).map_err(|e| ProcessError::TempDir(e.into()))?;
        }
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
        let env = [("PATH", path.as_os_str()), ("LC_ALL", "C".as_ref()), ("HOME", run.as_os_str())];
        let creds = as_user.map(ProbeUser::creds);
        let spec = crate::spawn::Spec {
            program: binary,
            program_fd: opts.exec.as_deref().map(AsRawFd::as_raw_fd),
            args: &probe_args(accel, &socket),
            env: &env,
            cwd: &run,
            stderr: &stderr,
            creds: creds.as_ref(),
            pass_fd: None,
        };
        let child =
            crate::spawn::spawn(&spec).map_err(|source| ProcessError::Spawn { binary: binary.to_owned(), source })?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let live_id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        state.probes.insert(live_id, (child.emulator_pid(), child.pid(), dir.path().to_owned()));
        drop(guard);
        tracing::debug!(binary = %binary.display(), pid = child.emulator_pid(), ?accel, "probe process started");
        Ok(ProbeProcess { binary: binary.to_owned(), child, dir, live_id })
    }

    /// The process id of the probe's leader (our child; the emulator itself when no PID
    /// namespace is used).
    pub fn pid(&self) -> Option<u32> {
        Some(self.child.pid())
    }

    /// The emulator's process id.
    pub fn emulator_pid(&self) -> u32 {
        self.child.emulator_pid()
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
        let socket = self.dir.path().join("run/qmp.sock");
        let start = Instant::now();
        // QEMU creates its socket some 50-100 ms after it starts: polling at most every
        // millisecond costs a few syscalls and makes the answer wait 0.5 ms on average past
        // the socket's creation (at every 10 ms it waited 5 ms, about 2% of a cold answer).
        let mut pause = Duration::from_micros(250);
        let stream = loop {
            if let Some(status) = self.child.try_wait() {
                return Err(self.exited_early(status));
            }
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < opts.start_timeout => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(1));
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
        QmpClient::handshake(stream, opts.qmp).map_err(|source| self.handshake_error(source))
    }

    fn exited_early(&self, status: std::process::ExitStatus) -> ProcessError {
        use std::os::unix::process::ExitStatusExt;
        ProcessError::ExitedEarly {
            binary: self.binary.clone(),
            status: status.to_string(),
            code: status.code().filter(|_| status.signal().is_none()),
            stderr: self.stderr(),
        }
    }

    /// A handshake that failed because QEMU closed the connection: QEMU opens its QMP socket
    /// before it sets up its accelerator, so one that refuses the accelerator resets a
    /// connection made in between. Its exit is reaped a moment after the socket closes
    /// (later still through a PID namespace's leader, on a loaded host): wait for it a
    /// bounded time. Exited: [`ProcessError::ExitedEarly`]. Still running, or
    /// any other failure: a QMP error, and the process is killed.
    fn handshake_error(&mut self, source: QmpClientError) -> ProcessError {
        // Also past the greeting, while `qmp_capabilities` is answered: Debian's QEMU loads
        // its TCG accelerator module there, and one that cannot ("could not load module for
        // type 'tcg-accel-ops'") exits 1 after greeting, seen for a copy of the binary
        // outside /usr/bin.
        if matches!(source, QmpClientError::Io { .. } | QmpClientError::Eof { .. }) {
            let deadline = Instant::now() + EXIT_GRACE;
            let mut pause = Duration::from_micros(200);
            loop {
                if let Some(status) = self.child.try_wait() {
                    return self.exited_early(status);
                }
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
        self.qmp_error(source)
    }

    /// Wrap a QMP failure with this process's identity and stderr (killing it first so that
    /// stderr is complete).
    pub fn qmp_error(&mut self, source: QmpClientError) -> ProcessError {
        self.kill();
        ProcessError::Qmp { binary: self.binary.clone(), source, stderr: self.stderr() }
    }

    /// Kill the probe (and all it started) and reap it. Idempotent.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}

impl Drop for ProbeProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(state) = live().as_mut() {
            state.probes.remove(&self.live_id);
        }
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
    fn only_a_qemu_that_exited_with_code_1_before_its_greeting_refused_its_accelerator() {
        let bin = PathBuf::from("/usr/bin/qemu-system-x86_64");
        let exited = |code| ProcessError::ExitedEarly {
            binary: bin.clone(),
            status: "exit status: 1".into(),
            code,
            stderr: "invalid accelerator kvm".into(),
        };
        assert!(exited(Some(1)).refused_accel());
        let not = [
            exited(None),
            exited(Some(0)),
            exited(Some(127)),
            ProcessError::StartTimeout { binary: bin.clone(), timeout: Duration::from_secs(10), stderr: String::new() },
            ProcessError::Qmp {
                binary: bin.clone(),
                source: QmpClientError::Timeout {
                    during: "waiting for the QMP greeting".into(),
                    timeout: Duration::ZERO,
                },
                stderr: String::new(),
            },
            ProcessError::Spawn { binary: bin.clone(), source: std::io::Error::other("no") },
            ProcessError::TempDir(std::io::Error::other("full")),
            ProcessError::Aborted,
        ];
        for e in not {
            assert!(!e.refused_accel(), "{e}");
        }
    }

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
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut left = running_in_group();
        while !left.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = running_in_group();
        }
        assert!(left.is_empty(), "processes of group {pid} survived: {left:?}");
    }

    #[test]
    fn libvirt_conf_values() {
        let conf = "# user = \"qemu\"\n#group=\"kvm\"\nuser = \"libvirt-qemu\"  # the default\ngroup=\"+64055\"\nuser = \"root\"\n";
        assert_eq!(conf_value(conf, "user").as_deref(), Some("root"));
        assert_eq!(conf_value(conf, "group").as_deref(), Some("+64055"));
        assert_eq!(conf_value("#user = \"x\"\nuser_ns = \"y\"\n", "user"), None);
    }

    #[test]
    fn owner_tags_name_live_processes_only() {
        assert!(!owner_gone(&format!("{}-abc", owner_tag())));
        assert!(owner_gone(&format!("{}.{}-abc", std::process::id(), 1)));
        assert!(!owner_gone("not-a-tag"));
    }

    #[test]
    fn unknown_user() {
        assert!(matches!(ProbeUser::from_name("no-such-user-capsd"), Err(ProcessError::UnknownUser(_))));
        assert_eq!(ProbeUser::from_name("root").unwrap().uid, 0);
    }

    #[test]
    fn private_dir_removed_and_modes() {
        use std::os::unix::fs::PermissionsExt;
        let mut p = ProbeProcess::start(Path::new("/bin/sleep"), Accel::Tcg, &ProcessOptions::default());
        // /bin/sleep rejects the QEMU arguments and exits; the directory still exists until drop.
        let p = p.as_mut().unwrap();
        let dir = p.dir().to_owned();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o711);
        assert_eq!(std::fs::metadata(dir.join("run")).unwrap().permissions().mode() & 0o777, 0o700);
        // /bin/sleep exits at once; the limit is only there for a loaded machine.
        let opts = ProcessOptions { start_timeout: Duration::from_secs(60), ..Default::default() };
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

//! Which emulator binaries the agent runs for its clients.
//!
//! The agent runs as root and its clients may not be: a query's `emulatorbin` must not
//! make it execute (or even look closely at) a file of the client's choosing. It runs
//! - the QEMU system emulators it would pick itself: `qemu-system-*` directly in one of
//!   [`SYSTEM_DIRS`], a regular executable file owned by root and not writable by group or
//!   others, in directories (every ancestor too) owned by root and not writable by group or
//!   others;
//! - the binaries named with `capsd serve --emulator PATH` (checked at start-up by
//!   [`EmulatorPolicy::new`]: an executable regular file owned by root or the agent's user,
//!   not writable by group or others, in directories owned by root or the agent's user and
//!   not writable by group or others unless sticky, like `/tmp`).
//!
//! Paths are compared after resolving symlinks, and the resolved path is what is opened: a
//! link elsewhere to an allowed binary is that binary; a link that does not resolve is
//! refused (403), never passed on. The request's check reads only the metadata of the path's
//! components; a refused file is never opened or executed. The qemu driver then opens the
//! resolved file once (`O_PATH`, no link followed at its end), checks that descriptor again
//! ([`EmulatorPolicy::check_opened`]: type, owner and mode from `fstat`, directories as
//! above), keys its probe cache by it and executes it (`execveat`; see
//! `driver_qemu::binary`): a link swapped or a file renamed over the path after the check
//! changes nothing for that request. The CLI has no such policy: a user's
//! `capsd domcapabilities --emulatorbin` runs whatever that user can run.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::FileStat;

/// Where the agent looks for (and accepts) QEMU system emulators of its own choosing.
pub const SYSTEM_DIRS: [&str; 4] = ["/usr/bin", "/usr/local/bin", "/usr/libexec", "/bin"];

/// The name every emulator the agent picks itself has.
const PREFIX: &str = "qemu-system-";

/// A `--emulator` that cannot be allowed, with the reason.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--emulator {}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// The agent's rule for `emulatorbin`.
#[derive(Debug, Clone)]
pub struct EmulatorPolicy {
    /// [`SYSTEM_DIRS`] with symlinks resolved (`/bin` is `/usr/bin` on merged-/usr systems).
    dirs: Vec<PathBuf>,
    /// `--emulator` binaries: as given, and resolved.
    configured: Vec<(PathBuf, PathBuf)>,
}

impl EmulatorPolicy {
    /// The policy with the system directories and the `--emulator` binaries, each checked
    /// now; the first one that is not acceptable is the error.
    pub fn new(configured: &[PathBuf]) -> Result<Self, ConfigError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for d in SYSTEM_DIRS {
            if let Ok(c) = std::fs::canonicalize(d) {
                if !dirs.contains(&c) {
                    dirs.push(c);
                }
            }
        }
        let configured =
            configured.iter().map(|p| Ok((p.clone(), configured_binary(p)?))).collect::<Result<_, ConfigError>>()?;
        Ok(EmulatorPolicy { dirs, configured })
    }

    /// The directories the agent picks emulators from (resolved, each once).
    pub fn system_dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The binary to run for a requested `emulatorbin` (absolute, plain form), or why it is
    /// refused. A path where nothing exists is passed on only when it names a
    /// `qemu-system-*` in a system directory or an `--emulator` (the driver then says it
    /// does not exist), and a link there that does not resolve is refused; elsewhere the
    /// answer does not depend on whether the file exists.
    pub fn check(&self, requested: &Path) -> Result<PathBuf, String> {
        let refused = || {
            format!(
                "'{}' is not an emulator this agent runs: it runs the qemu-system-* binaries in {} \
                 that are owned by root and not writable by group or others (in directories likewise), \
                 and those named with 'capsd serve --emulator'",
                requested.display(),
                SYSTEM_DIRS.join(", ")
            )
        };
        let resolved = match std::fs::canonicalize(requested) {
            Ok(r) => r,
            Err(e) => {
                let in_system_dir = requested.parent().is_some_and(|d| SYSTEM_DIRS.iter().any(|s| Path::new(s) == d));
                let configured = self.configured.iter().any(|(given, r)| given == requested || r == requested);
                if !((in_system_dir && emulator_name(requested)) || configured) {
                    return Err(refused());
                }
                // Something is there but does not resolve: a dangling link (whose target
                // whoever can write where it points could create later), or a loop.
                if requested.symlink_metadata().is_ok() {
                    return Err(format!("{}: it is a symbolic link that does not resolve ({e})", refused()));
                }
                return Ok(requested.to_owned());
            }
        };
        if self.configured.iter().any(|(_, r)| *r == resolved) {
            return configured_binary(&resolved).map(|_| resolved).map_err(|e| e.to_string());
        }
        // Named as an emulator in a system directory: the link (root's, as the directory is)
        // or the file it resolves to.
        let own =
            |p: &Path, dirs: &[PathBuf]| emulator_name(p) && p.parent().is_some_and(|d| dirs.iter().any(|s| s == d));
        let system: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
        if !(own(&resolved, &self.dirs) || own(requested, &system)) {
            return Err(refused());
        }
        trusted_system_binary(&resolved).map_err(|why| format!("{}: {why}", refused()))?;
        Ok(resolved)
    }

    /// The check of a binary the qemu driver opened to run it: `resolved` is the path it
    /// opened (without following a link at its end) and `st` the descriptor's `fstat`. An
    /// `--emulator` passes the start-up rules (root or this user, sticky directories
    /// allowed), anything else the system rule (root's, in root's directories); both need an
    /// executable regular file not writable by group or others.
    pub fn check_opened(&self, resolved: &Path, st: &FileStat) -> Result<(), String> {
        let configured = self.configured.iter().any(|(_, r)| r == resolved);
        let owners: &[u32] = if configured { &[0, nix::unistd::geteuid().as_raw()] } else { &[0] };
        let why = |reason: String| format!("'{}' is not an emulator this agent runs: {reason}", resolved.display());
        if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFREG || st.st_mode & 0o111 == 0 {
            return Err(why(format!("{} is not an executable regular file", resolved.display())));
        }
        owned_and_closed(resolved, st.st_uid, st.st_mode, owners, false).map_err(why)?;
        for dir in resolved.ancestors().skip(1) {
            let m = std::fs::metadata(dir).map_err(|e| why(format!("cannot read {}: {e}", dir.display())))?;
            owned_and_closed(dir, m.uid(), m.mode(), owners, configured).map_err(why)?;
        }
        #[cfg(debug_assertions)]
        test_hook_checked(resolved);
        Ok(())
    }

    /// Whether `path`, a `qemu-system-*` found in a system directory, is one the agent would
    /// pick itself: what it resolves to passes the same ownership and mode checks as a
    /// requested one (for the qemu driver's emulator search).
    pub fn picks(path: &Path) -> bool {
        emulator_name(path) && std::fs::canonicalize(path).is_ok_and(|r| trusted_system_binary(&r).is_ok())
    }
}

fn emulator_name(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX) && n.len() > PREFIX.len())
}

/// Root's, not writable by group or others, executable, and so is every directory above it.
fn trusted_system_binary(path: &Path) -> Result<(), String> {
    let m = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", path.display()));
    }
    owned_and_closed(path, m.uid(), m.mode(), &[0], false)?;
    for dir in path.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        owned_and_closed(dir, m.uid(), m.mode(), &[0], false)?;
    }
    Ok(())
}

/// An `--emulator`: absolute, resolvable, an executable regular file owned by root or this
/// process's user and not writable by group or others, in directories owned by root or
/// this user and not writable by group or others unless sticky. Returns the resolved path.
fn configured_binary(path: &Path) -> Result<PathBuf, ConfigError> {
    let err = |reason: String| ConfigError { path: path.to_owned(), reason };
    if !path.is_absolute() {
        return Err(err("must be an absolute path".into()));
    }
    let resolved = std::fs::canonicalize(path).map_err(|e| err(format!("cannot resolve it: {e}")))?;
    let m = std::fs::metadata(&resolved).map_err(|e| err(format!("cannot read {}: {e}", resolved.display())))?;
    if !m.is_file() || m.permissions().mode() & 0o111 == 0 {
        return Err(err(format!("{} is not an executable regular file", resolved.display())));
    }
    let owners = [0, nix::unistd::geteuid().as_raw()];
    owned_and_closed(&resolved, m.uid(), m.mode(), &owners, false).map_err(err)?;
    for dir in resolved.ancestors().skip(1) {
        let m = std::fs::metadata(dir).map_err(|e| err(format!("cannot read {}: {e}", dir.display())))?;
        owned_and_closed(dir, m.uid(), m.mode(), &owners, true).map_err(err)?;
    }
    Ok(resolved)
}

/// Owned (`uid`) by one of `owners` and not writable by group or others (`mode`; a sticky
/// directory may be: others cannot replace what they do not own there).
fn owned_and_closed(p: &Path, uid: u32, mode: u32, owners: &[u32], sticky_ok: bool) -> Result<(), String> {
    if !owners.contains(&uid) {
        return Err(format!(
            "{} is owned by uid {}, not by root{}",
            p.display(),
            uid,
            if owners.len() > 1 { " or the agent's user" } else { "" }
        ));
    }
    if mode & 0o022 != 0 && !(sticky_ok && mode & 0o1000 != 0) {
        return Err(format!("{} is writable by group or others (mode {:o})", p.display(), mode & 0o7777));
    }
    Ok(())
}

/// Test builds only: with `CAPSD_TEST_HOOK_CHECKED=DIR`, a binary that passed
/// [`EmulatorPolicy::check_opened`] is announced by creating `DIR/checked` (holding its
/// path), and nothing proceeds (no probe runs) until `DIR/go` exists: a test changes the file
/// at that point, between check and exec, deterministically.
#[cfg(debug_assertions)]
fn test_hook_checked(resolved: &Path) {
    let Some(dir) = std::env::var_os("CAPSD_TEST_HOOK_CHECKED").map(PathBuf::from) else { return };
    let _ = std::fs::write(dir.join("checked"), resolved.as_os_str().as_encoded_bytes());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !dir.join("go").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn configured_binaries_are_checked_at_start_up() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = script(tmp.path(), "emu", 0o755);
        assert!(EmulatorPolicy::new(std::slice::from_ref(&ok)).is_ok());
        for (path, needle) in [
            (script(tmp.path(), "open", 0o777), "writable by group or others"),
            (script(tmp.path(), "data", 0o644), "not an executable"),
            (tmp.path().join("absent"), "cannot resolve"),
            (PathBuf::from("relative/emu"), "absolute"),
        ] {
            let e = EmulatorPolicy::new(&[ok.clone(), path.clone()]).unwrap_err();
            assert_eq!(e.path, path);
            assert!(e.to_string().contains(needle), "{e}");
        }
        // A directory others may write to (without the sticky bit) is refused too.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = EmulatorPolicy::new(std::slice::from_ref(&ok)).unwrap_err();
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(EmulatorPolicy::new(&[ok]).is_ok());
    }

    #[test]
    fn only_system_emulators_and_configured_ones_pass() {
        let tmp = tempfile::tempdir().unwrap();
        let mine = script(tmp.path(), "qemu-system-x86_64", 0o755);
        let policy = EmulatorPolicy::new(&[]).unwrap();
        // A qemu-system-* by name, but not in a system directory.
        let e = policy.check(&mine).unwrap_err();
        assert!(e.contains("not an emulator this agent runs"), "{e}");
        // Absent files: refused the same way outside the system directories.
        assert_eq!(
            policy.check(&tmp.path().join("nope")).unwrap_err(),
            policy.check(&tmp.path().join("nope")).unwrap_err()
        );
        assert!(policy.check(Path::new("/usr/bin/qemu-system-nosuch")).is_ok());
        assert!(policy.check(Path::new("/usr/bin/env")).is_err(), "not a qemu-system-* binary");
        let allowed = EmulatorPolicy::new(std::slice::from_ref(&mine)).unwrap();
        assert_eq!(allowed.check(&mine).unwrap(), std::fs::canonicalize(&mine).unwrap());
        // A link to it is it.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&mine, &link).unwrap();
        assert_eq!(allowed.check(&link).unwrap(), std::fs::canonicalize(&mine).unwrap());
    }
}

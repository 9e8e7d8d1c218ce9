//! An emulator binary opened once, so that the file checked is the file keyed and run.
//!
//! A caller that decides which binaries may run (the agent, which runs as root for clients
//! that are not) gives the driver a [`Check`] ([`crate::QemuDriver::with_binary_check`]).
//! The driver then resolves the binary's path, opens the resolved file once (`O_PATH`,
//! `O_NOFOLLOW` on the final component, close-on-exec), hands the descriptor's `fstat` to the
//! check, takes the probe cache's key from that same `fstat`, and starts the probe from that
//! descriptor (`execveat(fd, "", AT_EMPTY_PATH)`, [`crate::spawn`]). Nothing is looked up by
//! path again: a link swapped or a file renamed over the path after the check changes
//! nothing for this query (the next one opens and checks the new file). A path that does not
//! resolve (a dangling link) is refused, never passed on.
//!
//! `argv[0]` stays the path (QEMU finds its modules and firmware through
//! `/proc/self/exe`, which names the file executed either way), so what the probe sees and
//! what the document says are unchanged. Without a check (the CLI) a binary runs by path as
//! before.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capsd_core::DriverError;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};

/// Decides whether an opened binary may run: its resolved path and its descriptor's `fstat`
/// (owner, mode, type; the check may look at the path's directories). `Err` says why not.
pub type CheckFn = dyn Fn(&Path, &FileStat) -> Result<(), String> + Send + Sync;

/// A shareable [`CheckFn`].
#[derive(Clone)]
pub struct Check(pub Arc<CheckFn>);

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Check(..)")
    }
}

/// A binary opened and checked: the descriptor to run and what `fstat` said of it.
#[derive(Clone)]
pub struct Opened {
    /// The resolved path that was opened.
    pub resolved: PathBuf,
    pub fd: Arc<OwnedFd>,
    pub stat: FileStat,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("resolved", &self.resolved)
            .field("fd", &self.fd)
            .field("dev", &self.stat.st_dev)
            .field("ino", &self.stat.st_ino)
            .finish()
    }
}

/// Resolve `binary`, open the resolved file without following a link at its end, and check
/// the descriptor with `check`. Every refusal is an invalid `emulatorbin` naming the path.
pub fn open_checked(binary: &Path, check: &Check) -> Result<Opened, DriverError> {
    let refuse = |why: String| DriverError::invalid("emulatorbin", binary.display().to_string(), why);
    let resolved = std::fs::canonicalize(binary).map_err(|e| {
        if binary.symlink_metadata().is_ok() {
            refuse(format!("it is a symbolic link that does not resolve ({e}); refusing to run it"))
        } else {
            refuse(format!("cannot resolve it: {e}"))
        }
    })?;
    let raw = nix::fcntl::open(&resolved, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| refuse(format!("cannot open {}: {e}", resolved.display())))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let stat = nix::sys::stat::fstat(raw).map_err(|e| refuse(format!("cannot stat {}: {e}", resolved.display())))?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(refuse(format!("{} is not a regular file", resolved.display())));
    }
    (check.0)(&resolved, &stat).map_err(refuse)?;
    Ok(Opened { resolved, fd: Arc::new(fd), stat })
}

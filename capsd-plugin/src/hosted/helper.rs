//! The helper's side: load the one plugin capsd vetted and answer capsd's requests on the
//! socket until capsd closes it. Runs in the helper process only (`capsd plugin-host`).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::stat::{fstat, SFlag};

use super::proto::{read_frame, write_frame, Frame, ProtoError, MAX_FROM_CAPSD};
use crate::loader::{load_vetted, FileIdentity, Received};

/// The descriptor capsd puts the helper's end of the socket pair on.
pub const HELPER_FD: i32 = 3;

/// Why a helper stopped other than by capsd closing the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelperError {
    #[error(
        "descriptor {HELPER_FD} is not the socket capsd starts plugin helpers with (this mode is for capsd itself)"
    )]
    NoSocket,
    #[error("cannot load the plugin: {0}")]
    Load(#[from] crate::PluginError),
    #[error("the connection to capsd failed: {0}")]
    Protocol(#[from] ProtoError),
    #[error("unexpected request from capsd: {0}")]
    Unexpected(String),
}

/// Take the socket capsd left on [`HELPER_FD`].
pub fn inherited_socket() -> Result<UnixStream, HelperError> {
    let st = fstat(HELPER_FD).map_err(|_| HelperError::NoSocket)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
        return Err(HelperError::NoSocket);
    }
    // SAFETY: the descriptor is open (fstat succeeded) and is a socket; capsd placed it there
    // for this process, and nothing else in the helper refers to descriptor 3, so taking
    // ownership of it here is the only ownership.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(HELPER_FD) }))
}

/// [`serve`], in a process fit for it. capsd's launcher makes the helper the init of a PID
/// namespace of its own (so that whatever the plugin starts dies with it); but a namespace's
/// init cannot be ended by a signal it raises itself (the kernel protects it: `abort()`
/// would end in a SIGSEGV, `raise(SIGTERM)` would be ignored) and it inherits every orphan
/// of the namespace. So as such an init (pid 1) the helper forks a *worker* that loads the
/// plugin and serves, while the init only reaps orphans and, when the worker ends, ends the
/// same way: with its exit status, or, for a signal, after telling capsd the worker's wait
/// status in an `Ended` frame, with status 128 + the signal. Anywhere else (pid not 1) it
/// serves itself. Returns only in the process that served.
pub fn serve_contained(sock: UnixStream, path: &Path, identity: FileIdentity) -> Result<(), HelperError> {
    if nix::unistd::getpid().as_raw() != 1 {
        return serve(sock, path, identity);
    }
    // SAFETY: the helper is single-threaded here (nothing started a thread before serving);
    // the child goes on as a normal process.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // The init's death ends the namespace anyway; this only makes it immediate.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            serve(sock, path, identity)
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => init(sock, child),
        // No worker: serve as the init (a self-raised signal then shows as something else).
        Err(_) => serve(sock, path, identity),
    }
}

/// The namespace's init: reap everything until `worker` ends, then end as it did.
fn init(mut sock: UnixStream, worker: nix::unistd::Pid) -> ! {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == worker => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, sig, core)) if pid == worker => {
                let status = sig as i32 | if core { 0x80 } else { 0 };
                let _ = write_frame(&mut sock, &Frame::Ended { status });
                std::process::exit(128 + sig as i32)
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            // No child left (the worker was reaped elsewhere, which cannot happen).
            Err(_) => std::process::exit(127),
        }
    }
}

/// Load the plugin at `path` (it must still be the file capsd vetted as `identity`), say
/// hello (or why loading failed) and answer requests until capsd closes the connection.
pub fn serve(mut sock: UnixStream, path: &Path, identity: FileIdentity) -> Result<(), HelperError> {
    let plugin = match load_vetted(path, identity) {
        Ok(p) => p,
        Err(e) => {
            let _ = write_frame(&mut sock, &Frame::LoadFailed { message: e.to_string() });
            return Err(e.into());
        }
    };
    write_frame(&mut sock, &Frame::Hello { name: plugin.id().name.clone() }).map_err(ProtoError::from)?;
    loop {
        let got = match read_frame(&mut sock, MAX_FROM_CAPSD) {
            Ok(f) => f,
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let received = match got {
            Frame::Availability => plugin.call_availability(),
            Frame::DomainCapabilities { query } => plugin.call_domain_capabilities(&query),
            other => return Err(HelperError::Unexpected(format!("a {} frame", other.kind_name()))),
        };
        let reply = match received {
            Received { kind, code, data: Ok(data) } => Frame::Reply { kind, code, data },
            Received { data: Err(message), .. } => Frame::HostError { message },
        };
        write_frame(&mut sock, &reply).map_err(ProtoError::from)?;
    }
}

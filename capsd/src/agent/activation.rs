//! Socket activation: the listening sockets systemd passes to a service started by a
//! `.socket` unit (the `sd_listen_fds(3)` protocol, as `libvirtd.socket` uses).
//!
//! The protocol: `LISTEN_PID` names the process the sockets are for, `LISTEN_FDS` says how
//! many there are, and they are file descriptors 3, 4, ... in order. Written here rather than
//! taken from a crate because the whole protocol is these few checks, and the agent needs
//! each one to give a clear error: the variables are read once and removed from the
//! environment (so probes and their QEMU children neither see nor inherit them), sockets
//! meant for another process are left alone, every passed descriptor must be an open,
//! listening stream socket (Unix, or loopback TCP like `--listen`), and each gets
//! close-on-exec before anything else can be started.

use std::net::TcpListener;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// More than any `.socket` unit of ours passes; a larger count is a wrong variable.
const MAX_FDS: usize = 64;

/// A listening socket received from systemd.
#[derive(Debug)]
pub enum Inherited {
    Unix(UnixListener),
    /// A loopback TCP socket (`ListenStream=127.0.0.1:PORT`).
    Tcp(TcpListener),
}

/// Why the passed sockets cannot be used; every variant names the variable or descriptor.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_PID='{0}' is not a process id")]
    BadPid(String),
    #[error("LISTEN_FDS='{0}' is not a count of file descriptors (1 to {MAX_FDS})")]
    BadCount(String),
    #[error("LISTEN_FDS={count}: file descriptor {fd} is not open: {errno}")]
    NotOpen { count: usize, fd: RawFd, errno: nix::errno::Errno },
    #[error("passed file descriptor {fd} is not a socket: {errno}")]
    NotSocket { fd: RawFd, errno: nix::errno::Errno },
    #[error("passed file descriptor {fd} is not a listening stream socket (ListenStream= in the .socket unit)")]
    NotListening { fd: RawFd },
    #[error("passed file descriptor {fd} is a {family} socket; only Unix and loopback TCP sockets are served")]
    Family { fd: RawFd, family: String },
    #[error("passed file descriptor {fd} listens on {addr}, not a loopback address (the API has no authentication)")]
    NotLoopback { fd: RawFd, addr: String },
}

/// How many descriptors the environment passes to the process `my_pid`: `None` when no
/// sockets were passed, or they were meant for another process (a parent that did not
/// unset the variables).
pub fn passed_count(pid: Option<&str>, fds: Option<&str>, my_pid: i32) -> Result<Option<usize>, ActivationError> {
    let (Some(pid), Some(fds)) = (pid, fds) else { return Ok(None) };
    let for_pid: i32 = pid.trim().parse().map_err(|_| ActivationError::BadPid(pid.to_owned()))?;
    if for_pid != my_pid {
        return Ok(None);
    }
    match fds.trim().parse::<usize>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= MAX_FDS => Ok(Some(n)),
        _ => Err(ActivationError::BadCount(fds.to_owned())),
    }
}

/// Take the sockets systemd passed to this process, in order, and remove `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment. Empty when not socket-activated.
/// Call once, before other threads start (it changes the environment).
pub fn take() -> Result<Vec<Inherited>, ActivationError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let Some(count) = passed_count(pid.as_deref(), fds.as_deref(), std::process::id() as i32)? else {
        return Ok(Vec::new());
    };
    // Close-on-exec on all of them first: none may leak into a probe, even on error.
    let last = FIRST_FD + count as RawFd;
    for fd in FIRST_FD..last {
        let flags = fcntl(fd, FcntlArg::F_GETFD).map_err(|errno| ActivationError::NotOpen { count, fd, errno })?;
        let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
        fcntl(fd, FcntlArg::F_SETFD(flags)).map_err(|errno| ActivationError::NotOpen { count, fd, errno })?;
    }
    (FIRST_FD..last)
        .map(|fd| {
            // SAFETY: the fd is open (checked above) and, by the protocol LISTEN_PID/LISTEN_FDS
            // state for this very process, passed to it to own; the variables are gone, so no
            // second call takes it again.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            classify(fd, owned)
        })
        .collect()
}

/// Check that `owned` (descriptor `fd`) is a listening stream socket we serve on.
fn classify(fd: RawFd, owned: OwnedFd) -> Result<Inherited, ActivationError> {
    let kind =
        getsockopt(&owned.as_fd(), sockopt::SockType).map_err(|errno| ActivationError::NotSocket { fd, errno })?;
    let listening = getsockopt(&owned.as_fd(), sockopt::AcceptConn).unwrap_or(false);
    if kind != SockType::Stream || !listening {
        return Err(ActivationError::NotListening { fd });
    }
    let addr: SockaddrStorage = getsockname(fd).map_err(|errno| ActivationError::NotSocket { fd, errno })?;
    match addr.family() {
        Some(AddressFamily::Unix) => Ok(Inherited::Unix(UnixListener::from(owned))),
        Some(AddressFamily::Inet | AddressFamily::Inet6) => {
            let tcp = TcpListener::from(owned);
            let local = tcp.local_addr().map_err(|e| ActivationError::NotSocket {
                fd,
                errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            })?;
            if !local.ip().is_loopback() {
                return Err(ActivationError::NotLoopback { fd, addr: local.to_string() });
            }
            Ok(Inherited::Tcp(tcp))
        }
        other => Err(ActivationError::Family { fd, family: format!("{other:?}") }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn the_count_is_read_only_for_this_process() {
        assert_eq!(passed_count(None, None, 10).unwrap(), None);
        assert_eq!(passed_count(Some("10"), None, 10).unwrap(), None);
        assert_eq!(passed_count(Some("10"), Some("2"), 10).unwrap(), Some(2));
        assert_eq!(passed_count(Some("11"), Some("2"), 10).unwrap(), None, "meant for another process");
        assert_eq!(passed_count(Some("10"), Some("0"), 10).unwrap(), None);
        let e = passed_count(Some("ten"), Some("1"), 10).unwrap_err();
        assert!(e.to_string().contains("LISTEN_PID='ten'"), "{e}");
        for bad in ["-1", "x", "65", ""] {
            let e = passed_count(Some("10"), Some(bad), 10).unwrap_err();
            assert!(e.to_string().contains(&format!("LISTEN_FDS='{bad}'")), "{e}");
        }
    }

    fn owned<T: IntoRawFd>(x: T) -> (RawFd, OwnedFd) {
        let fd = x.into_raw_fd();
        // SAFETY: just released by its owner.
        (fd, unsafe { OwnedFd::from_raw_fd(fd) })
    }

    #[test]
    fn listening_sockets_are_accepted_and_others_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (fd, o) = owned(UnixListener::bind(tmp.path().join("s")).unwrap());
        assert!(matches!(classify(fd, o), Ok(Inherited::Unix(_))));
        let (fd, o) = owned(TcpListener::bind("127.0.0.1:0").unwrap());
        assert!(matches!(classify(fd, o), Ok(Inherited::Tcp(_))));

        let (fd, o) = owned(std::fs::File::open("/dev/null").unwrap());
        let e = classify(fd, o).unwrap_err();
        assert!(e.to_string().contains(&format!("descriptor {fd} is not a socket")), "{e}");
        // A connected (not listening) socket.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (fd, o) = owned(a);
        let e = classify(fd, o).unwrap_err();
        assert!(e.to_string().contains("not a listening stream socket"), "{e}");
        // Datagram sockets are not served either.
        let (fd, o) = owned(std::net::UdpSocket::bind("127.0.0.1:0").unwrap());
        assert!(matches!(classify(fd, o), Err(ActivationError::NotListening { .. })));
        // TCP beyond loopback is refused, as `--listen` refuses it.
        let (fd, o) = owned(TcpListener::bind("0.0.0.0:0").unwrap());
        let e = classify(fd, o).unwrap_err();
        assert!(e.to_string().contains("not a loopback address"), "{e}");
    }
}

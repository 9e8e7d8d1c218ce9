//! `capsd serve` started the way systemd starts it from `capsd.socket`: by systemd's own
//! `systemd-socket-activate`, which binds the socket, waits for a client and execs capsd
//! with the socket as fd 3 and `LISTEN_FDS`/`LISTEN_PID` set, exactly as PID 1 does.

mod agent_support;

use std::io::BufRead;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use agent_support::http_get;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// Generous: only reached when something is wrong (no timed assertions here).
const DEADLINE: Duration = Duration::from_secs(120);

/// A running `systemd-socket-activate` (later: the capsd it execs), its stderr read line by
/// line as it comes, so a test can wait for what it says.
struct Activated {
    child: Child,
    /// Lines so far, and whether stderr was closed.
    stderr: Arc<(Mutex<(Vec<String>, bool)>, Condvar)>,
}

/// `systemd-socket-activate [opts] -l SOCKET capsd --cache-dir DIR serve ARGS...`.
fn activate(dir: &Path, socket: &Path, opts: &[&str], serve_args: &[&str]) -> Activated {
    assert!(Path::new(ACTIVATE).is_file(), "{ACTIVATE} is missing (Debian package systemd)");
    let mut child = Command::new(ACTIVATE)
        .args(opts)
        .arg("-l")
        .arg(socket)
        .arg(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("serve")
        .args(serve_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
    let pipe = std::io::BufReader::new(child.stderr.take().unwrap());
    let shared = stderr.clone();
    std::thread::spawn(move || {
        let (lines, changed) = &*shared;
        for line in pipe.lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().0.push(line);
            changed.notify_all();
        }
        lines.lock().unwrap().1 = true;
        changed.notify_all();
    });
    Activated { child, stderr }
}

impl Activated {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    fn text(&self) -> String {
        self.stderr.0.lock().unwrap().0.join("\n")
    }

    /// Wait until systemd-socket-activate says it listens ("Listening on ... as 3.", logged
    /// after `listen`): `true`; `false` when it ended without (it could not bind).
    fn listening(&self) -> bool {
        let (lines, changed) = &*self.stderr;
        let t = Instant::now();
        let mut st = lines.lock().unwrap();
        loop {
            if st.0.iter().any(|l| l.starts_with("Listening on ")) {
                return true;
            }
            if st.1 {
                return false;
            }
            let left = DEADLINE.checked_sub(t.elapsed()).unwrap_or_else(|| {
                panic!("systemd-socket-activate neither listened nor ended within {DEADLINE:?}: {:?}", st.0)
            });
            st = changed.wait_timeout(st, left).unwrap().0;
        }
    }

    /// Wait for the process to end (past the deadline it is killed and the test fails), and
    /// for everything it wrote on stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let t = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > DEADLINE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("process did not exit within {DEADLINE:?}; its stderr:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (lines, changed) = &*self.stderr;
        let mut st = lines.lock().unwrap();
        while !st.1 {
            st = changed.wait_timeout(st, DEADLINE).unwrap().0;
        }
        (status, st.0.join("\n"))
    }
}

/// systemd-socket-activate listening on a loopback TCP port: a free port is chosen, and
/// chosen again when another process took it before systemd-socket-activate could bind it.
fn activate_tcp(dir: &Path, serve_args: &[&str]) -> (Activated, u16) {
    for _ in 0..10 {
        let port = agent_support::free_port();
        let a = activate(dir, Path::new(&format!("127.0.0.1:{port}")), &[], serve_args);
        if a.listening() {
            return (a, port);
        }
        let (_, err) = a.wait();
        assert!(err.contains("Address already in use"), "{err}");
    }
    panic!("no free port could be bound in 10 tries");
}

/// One connection to the port systemd-socket-activate listens on (bound: no other socket
/// can have it, so this is its connection).
fn connect_tcp(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert_ne!(s.local_addr().unwrap(), s.peer_addr().unwrap(), "connected to itself");
    s
}

#[test]
fn serves_on_the_socket_systemd_passes_and_leaves_it_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("capsd.sock");
    let child = activate(dir.path(), &socket, &[], &["--recheck-ms", "0"]);
    assert!(child.listening(), "{}", child.text());
    // The first connection makes systemd-socket-activate exec capsd, which answers it.
    let health = http_get(UnixStream::connect(&socket).unwrap(), "/healthz", &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let doc = http_get(UnixStream::connect(&socket).unwrap(), "/v1/domcapabilities?driver=test", &[]);
    let cli = Command::new(env!("CARGO_BIN_EXE_capsd")).args(["domcapabilities", "--driver", "test"]).output().unwrap();
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!((doc.status, doc.body.as_bytes()), (200, cli.stdout.as_slice()));

    // exec kept the pid: this is capsd now.
    nix::sys::signal::kill(child.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, err) = child.wait();
    assert!(status.success(), "{err}");
    // The socket is systemd's (it stays bound while capsd.socket is active): not removed.
    assert!(socket.exists(), "capsd removed the socket systemd passed it");
}

#[test]
fn socket_options_next_to_a_passed_socket_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let other = dir.path().join("other.sock");
    let child = activate(dir.path(), &socket, &[], &["--socket", other.to_str().unwrap()]);
    assert!(child.listening(), "{}", child.text());
    let _ = UnixStream::connect(&socket).unwrap();
    let (status, err) = child.wait();
    assert!(!status.success() && err.contains("--socket and --listen cannot be used as well"), "{err}");
    assert!(!other.exists());
}

#[test]
fn a_passed_datagram_socket_is_refused_by_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let child = activate(dir.path(), &socket, &["--datagram"], &[]);
    assert!(child.listening(), "{}", child.text());
    UnixDatagram::unbound().unwrap().send_to(b"x", &socket).unwrap();
    let (status, err) = child.wait();
    assert!(!status.success() && err.contains("file descriptor 3 is not a listening stream socket"), "{err}");
}

#[test]
fn a_passed_tcp_socket_needs_the_token_too() {
    let dir = tempfile::tempdir().unwrap();
    // Without --token-file: refused, naming the flag.
    let (child, port) = activate_tcp(dir.path(), &[]);
    drop(connect_tcp(port));
    let (status, err) = child.wait();
    assert!(err.contains("Communication attempt on fd 3"), "{err}");
    assert!(!status.success() && err.contains("--token-file"), "{err}");
    // With it: /v1/ needs the token, /healthz does not.
    let (file, token) = agent_support::token_file(dir.path());
    let (child, port) = activate_tcp(dir.path(), &["--token-file", file.to_str().unwrap()]);
    assert_eq!(http_get(connect_tcp(port), "/healthz", &[]).status, 200);
    let q = "/v1/domcapabilities?driver=test";
    assert_eq!(http_get(connect_tcp(port), q, &[]).status, 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(http_get(connect_tcp(port), q, &[("Authorization", &bearer)]).status, 200);
    nix::sys::signal::kill(child.pid(), nix::sys::signal::Signal::SIGTERM).unwrap();
    let (status, err) = child.wait();
    assert!(status.success(), "{err}");
}

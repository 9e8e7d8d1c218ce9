//! `capsd serve` started the way systemd starts it from `capsd.socket`: by systemd's own
//! `systemd-socket-activate`, which binds the socket, waits for a client and execs capsd
//! with the socket as fd 3 and `LISTEN_FDS`/`LISTEN_PID` set, exactly as PID 1 does.

mod agent_support;

use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent_support::http_get;

const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// `systemd-socket-activate [opts] -l SOCKET capsd --cache-dir DIR serve ARGS...`.
fn activate(dir: &Path, socket: &Path, opts: &[&str], serve_args: &[&str]) -> Child {
    assert!(Path::new(ACTIVATE).is_file(), "{ACTIVATE} is missing (Debian package systemd)");
    let child = Command::new(ACTIVATE)
        .args(opts)
        .arg("-l")
        .arg(socket)
        .arg(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("serve")
        .args(serve_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
}

/// Connect once systemd-socket-activate listens (the file appears at bind, before listen).
fn connect(socket: &Path) -> UnixStream {
    let t = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return s,
            Err(e) if t.elapsed() < Duration::from_secs(10) => {
                assert!(
                    matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused),
                    "{e}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("systemd-socket-activate does not listen on {} after 10 s: {e}", socket.display()),
        }
    }
}

/// Wait for `child` at most 20 s; kill it past that.
fn wait(mut child: Child) -> Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("process did not exit: {:?}", child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn serves_on_the_socket_systemd_passes_and_leaves_it_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("capsd.sock");
    let child = activate(dir.path(), &socket, &[], &["--recheck-ms", "0"]);
    // The first connection makes systemd-socket-activate exec capsd, which answers it.
    let health = http_get(connect(&socket), "/healthz", &[]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let doc = http_get(UnixStream::connect(&socket).unwrap(), "/v1/domcapabilities?driver=test", &[]);
    let cli = Command::new(env!("CARGO_BIN_EXE_capsd")).args(["domcapabilities", "--driver", "test"]).output().unwrap();
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!((doc.status, doc.body.as_bytes()), (200, cli.stdout.as_slice()));

    // exec kept the pid: this is capsd now.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = wait(child);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The socket is systemd's (it stays bound while capsd.socket is active): not removed.
    assert!(socket.exists(), "capsd removed the socket systemd passed it");
}

#[test]
fn socket_options_next_to_a_passed_socket_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let other = dir.path().join("other.sock");
    let child = activate(dir.path(), &socket, &[], &["--socket", other.to_str().unwrap()]);
    let _ = connect(&socket);
    let out = wait(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--socket and --listen cannot be used as well"), "{err}");
    assert!(!other.exists());
}

#[test]
fn a_passed_datagram_socket_is_refused_by_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let child = activate(dir.path(), &socket, &["--datagram"], &[]);
    let t = Instant::now();
    while UnixDatagram::unbound().unwrap().send_to(b"x", &socket).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "systemd-socket-activate did not bind {}", socket.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = wait(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("file descriptor 3 is not a listening stream socket"), "{err}");
}

#[test]
fn a_passed_tcp_socket_needs_the_token_too() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", agent_support::free_port());
    // Without --token-file: refused, naming the flag.
    let child = activate(dir.path(), Path::new(&addr), &[], &[]);
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let _ = agent_support::connect_tcp(port);
    let out = wait(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--token-file"), "{err}");
    // With it: /v1/ needs the token, /healthz does not.
    let (file, token) = agent_support::token_file(dir.path());
    let child = activate(dir.path(), Path::new(&addr), &[], &["--token-file", file.to_str().unwrap()]);
    assert_eq!(http_get(agent_support::connect_tcp(port), "/healthz", &[]).status, 200);
    let q = "/v1/domcapabilities?driver=test";
    assert_eq!(http_get(agent_support::connect_tcp(port), q, &[]).status, 401);
    let bearer = format!("Bearer {token}");
    assert_eq!(http_get(agent_support::connect_tcp(port), q, &[("Authorization", &bearer)]).status, 200);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(wait(child).status.success());
}

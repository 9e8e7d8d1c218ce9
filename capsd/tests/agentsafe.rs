//! `capsd serve` as root against what a local user (the real `nobody`) or a moment's swap can
//! do (issue 19, items 1, 2 and 7): the binary executed is the one checked, dangling links
//! are refused, idle TCP clients without the token keep no one else out, the socket is
//! created without a window, the token file's owner is checked, the bearer scheme is matched
//! without regard to case, over-long file names are bad input.
//!
//! The moments "between check and exec" and "between bind and chmod" are made
//! deterministic by hooks of test builds (`CAPSD_TEST_HOOK_CHECKED`, `CAPSD_TEST_HOOK_BOUND`):
//! the agent announces the moment with a file and waits for the test's `go` file.

mod agent_support;
mod live_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{connect_tcp, free_port, http_get, token_file, Agent, Resp};

const NOBODY: u32 = 65534;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: needs root (the agent as root, clients and files of the user nobody)");
    false
}

fn encode(p: &Path) -> String {
    p.display().to_string().replace('/', "%2F")
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// Wait (generously) until `f` holds.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory others can traverse (the agent's socket is reached through it).
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Client modes of this test program, run in a child as `nobody` (see [`as_nobody`]).
#[test]
fn client_helper() {
    let Ok(mode) = std::env::var("CAPSD_TEST_CLIENT") else { return };
    match mode.as_str() {
        // One request on the Unix socket; the answer on stdout.
        "unix" => {
            let sock = std::env::var("CAPSD_TEST_SOCKET").unwrap();
            let path = std::env::var("CAPSD_TEST_PATH").unwrap();
            let r = http_get(std::os::unix::net::UnixStream::connect(sock).unwrap(), &path, &[]);
            println!("<<<{} {}\n{}>>>", nix::unistd::geteuid(), r.status, r.body);
        }
        // Open N idle TCP connections, say so, then wait until the agent has closed each.
        "hold" => {
            let port: u16 = std::env::var("CAPSD_TEST_PORT").unwrap().parse().unwrap();
            let n: usize = std::env::var("CAPSD_TEST_N").unwrap().parse().unwrap();
            let conns: Vec<_> = (0..n).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
            println!("held {n} as {}", nix::unistd::geteuid());
            std::io::stdout().flush().unwrap();
            let mut closed = 0;
            for mut c in conns {
                let mut b = [0u8; 64];
                // EOF (or a reset) once the agent closed it; it never sends an answer here.
                while matches!(c.read(&mut b), Ok(k) if k > 0) {}
                closed += 1;
            }
            println!("closed {closed}");
        }
        // Put a script of nobody's at a path (its directory is nobody's).
        "plant" => {
            let at = std::env::var("CAPSD_TEST_AT").unwrap();
            let marker = std::env::var("CAPSD_TEST_MARKER").unwrap();
            std::fs::write(&at, format!("#!/bin/sh\ntouch {marker}\nexit 3\n")).unwrap();
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
            println!("<<<{} 0\nplanted>>>", nix::unistd::geteuid());
        }
        m => panic!("bad CAPSD_TEST_CLIENT {m}"),
    }
}

/// This test program, copied where `nobody` can run it.
fn client_program() -> &'static Path {
    static COPY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &COPY
        .get_or_init(|| {
            let dir = open_dir();
            let exe = dir.path().join("client");
            std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            (dir, exe)
        })
        .1
}

fn nobody_command(mode: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(client_program());
    cmd.args(["--exact", "client_helper", "--nocapture", "--test-threads=1", "--quiet"])
        .env("CAPSD_TEST_CLIENT", mode)
        .uid(NOBODY)
        .gid(NOBODY);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Run a client mode as `nobody`: its "UID STATUS\nBODY" answer.
fn as_nobody(mode: &str, env: &[(&str, &str)]) -> Resp {
    let out = nobody_command(mode, env).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "client failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let inner = text.split_once("<<<").and_then(|(_, r)| r.split_once(">>>")).map(|(i, _)| i).expect(&text);
    let (head, body) = inner.split_once('\n').unwrap();
    let (uid, status) = head.split_once(' ').unwrap();
    assert_eq!(uid, NOBODY.to_string(), "the client did not run as nobody");
    Resp { status: status.parse().unwrap(), headers: Vec::new(), body: body.to_owned() }
}

fn nobody_get(a: &Agent, path: &str) -> Resp {
    as_nobody("unix", &[("CAPSD_TEST_SOCKET", a.socket.to_str().unwrap()), ("CAPSD_TEST_PATH", path)])
}

/// A root-owned link in a system directory, removed when dropped.
struct SystemLink(PathBuf);

impl Drop for SystemLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_system_emulator_link_to_a_users_file_never_runs_it() {
    if !root() {
        return;
    }
    // A directory of nobody's, where nothing exists yet.
    let users = open_dir();
    nix::unistd::chown(users.path(), Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let target = users.path().join("qemu");
    let marker = users.path().join("ran-as-root");
    // Root's link, named as an emulator, in a system directory the agent picks from.
    let link = SystemLink(PathBuf::from(format!("/usr/local/bin/qemu-system-capsdtest{}", std::process::id())));
    std::fs::create_dir_all("/usr/local/bin").unwrap();
    let _ = std::fs::remove_file(&link.0);
    std::os::unix::fs::symlink(&target, &link.0).unwrap();
    let a = Agent::start_in(open_dir(), &["--socket-group", "nogroup", "--socket-mode", "0666"]);
    let ask = format!("/v1/domcapabilities?emulatorbin={}", encode(&link.0));

    // The target does not exist: refused, not passed on to be looked up again later.
    let r = nobody_get(&a, &ask);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("does not resolve") && r.body.contains(&link.0.display().to_string()), "{}", r.body);

    // nobody puts a script there: its file, in its directory, is refused too, and never runs.
    let planted = as_nobody(
        "plant",
        &[("CAPSD_TEST_AT", target.to_str().unwrap()), ("CAPSD_TEST_MARKER", marker.to_str().unwrap())],
    );
    assert_eq!(planted.body, "planted");
    for _ in 0..15 {
        let r = nobody_get(&a, &ask);
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert!(!marker.exists(), "nobody's script ran as root");
    // A link whose target is a root-owned file in a directory nobody can write: refused.
    std::fs::remove_file(&target).unwrap();
    script(users.path(), "qemu", &format!("touch {}\nexit 3", marker.display()));
    let r = nobody_get(&a, &ask);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("owned by uid 65534"), "{}", r.body);
    assert!(!marker.exists(), "a script in nobody's directory ran as root");
}

/// Start the agent with the check-to-exec hook; returns it and the hook directory.
fn agent_with_exec_hook(dir: tempfile::TempDir, emulator: &Path) -> (Agent, tempfile::TempDir) {
    let hook = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["serve", "--socket", socket.to_str().unwrap(), "--emulator", emulator.to_str().unwrap()])
        .env("CAPSD_TEST_HOOK_CHECKED", hook.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let a = Agent { child, dir, socket };
    a.wait_ready();
    (a, hook)
}

/// Ask for `query` while, between the agent's check of the binary and its execution, `swap`
/// runs; the answer.
fn ask_with_swap(a: &Agent, hook: &Path, query: &str, swap: impl FnOnce()) -> Resp {
    let _ = std::fs::remove_file(hook.join("checked"));
    let _ = std::fs::remove_file(hook.join("go"));
    let socket = a.socket.clone();
    let query = query.to_owned();
    let asking =
        std::thread::spawn(move || http_get(std::os::unix::net::UnixStream::connect(socket).unwrap(), &query, &[]));
    wait_for("the agent to check the binary", || hook.join("checked").exists());
    swap();
    std::fs::write(hook.join("go"), b"").unwrap();
    asking.join().unwrap()
}

#[test]
fn a_file_renamed_over_the_checked_binary_is_not_the_one_run() {
    if !root() {
        return;
    }
    let dir = open_dir();
    // Where the probe user (not root) can leave its marks.
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    std::fs::set_permissions(&marks, std::fs::Permissions::from_mode(0o777)).unwrap();
    let ran_checked = marks.join("ran-checked");
    let ran_other = marks.join("ran-other");
    let emu = script(dir.path(), "emu", &format!("touch {}\nexit 3", ran_checked.display()));
    let other = script(dir.path(), "other", &format!("touch {}\nexit 3", ran_other.display()));
    let (a, hook) = agent_with_exec_hook(dir, &emu);
    let r = ask_with_swap(&a, hook.path(), &format!("/v1/domcapabilities?emulatorbin={}", encode(&emu)), || {
        std::fs::rename(&other, &emu).unwrap()
    });
    // The checked file ran (and failed as a probe); the one renamed over it did not.
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(ran_checked.exists(), "the checked binary did not run");
    assert!(!ran_other.exists(), "the file renamed over the checked path ran");
    // The next request opens, checks and runs what is there now.
    std::fs::write(hook.path().join("go"), b"").unwrap();
    let r = a.get(&format!("/v1/domcapabilities?emulatorbin={}", encode(&emu)));
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(ran_other.exists(), "the new file at the path did not run on the next request");
}

#[test]
fn the_probe_cache_answers_only_for_the_inode_it_probed() {
    if !root() || !live_support::live() {
        return;
    }
    let aarch64 = "/usr/bin/qemu-system-aarch64";
    if !Path::new(aarch64).exists() {
        assert!(std::env::var_os("CAPSD_REQUIRE_LIVE").is_none(), "{aarch64} is required");
        eprintln!("skipped: no {aarch64}");
        return;
    }
    let dir = open_dir();
    // Two wrappers of real emulators: the path first names the x86_64 one.
    let emu = script(dir.path(), "emu", &format!("exec {} \"$@\"", live_support::X86));
    let other = script(dir.path(), "other", &format!("exec {aarch64} \"$@\""));
    let (a, hook) = agent_with_exec_hook(dir, &emu);
    let ask = |extra: &str| format!("/v1/domcapabilities?emulatorbin={}{extra}", encode(&emu));
    // aarch64's wrapper is renamed over the path after x86_64's was checked: x86_64's answer,
    // probed from the checked file and cached under its identity.
    let first = ask_with_swap(&a, hook.path(), &ask(""), || std::fs::rename(&other, &emu).unwrap());
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.contains("<arch>x86_64</arch>"), "{}", first.body);
    // Another query for the same path: the file there now is another inode, so the cached
    // x86_64 probe does not answer for it.
    std::fs::write(hook.path().join("go"), b"").unwrap();
    let second = a.get(&ask("&arch=aarch64&virttype=qemu"));
    assert_eq!(second.status, 200, "{}", second.body);
    assert!(second.body.contains("<arch>aarch64</arch>"), "{}", second.body);
}

#[test]
fn idle_tcp_connections_without_the_token_lock_no_one_out() {
    if !root() {
        return;
    }
    let dir = open_dir();
    let (token_path, token) = token_file(dir.path());
    let port = free_port();
    // Long connection timeouts: only the budget of unauthenticated connections can free
    // their slots within this test.
    let a = Agent::start_in(
        dir,
        &[
            "--socket-group",
            "nogroup",
            "--socket-mode",
            "0666",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
            token_path.to_str().unwrap(),
            "--header-timeout-ms",
            "600000",
            "--idle-timeout-ms",
            "600000",
        ],
    );
    drop(connect_tcp(port));
    // nobody opens 300 TCP connections and sends nothing.
    let mut holder = nobody_command("hold", &[("CAPSD_TEST_PORT", &port.to_string()), ("CAPSD_TEST_N", "300")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("held") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "the holder ended before holding its connections");
    }
    assert_eq!(line.trim(), format!("held 300 as {NOBODY}"));
    // While they are open, a client of the Unix socket is served (as nobody and as root).
    let r = nobody_get(&a, "/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let r = a.get("/v1/drivers");
    assert_eq!(r.status, 200, "{}", r.body);
    // The agent closes every one of them (the unauthenticated timeout, not the 10-minute
    // idle timeout), so the token's holders get TCP back.
    let t = Instant::now();
    let mut rest = String::new();
    loop {
        if let Some(st) = holder.try_wait().unwrap() {
            out.read_to_string(&mut rest).unwrap();
            assert!(st.success() && rest.contains("closed 300"), "{st}: {rest}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the idle connections were still open after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let auth = format!("Bearer {token}");
    let r = http_get(connect_tcp(port), "/v1/drivers", &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn an_authenticated_tcp_connection_keeps_its_slot_past_the_short_timeout() {
    let dir = open_dir();
    let (token_path, token) = token_file(dir.path());
    let port = free_port();
    let a = Agent::start_in(
        dir,
        &[
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
            token_path.to_str().unwrap(),
            "--max-unauthenticated",
            "1",
            "--unauthenticated-timeout-ms",
            "1000",
        ],
    );
    let auth = format!("Bearer {token}");
    // Keep-alive: the first request carries the token, then the connection idles past the
    // unauthenticated timeout and serves a second request (it is in the main pool now).
    let req = format!("GET /v1/drivers HTTP/1.1\r\nHost: capsd\r\nAuthorization: {auth}\r\n\r\n");
    // (A machine too loaded to read the head within the short timeout closes the connection
    // as it should: try again on a new one.)
    let mut tries = 0;
    let mut s = loop {
        let mut s = connect_tcp(port);
        s.write_all(req.as_bytes()).unwrap();
        match try_read_response(&mut s) {
            Some(first) => {
                assert!(first.starts_with("HTTP/1.1 200"), "{first}");
                break s;
            }
            None => {
                tries += 1;
                assert!(tries < 20, "20 connections closed before their first answer");
            }
        }
    };
    // The one unauthenticated slot is free again: another connection gets it and, without
    // the token, is closed by the short timeout while the authenticated one stays.
    let mut idle = connect_tcp(port);
    let mut b = [0u8; 16];
    assert_eq!(idle.read(&mut b).unwrap_or(0), 0, "an idle unauthenticated connection was answered");
    s.write_all(req.as_bytes()).unwrap();
    let second = read_response(&mut s);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    drop(a);
}

/// One response on a keep-alive connection (head and `Content-Length` body).
fn read_response(s: &mut std::net::TcpStream) -> String {
    try_read_response(s).expect("the connection closed before a whole answer")
}

/// The same, `None` when the connection closes first.
fn try_read_response(s: &mut std::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = s.read(&mut b).unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return Some(text);
            }
        }
    }
}

#[test]
fn a_link_swapped_in_at_the_socket_name_is_not_followed() {
    if !root() {
        return;
    }
    let dir = open_dir();
    // A root-owned file others must not get access to, and a socket directory anyone can write.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "root's\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sockdir = dir.path().join("run");
    std::fs::create_dir(&sockdir).unwrap();
    std::fs::set_permissions(&sockdir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = sockdir.join("capsd.sock");
    let hook = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["serve", "--socket", socket.to_str().unwrap(), "--socket-mode", "0666"])
        .env("CAPSD_TEST_HOOK_BOUND", hook.path())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let a = Agent { child, dir, socket: socket.clone() };
    // Bound, mode not yet set: a link to the secret takes the socket's name.
    wait_for("the agent to bind", || hook.path().join("bound").exists());
    let _ = std::fs::remove_file(&socket);
    std::os::unix::fs::symlink(&secret, &socket).unwrap();
    std::fs::write(hook.path().join("go"), b"").unwrap();
    a.wait_ready();
    let m = std::fs::metadata(&secret).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600, "the root-owned file's mode changed");
    let s = std::fs::symlink_metadata(&socket).unwrap();
    assert!(s.file_type().is_socket(), "{s:?}");
    assert_eq!(s.mode() & 0o777, 0o666);
    // Nothing of the private directory stays behind.
    let left: Vec<_> = std::fs::read_dir(&sockdir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("capsd.sock")]);
    assert_eq!(a.get("/healthz").status, 200);
}

#[test]
fn a_token_file_of_another_user_is_refused_naming_it() {
    if !root() {
        return;
    }
    let dir = open_dir();
    let (token_path, _) = token_file(dir.path());
    nix::unistd::chown(&token_path, Some(nix::unistd::Uid::from_raw(NOBODY)), None).unwrap();
    let sock = dir.path().join("s.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["serve", "--socket", sock.to_str().unwrap(), "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--token-file")
        .arg(&token_path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It either stops at once or starts serving (then it accepted the file: a failure).
    wait_for("the agent to stop or serve", || sock.exists() || child.try_wait().unwrap().is_some());
    if child.try_wait().unwrap().is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the agent started with a token file owned by nobody");
    }
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!child.wait().unwrap().success(), "{err}");
    assert!(err.contains(&token_path.display().to_string()) && err.contains("owned by uid 65534"), "{err}");
    assert!(!sock.exists());
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let dir = open_dir();
    let (token_path, token) = token_file(dir.path());
    let port = free_port();
    let _a =
        Agent::start_in(dir, &["--listen", &format!("127.0.0.1:{port}"), "--token-file", token_path.to_str().unwrap()]);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {token}");
        let r = http_get(connect_tcp(port), "/v1/drivers", &[("Authorization", &auth)]);
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }
    let r = http_get(connect_tcp(port), "/v1/drivers", &[("Authorization", &format!("bearer {token}x"))]);
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn a_file_name_over_255_bytes_is_bad_input() {
    let a = Agent::start(&[]);
    let long = "x".repeat(300);
    for bin in [format!("/usr/bin/qemu-system-{long}"), format!("/usr/{long}/qemu-system-x86_64")] {
        let r = a.get(&format!("/v1/domcapabilities?emulatorbin={}", encode(Path::new(&bin))));
        assert_eq!(r.status, 400, "{bin}: {}", r.body);
        assert_eq!(r.json()["parameter"], "emulatorbin", "{}", r.body);
        assert!(r.body.contains("255 bytes"), "{}", r.body);
    }
}

#[test]
fn the_agent_running_descriptors_answers_what_the_cli_running_paths_does() {
    if !live_support::live() {
        return;
    }
    // Separate caches: each side probes (the agent from the opened descriptor, the CLI by
    // path); QEMU finds its modules and firmware the same way both times.
    let a = Agent::start(&[]);
    let cli_cache = tempfile::tempdir().unwrap();
    for (bin, arch) in [(live_support::X86, "x86_64"), ("/usr/bin/qemu-system-aarch64", "aarch64")] {
        if !Path::new(bin).exists() {
            eprintln!("skipped: no {bin}");
            continue;
        }
        for virttype in ["kvm", "qemu"] {
            let r = a.get(&format!(
                "/v1/domcapabilities?emulatorbin={}&arch={arch}&virttype={virttype}",
                encode(Path::new(bin))
            ));
            let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
                .arg("--cache-dir")
                .arg(cli_cache.path())
                .args(["domcapabilities", "--emulatorbin", bin, "--arch", arch, "--virttype", virttype])
                .output()
                .unwrap();
            if !out.status.success() {
                // Not offered here (KVM for a foreign arch): the agent refuses it too.
                assert_ne!(r.status, 200, "{bin} {virttype}: the CLI failed, the agent answered");
                continue;
            }
            assert_eq!(r.status, 200, "{bin} {virttype}: {}", r.body);
            assert_eq!(r.body, String::from_utf8(out.stdout).unwrap(), "{bin} {virttype}");
        }
    }
}

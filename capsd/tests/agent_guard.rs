//! `capsd serve` as root against clients that are not: which emulators a request can make
//! the agent run (asked by the real unprivileged user `nobody`, over the Unix socket and over
//! loopback TCP with the token), and signals (SIGTERM with a hung probe in flight, SIGHUP).
//! The allowed-emulator half needs QEMU (skipped without it unless `CAPSD_REQUIRE_LIVE=1`).

mod agent_support;
mod live_support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{connect_tcp, free_port, http_get, token_file, Agent, Resp};
use live_support::{live, X86};

const NOBODY: u32 = 65534;

/// Run as the client process (see [`as_nobody`]): one request, the answer on stdout.
#[test]
fn client_helper() {
    let Ok(target) = std::env::var("CAPSD_TEST_CLIENT") else { return };
    let path = std::env::var("CAPSD_TEST_PATH").unwrap();
    let token = std::env::var("CAPSD_TEST_TOKEN").ok().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = token.as_deref().map(|t| ("Authorization", t)).into_iter().collect();
    let r = match target.split_once(':') {
        Some(("unix", p)) => http_get(std::os::unix::net::UnixStream::connect(p).unwrap(), &path, &headers),
        Some(("tcp", port)) => http_get(connect_tcp(port.parse().unwrap()), &path, &headers),
        _ => panic!("bad CAPSD_TEST_CLIENT {target}"),
    };
    println!("<<<{} {}\n{}>>>", nix::unistd::geteuid(), r.status, r.body);
}

/// This test program, copied where `nobody` can run it (the build directory may be under a
/// home directory others cannot enter).
fn client_program() -> &'static Path {
    static COPY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &COPY
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let exe = dir.path().join("client");
            std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
            (dir, exe)
        })
        .1
}

/// One request made by a process running as `nobody` (uid and gid 65534, no other group).
fn as_nobody(target: &str, path: &str, token: Option<&str>) -> Resp {
    let mut cmd = Command::new(client_program());
    cmd.args(["--exact", "client_helper", "--nocapture", "--test-threads=1", "--quiet"])
        .env("CAPSD_TEST_CLIENT", target)
        .env("CAPSD_TEST_PATH", path)
        .uid(NOBODY)
        .gid(NOBODY);
    if let Some(t) = token {
        cmd.env("CAPSD_TEST_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "client failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    // Between the markers: "UID STATUS", then the body (the harness prints around it).
    let inner = text.split_once("<<<").and_then(|(_, r)| r.split_once(">>>")).map(|(i, _)| i).expect(&text);
    let (head, body) = inner.split_once('\n').unwrap();
    let (uid, status) = head.split_once(' ').unwrap();
    assert_eq!(uid, NOBODY.to_string(), "the client did not run as nobody");
    Resp { status: status.parse().unwrap(), headers: Vec::new(), body: body.to_owned() }
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

#[test]
fn emulators_other_than_the_agents_own_are_refused_without_running_them() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to start the agent as root and the client as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // nobody must reach the socket through the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let marker = dir.path().join("marker");
    // Foreign executables: one named like an emulator, one not, and a link to the latter.
    let foreign = script(dir.path(), "qemu-system-x86_64", &format!("touch {}", marker.display()));
    let other = script(dir.path(), "tool", &format!("touch {}", marker.display()));
    let link = dir.path().join("link-to-tool");
    std::os::unix::fs::symlink(&other, &link).unwrap();
    let (token_path, token) = token_file(dir.path());
    let port = free_port();
    let a = Agent::start_in(
        dir,
        &[
            "--socket-group",
            "nogroup",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--token-file",
            token_path.to_str().unwrap(),
        ],
    );
    let unix = format!("unix:{}", a.socket.display());
    let tcp = format!("tcp:{port}");
    for bin in [&foreign, &other, &link, Path::new("/usr/bin/env"), Path::new("/etc/passwd")] {
        for (target, token) in [(unix.as_str(), None), (tcp.as_str(), Some(token.as_str()))] {
            let r = as_nobody(target, &format!("/v1/domcapabilities?emulatorbin={}", encode(bin)), token);
            assert_eq!(r.status, 403, "{target} {}: {}", bin.display(), r.body);
            let j: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(j["error"], "emulator-not-allowed", "{j}");
            assert_eq!(j["parameter"], "emulatorbin", "{j}");
            let msg = j["message"].as_str().unwrap();
            assert!(msg.contains(&bin.display().to_string()) && msg.contains("qemu-system-*"), "{msg}");
        }
    }
    // Without the token, TCP refuses before looking at the query at all.
    assert_eq!(as_nobody(&tcp, &format!("/v1/domcapabilities?emulatorbin={}", encode(&foreign)), None).status, 401);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "a refused emulator ran");

    if !live() {
        return;
    }
    // The agent's own emulator answers, to nobody, on both listeners; a link to it is it.
    let x86_link = a.dir.path().join("x86");
    std::os::unix::fs::symlink(X86, &x86_link).unwrap();
    for (target, token) in [(unix.as_str(), None), (tcp.as_str(), Some(token.as_str()))] {
        for bin in [Path::new(X86), x86_link.as_path()] {
            let r = as_nobody(target, &format!("/v1/domcapabilities?emulatorbin={}", encode(bin)), token);
            assert_eq!(r.status, 200, "{target} {}: {}", bin.display(), r.body);
            assert!(r.body.contains(&format!("<path>{X86}</path>")), "{}", r.body);
        }
    }
}

#[test]
fn an_emulator_named_with_emulator_runs_and_bad_ones_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    // Answers nothing QEMU would: the probe fails, after running it.
    let emu = script(dir.path(), "my-emulator", &format!("touch {}\nexit 3", marker.display()));
    let a = Agent::start_in(dir, &["--emulator", emu.to_str().unwrap()]);
    let r = a.get(&format!("/v1/domcapabilities?emulatorbin={}", encode(&emu)));
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(marker.exists(), "the configured emulator did not run");
    drop(a);

    let dir = tempfile::tempdir().unwrap();
    let open = script(dir.path(), "open", "exit 0");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.path().join("s.sock");
    for (bad, needle) in [(open.clone(), "writable by group or others"), (dir.path().join("absent"), "cannot resolve")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
            .args(["serve", "--socket", sock.to_str().unwrap(), "--emulator", bad.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(&format!("--emulator {}", bad.display())) && err.contains(needle), "{err}");
        assert!(!sock.exists());
    }
}

#[test]
fn sigterm_stops_without_waiting_for_a_hung_probe_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let started = dir.path().join("started");
    // Never opens a QMP socket: the probe waits for it (30 s) while the agent is told to stop.
    let hang = script(dir.path(), "hang", &format!("touch {}\nexec sleep 300", started.display()));
    let a = Agent::start_in(dir, &["--emulator", hang.to_str().unwrap()]);
    let socket = a.socket.clone();
    let q = format!("/v1/domcapabilities?emulatorbin={}", encode(&hang));
    let client = std::thread::spawn(move || {
        let s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let mut s2 = s.try_clone().unwrap();
        std::io::Write::write_all(&mut s2, format!("GET {q} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &s, &mut buf);
    });
    let t = Instant::now();
    while !started.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "the probe did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let socket = a.socket.clone();
    let agent_pid = a.child.id();
    let t = Instant::now();
    let st = a.stop();
    let took = t.elapsed();
    // Stopping grants requests in flight 1 s; the hung probe itself would only give up after
    // its 30 s wait for QEMU's QMP socket. Below 20 s means the agent did not wait for it,
    // with room for a loaded machine.
    assert!(took < Duration::from_secs(20), "stopping took {took:?}");
    assert!(st.success(), "{st:?}");
    assert!(!socket.exists(), "the socket file is left behind");
    // The hung probe's private directory (named after the agent's pid) is gone too.
    let prefix = format!("capsd-probe-{agent_pid}.");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "probe directories left behind: {left:?}");
    client.join().unwrap();
}

#[test]
fn sighup_reads_the_token_file_again_and_the_agent_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (file, old) = token_file(dir.path());
    let port = free_port();
    let a = Agent::start_in(dir, &["--listen", &format!("127.0.0.1:{port}"), "--token-file", file.to_str().unwrap()]);
    let ask = |t: &str| http_get(connect_tcp(port), "/v1/drivers", &[("Authorization", &format!("Bearer {t}"))]).status;
    assert_eq!(ask(&old), 200);
    let new = "a-new-token-0123456789";
    std::fs::write(&file, new).unwrap();
    let pid = nix::unistd::Pid::from_raw(a.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let t = Instant::now();
    while ask(new) != 200 {
        assert!(t.elapsed() < Duration::from_secs(60), "the new token was not taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ask(&old), 401);
    // A token file that became unusable: the agent keeps the last good token.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ask(new), 200);
    assert_eq!(a.get("/healthz").status, 200);
}

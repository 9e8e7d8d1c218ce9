//! No plugin code runs in capsd's process: C plugins whose library constructor dereferences
//! NULL, calls `_exit(7)` or sleeps forever (before any entry point is called) are reported
//! as failed plugins, with how their helper ended, by `capsd drivers` (text and JSON), by
//! `/v1/drivers` and in the log, while the agent starts and serves everything else; and a
//! child a constructor forks and `setsid`s (leaving every process group and session of
//! capsd's) dies with its helper, when the agent is killed and when the CLI exits.
//!
//! Before the handshake moved into the helper, capsd `dlopen`ed each plugin itself at start:
//! the agent died of the SIGSEGV, exited with status 7, never bound its socket, and the
//! `setsid`'d child outlived it.

#[path = "../../capsd-plugin/tests/support/mod.rs"]
mod support;

mod agent_support;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{http_get, Resp};
use support::plugin_dir;

/// Generous: only reached when something is wrong (no timed assertions here).
const DEADLINE: Duration = Duration::from_secs(60);

/// `capsd serve` with a plugin directory, its log (stderr) in a file.
struct Served {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn get(&self, target: &str) -> Resp {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        http_get(s, target, &[])
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Start the agent and wait until its socket answers; fail at once when it exits instead.
fn serve(plugins: &Path, timeout_ms: u64, env: &[(&str, &Path)]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let log = dir.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capsd"));
    cmd.arg("--plugin-dir")
        .arg(plugins)
        .args(["--plugin-timeout-ms", &timeout_ms.to_string(), "--cache-dir"])
        .arg(dir.path().join("cache"))
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let mut served = Served { child, socket, log, _dir: dir };
    let t = Instant::now();
    while UnixStream::connect(&served.socket).is_err() {
        if let Some(status) = served.child.try_wait().unwrap() {
            panic!("the agent exited before serving ({status}); its log:\n{}", served.log());
        }
        assert!(t.elapsed() < DEADLINE, "the agent did not serve within {DEADLINE:?}; its log:\n{}", served.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    served
}

fn failed_entry(listing: &serde_json::Value, lib: &str) -> serde_json::Value {
    let entries = listing.as_array().expect("an array");
    let hits: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["failed_plugin"].as_str().is_some_and(|f| f.ends_with(&format!("/lib{lib}.so"))))
        .collect();
    assert_eq!(hits.len(), 1, "{lib} not listed as failed once: {listing:#}");
    hits[0].clone()
}

fn pid_in(msg: &str) -> u32 {
    let rest = &msg[msg.find("(pid ").unwrap_or_else(|| panic!("no pid in {msg}")) + 5..];
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

/// The agent with `lib` (misbehaving when loaded) and c-minimal: it serves, `lib` is listed
/// as failed with `how`, its helper is gone, c-minimal and the test driver answer.
fn agent_starts_despite(lib: &str, timeout_ms: u64, how: &str) {
    let plugins = plugin_dir(&[lib, "tp_c_minimal"]);
    let a = serve(plugins.path(), timeout_ms, &[]);
    let r = a.get("/v1/drivers");
    assert_eq!(r.status, 200, "{}", r.body);
    let listing = r.json();
    let entry = failed_entry(&listing, lib);
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains(how), "{lib}: expected '{how}' in: {reason}");
    let pid = pid_in(reason);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{lib}: its helper {pid} is still there");
    let minimal = listing.as_array().unwrap().iter().find(|e| e["name"] == "c-minimal").cloned();
    assert_eq!(minimal.unwrap()["availability"]["state"], "available", "{listing:#}");

    let r = a.get("/v1/domcapabilities?driver=c-minimal");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<path>/usr/bin/c-minimal</path>"), "{}", r.body);
    let r = a.get("/v1/domcapabilities?driver=test");
    assert_eq!(r.status, 200, "{}", r.body);
    // The log says so, naming the file.
    let file = plugins.path().join(format!("lib{lib}.so"));
    let log = a.log();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("plugin failed") && l.contains(how)),
        "{lib}: not in the log:\n{log}"
    );
    assert!(log.contains(&file.display().to_string()), "{log}");
}

#[test]
fn the_agent_serves_when_a_plugins_constructor_crashes() {
    agent_starts_despite("tp_c_ctor_segv", 5000, "was killed by signal SIGSEGV (11");
}

#[test]
fn the_agent_serves_when_a_plugins_constructor_exits() {
    agent_starts_despite("tp_c_ctor_exit", 5000, "exited with status 7 during loading the plugin");
}

#[test]
fn the_agent_serves_when_a_plugins_constructor_hangs() {
    agent_starts_despite("tp_c_ctor_hang", 1500, "no answer to loading the plugin within 1500 ms");
}

#[test]
fn capsd_drivers_lists_each_failed_plugin_with_how_its_helper_ended() {
    let plugins = plugin_dir(&["tp_c_ctor_segv", "tp_c_ctor_exit", "tp_c_ctor_hang", "tp_c_minimal"]);
    let capsd = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_capsd"))
            .arg("--plugin-dir")
            .arg(plugins.path())
            .args(["--plugin-timeout-ms", "1500"])
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let p = |lib: &str| plugins.path().join(format!("lib{lib}.so")).display().to_string();
    let cases = [
        ("tp_c_ctor_segv", "was killed by signal SIGSEGV (11"),
        ("tp_c_ctor_exit", "exited with status 7 during loading the plugin"),
        ("tp_c_ctor_hang", "no answer to loading the plugin within 1500 ms; its helper process (pid "),
    ];

    let out = capsd(&["drivers"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.lines().any(|l| l == format!("{:<12} available", "c-minimal")), "{stdout}");
    for (lib, how) in cases {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("failed plugin: {}: ", p(lib))))
            .unwrap_or_else(|| panic!("{lib} not listed:\n{stdout}"));
        assert!(line.contains(how), "{line}");
        assert!(stderr.lines().any(|l| l.contains("WARN") && l.contains(&p(lib)) && l.contains(how)), "{stderr}");
    }

    let out = capsd(&["drivers", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (lib, how) in cases {
        let entry = failed_entry(&listing, lib);
        assert_eq!(entry["failed_plugin"], p(lib).as_str());
        assert!(entry["reason"].as_str().unwrap().contains(how), "{entry}");
    }

    // The other plugin answers the CLI.
    let out = capsd(&["domcapabilities", "--driver", "c-minimal"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("<path>/usr/bin/c-minimal</path>"));
}

/// A process the test must not leave behind, whatever happens.
struct Stray(u32);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0 as i32), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Running (not gone, not a zombie).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|st| st.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// `(ppid, session)` of a process.
fn parent_and_session(pid: u32) -> (u32, u32) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    (fields[1].parse().unwrap(), fields[3].parse().unwrap())
}

/// Wait for the pid file the constructor's child writes.
fn child_pid(file: &Path) -> u32 {
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return text.trim().parse().unwrap();
        }
        assert!(t.elapsed() < DEADLINE, "the constructor's child wrote no {}", file.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: u32, after: &str) {
    let t = Instant::now();
    while running(pid) {
        assert!(t.elapsed() < DEADLINE, "the plugin's setsid'd child {pid} outlived {after}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_child_a_constructor_setsids_dies_with_its_helper() {
    let plugins = plugin_dir(&["tp_c_ctor_fork"]);
    let tmp = tempfile::tempdir().unwrap();

    // The agent, killed without a chance to clean up.
    let pidfile = tmp.path().join("agent-child.pid");
    let mut a = serve(plugins.path(), 5000, &[("CAPSD_TEST_CTOR_PIDFILE", &pidfile)]);
    let pid = child_pid(&pidfile);
    let _stray = Stray(pid);
    assert!(running(pid));
    let (ppid, session) = parent_and_session(pid);
    let agent = a.child.id();
    assert_ne!(ppid, agent, "the constructor ran in the agent's process");
    assert_ne!(session, parent_and_session(agent).1, "the child did not leave the agent's session");
    let r = a.get("/v1/domcapabilities?driver=c-ctor-fork");
    assert_eq!(r.status, 200, "{}", r.body);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_gone(pid, "the killed agent");

    // The CLI: gone once `capsd drivers` has exited.
    let pidfile = tmp.path().join("cli-child.pid");
    let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--plugin-dir")
        .arg(plugins.path())
        .arg("drivers")
        .env("CAPSD_TEST_CTOR_PIDFILE", &pidfile)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).lines().any(|l| l == format!("{:<12} available", "c-ctor-fork")));
    let pid = child_pid(&pidfile);
    let _stray = Stray(pid);
    wait_gone(pid, "capsd drivers");
}

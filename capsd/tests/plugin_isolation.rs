//! Plugins run in helper processes: C plugins that dereference NULL, abort(), exit(3) or
//! sleep forever in `domain_capabilities` (only for a query with arch=aarch64) fail only
//! their own request, with a 502 naming the plugin and how its helper ended, within the
//! plugin deadline; the agent keeps answering other drivers (test, and a real qemu query),
//! and the same plugin answers its next good query from a new helper. Helpers hold only
//! descriptors 0-3, have no_new_privs, are the init of a PID namespace of their own, and die
//! with the agent. The CLI gives an error exit naming the plugin instead of dying with it.

#[path = "../../capsd-plugin/tests/support/mod.rs"]
mod support;

mod agent_support;
mod live_support;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::{http_get, Agent, Resp};
use support::plugin_dir;

const MISBEHAVING: [&str; 4] = ["tp_c_segv", "tp_c_abort", "tp_c_exit", "tp_c_hang"];

/// A GET that gives up (and fails the test) after 60 s instead of hanging.
fn get(a: &Agent, target: &str) -> Resp {
    let s = UnixStream::connect(&a.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    http_get(s, target, &[])
}

fn start(plugins: &Path, timeout_ms: u64) -> Agent {
    Agent::start(&["--plugin-dir", plugins.to_str().unwrap(), "--plugin-timeout-ms", &timeout_ms.to_string()])
}

/// The parent of a process (0 when it is gone).
fn ppid_of(pid: u32) -> u32 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the command name in parentheses: state, ppid, pgrp, ...
    stat[stat.rfind(')').unwrap() + 2..].split(' ').nth(1).unwrap().parse().unwrap()
}

/// Processes started by `agent` (its children, or theirs: a helper's parent is the leader
/// process that made its PID namespace) whose command line has `plugin-host`.
fn helpers_of(agent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let ppid = ppid_of(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid != 0
            && (ppid == agent || ppid_of(ppid) == agent)
            && String::from_utf8_lossy(&cmdline).contains("plugin-host")
        {
            found.push(pid);
        }
    }
    found
}

/// The helper of the plugin in `lib` among `parent`'s children.
fn helper_for(parent: u32, lib: &str) -> u32 {
    let hits: Vec<u32> = helpers_of(parent)
        .into_iter()
        .filter(|pid| String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap()).contains(lib))
        .collect();
    assert_eq!(hits.len(), 1, "helpers of {lib}: {hits:?}");
    hits[0]
}

fn assert_failed(r: &Resp, plugin: &str, how: &str) {
    assert_eq!(r.status, 502, "{plugin}: {}", r.body);
    let v = r.json();
    assert_eq!(v["error"], "probe-failed", "{}", r.body);
    let msg = v["message"].as_str().unwrap();
    assert!(msg.starts_with(&format!("probing plugin '{plugin}' (")), "{msg}");
    assert!(msg.contains(how), "{plugin}: expected '{how}' in: {msg}");
}

#[test]
fn a_crashing_exiting_or_hanging_plugin_fails_only_its_request_and_comes_back() {
    let plugins = plugin_dir(&MISBEHAVING);
    let timeout_ms = 1500;
    let a = start(plugins.path(), timeout_ms);
    let agent_pid = a.child.id();
    let cases = [
        ("c-segv", "tp_c_segv", "was killed by signal SIGSEGV (11"),
        ("c-abort", "tp_c_abort", "was killed by signal SIGABRT (6"),
        ("c-exit", "tp_c_exit", "exited with status 3 during domain_capabilities for query arch=aarch64"),
        ("c-hang", "tp_c_hang", "no answer to domain_capabilities for query arch=aarch64 within 1500 ms"),
    ];
    let live = live_support::live();
    for (plugin, lib, how) in cases {
        let good = format!("/v1/domcapabilities?driver={plugin}&arch=x86_64");
        let r = get(&a, &good);
        assert_eq!(r.status, 200, "{plugin}: {}", r.body);
        assert!(r.body.contains(&format!("<path>/usr/bin/{plugin}</path>")), "{}", r.body);
        let before = helper_for(agent_pid, lib);

        let t = Instant::now();
        let r = get(&a, &format!("/v1/domcapabilities?driver={plugin}&arch=aarch64"));
        let took = t.elapsed();
        assert_failed(&r, plugin, how);
        assert!(r.json()["message"].as_str().unwrap().contains(&format!("(pid {before})")), "{}", r.body);
        if plugin == "c-hang" {
            assert!(took >= Duration::from_millis(timeout_ms), "answered before the deadline: {took:?}");
            assert!(took < Duration::from_millis(timeout_ms) + Duration::from_secs(20), "{took:?}");
        }
        // The helper is gone (reaped, not a zombie) and so is its process group.
        assert!(!Path::new(&format!("/proc/{before}")).exists(), "{plugin}: helper {before} still there");

        // The agent serves other drivers.
        let r = get(&a, "/v1/domcapabilities?driver=test");
        assert_eq!(r.status, 200, "after {plugin}: {}", r.body);
        if live {
            let r = get(&a, "/v1/domcapabilities?arch=x86_64&virttype=qemu");
            assert_eq!(r.status, 200, "qemu after {plugin}: {}", r.body);
            assert!(r.body.contains("<domain>qemu</domain>"), "{}", r.body);
        }
        // The plugin answers its next good query from a new helper.
        let r = get(&a, &format!("/v1/domcapabilities?driver={plugin}&arch=x86_64&virttype=test"));
        assert_eq!(r.status, 200, "{plugin} after its failure: {}", r.body);
        let after = helper_for(agent_pid, lib);
        assert_ne!(before, after);
    }
    assert!(a.child.id() == agent_pid && Path::new(&format!("/proc/{agent_pid}")).exists());
}

#[test]
fn helpers_hold_only_their_socket_have_no_new_privileges_and_die_with_the_agent() {
    let plugins = plugin_dir(&["tp_c_segv", "capsd_driver_bhyve"]);
    let mut a = start(plugins.path(), 5000);
    let r = get(&a, "/v1/domcapabilities?driver=c-segv");
    assert_eq!(r.status, 200, "{}", r.body);
    let pid = helper_for(a.child.id(), "tp_c_segv");
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2, 3], "descriptors of helper {pid}");
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap();
    assert!(fd3.to_string_lossy().starts_with("socket:"), "{}", fd3.display());
    let fd0 = std::fs::read_link(format!("/proc/{pid}/fd/0")).unwrap();
    assert_eq!(fd0, Path::new("/dev/null"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    // The init of a PID namespace of its own: what it starts dies with it.
    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:\t")).unwrap_or_else(|| panic!("{status}"));
    assert_eq!(nspid, format!("{pid}\t1"), "the helper is not the init of a PID namespace of its own");

    // The agent dies without a chance to clean up: its helper follows (PR_SET_PDEATHSIG).
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "helper {pid} outlived the agent");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_crash_looping_plugin_backs_off_instead_of_restarting_at_once() {
    let plugins = plugin_dir(&["tp_c_segv"]);
    let a = start(plugins.path(), 1000);
    let mut crashes = 0;
    let mut refused = 0;
    for _ in 0..12 {
        let r = get(&a, "/v1/domcapabilities?driver=c-segv&arch=aarch64");
        assert_eq!(r.status, 502, "{}", r.body);
        let msg = r.json()["message"].as_str().unwrap().to_owned();
        if msg.contains("past this request's deadline") {
            assert!(
                msg.contains("its helper process failed on the last 5 calls, most recently: its helper process (pid "),
                "{msg}"
            );
            assert!(msg.contains("killed by signal SIGSEGV"), "{msg}");
            refused += 1;
        } else {
            assert!(msg.contains("its helper process (pid ") && msg.contains("killed by signal SIGSEGV"), "{msg}");
            crashes += 1;
        }
    }
    // 100, 200, 400, 800 ms of backoff fit in a 1000 ms deadline, 1600 ms does not: after
    // five crashes in a row requests are refused until the backoff has passed.
    assert_eq!((crashes, refused), (5, 7));
    // The listing says so.
    let r = get(&a, "/v1/drivers");
    let listed = r.json().as_array().unwrap().iter().find(|d| d["name"] == "c-segv").cloned().unwrap();
    assert_eq!(listed["details"]["helper"], "not running (starts on the next call)", "{listed}");
    let failures = listed["details"]["helper failures in a row"].as_str().unwrap();
    assert!(failures.starts_with("5, last: its helper process (pid "), "{failures}");
    assert!(listed["details"]["file"].as_str().unwrap().ends_with("libtp_c_segv.so"), "{listed}");
    // Once it has, a good query starts a helper again and resets the count.
    let t = Instant::now();
    loop {
        let r = get(&a, "/v1/domcapabilities?driver=c-segv&arch=x86_64");
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "never came back: {}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = get(&a, "/v1/drivers");
    let listed = r.json().as_array().unwrap().iter().find(|d| d["name"] == "c-segv").cloned().unwrap();
    assert!(listed["details"]["helper"].as_str().unwrap().ends_with(", idle"), "{listed}");
    assert!(listed["details"].get("helper failures in a row").is_none(), "{listed}");
    let r = get(&a, "/v1/domcapabilities?driver=c-segv&arch=aarch64");
    assert!(r.body.contains("killed by signal SIGSEGV"), "{}", r.body);
}

/// Kill a helper and wait until it is dead (a zombie, or reaped): kill() returns first.
fn kill_helper(pid: u32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|st| st.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    {
        assert!(t.elapsed() < Duration::from_secs(20), "the helper did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_plugin_file_replaced_after_the_checks_is_not_loaded() {
    let plugins = plugin_dir(&["tp_c_minimal", "tp_c_exit"]);
    let a = start(plugins.path(), 5000);
    // The helpers loaded the vetted files at start; swap c-minimal's and end its helper, so
    // the next request starts a new one, which must refuse the new file.
    let vetted = plugins.path().join("libtp_c_minimal.so");
    let other = plugins.path().join("libtp_c_exit.so");
    let staged = plugins.path().join(".swap");
    std::fs::copy(&other, &staged).unwrap();
    std::fs::rename(&staged, &vetted).unwrap();
    kill_helper(helper_for(a.child.id(), "tp_c_minimal"));
    let r = get(&a, "/v1/domcapabilities?driver=c-minimal");
    assert_failed(&r, "c-minimal", "the file was replaced after capsd checked it");
    assert!(r.json()["message"].as_str().unwrap().contains("exited with status 1"), "{}", r.body);
    let r = get(&a, "/v1/domcapabilities?driver=c-exit");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `capsd` with a plugin directory (the CLI runs plugins in helpers too).
fn capsd(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--plugin-dir")
        .arg(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run capsd")
}

#[test]
fn the_cli_reports_a_crashed_or_hung_plugin_as_an_error_naming_it() {
    let plugins = plugin_dir(&MISBEHAVING);
    for (plugin, how) in [
        ("c-segv", "was killed by signal SIGSEGV (11"),
        ("c-abort", "was killed by signal SIGABRT (6"),
        ("c-exit", "exited with status 3"),
        ("c-hang", "no answer to domain_capabilities for query arch=aarch64 within 700 ms"),
    ] {
        let out = capsd(
            plugins.path(),
            &["--plugin-timeout-ms", "700", "domcapabilities", "--driver", plugin, "--arch", "aarch64"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{plugin}: {:?} {stderr}", out.status);
        assert!(out.stdout.is_empty());
        let line = stderr.lines().find(|l| l.starts_with("capsd: error: ")).unwrap_or_else(|| panic!("{stderr}"));
        assert!(
            line.starts_with(&format!(
                "capsd: error: driver '{plugin}', query arch=aarch64: probing plugin '{plugin}' ("
            )),
            "{line}"
        );
        assert!(line.contains(how), "{plugin}: {line}");
        // The same plugin with a good query, and the listing.
        let out = capsd(plugins.path(), &["domcapabilities", "--driver", plugin, "--arch", "x86_64"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = capsd(plugins.path(), &["drivers"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for plugin in ["c-segv", "c-abort", "c-exit", "c-hang"] {
        assert!(stdout.lines().any(|l| l == format!("{plugin:<12} available")), "{stdout}");
    }
}

#[test]
fn a_helper_that_died_while_idle_is_replaced_without_failing_a_request() {
    let plugins = plugin_dir(&["tp_c_minimal"]);
    let a = start(plugins.path(), 5000);
    let r = get(&a, "/v1/domcapabilities?driver=c-minimal");
    assert_eq!(r.status, 200, "{}", r.body);
    let first = helper_for(a.child.id(), "tp_c_minimal");
    // Dead before the next call (one dying in the middle of a call fails that call).
    kill_helper(first);
    // A query the agent has not kept yet, so it reaches the plugin.
    let r = get(&a, "/v1/domcapabilities?driver=c-minimal&arch=x86_64");
    assert_eq!(r.status, 200, "{}", r.body);
    let second = helper_for(a.child.id(), "tp_c_minimal");
    assert_ne!(first, second);
    assert!(!Path::new(&format!("/proc/{first}")).exists(), "the dead helper was not reaped");
}

#[test]
fn a_request_queued_behind_a_hung_call_gets_the_next_helper_within_its_deadline() {
    let plugins = plugin_dir(&["tp_c_hang"]);
    let a = start(plugins.path(), 2000);
    // The helper is up; the next call hangs in it.
    assert_eq!(get(&a, "/v1/domcapabilities?driver=c-hang").status, 200);
    std::thread::scope(|s| {
        let hung = s.spawn(|| get(&a, "/v1/domcapabilities?driver=c-hang&arch=aarch64"));
        std::thread::sleep(Duration::from_millis(300));
        // Queued behind it (one call at a time per helper): when the hung call's deadline
        // kills the helper, a new one starts within this request's own deadline.
        let t = Instant::now();
        let queued = get(&a, "/v1/domcapabilities?driver=c-hang&arch=x86_64");
        assert_eq!(queued.status, 200, "{}", queued.body);
        assert!(t.elapsed() >= Duration::from_millis(1000), "did not wait for its turn: {:?}", t.elapsed());
        assert_failed(&hung.join().unwrap(), "c-hang", "no answer to domain_capabilities");
    });
    // Another driver meanwhile is unaffected.
    assert_eq!(get(&a, "/v1/domcapabilities?driver=test").status, 200);
}

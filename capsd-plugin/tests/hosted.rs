//! `HostedPlugin` against helper programs that misbehave before the plugin is even loaded
//! (real processes started by `/bin/sh`): one that never says hello is killed at the
//! deadline and a call queued behind it fails within its own deadline, one that exits at
//! once is reported with its status, one that sends an oversized frame is ended for breaking
//! the protocol. (Helpers running real plugins: capsd's `plugin_isolation` tests.)

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use capsd_core::{DomainCapsDriver, DriverError, Query};
use capsd_plugin::{load_file, HostOptions, HostedPlugin};
use support::plugin_dir;

/// The C test plugin, vetted, run by the shell script `script` (descriptor 3 is its socket).
fn hosted(dir: &Path, script: &str, timeout: Duration) -> HostedPlugin {
    let vetted = load_file(&dir.join("libtp_c_minimal.so")).unwrap();
    let mut opts = HostOptions::new("/bin/sh", ["-c", script, "helper"]);
    opts.timeout = timeout;
    HostedPlugin::new(vetted, opts)
}

fn message(r: Result<capsd_core::DomainCapabilities, DriverError>) -> String {
    match r {
        Err(e @ DriverError::ProbeFailed { .. }) => e.to_string(),
        other => panic!("expected a plugin failure, got {other:?}"),
    }
}

fn pid_in(msg: &str) -> u32 {
    let rest = &msg[msg.find("(pid ").unwrap_or_else(|| panic!("no pid in {msg}")) + 5..];
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

#[test]
fn a_helper_that_never_says_hello_is_killed_at_the_deadline_and_the_queued_call_fails_in_time() {
    let dir = plugin_dir(&["tp_c_minimal"]);
    let p = hosted(dir.path(), "exec sleep 1000", Duration::from_millis(400));
    let t = Instant::now();
    let (first, second) = std::thread::scope(|s| {
        let a = s.spawn(|| message(p.domain_capabilities(&Query::default())));
        let b = s.spawn(|| message(p.domain_capabilities(&Query::default())));
        (a.join().unwrap(), b.join().unwrap())
    });
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(120), "{took:?}");
    let (timed_out, queued) = if first.contains("no answer") { (first, second) } else { (second, first) };
    assert!(timed_out.starts_with("probing plugin 'c-minimal' ("), "{timed_out}");
    assert!(
        timed_out.contains(
            "failed: no answer to loading the plugin (before domain_capabilities for query (defaults)) within 400 ms; its helper process (pid "
        ),
        "{timed_out}"
    );
    // The other call waited its turn and ran out of time: either still waiting, or left
    // with less time than the restart backoff.
    assert!(
        queued.contains("busy with earlier requests for the whole 400 ms deadline")
            || queued.contains("failed on the last call, most recently: no answer to loading the plugin"),
        "{queued}"
    );
    let pid = pid_in(&timed_out);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "helper {pid} survived its deadline");
}

#[test]
fn a_helper_that_exits_at_once_is_reported_with_its_status() {
    let dir = plugin_dir(&["tp_c_minimal"]);
    let p = hosted(dir.path(), "exit 7", Duration::from_secs(5));
    let msg = message(p.domain_capabilities(&Query { arch: Some("x86_64".into()), ..Query::default() }));
    assert!(
        msg.ends_with(
            "exited with status 7 during loading the plugin (before domain_capabilities for query arch=x86_64)"
        ),
        "{msg}"
    );
    // availability says the same, as the reason the plugin is unavailable (after the
    // backoff of the first failure).
    match p.availability() {
        capsd_core::Availability::Unavailable { reason } => {
            assert!(reason.contains("exited with status 7 during loading the plugin (before availability)"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_oversized_frame_ends_the_helper_before_its_body_is_read() {
    let dir = plugin_dir(&["tp_c_minimal"]);
    let p = hosted(dir.path(), r"printf '\377\377\377\177' >&3; exec sleep 1000", Duration::from_secs(300));
    let t = Instant::now();
    let msg = message(p.domain_capabilities(&Query::default()));
    assert!(msg.contains("broke the protocol during loading the plugin"), "{msg}");
    assert!(msg.contains("(frame of 2147483647 bytes is larger than the 16777232-byte limit) and was killed"), "{msg}");
    // Not the deadline (300 s): the frame header alone was enough.
    assert!(t.elapsed() < Duration::from_secs(200), "{:?}", t.elapsed());
    let pid = pid_in(&msg);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "helper {pid} survived");
}

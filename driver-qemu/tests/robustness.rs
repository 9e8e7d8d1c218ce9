//! Robustness of the probe against binaries that are not a well-behaved QEMU: one that
//! hangs before opening its QMP socket, one that opens it and never speaks, one that
//! crashes, one that crashes mid-session, one that answers garbage, and files that are not
//! programs. Each must give a clear error (naming the binary, and the QMP command where
//! there is one) within a bounded time, and leave no process behind, grandchildren
//! included. The fake binaries are shell and python3 scripts written to a temp dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driver_qemu::probe::{probe, ProbeOptions};
use driver_qemu::process::ProcessOptions;
use driver_qemu::qmp::Timeouts;

fn opts() -> ProbeOptions {
    ProbeOptions {
        process: ProcessOptions {
            // Generous, so a python3 fake that is slow to start on a loaded machine still
            // reaches the stage each case is about; the hung cases pay them once each.
            start_timeout: Duration::from_secs(20),
            qmp: Timeouts { per_command: Duration::from_secs(10), overall: Duration::from_secs(30) },
            ..Default::default()
        },
        no_kvm: true,
        only: None,
        all_cpu_models: false,
    }
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A python3 fake QEMU: finds the socket path in `-qmp unix:PATH,...`, listens, accepts,
/// then runs `BEHAVIOUR` with `c` the connection.
fn fake_qmp(behaviour: &str) -> String {
    format!(
        r#"#!/usr/bin/env python3
import socket, sys, time, os
arg = sys.argv[sys.argv.index('-qmp') + 1]
path = arg[len('unix:'):].split(',')[0]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(1)
c, _ = s.accept()
{behaviour}
"#
    )
}

fn expect_err(bin: &Path, must_contain: &[&str]) -> Duration {
    let t0 = Instant::now();
    let e = probe(bin, &opts()).expect_err("probing a fake binary must fail");
    let took = t0.elapsed();
    let msg = e.to_string();
    assert!(msg.contains(&bin.display().to_string()), "error does not name the binary: {msg}");
    for m in must_contain {
        assert!(msg.contains(m), "error {msg:?} does not contain {m:?}");
    }
    // Only a hang detector: the probe's own timeouts end it far sooner (how soon is a speed
    // matter, measured by `cargo xtask bench`, not asserted under an unknown load).
    assert!(took < Duration::from_secs(120), "took {took:?}: {msg}");
    println!("{}: {took:.2?}: {msg}", bin.file_name().unwrap().to_string_lossy());
    took
}

/// Processes (other than us) whose command line mentions `marker`.
fn survivors(marker: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            // Zombies have an empty cmdline; a live process mentioning the marker survived.
            if cmd.contains(marker) {
                out.push(format!("{name}: {cmd}"));
            }
        }
    }
    out
}

#[test]
fn misbehaving_binaries_fail_clearly_and_leave_nothing_behind() {
    let dir = tempfile::Builder::new().prefix("capsd-robust-").tempdir().unwrap();
    let d = dir.path();
    let marker = d.display().to_string();

    // Never opens the socket; forks a grandchild that would outlive it.
    let hung = script(
        d,
        "hung-qemu",
        &format!("#!/bin/sh\npython3 -c 'import time; time.sleep(1000)' {marker} &\nexec sleep 1000\n"),
    );
    expect_err(&hung, &["did not open its QMP socket"]);

    // Opens the socket, never greets.
    let silent = script(d, "silent-qemu", &fake_qmp("time.sleep(1000)"));
    expect_err(&silent, &["timed out", "greeting"]);

    // Greets, accepts capabilities, then never answers the first probe command.
    let mute = script(
        d,
        "mute-qemu",
        &fake_qmp(
            r#"c.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
f = c.makefile('rb')
f.readline()
c.sendall(b'{"return": {}, "id": 0}\r\n')
time.sleep(1000)"#,
        ),
    );
    expect_err(&mute, &["timed out", "query-version"]);

    // Garbage on the socket.
    let garbage = script(d, "garbage-qemu", &fake_qmp("c.sendall(b'hello, I am not QMP\\r\\n'); time.sleep(1000)"));
    expect_err(&garbage, &["not a QMP message", "hello, I am not QMP"]);

    // Crashes mid-session.
    let dies = script(
        d,
        "dying-qemu",
        &fake_qmp(
            r#"c.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
f = c.makefile('rb')
f.readline()
c.sendall(b'{"return": {}, "id": 0}\r\n')
f.readline()
os._exit(3)"#,
        ),
    );
    expect_err(&dies, &["closed", "query-version"]);

    // Crashes at start, with a message.
    let crash = script(d, "crashing-qemu", "#!/bin/sh\necho 'qemu: fatal: boom' >&2\nkill -SEGV $$\n");
    expect_err(&crash, &["exited", "boom"]);

    // Not programs.
    let text = d.join("notes.txt");
    std::fs::write(&text, "not a program").unwrap();
    expect_err(&text, &["not executable"]);
    let data = d.join("data.bin");
    std::fs::write(&data, [0x7fu8, b'E', b'L', b'F', 0, 1, 2, 3]).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // execve, not execvp: a file the kernel cannot run is not handed to /bin/sh.
    expect_err(&data, &["cannot start", "Exec format error"]);
    expect_err(d, &["not a regular file"]);
    // Bad paths are input errors naming the query parameter (`emulatorbin`, as the cache
    // key check and the agent name it), not probe failures.
    for bad in [&text, &d.to_path_buf(), &d.join("missing")] {
        match probe(bad, &opts()) {
            Err(capsd_core::DriverError::InvalidInput { field, .. }) => assert_eq!(field, "emulatorbin", "{bad:?}"),
            other => panic!("{bad:?}: expected an invalid-input error, got {other:?}"),
        }
    }

    // Nothing survives: no process mentions the temp dir (scripts, their sleeps). SIGKILL
    // reaches re-parented grandchildren asynchronously, so allow a bounded grace period.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut left = survivors(&marker);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        left = survivors(&marker);
    }
    assert!(left.is_empty(), "processes survived: {left:?}");
}

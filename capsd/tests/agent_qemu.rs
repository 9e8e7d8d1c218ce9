//! The agent with the real qemu driver (skipped without `qemu-system-x86_64` unless
//! `CAPSD_REQUIRE_LIVE=1`): concurrent queries probe once, the answer is the CLI's, the
//! probe cache is shared with the CLI, and host changes reach in-memory answers.

mod agent_support;
mod live_support;

use std::os::unix::net::UnixStream;
use std::process::Command;

use agent_support::{http_get, metric, Agent};

use live_support::{live, X86};

#[test]
fn concurrent_queries_of_one_binary_probe_once() {
    if !live() {
        return;
    }
    let a = Agent::start(&[]);
    let queries = [
        "/v1/domcapabilities",
        "/v1/domcapabilities",
        "/v1/domcapabilities",
        "/v1/domcapabilities?machine=q35",
        "/v1/domcapabilities?virttype=qemu",
        "/v1/domcapabilities?arch=x86_64&virttype=kvm",
    ];
    let socket = a.socket.clone();
    let bodies: Vec<(String, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = queries
            .iter()
            .map(|q| {
                let socket = socket.clone();
                s.spawn(move || {
                    let r = http_get(UnixStream::connect(&socket).unwrap(), q, &[]);
                    assert_eq!(r.status, 200, "{q}: {}", r.body);
                    ((*q).to_owned(), r.body)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let m = a.get("/metrics").body;
    assert_eq!(metric(&m, "capsd_probes_total{result=\"ok\"}"), 1, "{m}");
    assert_eq!(metric(&m, "capsd_probe_cache_lookups_total{result=\"miss\",tier=\"none\"}"), 1, "{m}");
    // Three identical queries: one derivation.
    assert_eq!(metric(&m, "capsd_driver_calls_total{result=\"ok\"}"), 4, "{m}");
    let first: Vec<&String> = bodies.iter().filter(|(q, _)| q == "/v1/domcapabilities").map(|(_, b)| b).collect();
    assert!(first.windows(2).all(|w| w[0] == w[1]));

    // The CLI, on the agent's cache, answers the same without probing.
    let out = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--cache-dir")
        .arg(a.dir.path().join("cache"))
        .args(["domcapabilities", "--machine", "q35"])
        .env("RUST_LOG", "driver_qemu::cache=info")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("probed"), "{}", String::from_utf8_lossy(&out.stderr));
    let q35 = &bodies.iter().find(|(q, _)| q.ends_with("machine=q35")).unwrap().1;
    assert_eq!(&String::from_utf8(out.stdout).unwrap(), q35);
}

#[test]
fn a_changed_binary_reaches_the_in_memory_answer() {
    if !live() {
        return;
    }
    // A copy outside the system directories: the agent runs it because it is named with
    // --emulator.
    let dir = tempfile::tempdir().unwrap();
    let qemu = dir.path().join("qemu-system-x86_64");
    std::fs::copy(X86, &qemu).unwrap();
    let a = Agent::start_in(dir, &["--recheck-ms", "100", "--emulator", qemu.to_str().unwrap()]);
    let q = format!("/v1/domcapabilities?emulatorbin={}", qemu.display().to_string().replace('/', "%2F"));
    for _ in 0..2 {
        let r = a.get(&q);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let m = a.get("/metrics").body;
    assert_eq!(metric(&m, "capsd_probes_total{result=\"ok\"}"), 1, "{m}");
    let f = std::fs::File::options().write(true).open(&qemu).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5)).unwrap();
    drop(f);
    let t = std::time::Instant::now();
    while metric(&a.get("/metrics").body, "capsd_invalidations_total") == 0 {
        assert!(t.elapsed() < std::time::Duration::from_secs(120), "the change was not noticed");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(a.get(&q).status, 200);
    let m = a.get("/metrics").body;
    assert_eq!(metric(&m, "capsd_probes_total{result=\"ok\"}"), 2, "{m}");
    // A binary that went away: 4xx naming it.
    std::fs::remove_file(&qemu).unwrap();
    let t = std::time::Instant::now();
    loop {
        let r = a.get(&q);
        if r.status != 200 {
            assert_eq!(r.status, 400, "{}", r.body);
            assert!(r.body.contains("qemu-system-x86_64"), "{}", r.body);
            break;
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(120), "a removed binary is still answered");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn bad_qemu_queries_are_400_naming_the_parameter() {
    if !live() {
        return;
    }
    let a = Agent::start(&[]);
    for (q, param, needle) in [
        ("arch=z80", "arch", "unknown architecture"),
        ("machine=nope", "machine", "nope"),
        ("virttype=xen", "virttype", "xen"),
        // Where the agent's own emulators live, but absent.
        ("emulatorbin=%2Fusr%2Fbin%2Fqemu-system-nosuch", "emulatorbin", "/usr/bin/qemu-system-nosuch"),
    ] {
        let r = a.get(&format!("/v1/domcapabilities?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.body);
        let j = r.json();
        assert_eq!(j["error"], "invalid-input", "{q}: {j}");
        assert_eq!(j["parameter"], param, "{q}: {j}");
        assert!(j["message"].as_str().unwrap().contains(needle), "{q}: {j}");
    }
    // Files that are not the agent's emulators are refused before any driver looks at them,
    // whether they exist or not.
    for path in ["/no/such/qemu-system-x86_64", "/etc/passwd"] {
        let r = a.get(&format!("/v1/domcapabilities?emulatorbin={}", path.replace('/', "%2F")));
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        let j = r.json();
        assert_eq!((j["error"].as_str(), j["parameter"].as_str()), (Some("emulator-not-allowed"), Some("emulatorbin")));
        assert!(j["message"].as_str().unwrap().contains(path), "{j}");
    }
}

//! `capsd serve` end to end: the real binary on a Unix socket in a temporary directory,
//! asked with a minimal HTTP/1.1 client. Documents come from driver-test's built-in fixtures
//! (no QEMU needed); `agent_qemu.rs` covers the real probe.

mod agent_support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::time::Duration;

use agent_support::{connect_tcp, free_port, http_get, metric, token_file, Agent};

fn capsd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).output().unwrap()
}

#[test]
fn serves_the_same_document_as_the_cli() {
    let a = Agent::start(&[]);
    for (q, args) in [
        ("driver=test", vec!["--driver", "test"]),
        (
            "driver=test&arch=x86_64&virttype=qemu&machine=q35",
            vec!["--driver", "test", "--arch", "x86_64", "--virttype", "qemu", "--machine", "q35"],
        ),
        (
            "driver=test&emulatorbin=%2Fusr%2Fbin%2Fqemu-system-aarch64",
            vec!["--driver", "test", "--emulatorbin", "/usr/bin/qemu-system-aarch64"],
        ),
    ] {
        let cli = capsd(&[&["domcapabilities"], args.as_slice()].concat());
        assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
        let r = a.get(&format!("/v1/domcapabilities?{q}"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/xml"));
        assert_eq!(r.body, String::from_utf8(cli.stdout).unwrap(), "{q}");
        // Twice: the second from memory, same bytes.
        assert_eq!(a.get(&format!("/v1/domcapabilities?{q}")).body, r.body);

        let cli = capsd(&[&["domcapabilities", "--format", "json"], args.as_slice()].concat());
        let r = a.get_with(&format!("/v1/domcapabilities?{q}"), &[("Accept", "application/json")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, String::from_utf8(cli.stdout).unwrap(), "{q}");
    }
    let m = a.get("/metrics").body;
    assert_eq!(metric(&m, "capsd_driver_calls_total{result=\"ok\"}"), 3, "{m}");
    assert_eq!(metric(&m, "capsd_document_cache_total{result=\"hit\"}"), 6, "{m}");
}

#[test]
fn bad_queries_get_4xx_with_a_json_error_naming_the_problem() {
    let a = Agent::start(&[]);
    for (q, status, kind, needle) in [
        ("arch=x86_64&colour=blue", 400, "invalid-parameter", "colour"),
        ("arch=x86_64&arch=i686", 400, "invalid-parameter", "more than once"),
        ("emulatorbin=relative%2Fqemu", 400, "invalid-parameter", "bad path"),
        ("arch=", 400, "invalid-parameter", "empty value"),
        ("arch=x86%2064", 400, "invalid-parameter", "not a valid architecture"),
        ("arch=%ZZ%FF", 400, "invalid-parameter", "not a valid architecture"),
        ("driver=nosuch", 400, "invalid-parameter", "unknown driver"),
        ("driver=test&arch=z80", 404, "not-supported", "z80"),
        ("driver=test&machine=nope&arch=x86_64", 404, "not-supported", "nope"),
        ("driver=test&emulatorbin=%2Fno%2Fsuch%2Fqemu", 404, "not-supported", "/no/such/qemu"),
    ] {
        let r = a.get(&format!("/v1/domcapabilities?{q}"));
        assert_eq!(r.status, status, "{q}: {}", r.body);
        assert_eq!(r.header("content-type"), Some("application/json"), "{q}");
        let j = r.json();
        assert_eq!(j["error"], kind, "{q}: {j}");
        assert!(j["message"].as_str().unwrap().contains(needle), "{q}: {j}");
    }
    let r = a.get("/v1/nope");
    assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("not-found")));
    let mut s = UnixStream::connect(&a.socket).unwrap();
    std::io::Write::write_all(
        &mut s,
        b"POST /v1/domcapabilities HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = String::new();
    std::io::Read::read_to_string(&mut s, &mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(raw.contains("\"method-not-allowed\""), "{raw}");
    let m = a.get("/metrics").body;
    assert_eq!(metric(&m, "capsd_http_requests_total{endpoint=\"domcapabilities\",code=\"400\"}"), 7, "{m}");
    assert_eq!(metric(&m, "capsd_http_requests_total{endpoint=\"domcapabilities\",code=\"404\"}"), 3, "{m}");
}

#[test]
fn concurrent_identical_queries_derive_once() {
    let a = Agent::start(&[]);
    let socket = a.socket.clone();
    let bodies: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let socket = socket.clone();
                s.spawn(move || {
                    let r = http_get(
                        UnixStream::connect(&socket).unwrap(),
                        "/v1/domcapabilities?driver=test&arch=x86_64&machine=q35",
                        &[],
                    );
                    assert_eq!(r.status, 200);
                    r.body
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    let m = a.get("/metrics").body;
    assert_eq!(metric(&m, "capsd_driver_calls_total{result=\"ok\"}"), 1, "{m}");
    assert_eq!(metric(&m, "capsd_document_cache_total{result=\"miss\"}"), 1, "{m}");
    assert_eq!(metric(&m, "capsd_document_cache_total{result=\"hit\"}"), 15, "{m}");
}

#[test]
fn health_drivers_and_metrics_endpoints() {
    let a = Agent::start(&[]);
    let r = a.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let d = a.get("/v1/drivers").json();
    let names: Vec<&str> = d.as_array().unwrap().iter().filter_map(|x| x["name"].as_str()).collect();
    assert!(names.contains(&"test"), "{d}");
    let r = a.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("application/openmetrics-text"));
    assert!(r.body.ends_with("# EOF\n"), "{}", r.body);
    assert_eq!(metric(&r.body, "capsd_http_requests_total{endpoint=\"healthz\",code=\"200\"}"), 1);
    assert!(r.body.contains("# TYPE capsd_http_request_duration_seconds histogram"));
    assert!(r.body.contains("capsd_http_request_duration_seconds_count{endpoint=\"drivers\"} 1"), "{}", r.body);
}

#[test]
fn socket_mode_and_group_are_set() {
    let a = Agent::start(&[]);
    let m = std::fs::symlink_metadata(&a.socket).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o660);
    assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
    assert_eq!(m.gid(), nix::unistd::getegid().as_raw());
    drop(a);

    // Another group (root may give it any group; others only their own).
    let gid = if nix::unistd::geteuid().is_root() { 4242 } else { nix::unistd::getegid().as_raw() };
    let a = Agent::start(&["--socket-mode", "0600", "--socket-group", &gid.to_string()]);
    let m = std::fs::symlink_metadata(&a.socket).unwrap();
    assert_eq!((m.permissions().mode() & 0o777, m.gid()), (0o600, gid));
}

#[test]
fn sigterm_stops_and_removes_the_socket() {
    let a = Agent::start(&[]);
    let socket = a.socket.clone();
    let dir = a.dir.path().to_owned();
    assert!(a.stop().success());
    assert!(!socket.exists());
    drop(dir);
}

#[test]
fn refuses_a_live_socket_a_regular_file_and_non_loopback_tcp() {
    let a = Agent::start(&[]);
    let out = capsd(&["serve", "--socket", a.socket.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first agent still answers.
    assert_eq!(a.get("/healthz").status, 200);

    let file = a.dir.path().join("plain");
    std::fs::write(&file, "keep me").unwrap();
    let out = capsd(&["serve", "--socket", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    let sock2 = a.dir.path().join("two.sock");
    let (token, _) = token_file(a.dir.path());
    let out = capsd(&[
        "serve",
        "--socket",
        sock2.to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only loopback"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capsd.sock");
    // A socket nobody listens on any more.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let child =
        Command::new(env!("CARGO_BIN_EXE_capsd")).args(["serve", "--socket", path.to_str().unwrap()]).spawn().unwrap();
    let a = Agent { child, dir, socket: path };
    a.wait_ready();
    assert_eq!(a.get("/healthz").status, 200);
}

#[test]
fn loopback_tcp_needs_the_token_for_the_api_but_not_for_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (file, token) = token_file(dir.path());
    let port = free_port();
    let a = Agent::start_in(dir, &["--listen", &format!("127.0.0.1:{port}"), "--token-file", file.to_str().unwrap()]);
    let q = "/v1/domcapabilities?driver=test";
    let bearer = format!("Bearer {token}");
    let wrong = format!("Bearer {token}x");
    for (what, path, headers) in [
        ("no token", q, vec![]),
        ("wrong token", q, vec![("Authorization", wrong.as_str())]),
        ("not bearer", q, vec![("Authorization", token.as_str())]),
        ("no token, drivers", "/v1/drivers", vec![]),
        ("no token, unknown path", "/v1/nope", vec![]),
    ] {
        let r = http_get(connect_tcp(port), path, &headers);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{what}");
        let j = r.json();
        assert_eq!(j["error"], "unauthorized", "{what}: {j}");
        assert!(j["message"].as_str().unwrap().contains("token"), "{what}: {j}");
    }
    let r = http_get(connect_tcp(port), q, &[("Authorization", &bearer)]);
    assert_eq!(r.status, 200, "{}", r.body);
    // The same document as on the socket, which needs no token (its mode and group guard it).
    assert_eq!(r.body, a.get(q).body);
    assert_eq!(http_get(connect_tcp(port), "/healthz", &[]).status, 200);
    let m = http_get(connect_tcp(port), "/metrics", &[]);
    assert_eq!(m.status, 200);
    assert_eq!(metric(&m.body, "capsd_unauthorized_total"), 5, "{}", m.body);
}

#[test]
fn tcp_without_a_usable_token_file_does_not_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let sock = sock.to_str().unwrap();
    let out = capsd(&["serve", "--socket", sock, "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"), "{}", String::from_utf8_lossy(&out.stderr));
    let (file, _) = token_file(dir.path());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = capsd(&["serve", "--socket", sock, "--listen", "127.0.0.1:0", "--token-file", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(file.to_str().unwrap()) && err.contains("lets others read it"), "{err}");
    assert!(!dir.path().join("s.sock").exists(), "the socket was bound before the token was checked");
}

#[test]
fn drivers_left_out_of_the_build_are_named_as_such() {
    // Run under any feature set, e.g. `cargo test -p capsd --no-default-features --features test`.
    let built = [
        ("qemu", cfg!(feature = "qemu")),
        ("xen", cfg!(feature = "xen")),
        ("lxc", cfg!(feature = "lxc")),
        ("test", cfg!(feature = "test")),
    ];
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_capsd")).args(["drivers", "--json"]).output().unwrap();
    assert!(cli.status.success());
    let cli: serde_json::Value = serde_json::from_slice(&cli.stdout).unwrap();
    for (name, on) in built {
        let entry =
            cli.as_array().unwrap().iter().find(|d| d["name"] == name).unwrap_or_else(|| panic!("{name}: {cli}"));
        assert_eq!(entry["built_in"], on, "capsd drivers: {name}: {cli}");
    }
    let a = Agent::start(&[]);
    let list = a.get("/v1/drivers").json();
    for (name, on) in built {
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {list}"));
        assert_eq!(entry["built_in"], on, "{name}: {list}");
        if !on {
            let r = a.get(&format!("/v1/domcapabilities?driver={name}"));
            assert_eq!(r.status, 501, "{}", r.body);
            let j = r.json();
            assert_eq!(j["error"], "driver-not-built-in");
            assert!(j["message"].as_str().unwrap().contains(&format!("--features {name}")), "{j}");
        }
    }
}

#[test]
fn tells_systemd_when_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let socket = dir.path().join("capsd.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .args(["serve", "--socket", socket.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify)
        .spawn()
        .unwrap();
    let a = Agent { child, dir, socket };
    let mut buf = [0u8; 64];
    let n = listener.recv(&mut buf).expect("no READY=1 from capsd serve");
    assert_eq!(&buf[..n], b"READY=1\n");
    // Ready means listening.
    assert_eq!(a.get("/healthz").status, 200);
}

#[test]
fn log_lines_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .args(["-v", "serve", "--socket", socket.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let a = Agent { child, dir, socket };
    a.wait_ready();
    let mut a = a;
    let mut stderr = a.child.stderr.take().unwrap();
    let pid = nix::unistd::Pid::from_raw(a.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(log.contains("capsd agent serving") && log.contains("SIGTERM"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI escape codes in a piped log: {log:?}");
}

//! Plugins behind the agent: `capsd --plugin-dir DIR serve` on a Unix socket answers
//! `/v1/domcapabilities?driver=bhyve` with libvirt's bytes from the bhyve example plugin,
//! lists it in `/v1/drivers`, and survives a plugin that panics or returns invalid XML (each
//! such request gets an error status, the next request is served normally).

#[path = "../../tests/src/reference.rs"]
mod reference;

#[path = "../../capsd-plugin/tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{bhyve_facts, bhyve_reference, plugin_dir};

struct Served {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(plugins: &Path, scenario: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("capsd.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_capsd"))
        .arg("--plugin-dir")
        .arg(plugins)
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .env("CAPSD_BHYVE_FACTS", bhyve_facts(scenario))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut served = Served { child, socket, _dir: dir };
    let t = Instant::now();
    while UnixStream::connect(&served.socket).is_err() {
        if let Ok(Some(status)) = served.child.try_wait() {
            panic!("capsd serve exited early: {status}");
        }
        assert!(t.elapsed() < Duration::from_secs(60), "agent did not listen within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    served
}

/// One `GET` over HTTP/1.1 with `Connection: close`: (status, body).
fn get(socket: &Path, target: &str) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let chunked = head.lines().any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    (status, if chunked { dechunk(body) } else { body.to_owned() })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

#[test]
fn the_agent_serves_plugin_documents_and_survives_bad_plugins() {
    let Some(_) = reference::need("fixtures/libvirt-upstream/domaincaps") else { return };
    let plugins = plugin_dir(&["capsd_driver_bhyve", "tp_panic", "tp_badxml", "tp_wrongabi"]);
    let a = serve(plugins.path(), "fbuf");

    let (status, body) = get(&a.socket, "/v1/domcapabilities?driver=bhyve&arch=x86_64&virttype=bhyve");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, bhyve_reference("fbuf"));

    let (status, body) = get(&a.socket, "/v1/drivers");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().filter_map(|d| d["name"].as_str()).collect();
    for n in ["bhyve", "panicky", "badxml"] {
        assert!(names.contains(&n), "{n} missing from {body}");
    }
    assert!(!names.contains(&"future"), "the wrong-ABI plugin must not be listed: {body}");

    for (driver, needle) in [("panicky", "the plugin panicked"), ("badxml", "returned an invalid XML document")] {
        let (status, body) = get(&a.socket, &format!("/v1/domcapabilities?driver={driver}&arch=x86_64"));
        assert!((500..600).contains(&status), "{driver}: {status} {body}");
        assert!(body.contains(needle), "{driver}: {body}");
        // The agent is still there and the good plugin still answers.
        let (status, body) = get(&a.socket, "/v1/domcapabilities?driver=bhyve&arch=x86_64");
        assert_eq!((status, body), (200, bhyve_reference("fbuf")), "after {driver}");
    }

    // A query the plugin rejects is the client's error, with the plugin's reason.
    let (status, body) = get(&a.socket, "/v1/domcapabilities?driver=bhyve&virttype=kvm");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("the bhyve driver only offers virt type 'bhyve'"), "{body}");
}

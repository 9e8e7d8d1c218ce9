//! The fleet with a real etcd (Debian's etcd-server, started here on loopback with its own
//! data directory and free ports): agents publish (`capsd serve --etcd`), `capsd fleet`
//! answers. Documents come from driver-test's built-in set (and a modified copy for a
//! second host), and in one test from the real QEMU driver.

mod agent_support;
mod etcd_support;
mod live_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agent_support::Agent;
use etcd_support::Etcd;
use serde_json::Value;

const CAPSD: &str = env!("CARGO_BIN_EXE_capsd");

fn domains() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capsd-analysis/tests/data/domains")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../driver-test/fixtures")
}

/// `capsd fleet --etcd ENDPOINTS ARGS...`.
fn fleet(endpoints: &str, args: &[&str]) -> Output {
    Command::new(CAPSD).arg("fleet").arg("--etcd").arg(endpoints).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Host id → number of documents, from `fleet hosts --format json` (None when the store
/// could not be read).
fn hosts(endpoints: &str) -> Option<Vec<(String, usize)>> {
    let o = fleet(endpoints, &["hosts", "--format", "json"]);
    if !o.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    Some(
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| (h["record"]["id"].as_str().unwrap().to_owned(), h["documents"].as_object().unwrap().len()))
            .collect(),
    )
}

/// Wait until `pred` holds for the listed hosts, or panic naming `what`.
fn wait_hosts(endpoints: &str, within: Duration, what: &str, pred: impl Fn(&[(String, usize)]) -> bool) {
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < within {
        last = hosts(endpoints);
        if last.as_deref().is_some_and(&pred) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {within:?}; last listing: {last:?}");
}

fn has(list: &[(String, usize)], id: &str) -> bool {
    list.iter().any(|(h, n)| h == id && *n > 0)
}

/// An agent publishing driver-test documents as `id` (`fixtures`: its own golden set).
fn test_agent(endpoints: &str, id: &str, ttl: &str, fixtures: Option<&Path>) -> Agent {
    let mut args = vec!["--etcd", endpoints, "--host-id", id, "--etcd-ttl", ttl, "--publish-driver", "test"];
    let f;
    if let Some(dir) = fixtures {
        f = dir.to_string_lossy().into_owned();
        args.extend(["--fixtures", f.as_str()]);
    }
    Agent::start(&args)
}

/// The verdict and deciding finding path of single-host `capsd check` against `caps`.
fn single_host_verdict(domain: &Path, caps: &Path) -> (String, Option<String>) {
    let o = Command::new(CAPSD)
        .arg("check")
        .arg(domain)
        .arg("--caps")
        .arg(caps)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "capsd check: {o:?}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let findings = v["findings"].as_array().unwrap();
    for want in ["unsupported", "unknown"] {
        if let Some(f) = findings.iter().find(|f| f["verdict"] == want) {
            return (want.to_owned(), Some(f["path"].as_str().unwrap().to_owned()));
        }
    }
    ("supported".to_owned(), None)
}

/// A copy of the built-in x86_64 KVM documents without SPICE graphics.
fn no_spice_fixtures(dir: &Path) {
    for name in ["x86_64-kvm-q35.xml", "x86_64-kvm-default.xml"] {
        let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
        let edited = text.replace("        <value>spice</value>\n", "");
        assert_ne!(edited, text, "{name} lists no spice graphics any more: the test needs another change");
        std::fs::write(dir.join(name), edited).unwrap();
    }
}

#[test]
fn two_agents_publish_and_fleet_check_gives_per_host_verdicts() {
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let b_fixtures = tempfile::tempdir().unwrap();
    no_spice_fixtures(b_fixtures.path());
    let a = test_agent(&ep, "host-a", "10", None);
    let b = test_agent(&ep, "host-b", "10", Some(b_fixtures.path()));
    wait_hosts(&ep, Duration::from_secs(60), "both hosts listed", |l| has(l, "host-a") && has(l, "host-b"));
    // The text listing names both.
    let text = stdout(&fleet(&ep, &["hosts"]));
    assert!(text.contains("host-a") && text.contains("host-b") && text.contains("2 host(s)"), "{text}");

    // Every virt-install domain: the fleet's per-host verdict is the single-host check of the
    // document that host's agent serves for the domain's query.
    let work = tempfile::tempdir().unwrap();
    let mut b_spice = None;
    for entry in std::fs::read_dir(domains()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "xml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let dom = capsd_analysis::Domain::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let o = fleet(&ep, &["check", path.to_str().unwrap(), "--format", "json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {o:?}"));
        let mut any_supported = false;
        for (id, agent) in [("host-a", &a), ("host-b", &b)] {
            let got = v["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["host"] == id)
                .unwrap_or_else(|| panic!("{name}: no verdict for {id}: {v}"));
            let target = format!(
                "/v1/domcapabilities?driver=test&virttype={}&arch={}&machine={}",
                dom.virt_type(),
                dom.arch().unwrap(),
                dom.machine().unwrap()
            );
            let resp = agent.get(&target);
            let (want, path) = if resp.status == 200 {
                let caps = work.path().join(format!("{id}-{name}"));
                std::fs::write(&caps, &resp.body).unwrap();
                single_host_verdict(&path, &caps)
            } else {
                // The host's driver offers nothing for this query: it states nothing.
                assert_eq!(
                    got["note"].as_str().map(|n| n.contains("publishes no document")),
                    Some(true),
                    "{name} {id}: {got}"
                );
                ("unknown".to_owned(), None)
            };
            assert_eq!(got["verdict"], want.as_str(), "{name} on {id}: {got}");
            assert_eq!(got["finding"]["path"].as_str().map(str::to_owned), path, "{name} on {id}: {got}");
            // Runnable as `capsd check` exits 0: a document, and nothing unsupported in it.
            any_supported |= resp.status == 200 && want != "unsupported";
            if name == "spice-q35.xml" && id == "host-b" {
                b_spice = Some(got.clone());
            }
        }
        assert_eq!(o.status.code(), Some(if any_supported { 0 } else { 1 }), "{name}: {o:?}");
    }
    // Host B's documents lack SPICE: the SPICE domain is unsupported there, for that reason.
    let b_spice = b_spice.expect("spice-q35.xml was checked");
    assert_eq!(b_spice["verdict"], "unsupported", "{b_spice}");
    assert!(b_spice["finding"]["path"].as_str().unwrap().contains("graphics"), "{b_spice}");
    // aarch64: host B's fixtures have no aarch64 document: unknown, never unsupported.
    let o = fleet(&ep, &["check", domains().join("aarch64-virt.xml").to_str().unwrap(), "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let b_arm = v["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "host-b").unwrap().clone();
    assert_eq!(b_arm["verdict"], "unknown", "{b_arm}");

    // diff: the two hosts' q35 documents differ by SPICE alone.
    let o = fleet(&ep, &["diff", "host-a", "host-b", "--machine", "q35", "--format", "json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let text = stdout(&fleet(&ep, &["diff", "host-a", "host-b", "--machine", "q35"]));
    assert!(text.contains("spice"), "{text}");
    // Same host: no difference.
    assert_eq!(fleet(&ep, &["diff", "host-a", "host-a", "--machine", "q35"]).status.code(), Some(0));

    // baseline: what both promise has no SPICE; host A alone has it.
    let both = fleet(&ep, &["baseline", "--machine", "q35"]);
    assert!(both.status.success(), "{both:?}");
    let base = stdout(&both);
    let graphics =
        |doc: &str| doc.split("<graphics").nth(1).and_then(|g| g.split("</graphics>").next()).unwrap_or("").to_owned();
    assert!(base.starts_with("<domainCapabilities>") && !graphics(&base).contains("spice"), "{base}");
    let only_a = stdout(&fleet(&ep, &["baseline", "--machine", "q35", "--hosts", "host-a"]));
    assert!(graphics(&only_a).contains("spice"), "{only_a}");
    let by_selector = stdout(&fleet(&ep, &["baseline", "--machine", "q35", "--selector", "id=host-a"]));
    assert_eq!(by_selector, only_a);

    // Bad input is named and exits 2: an unknown host, a bad selector, a missing file.
    let o = fleet(&ep, &["diff", "host-a", "nosuch"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("'nosuch'"), "{o:?}");
    let o = fleet(&ep, &["baseline", "--selector", "colour=blue"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("colour"), "{o:?}");
    let o = fleet(&ep, &["check", "/nonexistent/domain.xml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/domain.xml"), "{o:?}");

    // Identical documents are stored once: host A's and B's aarch64/ppc64... documents
    // are A's alone, the x86_64 ones differ, and `gc` finds nothing to delete while both live.
    let o = fleet(&ep, &["gc"]);
    assert!(stdout(&o).contains("deleted 0"), "{o:?}");

    // A clean stop revokes the lease: host B goes at once (its TTL is 10 s).
    let t = Instant::now();
    b.stop();
    wait_hosts(&ep, Duration::from_secs(5), "host-b gone after SIGTERM", |l| !has(l, "host-b") && has(l, "host-a"));
    assert!(t.elapsed() < Duration::from_secs(10), "host-b stayed until its TTL");
    // Its documents nobody else uses are now garbage.
    let o = fleet(&ep, &["gc"]);
    assert!(!stdout(&o).contains("deleted 0"), "{o:?}");
    drop(a);
}

#[test]
fn an_agent_killed_with_sigkill_disappears_after_its_ttl() {
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let mut a = test_agent(&ep, "doomed", "3", None);
    wait_hosts(&ep, Duration::from_secs(60), "host listed", |l| has(l, "doomed"));
    a.child.kill().unwrap(); // SIGKILL: no revoke
    a.child.wait().unwrap();
    let killed = Instant::now();
    // Still listed right after (nobody revoked), gone once the 3 s TTL has run out.
    wait_hosts(&ep, Duration::from_secs(30), "host gone after its TTL", |l| !has(l, "doomed"));
    assert!(killed.elapsed() >= Duration::from_secs(1), "the host vanished before its lease could expire");
}

#[test]
fn an_agent_started_before_etcd_publishes_once_etcd_comes_up() {
    let mut etcd = Etcd::plan(1);
    let ep = etcd.endpoints();
    let a = test_agent(&ep, "early", "5", None);
    // etcd down: local answers are not delayed, and the fleet command names the failure.
    let t = Instant::now();
    let r = a.get("/v1/domcapabilities?driver=test&arch=x86_64&virttype=kvm");
    assert_eq!(r.status, 200);
    assert!(t.elapsed() < Duration::from_secs(5), "a local answer waited for etcd");
    let o = fleet(&ep, &["hosts"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("etcd"), "{o:?}");
    std::thread::sleep(Duration::from_secs(2));
    etcd.launch();
    wait_hosts(&ep, Duration::from_secs(30), "host published after etcd came up", |l| has(l, "early"));
}

#[test]
fn a_three_member_cluster_keeps_serving_and_publishing_when_one_member_dies() {
    let mut etcd = Etcd::start(3);
    let ep = etcd.endpoints();
    let _a = test_agent(&ep, "c-a", "5", None);
    wait_hosts(&ep, Duration::from_secs(60), "first host listed", |l| has(l, "c-a"));
    etcd.kill(0);
    // Still answering through the other two, and a host that starts now publishes.
    let _b = test_agent(&ep, "c-b", "5", None);
    wait_hosts(&ep, Duration::from_secs(60), "both hosts listed with a member down", |l| {
        has(l, "c-a") && has(l, "c-b")
    });
    // The first agent's lease is still kept alive past several TTLs.
    std::thread::sleep(Duration::from_secs(7));
    let l = hosts(&ep).expect("fleet hosts with one member down");
    assert!(has(&l, "c-a") && has(&l, "c-b"), "{l:?}");
    let o = fleet(&ep, &["check", domains().join("bios-i440fx.xml").to_str().unwrap()]);
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{o:?}");
    assert!(stdout(&o).contains("c-a") && stdout(&o).contains("c-b"), "{o:?}");
}

#[test]
fn an_agent_publishes_real_qemu_documents() {
    if !live_support::live() {
        return;
    }
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let a = Agent::start(&["--etcd", &ep, "--host-id", "qemu-host", "--etcd-ttl", "10"]);
    // The host's own arch comes first: wait for its TCG default-machine document.
    let t = Instant::now();
    let hash = loop {
        let o = fleet(&ep, &["hosts", "--format", "json"]);
        if o.status.success() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            if let Some(h) = v.as_array().unwrap().iter().find(|h| h["record"]["id"] == "qemu-host") {
                if let Some(hash) = h["documents"]["qemu/x86_64/@default"].as_str() {
                    assert_eq!(h["record"]["driver"], "qemu");
                    assert!(
                        h["record"]["emulators"].as_array().unwrap().iter().any(|e| e["path"] == live_support::X86),
                        "{h}"
                    );
                    break hash.to_owned();
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(240), "no qemu/x86_64/@default document within 240 s");
        std::thread::sleep(Duration::from_millis(250));
    };
    // The stored document is the agent's own answer, byte for byte, under its hash.
    let local = a.get("/v1/domcapabilities?arch=x86_64&virttype=qemu");
    assert_eq!(local.status, 200);
    use sha2_check::hex_sha256;
    assert_eq!(hex_sha256(local.body.as_bytes()), hash);
    // fleet check of a virt-install domain (as type qemu) agrees with the single-host check.
    let dom = std::fs::read_to_string(domains().join("uefi-i440fx.xml")).unwrap().replacen(
        "type=\"kvm\"",
        "type=\"qemu\"",
        1,
    );
    let work = tempfile::tempdir().unwrap();
    let dom_path = work.path().join("uefi-i440fx-tcg.xml");
    std::fs::write(&dom_path, dom).unwrap();
    let local_pc = a.get("/v1/domcapabilities?arch=x86_64&virttype=qemu&machine=pc");
    let caps = work.path().join("pc.xml");
    std::fs::write(&caps, &local_pc.body).unwrap();
    let (want, path) = single_host_verdict(&dom_path, &caps);
    // Wait for the pc document (published with the rest of the arch).
    let t = Instant::now();
    loop {
        let o = fleet(&ep, &["check", dom_path.to_str().unwrap(), "--format", "json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let got = v["hosts"].as_array().and_then(|h| h.iter().find(|h| h["host"] == "qemu-host").cloned());
        if let Some(got) = got.filter(|g| g["query"].is_string()) {
            assert_eq!(got["verdict"], want.as_str(), "{got}");
            assert_eq!(got["finding"]["path"].as_str().map(str::to_owned), path, "{got}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no x86_64 pc document: {v}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// SHA-256 for checking the content hash independently of capsd-fleet's code: `sha256sum`.
mod sha2_check {
    pub fn hex_sha256(bytes: &[u8]) -> String {
        use std::io::Write;
        let mut c = std::process::Command::new("sha256sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(bytes).unwrap();
        let o = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_owned()
    }
}

#[test]
fn serve_and_fleet_name_bad_fleet_options() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let serve = |extra: &[&str]| {
        Command::new(CAPSD)
            .args(["serve", "--socket", sock.to_str().unwrap(), "--publish-driver", "test"])
            .args(extra)
            .output()
            .unwrap()
    };
    for (args, needle) in [
        (vec!["--etcd", "127.0.0.1:1"], "--host-id"),
        (vec!["--etcd", "127.0.0.1:1", "--host-id", "a b"], "host id 'a b'"),
        (vec!["--etcd", "127.0.0.1:1", "--host-id", "h", "--etcd-prefix", "capsd"], "etcd prefix 'capsd'"),
        (vec!["--etcd", "127.0.0.1:1", "--host-id", "h", "--etcd-ttl", "1"], "--etcd-ttl"),
    ] {
        let o = serve(&args);
        assert!(!o.status.success(), "{args:?} was accepted");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(needle), "{args:?}: {e}");
    }
    // The fleet command checks its own input before reaching for etcd (none listens here).
    let o = fleet("127.0.0.1:1", &["diff", "a", "b", "--machine", "a/b"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let o = Command::new(CAPSD).args(["fleet", "hosts"]).env_remove("CAPSD_ETCD").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--etcd"), "{o:?}");
}

/// The host record of `id` from `fleet hosts --format json`.
fn record(endpoints: &str, id: &str) -> Option<Value> {
    let o = fleet(endpoints, &["hosts", "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).ok()?;
    v.as_array()?.iter().find(|h| h["record"]["id"] == id).cloned()
}

/// A change the agent's watcher notices (here: the emulator binary a document names is
/// replaced) is published: the record says when, the documents are derived again.
#[test]
fn a_change_the_watcher_notices_is_published() {
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("qemu-system-x86_64");
    std::fs::write(&binary, "first").unwrap();
    let fixtures = dir.path().join("fixtures");
    std::fs::create_dir(&fixtures).unwrap();
    let doc = std::fs::read_to_string(fixtures_dir_doc()).unwrap();
    let doc = doc.replace("<path>/usr/bin/qemu-system-x86_64</path>", &format!("<path>{}</path>", binary.display()));
    assert!(doc.contains(binary.to_str().unwrap()));
    std::fs::write(fixtures.join("x86_64-kvm-q35.xml"), doc).unwrap();
    let args = ["--etcd", &ep, "--host-id", "watched", "--publish-driver", "test", "--recheck-ms", "200"];
    let f = fixtures.to_string_lossy().into_owned();
    let _a = Agent::start(&[&args[..], &["--fixtures", &f]].concat());
    wait_hosts(&ep, Duration::from_secs(60), "host listed", |l| has(l, "watched"));
    let before = record(&ep, "watched").unwrap();
    assert!(before["record"]["inputs_changed_ms"].is_null(), "{before}");
    std::fs::write(&binary, "second, longer").unwrap();
    let t = Instant::now();
    let after = loop {
        let r = record(&ep, "watched").unwrap();
        if !r["record"]["inputs_changed_ms"].is_null() {
            break r;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "the change was not published: {r}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Derived again from the same fixture: the same documents.
    assert_eq!(after["documents"], before["documents"]);
}

fn fixtures_dir_doc() -> PathBuf {
    fixtures().join("x86_64-kvm-q35.xml")
}

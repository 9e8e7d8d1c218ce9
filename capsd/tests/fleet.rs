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
    let b = test_agent(&ep, "host-b", "120", Some(b_fixtures.path()));
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

    // A clean stop revokes the lease: host B goes long before its 120 s TTL (the bound is
    // generous so a loaded machine cannot fail it; only a lease left to expire can).
    let t = Instant::now();
    b.stop();
    wait_hosts(&ep, Duration::from_secs(90), "host-b gone after SIGTERM", |l| !has(l, "host-b") && has(l, "host-a"));
    assert!(t.elapsed() < Duration::from_secs(100), "host-b stayed until its TTL");
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
    // etcd stays down for the whole test until started below: an answer that waited for it
    // would never come, so the bound only needs to be finite.
    assert!(t.elapsed() < Duration::from_secs(60), "a local answer waited for etcd");
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
    // TLS and user settings also come from the environment (/etc/default/capsd); a file
    // that cannot be used is named, as bad input.
    for (vars, needle) in [
        (vec![("CAPSD_ETCD_USER", "u"), ("CAPSD_ETCD_PASSWORD_FILE", "/nonexistent/pw")], "/nonexistent/pw"),
        (vec![("CAPSD_ETCD_CACERT", "/nonexistent/ca.pem")], "/nonexistent/ca.pem"),
        (vec![("CAPSD_ETCD_CERT", "/nonexistent/c.pem")], "--etcd-key"),
    ] {
        let o = Command::new(CAPSD)
            .args(["fleet", "--etcd", "https://127.0.0.1:1", "hosts"])
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{vars:?}: {o:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(needle), "{vars:?}: {o:?}");
    }
    let o = Command::new(CAPSD)
        .args(["serve", "--socket", sock.to_str().unwrap(), "--publish-driver", "test"])
        .args(["--etcd", "https://127.0.0.1:1", "--host-id", "h"])
        .env("CAPSD_ETCD_USER", "u")
        .env("CAPSD_ETCD_PASSWORD_FILE", "/nonexistent/pw")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/pw"), "{o:?}");
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

// --- The fleet in production (issue 20): hostile store contents, host identity, TLS and RBAC. ---

/// A raw etcd client (as any host with write access could use), on a runtime of its own.
struct Raw {
    rt: tokio::runtime::Runtime,
    client: capsd_fleet::Client,
}

impl Raw {
    fn connect(cfg: capsd_fleet::EtcdConfig) -> Raw {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let client = rt.block_on(capsd_fleet::connect(&cfg)).unwrap();
        Raw { rt, client }
    }
    fn plain(endpoints: &str) -> Raw {
        Raw::connect(capsd_fleet::EtcdConfig::new(endpoints.split(',').map(str::to_owned).collect()))
    }
    fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<(), capsd_fleet::EtcdError> {
        self.rt.block_on(self.client.put(key, value, 0)).map(drop)
    }
    fn get(&self, key: &str) -> Option<capsd_fleet::etcd::KeyValue> {
        self.rt.block_on(self.client.range(&capsd_fleet::etcd::Range::key(key))).unwrap().kvs.into_iter().next()
    }
    fn delete(&self, key: &str) -> Result<i64, capsd_fleet::EtcdError> {
        self.rt.block_on(self.client.delete(key.as_bytes(), &[]))
    }
    fn delete_prefix(&self, prefix: &str) -> Result<i64, capsd_fleet::EtcdError> {
        let end = capsd_fleet::etcd::prefix_end(prefix.as_bytes());
        self.rt.block_on(self.client.delete(prefix.as_bytes(), &end))
    }
}

/// The hash host `id` publishes for `query`, from `fleet hosts --format json`.
fn published_hash(endpoints: &str, id: &str, query: &str) -> String {
    let r = record(endpoints, id).unwrap_or_else(|| panic!("{id} is not listed"));
    r["documents"][query].as_str().unwrap_or_else(|| panic!("{id} publishes no {query}: {r}")).to_owned()
}

fn no_raw_control(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{what} carries raw control characters: {:?}", text);
}

/// Forged documents are never believed, and no bad key (malformed, oversized, dangling,
/// junk, control characters) stops the rest of the fleet being answered; gc removes
/// unreferenced documents of any size.
#[test]
fn forged_documents_and_bad_keys_are_reported_and_the_rest_is_answered() {
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let b_fixtures = tempfile::tempdir().unwrap();
    no_spice_fixtures(b_fixtures.path());
    let _a = test_agent(&ep, "host-a", "30", None);
    let _b = test_agent(&ep, "host-b", "30", Some(b_fixtures.path()));
    wait_hosts(&ep, Duration::from_secs(60), "both hosts listed", |l| has(l, "host-a") && has(l, "host-b"));
    let raw = Raw::plain(&ep);

    // Host B's q35 document, rewritten under its own hash with another <vcpu max>.
    let hash = published_hash(&ep, "host-b", "kvm/x86_64/q35");
    let doc_key = format!("/capsd/docs/{hash}");
    let real = String::from_utf8(raw.get(&doc_key).unwrap().value).unwrap();
    let start = real.find("<vcpu max='").unwrap() + "<vcpu max='".len();
    let end = start + real[start..].find('\'').unwrap();
    assert_ne!(&real[start..end], "4096");
    let forged = format!("{}4096{}", &real[..start], &real[end..]);
    raw.put(&doc_key, forged.clone()).unwrap();
    let o = fleet(&ep, &["baseline", "--machine", "q35", "--hosts", "host-b"]);
    assert!(!stdout(&o).contains("4096"), "a forged document was believed: {o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains(&doc_key), "the forged document is not named: {o:?}");
    let spice = domains().join("spice-q35.xml");
    let o = fleet(&ep, &["check", spice.to_str().unwrap(), "--format", "json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    let verdict = |id: &str| v["hosts"].as_array().unwrap().iter().find(|h| h["host"] == id).cloned().unwrap();
    let b = verdict("host-b");
    assert_eq!(b["verdict"], "unknown", "{b}");
    assert!(b["note"].as_str().unwrap().contains(&doc_key), "{b}");
    // Named once, though check fetches the documents ahead while it reads the hosts.
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.contains(&doc_key)).count(), 1, "{o:?}");
    assert!(verdict("host-a")["query"].is_string(), "host A is not answered: {v}");

    // Hostile keys, as any host with write access could put them.
    let big = |n: usize, fill: u8| vec![fill; n];
    raw.put("/capsd/hosts/broken", "{not json").unwrap();
    let record_json = |id: &str, model: &str| {
        serde_json::json!({"id": id, "capsd_version": "0", "driver": "test", "cpu": {"arch": "x86_64", "model": model},
                           "updated_ms": 0, "documents": 1})
        .to_string()
    };
    // Four records of 1.4 MB each (one page of them is above a 4 MiB message).
    for i in 0..4 {
        let mut r = record_json(&format!("bloat-{i}"), "x").into_bytes();
        r.truncate(r.len() - 1);
        r.extend_from_slice(b", \"pad\": \"");
        r.extend(big(1_400_000, b'p'));
        r.extend_from_slice(b"\"}");
        raw.put(&format!("/capsd/hosts/bloat-{i}"), r).unwrap();
    }
    // A host whose reference names a document that is not stored.
    raw.put("/capsd/hosts/ghost", record_json("ghost", "x")).unwrap();
    let missing = "0".repeat(64);
    raw.put("/capsd/refs/kvm/x86_64/q35/ghost", missing.clone()).unwrap();
    // A reference of a host without a record, to another document that is not stored: left
    // out with its host, so nothing says its document is missing (check fetches documents
    // ahead; one no host listed refers to is not reported).
    let unlisted = "e".repeat(64);
    raw.put("/capsd/refs/kvm/x86_64/q35/nobody", unlisted.clone()).unwrap();
    // A malformed reference, an oversized one, junk.
    raw.put("/capsd/refs/kvm/x86_64/q35/host-a-evil", "not a hash").unwrap();
    raw.put("/capsd/refs/kvm/x86_64/q35/bloat-0", big(1_000_000, b'a')).unwrap();
    raw.put("/capsd/junk\x1b[2J", "x").unwrap();
    // Control characters in a host id and in record fields.
    raw.put("/capsd/hosts/evil\x1b]0;pwned\x07", record_json("evil", "x")).unwrap();
    raw.put("/capsd/hosts/ctl", record_json("ctl", "\x1b[2J\nfake-row 1 2 3")).unwrap();
    // Four unreferenced documents of 1.4 MB.
    let mut orphans = Vec::new();
    for i in 0..4u8 {
        let body = big(1_400_000, b'0' + i);
        let h = sha2_check::hex_sha256(&body);
        raw.put(&format!("/capsd/docs/{h}"), body).unwrap();
        orphans.push(h);
    }

    // Every command still answers, naming what it left out.
    let o = fleet(&ep, &["hosts"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = stdout(&o);
    assert!(out.contains("host-a") && out.contains("host-b") && out.contains("ghost"), "{out}");
    no_raw_control("fleet hosts' output", &o.stdout);
    no_raw_control("fleet hosts' warnings", &o.stderr);
    assert!(out.contains("\\u{1b}[2J\\nfake-row"), "the record's control characters are not shown escaped: {out}");
    // One line per host listed (host-a, host-b, ghost, ctl, broken, four bloat-*), the header and the total.
    assert_eq!(out.lines().count(), 9 + 2, "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in
        ["/capsd/hosts/broken", "/capsd/refs/kvm/x86_64/q35/host-a-evil", "junk\\u{1b}[2J", "evil\\u{1b}]0;pwned\\u{7}"]
    {
        assert!(err.contains(needle), "{needle} not reported: {err}");
    }
    let o = fleet(&ep, &["check", spice.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    no_raw_control("fleet check's warnings", &o.stderr);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ghost = v["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "ghost").cloned().unwrap();
    assert_eq!(ghost["verdict"], "unknown", "{ghost}");
    assert!(ghost["note"].as_str().unwrap().contains(&missing), "{ghost}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("not a usable domain definition"), "{o:?}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains(&unlisted), "{o:?}");
    assert!(v["hosts"].as_array().unwrap().iter().all(|h| h["host"] != "nobody"), "{v}");
    let o = fleet(&ep, &["check", spice.to_str().unwrap()]);
    no_raw_control("fleet check's text", &o.stdout);
    assert_eq!(fleet(&ep, &["diff", "host-a", "host-b", "--machine", "q35"]).status.code(), Some(2));
    assert!(fleet(&ep, &["baseline", "--machine", "q35"]).status.success());

    // gc deletes the big orphans (and only unreferenced documents).
    let o = fleet(&ep, &["gc"]);
    assert!(o.status.success(), "{o:?}");
    for h in &orphans {
        assert!(raw.get(&format!("/capsd/docs/{h}")).is_none(), "orphan {h} survived gc: {o:?}");
    }
    assert!(raw.get(&doc_key).is_some(), "gc deleted a referenced document");
}

/// A second agent with the same host id is refused while the first lives; `--take-over`
/// takes it; the first republishes when the taker stops, and when its keys are deleted.
#[test]
fn a_host_id_held_by_another_agent_is_refused_and_vanished_keys_are_republished() {
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let raw = Raw::plain(&ep);
    let first = test_agent(&ep, "dup", "5", None);
    wait_hosts(&ep, Duration::from_secs(60), "first agent listed", |l| has(l, "dup"));
    let first_lease = raw.get("/capsd/claims/dup").unwrap().lease;

    // A second agent (its own state directory) is refused at start, naming why.
    let dir = tempfile::tempdir().unwrap();
    let mut second = Command::new(CAPSD)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(["serve", "--socket"])
        .arg(dir.path().join("s.sock"))
        .args(["--etcd", &ep, "--host-id", "dup", "--publish-driver", "test"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = second.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the second agent was not refused");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("'dup'") && err.contains("--take-over"), "{err}");
    assert_eq!(raw.get("/capsd/claims/dup").unwrap().lease, first_lease, "the refused agent changed the claim");

    // --take-over takes it.
    let taker = test_agent_with(&ep, "dup", "5", &["--take-over"]);
    let t = Instant::now();
    while raw.get("/capsd/claims/dup").map(|kv| kv.lease) == Some(first_lease) {
        assert!(t.elapsed() < Duration::from_secs(60), "--take-over did not take the host id");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_hosts(&ep, Duration::from_secs(60), "the taker listed", |l| has(l, "dup"));
    let taker_lease = raw.get("/capsd/claims/dup").unwrap().lease;
    // The taker stops: the first agent publishes again.
    taker.stop();
    let t = Instant::now();
    loop {
        let claim = raw.get("/capsd/claims/dup").map(|kv| kv.lease);
        if claim.is_some_and(|l| l != taker_lease) && hosts(&ep).is_some_and(|l| has(&l, "dup")) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the first agent did not publish again: claim {claim:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Someone deletes its keys: they come back.
    raw.delete("/capsd/hosts/dup").unwrap();
    raw.delete("/capsd/claims/dup").unwrap();
    wait_hosts(&ep, Duration::from_secs(60), "the deleted host republished", |l| has(l, "dup"));
    assert!(raw.get("/capsd/claims/dup").is_some());
    drop(first);
}

/// `test_agent` with extra arguments.
fn test_agent_with(endpoints: &str, id: &str, ttl: &str, extra: &[&str]) -> Agent {
    let mut args = vec!["--etcd", endpoints, "--host-id", id, "--etcd-ttl", ttl, "--publish-driver", "test"];
    args.extend_from_slice(extra);
    Agent::start(&args)
}

/// Certificates made here: a CA, the members' certificate (127.0.0.1 only), a client
/// certificate, and another CA nobody uses.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn make() -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.self_signed(&key).unwrap();
            (cert, key)
        };
        let (ca_cert, ca_key) = ca("capsd test CA");
        write("ca.pem", ca_cert.pem());
        let (other, _) = ca("another CA");
        write("other-ca.pem", other.pem());
        let leaf = |cn: Option<&str>, sans: Vec<String>, name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(sans).unwrap();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(DnType::OrganizationName, "capsd tests");
            if let Some(cn) = cn {
                p.distinguished_name.push(DnType::CommonName, cn);
            }
            p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
            let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}-key.pem"), key.serialize_pem());
        };
        leaf(Some("etcd-member"), vec!["127.0.0.1".to_owned()], "server");
        // Client certificates without and with a CommonName (both usable with a user).
        leaf(None, Vec::new(), "client");
        leaf(Some("capsd-client"), Vec::new(), "client-cn");
        Certs { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
    fn server(&self) -> etcd_support::ServerTls {
        etcd_support::ServerTls {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server-key.pem"),
            client_ca: self.dir.path().join("ca.pem"),
        }
    }
    /// `--etcd-cacert ... --etcd-cert ... --etcd-key ...`.
    fn args(&self) -> Vec<String> {
        [
            "--etcd-cacert",
            &self.path("ca.pem"),
            "--etcd-cert",
            &self.path("client.pem"),
            "--etcd-key",
            &self.path("client-key.pem"),
        ]
        .map(str::to_owned)
        .to_vec()
    }
    fn config(&self, endpoints: &str, user: Option<(&str, &str)>) -> capsd_fleet::EtcdConfig {
        capsd_fleet::EtcdConfig {
            endpoints: endpoints.split(',').map(str::to_owned).collect(),
            cacert: Some(self.path("ca.pem").into()),
            cert: Some(self.path("client.pem").into()),
            key: Some(self.path("client-key.pem").into()),
            user: user.map(|u| u.0.to_owned()),
            password: user.map(|u| u.1.to_owned()),
        }
    }
    fn password_file(&self, name: &str, pw: &str) -> String {
        std::fs::write(self.dir.path().join(name), format!("{pw}\n")).unwrap();
        self.path(name)
    }
}

/// `capsd fleet` with global options before the subcommand's arguments.
fn fleet_as(endpoints: &str, global: &[String], args: &[&str]) -> Output {
    Command::new(CAPSD).arg("fleet").arg("--etcd").arg(endpoints).args(global).args(args).output().unwrap()
}

/// Production etcd: three members, TLS with client certificates, authentication and roles.
/// Each host's agent publishes with its own user, whose role lets it write only its own keys
/// (etcd refuses host A's credentials for host B's keys); readers read only; errors name the
/// endpoint and what failed.
#[test]
fn a_tls_cluster_with_rbac_gives_each_host_its_own_keys_only() {
    let certs = Certs::make();
    let probe = |ep: &str| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(capsd_fleet::connect(&certs.config(ep, None))).is_ok()
    };
    let mut etcd = Etcd::start_tls(3, certs.server(), probe);
    let ep = etcd.endpoints();
    assert!(ep.starts_with("https://"), "{ep}");
    // Authentication on, with a root user.
    let root = Raw::connect(certs.config(&ep, None));
    root.rt.block_on(async {
        root.client.user_add("root", "root-pw").await.unwrap();
        root.client.role_add("root").await.unwrap();
        root.client.user_grant_role("root", "root").await.unwrap();
        root.client.auth_enable().await.unwrap();
    });
    let as_user = |user: &str, pwfile: &str| {
        let mut g = certs.args();
        g.extend(["--etcd-user".to_owned(), user.to_owned(), "--etcd-password-file".to_owned(), pwfile.to_owned()]);
        g
    };
    let root_args = as_user("root", &certs.password_file("root.pw", "root-pw"));
    // Without a user, etcd refuses (and says so).
    let o = fleet_as(&ep, &certs.args(), &["hosts"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    // Users and roles: one per host, one reader.
    let a_pw = certs.password_file("a.pw", "a-secret");
    let b_pw = certs.password_file("b.pw", "b-secret");
    let r_pw = certs.password_file("r.pw", "r-secret");
    for args in [
        vec!["grant-host", "host-a", "--password-file", &a_pw],
        vec!["grant-host", "host-b", "--password-file", &b_pw],
        vec!["grant-reader", "reader", "--password-file", &r_pw],
    ] {
        let o = fleet_as(&ep, &root_args, &args);
        assert!(o.status.success(), "{args:?}: {o:?}");
    }
    let reader = as_user("reader", &r_pw);
    // Agents publish with their own users, through TLS.
    let agent = |id: &str, pw: &str| {
        let user = format!("capsd-host-{id}");
        let mut args = vec!["--etcd", &ep, "--host-id", id, "--etcd-ttl", "10", "--publish-driver", "test"];
        let extra = as_user(&user, pw);
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        args.extend(extra);
        Agent::start(&args)
    };
    let _a = agent("host-a", &a_pw);
    let _b = agent("host-b", &b_pw);
    let listed = |ids: &[&str]| {
        let o = fleet_as(&ep, &reader, &["hosts", "--format", "json"]);
        o.status.success() && {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            ids.iter().all(|id| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .any(|h| h["record"]["id"] == *id && !h["documents"].as_object().unwrap().is_empty())
            })
        }
    };
    let t = Instant::now();
    while !listed(&["host-a", "host-b"]) {
        assert!(t.elapsed() < Duration::from_secs(60), "the hosts were not published through TLS and RBAC");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Host A's credentials: its own keys and new documents yes, host B's keys never.
    let as_a = Raw::connect(certs.config(&ep, Some(("capsd-host-host-a", "a-secret"))));
    for key in ["/capsd/hosts/host-b", "/capsd/claims/host-b", "/capsd/refs/kvm/x86_64/q35/host-b"] {
        let e = as_a.put(key, "forged").unwrap_err();
        assert!(e.is_permission_denied(), "{key}: {e}");
        assert!(e.to_string().contains("permission denied"), "{e}");
        let e = as_a.delete(key).unwrap_err();
        assert!(e.is_permission_denied(), "{key}: {e}");
    }
    assert!(as_a.delete_prefix("/capsd/refs/").unwrap_err().is_permission_denied());
    let doc = b"<domainCapabilities/>";
    as_a.put(&format!("/capsd/docs/{}", sha2_check::hex_sha256(doc)), doc.to_vec()).unwrap();
    // The reader reads, and writes nothing.
    let as_reader = Raw::connect(certs.config(&ep, Some(("reader", "r-secret"))));
    assert!(as_reader.get("/capsd/hosts/host-a").is_some());
    assert!(as_reader.put("/capsd/hosts/host-a", "x").unwrap_err().is_permission_denied());
    let o = fleet_as(&ep, &reader, &["gc"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("permission denied"), "{o:?}");
    let check = |global: &[String]| {
        fleet_as(&ep, global, &["check", domains().join("bios-i440fx.xml").to_str().unwrap(), "--format", "json"])
    };
    let o = check(&reader);
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{o:?}");
    assert!(stdout(&o).contains("host-a") && stdout(&o).contains("host-b"), "{o:?}");

    // Errors name the endpoint and what failed.
    let first = ep.split(',').next().unwrap().to_owned();
    let port = first.rsplit(':').next().unwrap().to_owned();
    let expect_err = |endpoint: &str, global: Vec<String>, needles: &[&str]| {
        let o = fleet_as(endpoint, &global, &["hosts"]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(3), "{global:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{global:?}: '{n}' not in: {err}");
        }
    };
    let mut other_ca = reader.clone();
    other_ca[1] = certs.path("other-ca.pem");
    expect_err(&first, other_ca, &[&first, "not signed by a trusted CA"]);
    let by_name = format!("https://localhost:{port}");
    expect_err(&by_name, reader.clone(), &[&by_name, "not valid for this host name"]);
    let no_client_cert: Vec<String> = vec![
        "--etcd-cacert".to_owned(),
        certs.path("ca.pem"),
        "--etcd-user".to_owned(),
        "reader".to_owned(),
        "--etcd-password-file".to_owned(),
        r_pw.clone(),
    ];
    expect_err(&first, no_client_cert, &[&first, "client certificate"]);
    let mut with_cn = reader.clone();
    with_cn[3] = certs.path("client-cn.pem");
    with_cn[5] = certs.path("client-cn-key.pem");
    // etcd's gRPC API (unlike its JSON gateway) takes client certificates with a CommonName;
    // the user's token decides the role.
    let o = fleet_as(&first, &with_cn, &["hosts"]);
    assert!(o.status.success(), "a client certificate with a CommonName: {o:?}");
    let wrong = as_user("reader", &certs.password_file("wrong.pw", "nope"));
    expect_err(&first, wrong, &[&first, "authentication failed"]);

    // One member down: still answered and published.
    etcd.kill(0);
    let o = check(&reader);
    assert!(o.status.code() == Some(0) || o.status.code() == Some(1), "{o:?}");
    assert!(stdout(&o).contains("host-a") && stdout(&o).contains("host-b"), "{o:?}");
}

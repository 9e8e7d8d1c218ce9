//! `capsd fleet serve`, the fleet page: a real etcd (Debian's etcd-server, started here),
//! real agents publishing driver-test documents (`capsd serve --etcd`), the page in a real
//! headless browser (Debian's chromium, driven over the DevTools protocol on a pipe), and
//! the HTTP side (token and cookie, bad input, injection) with a plain HTTP client.

mod agent_support;
mod etcd_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{free_port, Agent};
use etcd_support::Etcd;
use serde_json::{json, Value};

const CAPSD: &str = env!("CARGO_BIN_EXE_capsd");
const CHROMIUM: &str = "/usr/bin/chromium";

fn domains() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capsd-analysis/tests/data/domains")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../driver-test/fixtures")
}

/// An agent publishing driver-test documents as `id` (`fixtures`: its own golden set).
fn test_agent(endpoints: &str, id: &str, fixtures: Option<&Path>) -> Agent {
    let mut args = vec!["--etcd", endpoints, "--host-id", id, "--etcd-ttl", "30", "--publish-driver", "test"];
    let f;
    if let Some(dir) = fixtures {
        f = dir.to_string_lossy().into_owned();
        args.extend(["--fixtures", f.as_str()]);
    }
    Agent::start(&args)
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

/// `capsd fleet --etcd ENDPOINTS ARGS...`.
fn fleet(endpoints: &str, args: &[&str]) -> std::process::Output {
    Command::new(CAPSD).arg("fleet").arg("--etcd").arg(endpoints).args(args).output().unwrap()
}

/// A running `capsd fleet serve` on loopback TCP (and a Unix socket), with its token.
struct Server {
    child: Child,
    port: u16,
    token: String,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start it; `token` must be acceptable to the agent's rules (16+ printable characters).
    fn start(endpoints: &str, token: &str) -> Server {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tf = dir.path().join("token");
        std::fs::write(&tf, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&tf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let port = free_port();
        let socket = dir.path().join("fleet.sock");
        let child = Command::new(CAPSD)
            .args(["fleet", "--etcd", endpoints, "serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(&tf)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut s = Server { child, port, token: token.to_owned(), socket, _dir: dir };
        let t = Instant::now();
        loop {
            if let Ok(r) = s.try_request("GET", "/healthz", &[], b"") {
                assert_eq!(r.status, 200, "{r:?}");
                break;
            }
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!("capsd fleet serve exited: {st}");
            }
            assert!(t.elapsed() < Duration::from_secs(60), "capsd fleet serve did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn try_request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Resp> {
        let s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        request(s, method, target, headers, body)
    }

    fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, target, headers, body).unwrap()
    }

    /// A request with the bearer token.
    fn api(&self, method: &str, target: &str, body: &[u8]) -> Resp {
        let auth = format!("Bearer {}", self.token);
        self.request(method, target, &[("Authorization", &auth)], body)
    }

    /// Wait until everything `agent` publishes as `id` is in the store, as the page sees it:
    /// a document for every query its driver answers (the agent publishes arch by arch).
    fn wait_published(&self, agent: &Agent, id: &str) {
        let want = capsd_fleet::published_queries()
            .iter()
            .filter(|q| {
                let m = q.machine.as_deref().map(|m| format!("&machine={m}")).unwrap_or_default();
                let target = format!("/v1/domcapabilities?driver=test&virttype={}&arch={}{m}", q.virt_type, q.arch);
                agent.get(&target).status == 200
            })
            .count();
        assert!(want > 1, "{id}: {want}");
        self.wait_hosts(&format!("{id} publishes its {want} documents"), |v| {
            v["hosts"].as_array().unwrap().iter().any(|h| h["id"] == id && h["documents"] == want)
        });
    }

    /// Wait until `/api/hosts` satisfies `pred` (or panic naming `what`).
    fn wait_hosts(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let r = self.api("GET", "/api/hosts", b"");
            if r.status == 200 && pred(&r.json()) {
                return r.json();
            }
            assert!(t.elapsed() < Duration::from_secs(90), "{what}: not within 90 s; last: {r:?}");
            // Long poll: answers as soon as the snapshot changes.
            let rev = if r.status == 200 { r.json()["revision"].as_i64().unwrap_or(0) } else { 0 };
            self.api("GET", &format!("/api/wait?after={rev}"), b"");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_listed(v: &Value, id: &str) -> bool {
    v["hosts"].as_array().unwrap().iter().any(|h| h["id"] == id && h["documents"].as_u64().unwrap_or(0) > 0)
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request (`Connection: close`), the whole response read. The body is sent
/// even when the server answers early (a refused upload), and a reset after the answer is
/// not an error.
fn request(
    mut s: impl Read + Write,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    // A server refusing a large body may close before reading it all.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        if raw.is_empty() {
            return Err(e);
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no response head in {:?}", String::from_utf8_lossy(&raw))))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = unchunk(&body);
    }
    Ok(Resp { status, headers, body })
}

fn unchunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..nl]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
    out
}

/// `%XX` for everything but unreserved characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A host record for `id` whose text fields carry markup and control characters.
fn hostile_record(id: &str) -> Vec<u8> {
    let r = capsd_fleet::HostRecord {
        id: id.into(),
        capsd_version: "0.1.0".into(),
        driver: "test".into(),
        libvirt_version: Some("9.0</td><script>document.title='pwned'</script>".into()),
        emulators: vec![capsd_fleet::Emulator {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: Some("7.2\u{1b}[2J<b>bold</b>".into()),
        }],
        cpu: capsd_fleet::Cpu {
            arch: "x86_64".into(),
            vendor: Some("GenuineIntel".into()),
            model: Some("<img src=x onerror=\"document.title='pwned'\">\u{1b}]0;title\u{7}".into()),
        },
        updated_ms: capsd_fleet::now_ms(),
        inputs_changed_ms: None,
        documents: 0,
    };
    serde_json::to_vec(&r).unwrap()
}

/// A raw etcd client (as any host with write access could use), on a runtime of its own.
struct Raw {
    rt: tokio::runtime::Runtime,
    client: capsd_fleet::Client,
}

impl Raw {
    fn plain(endpoints: &str) -> Raw {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cfg = capsd_fleet::EtcdConfig::new(endpoints.split(',').map(str::to_owned).collect());
        let client = rt.block_on(capsd_fleet::connect(&cfg)).unwrap();
        Raw { rt, client }
    }
    fn put(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.rt.block_on(self.client.put(key, value, 0)).unwrap();
    }
    /// The store's current revision.
    fn revision(&self) -> i64 {
        self.rt.block_on(self.client.range(&capsd_fleet::etcd::Range::key("/capsd/none"))).unwrap().revision
    }
}

/// The token, cookie exchange, Unix socket, bad input and injection over plain HTTP; and no
/// request writes to etcd.
#[test]
fn fleet_page_http_token_cookie_bad_input_and_escaping() {
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let a = test_agent(&ep, "host-a", None);
    // Characters a URL must encode: the exchange decodes them (and keeps a '+').
    let token = "fleet+Token/0123456789=";
    let s = Server::start(&ep, token);
    // Everything the agent publishes is in, so that it writes nothing more.
    s.wait_published(&a, "host-a");
    let raw = Raw::plain(&ep);

    // No token: 401 everywhere but /healthz, with a message saying how to get in.
    for target in ["/", "/api/hosts", "/fleet.js", "/api/matrix", "/nosuch"] {
        let r = s.request("GET", target, &[], b"");
        assert_eq!(r.status, 401, "{target}: {r:?}");
        assert!(r.text().contains("?token="), "{target}: {}", r.text());
    }
    assert_eq!(s.request("POST", "/api/check", &[], b"<domain type='kvm'/>").status, 401);
    assert_eq!(s.request("GET", "/healthz", &[], b"").status, 200);
    // A wrong token, in the address or the header, or a made-up cookie: 401, no cookie.
    let r = s.request("GET", "/?token=fleet%2BToken%2F012345678", &[], b"");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("set-cookie").is_none(), "{r:?}");
    assert_eq!(s.request("GET", "/api/hosts", &[("Authorization", "Bearer fleet+Token/012345678")], b"").status, 401);
    // The right token: a cookie (HttpOnly, SameSite=Strict, not the token) and a redirect to
    // the same address without it.
    let r = s.request("GET", &format!("/?view=hosts&token={}&x=1", url_encode(token)), &[], b"");
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/?view=hosts&x=1"), "{r:?}");
    let set = r.header("set-cookie").unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    assert!(!set.contains(token) && !set.contains(&url_encode(token)), "the cookie carries the token: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(s.request("GET", "/api/hosts", &[("Cookie", &format!("{cookie}x"))], b"").status, 401);
    let page = s.request("GET", "/", &[("Cookie", &cookie)], b"");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.header("content-type").unwrap().starts_with("text/html"), "{page:?}");
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(page.text().contains("fleet.js"), "{}", page.text());
    let hosts = s.request("GET", "/api/hosts", &[("Cookie", &format!("other=1; {cookie}"))], b"");
    assert_eq!(hosts.status, 200, "{hosts:?}");
    assert!(host_listed(&hosts.json(), "host-a"), "{}", hosts.text());
    // The scheme of the header in any case.
    assert_eq!(s.request("GET", "/api/hosts", &[("Authorization", &format!("bearer {token}"))], b"").status, 200);

    // The Unix socket needs no token; it has the asked mode.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&s.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "socket mode {mode:o}");
        let u = std::os::unix::net::UnixStream::connect(&s.socket).unwrap();
        let r = request(u, "GET", "/api/hosts", &[], b"").unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        assert!(host_listed(&r.json(), "host-a"));
    }

    // From here on nothing may write to the store: every request below is read-only.
    let evil_key = "/capsd/hosts/<script>document.title='pwned'</script>";
    raw.put(evil_key, "x");
    raw.put("/capsd/hosts/evil", hostile_record("evil"));
    let listed = s.wait_hosts("evil listed", |v| v["hosts"].as_array().unwrap().iter().any(|h| h["id"] == "evil"));
    let before = raw.revision();

    // Bad input: a clear message and a 4xx, and the server goes on.
    let check = |body: &[u8]| s.api("POST", "/api/check", body);
    let r = check(b"<domain type='kvm'><os>");
    assert_eq!(r.status, 400, "{r:?}");
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("not a usable domain definition") && msg.contains("line"), "{msg}");
    let r = check(b"<network/>");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("<domain>"), "{r:?}");
    let r = check(b"  ");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("no domain definition"), "{r:?}");
    let r = check(b"<domain type='kvm'>\xff</domain>");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("UTF-8"), "{r:?}");
    let mut big = b"<domain type='kvm'><description>".to_vec();
    big.resize(10 << 20, b'a');
    let r = check(&big);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains("larger than 4 MiB"), "{r:?}");
    let r = s.api("GET", "/api/matrix?virttype=kvm&machine=a/b", b"");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.text().contains("a/b"), "{r:?}");
    let r = s.api("GET", "/api/wait?after=soon", b"");
    assert_eq!(r.status, 400, "{r:?}");
    let r = s.api("GET", "/api/nosuch", b"");
    assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("not_found")), "{r:?}");
    let r = s.api("GET", "/no/such/page", b"");
    assert_eq!(r.status, 404, "{r:?}");
    assert!(r.text().contains("/no/such/page") && r.text().contains("fleet page is at /"), "{r:?}");
    assert_eq!(s.api("GET", "/api/check", b"").status, 405);
    // A well-formed domain still gets verdicts afterwards.
    let dom = std::fs::read(domains().join("spice-q35.xml")).unwrap();
    let r = check(&dom);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let a = v["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "host-a").unwrap();
    assert_eq!(a["query"], "kvm/x86_64/q35", "{v}");
    assert_eq!(s.api("GET", "/api/matrix?machine=q35", b"").status, 200);

    // The store's text reaches the client as JSON data only: the page itself is the same
    // bytes whatever the store holds, and the bad key is reported, not a host.
    assert_eq!(s.request("GET", "/", &[("Cookie", &cookie)], b"").body, page.body);
    let evil = listed["hosts"].as_array().unwrap().iter().find(|h| h["id"] == "evil").unwrap();
    assert!(evil["cpu_model"].as_str().unwrap().starts_with("<img src=x"), "{evil}");
    assert!(listed["problems"].as_array().unwrap().iter().any(|p| p["key"] == evil_key), "{listed}");

    // Read-only: the store's revision did not move through all of the above.
    assert_eq!(raw.revision(), before, "a request wrote to etcd");
    assert_eq!(s.request("GET", "/healthz", &[], b"").status, 200);

    // SIGHUP reads the token file again: the old token and its cookie stop working.
    let new_token = "second-token-0123456789";
    std::fs::write(s._dir.path().join("token"), format!("{new_token}\n")).unwrap();
    let pid = nix::unistd::Pid::from_raw(s.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let t = Instant::now();
    while s.request("GET", "/api/hosts", &[("Authorization", &format!("Bearer {new_token}"))], b"").status != 200 {
        assert!(t.elapsed() < Duration::from_secs(60), "the new token was not taken within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(s.api("GET", "/api/hosts", b"").status, 401);
    assert_eq!(s.request("GET", "/api/hosts", &[("Cookie", &cookie)], b"").status, 401);

    // SIGTERM: a clean exit, and the socket it bound is gone.
    let mut s = s;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = s.child.wait().unwrap();
    assert!(st.success(), "{st}");
    assert!(!s.socket.exists(), "{} left behind", s.socket.display());
}

/// Options that cannot work are refused before etcd is reached, naming the option.
#[test]
fn fleet_serve_names_bad_options() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let loose = dir.path().join("loose-token");
    std::fs::write(&loose, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = loose.to_str().unwrap();
    // Nothing listens on port 9 of loopback: reaching etcd would fail differently.
    for (args, needle) in [
        (vec![], "--listen ADDR"),
        (vec!["--listen", "127.0.0.1:0"], "--token-file"),
        (vec!["--listen", "192.0.2.1:8096", "--token-file", loose], "only loopback"),
        (vec!["--listen", "127.0.0.1:0", "--token-file", loose], "lets others read it"),
        (vec!["--socket", "/tmp/x.sock", "--socket-mode", "999"], "octal"),
    ] {
        let o = Command::new(CAPSD)
            .args(["fleet", "--etcd", "http://127.0.0.1:9", "serve"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{args:?}: {o:?}");
    }
    let help = Command::new(CAPSD).args(["fleet", "serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("?token=") && help.contains("Where can this VM run?"), "{help}");
}

/// TLS certificates for etcd: a CA, the member's certificate for 127.0.0.1, and a client
/// certificate without a CommonName (etcd's JSON gateway refuses those with one).
fn make_certs(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair};
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "capsd fleet page test CA");
    let ca = p.self_signed(&ca_key).unwrap();
    write("ca.pem", ca.pem());
    for (name, cn, sans) in
        [("server", Some("etcd-member"), vec!["127.0.0.1".to_owned()]), ("client", None, Vec::new())]
    {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
        write(&format!("{name}.pem"), p.signed_by(&key, &ca, &ca_key).unwrap().pem());
        write(&format!("{name}-key.pem"), key.serialize_pem());
    }
}

/// With TLS and etcd's authentication, the page reads with the other fleet commands'
/// options and a read-only user (`grant-reader`): hosts and verdicts as `fleet check`'s.
#[test]
fn the_fleet_page_reads_a_tls_cluster_as_a_read_only_user() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let path = |n: &str| certs.path().join(n).to_string_lossy().into_owned();
    let config = |ep: &str| capsd_fleet::EtcdConfig {
        endpoints: vec![ep.to_owned()],
        cacert: Some(path("ca.pem").into()),
        cert: Some(path("client.pem").into()),
        key: Some(path("client-key.pem").into()),
        user: None,
        password: None,
    };
    let probe = |ep: &str| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(capsd_fleet::connect(&config(ep))).is_ok()
    };
    let tls = etcd_support::ServerTls {
        cert: certs.path().join("server.pem"),
        key: certs.path().join("server-key.pem"),
        client_ca: certs.path().join("ca.pem"),
    };
    let etcd = Etcd::start_tls(1, tls, probe);
    let ep = etcd.endpoints();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let root = rt.block_on(capsd_fleet::connect(&config(&ep))).unwrap();
    rt.block_on(async {
        root.user_add("root", "root-pw").await.unwrap();
        root.role_add("root").await.unwrap();
        root.user_grant_role("root", "root").await.unwrap();
        root.auth_enable().await.unwrap();
    });
    std::fs::write(certs.path().join("root-pw"), "root-pw\n").unwrap();
    std::fs::write(certs.path().join("page-pw"), "page-pw\n").unwrap();
    let tls_args = |user: &str| {
        vec![
            "--etcd-cacert".to_owned(),
            path("ca.pem"),
            "--etcd-cert".to_owned(),
            path("client.pem"),
            "--etcd-key".to_owned(),
            path("client-key.pem"),
            "--etcd-user".to_owned(),
            user.to_owned(),
            "--etcd-password-file".to_owned(),
            path(&format!("{user}-pw")),
        ]
    };
    let o = Command::new(CAPSD)
        .args(["fleet", "--etcd", &ep])
        .args(tls_args("root"))
        .args(["grant-reader", "page", "--password-file", &path("page-pw")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let mut agent_args = vec!["--etcd", &ep, "--host-id", "tls-host", "--publish-driver", "test"];
    let root_args = tls_args("root");
    agent_args.extend(root_args.iter().map(String::as_str));
    let _agent = Agent::start(&agent_args);

    // The server, as the reader.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("page.sock");
    // Killed however the test ends (a server left running holds the test's output open).
    let mut child = KillOnDrop(
        Command::new(CAPSD)
            .args(["fleet", "--etcd", &ep])
            .args(tls_args("page"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let get = |method: &str, target: &str, body: &[u8]| -> Option<Resp> {
        let u = std::os::unix::net::UnixStream::connect(&socket).ok()?;
        request(u, method, target, &[], body).ok()
    };
    let t = Instant::now();
    loop {
        if let Some(r) = get("GET", "/api/hosts", b"") {
            if r.status == 200 && host_listed(&r.json(), "tls-host") {
                break;
            }
            get("GET", &format!("/api/wait?after={}", r.json()["revision"]), b"");
        } else {
            assert!(child.0.try_wait().unwrap().is_none(), "capsd fleet serve exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(t.elapsed() < Duration::from_secs(90), "tls-host not listed within 90 s");
    }
    let dom = domains().join("spice-q35.xml");
    let r = get("POST", "/api/check", &std::fs::read(&dom).unwrap()).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let o = Command::new(CAPSD)
        .args(["fleet", "--etcd", &ep])
        .args(tls_args("page"))
        .args(["check", dom.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let want: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"));
    assert_eq!(r.json()["hosts"], want["hosts"], "{}", r.text());
    drop(child);
}

/// A child process killed and reaped when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// --- The page in a real browser. ---

/// Chromium headless, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
/// it reads commands on descriptor 3 and writes answers and events on descriptor 4, each
/// message ended by a NUL byte), one page attached.
struct Browser {
    child: Child,
    to: std::io::PipeWriter,
    from: BufReader<std::io::PipeReader>,
    next: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let profile = tempfile::tempdir().unwrap();
        let (cmd_r, cmd_w) = std::io::pipe().unwrap();
        let (ev_r, ev_w) = std::io::pipe().unwrap();
        let (a, b) = (cmd_r.as_raw_fd(), ev_w.as_raw_fd());
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-dev-shm-usage",
            "--window-size=1400,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(profile.path().join("chromium.log")).unwrap());
        if nix::unistd::geteuid().is_root() {
            // Chromium refuses to run as root with its sandbox.
            cmd.arg("--no-sandbox");
        }
        // SAFETY: between fork and exec only async-signal-safe calls (fcntl, dup2, close) on
        // descriptors this process owns; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                // Out of the way first, in case a or b is 3 or 4 already.
                let a2 = nix::libc::fcntl(a, nix::libc::F_DUPFD, 10);
                let b2 = nix::libc::fcntl(b, nix::libc::F_DUPFD, 10);
                if a2 < 0 || b2 < 0 || nix::libc::dup2(a2, 3) < 0 || nix::libc::dup2(b2, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::libc::close(a2);
                nix::libc::close(b2);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop(cmd_r);
        drop(ev_w);
        let mut b = Browser {
            child,
            to: cmd_w,
            from: BufReader::new(ev_r),
            next: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().unwrap().to_owned();
        let attached = b.call(None, "Target.attachToTarget", json!({"targetId": id, "flatten": true}));
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b
    }

    /// Send a command and wait for its answer (events in between are skipped); an error
    /// answer is returned as `Err`.
    fn try_call(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed the DevTools pipe (its log: {})", self.log());
            buf.pop();
            let v: Value = serde_json::from_slice(&buf).unwrap();
            if v["id"].as_u64() == Some(id) {
                return match v.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(v["result"].clone()),
                };
            }
        }
    }

    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_call(session, method, params).unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn page(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.call(Some(&s), method, params)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._profile.path().join("chromium.log")).unwrap_or_default()
    }

    /// Evaluate `expr` in the page (a promise is awaited); its value as JSON.
    fn eval(&mut self, expr: &str) -> Result<Value, Value> {
        let s = self.session.clone();
        let r = self.try_call(
            Some(&s),
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(ex.clone());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Wait until the function body `cond` (JavaScript, returning a value) returns something
    /// truthy in the page, and return it; polled in the page, across navigations, for up
    /// to 90 s, then a panic naming `what`.
    fn wait_for(&mut self, what: &str, cond: &str) -> Value {
        let js = format!(
            "(async () => {{ const f = () => {{ {cond} }}; const end = Date.now() + 5000; \
             for (;;) {{ let v = null; try {{ v = f(); }} catch (e) {{ v = null; }} \
             if (v) return v; if (Date.now() > end) return null; await new Promise(r => setTimeout(r, 50)); }} }})()"
        );
        let t = Instant::now();
        let mut last = Value::Null;
        while t.elapsed() < Duration::from_secs(90) {
            match self.eval(&js) {
                Ok(v) if !v.is_null() && v != json!(false) => return v,
                // Not yet, or the page was navigating (its context went away): again.
                Ok(v) => last = v,
                Err(e) => last = e,
            }
        }
        let status = self.eval("document.getElementById('status') && document.getElementById('status').textContent");
        panic!("{what}: not within 90 s (last: {last}; page status: {status:?})");
    }

    /// The page as a PNG: all of it (`whole`) or the window.
    fn screenshot(&mut self, path: &Path, whole: bool) {
        let r = self.page("Page.captureScreenshot", json!({"format": "png", "captureBeyondViewport": whole}));
        let png = base64_decode(r["data"].as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the browser tests can run here: chromium installed (`.ci/setup`), or a failure
/// when `CAPSD_REQUIRE_LIVE` is set (CI).
fn chromium() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    assert!(std::env::var_os("CAPSD_REQUIRE_LIVE").is_none(), "{CHROMIUM} is required (CAPSD_REQUIRE_LIVE is set)");
    eprintln!("skipped: {CHROMIUM} is not installed (package chromium, .ci/setup)");
    false
}

/// Standard base64 (the screenshot's encoding).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        acc = (acc << 6) | u32::from(val(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The page in Chromium: the hosts from etcd, the matrix of each host's document's facts,
/// the verdicts of `capsd fleet check` for a pasted domain, injection shown as text, and a
/// host that appears while the page is open, without a reload.
#[test]
fn the_fleet_page_in_a_headless_browser() {
    if !chromium() {
        return;
    }
    let etcd = Etcd::start(1);
    let ep = etcd.endpoints();
    let b_fixtures = tempfile::tempdir().unwrap();
    no_spice_fixtures(b_fixtures.path());
    let a = test_agent(&ep, "host-a", None);
    let b = test_agent(&ep, "host-b", Some(b_fixtures.path()));
    let token = "browser-token-0123456789";
    let s = Server::start(&ep, token);
    s.wait_published(&a, "host-a");
    s.wait_published(&b, "host-b");
    let mut br = Browser::start();
    let base = format!("http://127.0.0.1:{}/", s.port);
    br.page("Page.navigate", json!({"url": format!("{base}?token={token}")}));

    // The hosts, as `capsd fleet hosts` lists them; the address no longer holds the token,
    // and the cookie is out of the script's reach.
    let rows = br.wait_for(
        "both hosts in the table",
        "const r = [...document.querySelectorAll('#hosts tbody tr')].map(tr => \
         [...tr.cells].map(c => c.textContent)); \
         return r.some(x => x[0] === 'host-a') && r.some(x => x[0] === 'host-b') ? r : null;",
    );
    assert_eq!(br.eval("location.href").unwrap(), json!(base));
    assert_eq!(br.eval("document.cookie").unwrap(), json!(""));
    let listed: Value = serde_json::from_slice(&fleet(&ep, &["hosts", "--format", "json"]).stdout).unwrap();
    for h in listed.as_array().unwrap() {
        let id = h["record"]["id"].as_str().unwrap();
        let row = rows.as_array().unwrap().iter().find(|r| r[0] == id).unwrap_or_else(|| panic!("{id}: {rows}"));
        assert_eq!(row[1], h["record"]["cpu"]["arch"], "{row}");
        let cpu = format!(
            "{} {}",
            h["record"]["cpu"]["vendor"].as_str().unwrap_or(""),
            h["record"]["cpu"]["model"].as_str().unwrap_or("")
        );
        assert_eq!(row[4].as_str().unwrap(), cpu.trim(), "{row}");
        assert_eq!(row[6].as_str().unwrap(), h["documents"].as_object().unwrap().len().to_string(), "{row}");
    }
    // Sorting: a click on Host sorts descending (ascending is the default).
    br.eval("document.querySelector('#hosts th[data-key=id]').click()").unwrap();
    let order = br.eval("[...document.querySelectorAll('#hosts tbody tr')].map(tr => tr.dataset.host)").unwrap();
    assert_eq!(order, json!(["host-b", "host-a"]));
    // Filtering.
    let filtered = br
        .eval(
            "{ const f = document.getElementById('host-filter'); f.value = 'host-b'; \
             f.dispatchEvent(new Event('input')); \
             [...document.querySelectorAll('#hosts tbody tr')].map(tr => tr.dataset.host) }",
        )
        .unwrap();
    assert_eq!(filtered, json!(["host-b"]));
    br.eval("{ const f = document.getElementById('host-filter'); f.value = ''; f.dispatchEvent(new Event('input')) }")
        .unwrap();

    // The matrix for KVM q35: one column per distinct document, each cell what that
    // document's facts (capsd-analysis, as `capsd diff` flattens it) say.
    br.eval("document.getElementById('m-machine').value = 'q35'; document.getElementById('m-show').click()").unwrap();
    let m = br.wait_for(
        "the q35 matrix",
        "const t = document.getElementById('matrix'); \
         const g = [...t.querySelectorAll('thead th[data-group]')].map(th => JSON.parse(th.dataset.hosts)); \
         const rows = [...t.querySelectorAll('tbody tr[data-path]')].map(tr => \
           ({path: tr.dataset.path, cells: [...tr.querySelectorAll('td.cell')].map(td => td.dataset.value)})); \
         const hasMachine = rows.some(r => r.path === '/domainCapabilities/machine' && r.cells.every(c => c.startsWith('pc-q35'))); \
         return g.length === 2 && hasMachine ? {groups: g, rows} : null;",
    );
    let groups: Vec<Vec<String>> = serde_json::from_value(m["groups"].clone()).unwrap();
    let rows = m["rows"].as_array().unwrap();
    let mut spice_cells = Vec::new();
    for (gi, hosts) in groups.iter().enumerate() {
        assert_eq!(hosts.len(), 1, "{groups:?}");
        let agent = if hosts[0] == "host-a" { &a } else { &b };
        let r = agent.get("/v1/domcapabilities?driver=test&virttype=kvm&arch=x86_64&machine=q35");
        assert_eq!(r.status, 200, "{r:?}");
        let doc = capsd_core::parse_any(&r.body).unwrap();
        let facts = capsd_analysis::facts(&doc);
        let value =
            |p: &str| facts.iter().find(|f| f.path == p).map(|f| f.value.clone().unwrap_or_else(|| "yes".into()));
        for row in rows {
            let path = row["path"].as_str().unwrap();
            let cell = row["cells"][gi].as_str().unwrap();
            match (value(path), cell) {
                (Some(v), c) => assert_eq!(v, c, "{} {path}", hosts[0]),
                (None, "") | (None, "no") => {}
                (None, c) => panic!("{}: {path} is '{c}' on the page, not in the document", hosts[0]),
            }
            if path.ends_with("enum[@name='type']/value[.='spice']") && path.contains("/graphics/") {
                spice_cells.push((hosts[0].clone(), cell.to_owned()));
            }
        }
        // Every listed enum value, every flag and CPU mode of the document has its row.
        for f in facts.iter().filter(|f| {
            (f.path.contains("/enum[@name=") && f.path.contains("/value[.='")) || f.path.ends_with("/@supported")
        }) {
            assert!(rows.iter().any(|r| r["path"] == f.path.as_str()), "{}: no row for {}", hosts[0], f.path);
        }
    }
    spice_cells.sort();
    assert_eq!(spice_cells, [("host-a".to_owned(), "yes".to_owned()), ("host-b".to_owned(), "no".to_owned())]);

    // Where can this VM run: a pasted domain gets `capsd fleet check`'s verdicts.
    for name in ["spice-q35.xml", "aarch64-virt.xml", "secboot-q35.xml", "bios-i440fx.xml"] {
        let path = domains().join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        br.eval(&format!(
            "document.getElementById('check-table').hidden = true; \
             document.getElementById('domain').value = {}; document.getElementById('check-button').click()",
            js(&text)
        ))
        .unwrap();
        let got = br.wait_for(
            &format!("verdicts for {name}"),
            "const t = document.getElementById('check-table'); if (t.hidden) return null; \
             return [...t.querySelectorAll('tbody tr')].map(tr => [tr.dataset.host, tr.dataset.verdict, tr.dataset.finding || null]);",
        );
        let o = fleet(&ep, &["check", path.to_str().unwrap(), "--format", "json"]);
        let want: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{name}: {e}: {o:?}"));
        let want: Vec<Value> = want["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| json!([h["host"], h["verdict"], h["finding"]["path"]]))
            .collect();
        assert_eq!(got, json!(want), "{name}");
        if name == "spice-q35.xml" {
            let bv = want.iter().find(|h| h[0] == "host-b").unwrap();
            assert_eq!(bv[1], "unsupported", "{bv}");
            assert!(bv[2].as_str().unwrap().contains("graphics"), "{bv}");
        }
    }
    // Uploading a file checks it the same way; a 10 MB file gets a message, not a check.
    let upload = |br: &mut Browser, file: &Path| {
        let doc = br.page("DOM.getDocument", json!({}));
        let node = br.page("DOM.querySelector", json!({"nodeId": doc["root"]["nodeId"], "selector": "#domain-file"}));
        // Chromium reads only a path without `..` in it.
        let file = file.canonicalize().unwrap();
        br.page("DOM.setFileInputFiles", json!({"nodeId": node["nodeId"], "files": [file.to_str().unwrap()]}));
    };
    br.eval("document.getElementById('check-table').hidden = true; document.getElementById('domain').value = ''")
        .unwrap();
    upload(&mut br, &domains().join("spice-q35.xml"));
    let got = br.wait_for(
        "verdicts for the uploaded file",
        "const t = document.getElementById('check-table'); if (t.hidden) return null; \
         return [...t.querySelectorAll('tbody tr')].map(tr => [tr.dataset.host, tr.dataset.verdict]);",
    );
    assert_eq!(got, json!([["host-a", "unknown"], ["host-b", "unsupported"]]), "{got}");
    let big = tempfile::tempdir().unwrap();
    let big_file = big.path().join("huge.xml");
    let mut content = b"<domain type='kvm'><description>".to_vec();
    content.resize(10 << 20, b'a');
    std::fs::write(&big_file, content).unwrap();
    upload(&mut br, &big_file);
    let msg = br.wait_for(
        "the message for a 10 MB file",
        "const m = document.getElementById('check-message'); \
         return m.classList.contains('error') && m.textContent.includes('huge.xml') ? m.textContent : null;",
    );
    assert!(msg.as_str().unwrap().contains("larger than the 4 MiB"), "{msg}");

    // Malformed XML: a message on the page, no crash.
    br.eval("document.getElementById('domain').value = '<domain type=\"kvm\"><os>'; document.getElementById('check-button').click()")
        .unwrap();
    let msg = br.wait_for(
        "the message for malformed XML",
        "const m = document.getElementById('check-message'); \
         return m.classList.contains('error') ? m.textContent : null;",
    );
    assert!(msg.as_str().unwrap().contains("not a usable domain definition"), "{msg}");

    // Live: a page left open shows a host that starts publishing and a hostile record, as
    // text, without reloading (a reload would drop the marker).
    br.eval("window.__notReloaded = 42").unwrap();
    let _c = test_agent(&ep, "host-c", None);
    let raw = Raw::plain(&ep);
    raw.put("/capsd/hosts/evil", hostile_record("evil"));
    raw.put("/capsd/hosts/<img src=x onerror=\"document.title='pwned'\">\u{1b}[31m", "x");
    let evil = br.wait_for(
        "host-c and the hostile record appear",
        "const r = [...document.querySelectorAll('#hosts tbody tr')]; \
         const c = r.find(tr => tr.dataset.host === 'host-c'); const e = r.find(tr => tr.dataset.host === 'evil'); \
         return c && e && c.cells[6].textContent !== '0' ? [...e.cells].map(td => td.textContent) : null;",
    );
    assert_eq!(br.eval("window.__notReloaded").unwrap(), json!(42), "the page was reloaded");
    assert!(evil[4].as_str().unwrap().contains("<img src=x onerror="), "{evil}");
    assert!(evil[4].as_str().unwrap().contains("\\u{1b}"), "control characters shown escaped: {evil}");
    assert!(evil[2].as_str().unwrap().contains("<script>"), "{evil}");
    let problems = br.wait_for(
        "the bad key listed",
        "const t = document.getElementById('problems').textContent; return t.includes('<img src=x') ? t : null;",
    );
    assert!(problems.as_str().unwrap().contains("not a host record key"), "{problems}");
    assert!(
        problems.as_str().unwrap().contains("\\u{1b}[31m") && !problems.as_str().unwrap().contains('\u{1b}'),
        "{problems}"
    );
    // Nothing of it became markup or ran.
    assert_eq!(br.eval("document.querySelectorAll('img, b, main script').length").unwrap(), json!(0));
    assert_eq!(br.eval("document.title").unwrap(), json!("capsd fleet"));

    // The matrix followed too: host-c shares host-a's document (the built-in set).
    let shared = br.wait_for(
        "host-c in host-a's column",
        "const g = [...document.querySelectorAll('#matrix thead th[data-group]')].map(th => JSON.parse(th.dataset.hosts)); \
         return g.find(h => h.includes('host-c'));",
    );
    assert_eq!(shared, json!(["host-a", "host-c"]));

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fleet-web/fleet-page.png");
    br.screenshot(&shot, true);
    br.eval("window.scrollTo(0, 0)").unwrap();
    br.screenshot(&shot.with_file_name("fleet-page-top.png"), false);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "{}", shot.display());
    eprintln!("screenshot: {}", shot.display());

    // etcd gone: the page says so and keeps what it showed.
    let mut etcd = etcd;
    etcd.kill(0);
    let status = br.wait_for(
        "the page reports the store unreachable",
        "const s = document.getElementById('status'); return s.classList.contains('error') ? s.textContent : null;",
    );
    assert!(status.as_str().unwrap().starts_with("etcd: "), "{status}");
    let still = br.eval("document.querySelectorAll('#hosts tbody tr').length").unwrap();
    assert!(still.as_u64().unwrap() >= 3, "{still}");
}

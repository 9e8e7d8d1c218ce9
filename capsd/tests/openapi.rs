//! The agent's OpenAPI description against the agent itself.
//!
//! - The document `capsd generate-assets --openapi FILE` writes is the one `/v1/openapi.json`
//!   serves (Unix socket, and loopback TCP with the token), and an independent validator,
//!   PyPI's `openapi-spec-validator` (installed by `.ci/setup` in a venv,
//!   `$CAPSD_TEST_VENV`, default `/opt/capsd-test-venv`), accepts it as OpenAPI 3.1. Without
//!   that venv the test is skipped and listed by name, except under `CI=true` or
//!   `CAPSD_REQUIRE_REFERENCE=1`, where it fails.
//! - A client driven by the document calls every operation it describes on real agents
//!   (`capsd serve` on a Unix socket and on loopback TCP with a token): for each operation a
//!   request per response content type (by `Accept`) and per parameter example, a value
//!   outside each parameter's schema (400), the token missing or wrong where the operation's
//!   security asks for it (401), other methods (405); plus the causes the document names
//!   that need a set-up (403, 404, 501, 502, 503, 504). Every answer's status must be one the
//!   operation documents, its content type one documented for that status, its body valid
//!   against that content's schema (Rust's `jsonschema`), its headers valid against theirs
//!   (required ones present, none of capsd's undocumented). At the end every status every
//!   operation documents must have been seen, except those listed in [`NOT_PROVOKED`] with
//!   the reason.

mod agent_support;
mod live_support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use agent_support::{connect_tcp, free_port, token_file, Agent, Resp};
use serde_json::Value;

/// Documented statuses no request from outside can cause, with the reason.
const NOT_PROVOKED: [(&str, &str, &str); 4] = [
    ("*", "500", "an internal failure (a driver's I/O error, a listing thread that died) has no outside cause"),
    (
        "/v1/explain",
        "404",
        "the qemu driver calls what a query names and QEMU lacks invalid input (400); not-supported is a KVM query on a host whose QEMU could not use KVM",
    ),
    ("/v1/explain", "501", "the qemu driver is built into the capsd the tests run, and usable where they run"),
    (
        "/v1/drivers",
        "504",
        "the availability checks of the built-in drivers answer at once; only a hanging plugin is slower",
    ),
];

/// Methods besides GET a client may try (HEAD comes with GET).
const OTHER_METHODS: [&str; 3] = ["POST", "PUT", "DELETE"];

fn capsd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_capsd")).args(args).output().unwrap()
}

/// The venv `.ci/setup` installs openapi-spec-validator into.
fn venv() -> PathBuf {
    std::env::var_os("CAPSD_TEST_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or("/opt/capsd-test-venv".into())
}

/// The validator, or `None` after reporting the skip (a failure where it is required).
fn validator(test: &str) -> Option<PathBuf> {
    let v = venv().join("bin/openapi-spec-validator");
    if v.is_file() {
        return Some(v);
    }
    let required =
        std::env::var("CI").as_deref() == Ok("true") || std::env::var("CAPSD_REQUIRE_REFERENCE").as_deref() == Ok("1");
    assert!(
        !required,
        "{} is missing (bash .ci/setup installs it) and CI=true or CAPSD_REQUIRE_REFERENCE=1",
        v.display()
    );
    eprintln!(
        "skipped {test}: {} is missing (bash .ci/setup installs it; CI=true or CAPSD_REQUIRE_REFERENCE=1 makes this fail)",
        v.display()
    );
    if let Some(log) = std::env::var_os("CAPSD_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "capsd/openapi::{test}\t{}", v.display());
        }
    }
    None
}

fn generated(dir: &Path) -> String {
    let file = dir.join("openapi.json");
    let out = capsd(&["generate-assets", "--openapi", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(file).unwrap()
}

#[test]
fn the_description_validates_and_is_what_the_agent_serves() {
    let dir = tempfile::tempdir().unwrap();
    let text = generated(dir.path());
    let (token_path, token) = token_file(dir.path());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let a = Agent::start(&["--listen", &listen, "--token-file", token_path.to_str().unwrap()]);
    let r = a.get("/v1/openapi.json");
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
    assert_eq!(r.body, text, "the agent serves other bytes than generate-assets writes");
    let auth = format!("Bearer {token}");
    let r = request(connect_tcp(port), "GET", "/v1/openapi.json", &[("Authorization", &auth)]);
    assert_eq!((r.status, &r.body), (200, &text));
    assert_eq!(request(connect_tcp(port), "GET", "/v1/openapi.json", &[]).status, 401);

    let Some(validator) = validator("the_description_validates_and_is_what_the_agent_serves") else { return };
    let file = dir.path().join("openapi.json");
    let out = Command::new(&validator).args(["--schema", "3.1"]).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refuses the description:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator does judge: a response without its required description is refused.
    let mut broken: Value = serde_json::from_str(&text).unwrap();
    broken["paths"]["/healthz"]["get"]["responses"]["200"].as_object_mut().unwrap().remove("description");
    let bad = dir.path().join("broken.json");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let out = Command::new(&validator).args(["--schema", "3.1"]).arg(&bad).output().unwrap();
    assert!(!out.status.success(), "openapi-spec-validator accepted a response without a description");
}

#[test]
fn generate_assets_names_a_bad_openapi_file_and_leaves_the_old_one() {
    let out = capsd(&["generate-assets", "--openapi", "/nonexistent/dir/openapi.json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--openapi /nonexistent/dir/openapi.json"), "{err}");
    // A directory in the file's place: refused, nothing left beside it.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("openapi.json");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), "x").unwrap();
    let out = capsd(&["generate-assets", "--openapi", target.to_str().unwrap()]);
    assert!(!out.status.success(), "replaced a directory");
    assert!(target.join("keep").is_file());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "a temporary file was left behind: {left:?}");
    // A link is followed, and stays a link; a pipe or device is written in place
    // (`--openapi /dev/stdout` prints it).
    let real = dir.path().join("real.json");
    let link = dir.path().join("link.json");
    std::fs::write(&real, "old").unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = capsd(&["generate-assets", "--openapi", link.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let text = std::fs::read_to_string(&real).unwrap();
    assert!(text.starts_with("{\n  \"openapi\": \"3.1.0\""), "{text}");
    let out = capsd(&["generate-assets", "--openapi", "/dev/stdout"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
}

/// One request, `Connection: close`, the whole answer read.
fn request(mut s: impl Read + Write, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: capsd\r\nConnection: close\r\n");
    if method != "GET" {
        req.push_str("Content-Length: 0\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("{method} {target}: {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    Resp { status, headers, body: body.to_owned() }
}

/// Percent-encoding for a query value.
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// How a request reaches an agent.
#[derive(Clone, Copy)]
enum Via<'a> {
    Unix(&'a Agent),
    /// Loopback TCP: the port and the `Authorization` value, if any.
    Tcp(u16, Option<&'a str>),
}

/// The client: the description, what it saw, and the checks of each answer.
struct Client {
    doc: Value,
    /// (path, status) of every answer.
    seen: BTreeSet<(String, String)>,
    /// The `error` of every error answer.
    kinds: BTreeSet<String>,
    log: Vec<String>,
}

impl Client {
    /// `method target` via `via`, checked against the description of `path`'s GET (the only
    /// method described; other methods answer that operation's 405). Returns the answer.
    fn call(&mut self, via: Via, method: &str, path: &str, query: &str, headers: &[(&str, &str)]) -> Resp {
        let target = if query.is_empty() { path.to_owned() } else { format!("{path}?{query}") };
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        let r = match via {
            Via::Unix(a) => request(UnixStream::connect(&a.socket).unwrap(), method, &target, &all),
            Via::Tcp(port, auth) => {
                if let Some(auth) = auth {
                    all.push(("Authorization", auth));
                }
                request(connect_tcp(port), method, &target, &all)
            }
        };
        let what = format!("{method} {target} ({})", if matches!(via, Via::Unix(_)) { "unix" } else { "tcp" });
        self.check(path, &what, &r);
        let short: String = what.chars().take(160).collect();
        self.log.push(format!("{short} -> {}", r.status));
        r
    }

    fn check(&mut self, path: &str, what: &str, r: &Resp) {
        let op = &self.doc["paths"][path]["get"];
        assert!(op.is_object(), "{what}: {path} is not described");
        let status = r.status.to_string();
        let resp = &op["responses"][&status];
        assert!(resp.is_object(), "{what}: status {status} is not documented for {path}: {}", r.body);
        // Content.
        let ctype = r.header("content-type").unwrap_or("");
        match resp["content"].as_object() {
            Some(content) => {
                let media = content.get(ctype).unwrap_or_else(|| {
                    panic!(
                        "{what}: content type {ctype:?} is not documented for {status} (documented: {:?})",
                        content.keys()
                    )
                });
                let instance = if ctype.starts_with("application/json") {
                    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", r.body))
                } else {
                    Value::String(r.body.clone())
                };
                self.valid(what, "body", &media["schema"], &instance);
            }
            None => assert!(r.body.is_empty(), "{what}: a body where {status} documents none"),
        }
        // Headers: required ones present, present ones valid, none of capsd's undocumented.
        let documented = resp["headers"].as_object().cloned().unwrap_or_default();
        for (name, h) in &documented {
            match r.header(name) {
                Some(v) => self.valid(what, &format!("header {name}"), &h["schema"], &Value::from(v)),
                None => assert!(h["required"] != true, "{what}: required header {name} is missing"),
            }
        }
        for (name, _) in &r.headers {
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("capsd-") || ["warning", "www-authenticate", "allow"].contains(&lower.as_str()) {
                assert!(
                    documented.keys().any(|d| d.eq_ignore_ascii_case(name)),
                    "{what}: header {name} is not documented for {status}"
                );
            }
        }
        self.seen.insert((path.to_owned(), status));
        if ctype == "application/json" && r.status >= 400 {
            self.kinds.insert(r.json()["error"].as_str().unwrap_or_default().to_owned());
        }
    }

    /// `instance` against `schema`, whose references resolve in the description's components.
    fn valid(&self, what: &str, part: &str, schema: &Value, instance: &Value) {
        let root = serde_json::json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": self.doc["components"],
            "allOf": [schema],
        });
        let v =
            jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("{what}: {part}: schema does not compile: {e}"));
        let errors: Vec<String> = v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(
            errors.is_empty(),
            "{what}: {part} does not match its schema {schema}:\n{}\n{instance}",
            errors.join("\n")
        );
    }
}

/// The query each route answers 200 to: the test driver's documents, except for
/// `/v1/explain`, which only the qemu driver records evidence for (this host's default
/// QEMU document; a live test, as CI requires).
fn ok_query(path: &str) -> &'static str {
    if path == "/v1/explain" {
        "select=os"
    } else {
        "driver=test"
    }
}

fn fake_emulator(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A value outside a parameter's schema, and why (for each schema constraint it has).
fn outside(schema: &Value) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    if schema["minLength"].as_u64().is_some_and(|n| n > 0) {
        out.push((String::new(), "shorter than minLength"));
    }
    if let Some(n) = schema["maxLength"].as_u64() {
        // Of the pattern's first character otherwise ('/' for a path), one too long.
        let first = if schema["pattern"].as_str().is_some_and(|p| p.starts_with("^/")) { "/" } else { "a" };
        out.push((first.to_owned() + &"a".repeat(n as usize), "longer than maxLength"));
    }
    if schema["pattern"].is_string() {
        // Matches none of the patterns used here (all anchored to a first character class or '/').
        out.push(("!x".to_owned(), "outside the pattern"));
    }
    out
}

#[test]
fn a_client_driven_by_the_description_gets_what_it_describes_from_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let failing = fake_emulator(dir.path(), "failing-qemu", "exit 1");
    let hanging = fake_emulator(dir.path(), "hanging-qemu", "exec sleep 30");
    let (token_path, token) = token_file(dir.path());
    let auth = format!("Bearer {token}");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let a = Agent::start_in(
        tempfile::tempdir().unwrap(),
        &["--listen", &listen, "--token-file", token_path.to_str().unwrap(), "--emulator", failing.to_str().unwrap()],
    );
    let doc: Value = serde_json::from_str(&a.get("/v1/openapi.json").body).unwrap();
    let mut c = Client { doc: doc.clone(), seen: BTreeSet::new(), kinds: BTreeSet::new(), log: Vec::new() };
    let paths = doc["paths"].as_object().unwrap().clone();
    assert!(paths.len() >= 5, "{paths:?}");

    for (path, item) in &paths {
        let op = &item["get"];
        assert!(op.is_object(), "{path}: only GET is served, and it is not described");
        // Each documented content of the 200 answer, asked for by Accept.
        for ctype in op["responses"]["200"]["content"].as_object().unwrap().keys() {
            let r = c.call(Via::Unix(&a), "GET", path, ok_query(path), &[("Accept", ctype)]);
            if path == "/v1/domcapabilities" || (path == "/v1/explain" && live_support::live()) {
                assert_eq!((r.status, r.header("content-type")), (200, Some(ctype.as_str())), "Accept: {ctype}");
            }
            let r = c.call(Via::Unix(&a), "GET", path, "", &[("Accept", ctype)]);
            assert!(r.status < 500 || path == "/v1/domcapabilities" || path == "/v1/explain", "{path}: {}", r.body);
        }
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        for p in &params {
            let name = p["name"].as_str().unwrap();
            assert_eq!(p["in"], "query", "{path}: {name}");
            // Its example is accepted (answered by the document or a driver's verdict, never 400
            // for the form of the value).
            if let Some(example) = p["example"].as_str() {
                let r = c.call(Via::Unix(&a), "GET", path, &format!("{name}={}", enc(example)), &[]);
                let form_refused = r.status == 400 && r.json()["error"] == "invalid-parameter";
                assert!(!form_refused, "{path}: the example {name}={example} is refused: {}", r.body);
            }
            // Values outside its schema are refused, naming it.
            for (bad, why) in outside(&p["schema"]) {
                let r = c.call(Via::Unix(&a), "GET", path, &format!("{name}={}", enc(&bad)), &[]);
                assert_eq!(r.status, 400, "{path}: {name}={bad:?} ({why}) was not refused: {}", r.body);
                assert_eq!(r.json()["parameter"], name, "{}", r.body);
            }
        }
        if !params.is_empty() {
            // Parameters are exactly those described.
            let r = c.call(Via::Unix(&a), "GET", path, "not-a-parameter=1", &[]);
            assert_eq!(r.status, 400, "{path}: an undescribed parameter was accepted");
        }
        // Security: with a non-empty requirement, TCP without the token or with a wrong one is
        // 401; with it, the same as the Unix socket. Without one, TCP needs no token.
        let secured = op["security"].as_array().unwrap().iter().any(|s| s.get("bearer").is_some());
        let r = c.call(Via::Tcp(port, None), "GET", path, "", &[]);
        assert_eq!(r.status == 401, secured, "{path}: {}", r.body);
        let r = c.call(Via::Tcp(port, Some("Bearer wrong-token-of-sixteen")), "GET", path, "", &[]);
        assert_eq!(r.status == 401, secured, "{path}: {}", r.body);
        let r = c.call(Via::Tcp(port, Some(&auth)), "GET", path, ok_query(path), &[]);
        if path != "/v1/explain" || live_support::live() {
            assert_eq!(r.status, 200, "{path} with the token: {}", r.body);
        }
        for method in OTHER_METHODS {
            let r = c.call(Via::Unix(&a), method, path, "", &[]);
            assert_eq!(r.status, 405, "{method} {path}");
        }
    }

    // The causes that need a set-up.
    let dc = "/v1/domcapabilities";
    let r = c.call(Via::Unix(&a), "GET", dc, "emulatorbin=%2Fbin%2Fsh", &[]);
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("emulator-not-allowed")), "{}", r.body);
    let r = c.call(Via::Unix(&a), "GET", dc, "driver=test&arch=z80", &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = c.call(Via::Unix(&a), "GET", dc, "driver=test&arch=x86_64", &[("Accept", "application/json")]);
    assert_eq!(r.status, 200, "{}", r.body);
    // The JSON form of every built-in test document, against the schema traced from the model.
    for q in [
        "arch=x86_64&virttype=kvm",
        "arch=x86_64&virttype=kvm&machine=q35",
        "arch=x86_64&virttype=qemu",
        "arch=x86_64&virttype=qemu&machine=q35",
        "arch=aarch64&virttype=qemu",
        "arch=ppc64&virttype=qemu",
        "arch=riscv64&virttype=qemu",
        "arch=s390x&virttype=qemu",
    ] {
        let r = c.call(Via::Unix(&a), "GET", dc, &format!("driver=test&{q}"), &[("Accept", "application/json")]);
        assert_eq!(r.status, 200, "{q}: {}", r.body);
    }
    let r = c.call(Via::Unix(&a), "GET", dc, "driver=nosuch", &[]);
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid-parameter")), "{}", r.body);
    let r = c.call(Via::Unix(&a), "GET", dc, &format!("emulatorbin={}", enc(failing.to_str().unwrap())), &[]);
    assert_eq!((r.status, r.json()["error"].as_str()), (502, Some("probe-failed")), "{}", r.body);
    // The same causes for /v1/explain (qemu only).
    let ex = "/v1/explain";
    let r = c.call(Via::Unix(&a), "GET", ex, "emulatorbin=%2Fbin%2Fsh", &[]);
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("emulator-not-allowed")), "{}", r.body);
    let r = c.call(Via::Unix(&a), "GET", ex, &format!("emulatorbin={}", enc(failing.to_str().unwrap())), &[]);
    assert_eq!((r.status, r.json()["error"].as_str()), (502, Some("probe-failed")), "{}", r.body);
    let r = c.call(Via::Unix(&a), "GET", ex, "driver=test", &[]);
    assert_eq!((r.status, r.json()["parameter"].as_str()), (400, Some("driver")), "{}", r.body);
    if live_support::live() {
        let r = c.call(Via::Unix(&a), "GET", ex, "select=no-such-element", &[]);
        assert_eq!((r.status, r.json()["parameter"].as_str()), (400, Some("select")), "{}", r.body);
    }
    // xen answers only on a Xen host (501 elsewhere).
    let xen = c.call(Via::Unix(&a), "GET", dc, "driver=xen", &[]);
    if std::path::Path::new("/sys/hypervisor/type").exists() {
        eprintln!("a Xen host: driver=xen answered {}", xen.status);
    } else {
        assert_eq!((xen.status, xen.json()["error"].as_str()), (501, Some("driver-unavailable")), "{}", xen.body);
    }
    if live_support::live() {
        // The qemu document names its libvirt release; a release beyond capsd's table warns.
        let r = c.call(Via::Unix(&a), "GET", dc, "", &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("capsd-libvirt-version").is_some() && r.header("capsd-libvirt-rules").is_some());
        let r = c.call(Via::Unix(&a), "GET", dc, "libvirt=99.1", &[("Accept", "application/json")]);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("capsd-libvirt-version"), Some("99.1.0"));
        assert!(r.header("warning").is_some_and(|w| w.starts_with("299 capsd ")), "{:?}", r.headers);
        let r = c.call(Via::Unix(&a), "GET", dc, "virttype=nosuchvirt", &[]);
        assert!(r.status == 400 || r.status == 404, "{}", r.body);
    }
    // A path not described: 404 with the error body the description defines.
    let r = request(UnixStream::connect(&a.socket).unwrap(), "GET", "/v1/no-such-route", &[]);
    assert_eq!((r.status, r.header("content-type")), (404, Some("application/json")));
    c.valid("GET /v1/no-such-route", "body", &serde_json::json!({"$ref": "#/components/schemas/Error"}), &r.json());
    c.kinds.insert(r.json()["error"].as_str().unwrap().to_owned());
    drop(a);

    // 504: a probe that never answers, past a short request timeout.
    let b = Agent::start_in(
        tempfile::tempdir().unwrap(),
        &["--emulator", hanging.to_str().unwrap(), "--request-timeout-ms", "300"],
    );
    let r = c.call(Via::Unix(&b), "GET", dc, &format!("emulatorbin={}", enc(hanging.to_str().unwrap())), &[]);
    assert_eq!((r.status, r.json()["error"].as_str()), (504, Some("timeout")), "{}", r.body);
    let r =
        c.call(Via::Unix(&b), "GET", "/v1/explain", &format!("emulatorbin={}", enc(hanging.to_str().unwrap())), &[]);
    assert_eq!((r.status, r.json()["error"].as_str()), (504, Some("timeout")), "{}", r.body);
    drop(b);

    // 503: one authenticated TCP slot, held by a connection that sent the token; every
    // other connection's first request with the token finds it taken.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let held_dir = tempfile::tempdir().unwrap();
    let (token_path, token) = token_file(held_dir.path());
    let auth = format!("Bearer {token}");
    let d = Agent::start_in(
        held_dir,
        &["--listen", &listen, "--token-file", token_path.to_str().unwrap(), "--max-connections", "1"],
    );
    let mut held = connect_tcp(port);
    write!(held, "GET /healthz HTTP/1.1\r\nHost: capsd\r\nAuthorization: {auth}\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !String::from_utf8_lossy(&got).ends_with("ok\n") {
        let n = held.read(&mut buf).unwrap();
        assert!(n > 0, "the held connection closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    for path in paths.keys() {
        let r = c.call(Via::Tcp(port, Some(&auth)), "GET", path, "", &[]);
        assert_eq!((r.status, r.json()["error"].as_str()), (503, Some("too-many-connections")), "{path}");
    }
    drop(held);
    drop(d);

    // Every documented status was seen, but those no outside request can cause.
    let mut missing = Vec::new();
    for (path, item) in &paths {
        for status in item["get"]["responses"].as_object().unwrap().keys() {
            let exempt = NOT_PROVOKED.iter().any(|(p, s, _)| (*p == "*" || p == path) && s == status);
            if !exempt && !c.seen.contains(&(path.clone(), status.clone())) {
                missing.push(format!("{path} {status}"));
            }
        }
    }
    assert!(missing.is_empty(), "documented but never seen: {missing:?}\nrequests:\n{}", c.log.join("\n"));
    // The exemptions are of documented statuses (so the list cannot rot silently).
    for (p, s, why) in NOT_PROVOKED {
        let documented =
            paths.iter().any(|(path, item)| (p == "*" || p == path) && item["get"]["responses"].get(s).is_some());
        assert!(documented, "NOT_PROVOKED lists {p} {s} ({why}), which is not documented");
    }
    // Every error kind the description lists was seen, but those needing what this host
    // lacks: a capsd built without a driver (capsd/tests/agent.rs builds none), a driver
    // rejecting a value of the right form (qemu's verdicts depend on the host), an internal
    // failure.
    let unseen: Vec<&str> = doc["components"]["schemas"]["ErrorKind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .filter(|k| !c.kinds.contains(*k) && !["driver-not-built-in", "invalid-input", "internal"].contains(k))
        .collect();
    assert!(unseen.is_empty(), "error kinds never answered: {unseen:?} (seen: {:?})", c.kinds);
    eprintln!("{} requests, every answer as described:\n{}", c.log.len(), c.log.join("\n"));
}

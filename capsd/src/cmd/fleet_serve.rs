//! `capsd fleet serve`: the fleet in a browser. One self-contained page (HTML, CSS and
//! JavaScript compiled into the binary) and the JSON behind it, read-only: no route writes
//! to etcd.
//!
//! - `GET /api/hosts`: the hosts (record fields, references, damaged records) and what the
//!   read left out (`problems`).
//! - `GET /api/matrix?virttype=&arch=&machine=`: the capability matrix for one query: hosts
//!   grouped by identical document (capsd-fleet's document lookup, the one `fleet
//!   baseline`/`diff` use), rows from capsd-analysis's `facts` (the flattening `capsd diff`
//!   compares), never a second reading of the XML.
//! - `POST /api/check[?strict=1]` with a domain definition as the body: exactly the JSON of
//!   `capsd fleet check --format json` (the same `check` function writes it).
//! - `GET /api/wait?after=REV`: long poll; answers at once when the snapshot's revision is
//!   newer than REV, else at the next read of the store (good or failed), or after 25 s. The snapshot is read again after every change under the prefix
//!   (an etcd watch), so an open page follows the fleet without reloading.
//!
//! On TCP every route but `/healthz` needs the token of `--token-file` (the agent's rules):
//! `Authorization: Bearer TOKEN`, or a session cookie (HttpOnly, SameSite=Strict) that a
//! browser gets by opening any page once with `?token=TOKEN`; that answer redirects to the
//! same URL without the token. The Unix socket is guarded by its mode and group.
//! Everything read from the store reaches the page as JSON and is put in the page as text
//! (never as markup), under a Content-Security-Policy that allows no inline script.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use capsd_analysis::Domain;
use capsd_fleet::analysis::Found;
use capsd_fleet::{Layout, Scope, Selection, Snapshot};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::agent::auth::TokenFile;
use crate::agent::conn::{self, ConnLimits, Pool, Pools};
use crate::agent::server::{bind_tcp, bind_unix, remove_socket, SocketOptions};

const PAGE_HTML: &str = include_str!("fleet_page.html");
const PAGE_JS: &str = include_str!("fleet_page.js");
const PAGE_CSS: &str = include_str!("fleet_page.css");

/// Largest domain definition accepted (capsd-analysis's own limit).
pub const MAX_DOMAIN: usize = capsd_analysis::tree::MAX_INPUT_BYTES;
/// How long `/api/wait` holds a request without a change.
const WAIT: Duration = Duration::from_secs(25);
/// The session cookie's name.
const COOKIE: &str = "capsd_fleet_session";
/// Connections with the token (or on the Unix socket): the agent's defaults, fewer slots.
const LIMITS: ConnLimits =
    ConnLimits { max_connections: 64, header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60) };
/// TCP connections that have not yet sent the token (or cookie).
const UNAUTHENTICATED: ConnLimits =
    ConnLimits { max_connections: 16, header_timeout: Duration::from_secs(2), idle_timeout: Duration::from_secs(2) };

#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Open http://ADDR/?token=TOKEN once (TOKEN: the content of --token-file); the page \
                  swaps the token for a session cookie (HttpOnly, SameSite=Strict) and drops it from the \
                  address. Programs send `Authorization: Bearer TOKEN` instead. On the Unix socket \
                  (--socket) whoever may open the socket may read the page. Nothing is ever written to \
                  etcd; a reader role is enough (`capsd fleet grant-reader`).\n\n\
                  The page: the hosts (sortable, filterable), the capability matrix of one query (hosts \
                  with identical documents share a column; a dash is 'not stated', never 'no'), and \
                  'Where can this VM run?' (paste or upload a domain definition: each host's verdict and \
                  the finding that decides it, as `capsd fleet check` gives them). It follows the fleet \
                  while open (etcd watch, no reload). JSON behind it: /api/hosts, /api/matrix, \
                  /api/check (POST), /api/wait.")]
pub struct ServeArgs {
    /// Serve on this loopback TCP address (127.0.0.1:PORT or [::1]:PORT); needs --token-file.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// The token TCP clients must present (the agent's rules: owned by root or this user,
    /// mode 600 or 640, at least 16 printable characters). SIGHUP reads it again.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Serve on this Unix socket (no token: guarded by its mode and group).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// The Unix socket's permission bits, in octal.
    #[arg(long, value_name = "MODE", default_value = "0660", value_parser = parse_mode)]
    socket_mode: u32,
    /// Group owning the Unix socket (name or number; default: this process's group).
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("'{s}' is not an octal mode (0600, 0660...)"))
}

/// The snapshot the page is served from, and how reading it last went.
#[derive(Debug, Default)]
struct Current {
    snap: Option<Arc<Snapshot>>,
    /// Why the last read failed (the page says so; the last good snapshot stays).
    error: Option<String>,
}

#[derive(Debug)]
struct Shared {
    client: capsd_fleet::Client,
    layout: Layout,
    current: Mutex<Current>,
    /// The snapshot's revision, for `/api/wait`.
    revision: tokio::sync::watch::Sender<i64>,
    token: Option<TokenFile>,
    /// The session cookie's value for the current token (set on the first exchange).
    session: Mutex<Option<String>>,
    /// Random per process: the cookie is SHA-256 of it and the token.
    secret: [u8; 32],
}

impl Shared {
    fn snapshot(&self) -> Result<Arc<Snapshot>, ApiError> {
        let c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        match (&c.snap, &c.error) {
            (Some(s), _) => Ok(s.clone()),
            (None, e) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store",
                format!("the fleet could not be read yet: {}", e.as_deref().unwrap_or("reading")),
            )),
        }
    }

    /// Keep documents a request fetched, when the snapshot is still the current one.
    fn offer(&self, snap: Snapshot) {
        let mut c = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if c.snap.as_ref().is_some_and(|s| s.revision == snap.revision && s.fetched() < snap.fetched()) {
            c.snap = Some(Arc::new(snap));
        }
    }
}

/// An error answer: a status and `{"error": KIND, "message": ...}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: String) -> Self {
        ApiError { status, kind, message }
    }
    fn bad(message: String) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_input", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.kind, "message": self.message});
        (self.status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

fn json_response(v: &Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], v.to_string()).into_response()
}

/// Run the server until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs, layout: Layout, cfg: capsd_fleet::EtcdConfig) -> Result<ExitCode> {
    if args.listen.is_empty() && args.socket.is_none() {
        anyhow::bail!("capsd fleet serve needs --listen ADDR (with --token-file) or --socket PATH");
    }
    if !args.listen.is_empty() && args.token_file.is_none() {
        anyhow::bail!("--listen needs --token-file: every TCP client must present the token");
    }
    if let Some(a) = args.listen.iter().find(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "--listen {a}: only loopback addresses are allowed (the token and the page travel in clear text); \
             reach it through ssh -L or a TLS proxy"
        );
    }
    let token = match &args.token_file {
        Some(p) => Some(TokenFile::load(p).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let mut secret = [0u8; 32];
    {
        use std::io::Read as _;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut secret))
            .context("reading /dev/urandom for the session secret")?;
    }
    // Signals first, so a stop during start-up is not lost.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let client = capsd_fleet::connect(&cfg).await?;
    let (revision, _) = tokio::sync::watch::channel(0);
    let shared = Arc::new(Shared {
        client,
        layout,
        current: Mutex::new(Current::default()),
        revision,
        token,
        session: Mutex::new(None),
        secret,
    });
    // The first read before serving: an unreadable store is named at start.
    let first = Snapshot::read(&shared.client, &shared.layout, &Scope::All).await?;
    publish(&shared, Ok(first));
    tokio::spawn(follow(shared.clone(), cfg));

    // The agent's accept loop: bounded connections, header and idle timeouts, a small pool
    // for TCP connections that have not shown the token yet.
    let metrics = Arc::new(crate::agent::metrics::Metrics::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut bound_socket = None;
    for addr in &args.listen {
        let l = bind_tcp(*addr).await?;
        tracing::info!(addr = ?l.local_addr().ok(), "fleet page on loopback TCP (token required)");
        let pools = Pools { main: Pool::new(LIMITS), unauthenticated: Some(Pool::new(UNAUTHENTICATED)) };
        tasks.spawn(conn::serve(l, router(shared.clone(), true), pools, metrics.clone(), stopped.clone()));
    }
    if let Some(path) = &args.socket {
        let l = bind_unix(&SocketOptions { path: path.clone(), mode: args.socket_mode, group: args.socket_group })?;
        bound_socket = Some(path.clone());
        tracing::info!(path = %path.display(), "fleet page on a Unix socket");
        let pools = Pools { main: Pool::new(LIMITS), unauthenticated: None };
        tasks.spawn(conn::serve(l, router(shared.clone(), false), pools, metrics.clone(), stopped.clone()));
    }
    let result = loop {
        tokio::select! {
            _ = term.recv() => break Ok(ExitCode::SUCCESS),
            _ = int.recv() => break Ok(ExitCode::SUCCESS),
            _ = hup.recv() => {
                if let Some(t) = &shared.token {
                    match t.reload() {
                        Ok(()) => {
                            // Cookies of the old token end with it.
                            *shared.session.lock().unwrap_or_else(|e| e.into_inner()) = None;
                            tracing::info!(file = %t.path().display(), "token file read again");
                        }
                        Err(e) => tracing::error!("{e} (the old token stays)"),
                    }
                }
            }
            Some(r) = tasks.join_next() => {
                break Err(anyhow::anyhow!("a listener stopped{}", r.err().map(|e| format!(": {e}")).unwrap_or_default()));
            }
        }
    };
    // Requests in flight get a second (a long poll is cut short).
    stop.send_replace(true);
    let _ = tokio::time::timeout(Duration::from_secs(1), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    if let Some(p) = bound_socket {
        remove_socket(&p);
    }
    result
}

/// Make a read the current snapshot (or record why it failed), and wake the waiters.
fn publish(shared: &Shared, read: Result<Snapshot, String>) {
    let mut c = shared.current.lock().unwrap_or_else(|e| e.into_inner());
    match read {
        Ok(s) => {
            let rev = s.revision;
            // Each problem once (it stays in the page's list while it lasts).
            let before = c.snap.as_ref().map(|s| s.problems.as_slice()).unwrap_or_default();
            for p in s.problems.iter().filter(|p| !before.contains(p)) {
                tracing::warn!(key = %p.key.escape_debug(), reason = %p.reason.escape_debug(), "left out");
            }
            c.snap = Some(Arc::new(s));
            c.error = None;
            drop(c);
            shared.revision.send_replace(rev);
        }
        Err(e) => {
            tracing::warn!("reading the fleet: {e}");
            c.error = Some(e);
            drop(c);
            // Waiters learn of the error too (the revision stays; they compare it).
            shared.revision.send_modify(|_| {});
        }
    }
}

/// Follow the store: watch the prefix, and read the snapshot again after each change
/// (changes arriving together are read once). On any error: say so, back off, start over.
async fn follow(shared: Arc<Shared>, cfg: capsd_fleet::EtcdConfig) {
    let mut backoff = Duration::from_millis(100);
    let mut client = shared.client.clone();
    let all = shared.layout.all();
    let end = capsd_fleet::etcd::prefix_end(all.as_bytes());
    loop {
        let r: Result<(), String> = async {
            // The watch starts before the read, so no change falls between them.
            let mut w = client.watch(all.as_bytes(), &end).await.map_err(|e| e.to_string())?;
            let s = Snapshot::read(&client, &shared.layout, &Scope::All).await.map_err(|e| e.to_string())?;
            publish(&shared, Ok(s));
            backoff = Duration::from_millis(100);
            loop {
                match w.next().await.map_err(|e| e.to_string())? {
                    None => return Err("the watch ended".to_owned()),
                    Some(_) => {
                        // Gather what arrives together (an agent's transaction batch, several hosts).
                        while let Ok(more) = tokio::time::timeout(Duration::from_millis(100), w.next()).await {
                            if more.map_err(|e| e.to_string())?.is_none() {
                                return Err("the watch ended".to_owned());
                            }
                        }
                        let s =
                            Snapshot::read(&client, &shared.layout, &Scope::All).await.map_err(|e| e.to_string())?;
                        publish(&shared, Ok(s));
                    }
                }
            }
        }
        .await;
        if let Err(e) = r {
            publish(&shared, Err(e));
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if let Ok(c) = capsd_fleet::connect(&cfg).await {
            client = c;
        }
    }
}

fn router(shared: Arc<Shared>, tcp: bool) -> Router {
    let r = Router::new()
        .route("/", get(page))
        .route("/fleet.js", get(|| async { asset("text/javascript; charset=utf-8", PAGE_JS) }))
        .route("/fleet.css", get(|| async { asset("text/css; charset=utf-8", PAGE_CSS) }))
        .route("/api/hosts", get(api_hosts))
        .route("/api/matrix", get(api_matrix))
        .route("/api/check", post(api_check))
        .route("/api/wait", get(api_wait))
        .fallback(not_found);
    let r = if tcp { r.layer(middleware::from_fn_with_state(shared.clone(), guard)) } else { r };
    // /healthz needs no token (as the agent's).
    r.route("/healthz", get(|| async { "ok\n" })).with_state(shared)
}

/// Headers every answer carries: no framing, no sniffing, no referrer, and a policy that
/// runs only the page's own script and style.
fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn asset(ty: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, ty)], body).into_response();
    secure_headers(r.headers_mut());
    r
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE_HTML)
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path().escape_debug().to_string();
    if uri.path().starts_with("/api/") {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {method} {path}")).into_response()
    } else {
        let mut r = (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("404: nothing at {path}; the fleet page is at /\n"),
        )
            .into_response();
        secure_headers(r.headers_mut());
        r
    }
}

/// The token guard of TCP listeners (see the module docs).
async fn guard(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let Some(token) = &shared.token else { return next.run(req).await };
    // ?token=: swap it for the cookie, and drop it from the address.
    if let Some(given) = query_param(req.uri(), "token") {
        let mut presented = b"Bearer ".to_vec();
        presented.extend_from_slice(&given);
        if !token.admits(Some(&presented)) {
            return refuse("the token in the address is not this server's token (see --token-file)");
        }
        let cookie = capsd_fleet::content_hash(&[&shared.secret[..], &given].concat());
        *shared.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(cookie.clone());
        let location = without_param(req.uri(), "token");
        let mut r = Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header(header::LOCATION, location)
            .header(header::SET_COOKIE, format!("{COOKIE}={cookie}; HttpOnly; SameSite=Strict; Path=/"))
            .header(header::CACHE_CONTROL, "no-store")
            .body(Body::empty())
            .unwrap_or_default();
        secure_headers(r.headers_mut());
        return r;
    }
    let bearer = req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if token.admits(bearer) || session_ok(&shared, req.headers()) {
        // The connection moves to the authenticated pool (503 when that is full).
        if req.extensions().get::<Arc<conn::Upgrade>>().is_none_or(|u| u.authenticated()) {
            return next.run(req).await;
        }
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!("all {} connection slots for signed-in clients are taken; try again later", LIMITS.max_connections),
        )
        .into_response();
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    refuse("this page needs the token: open it once as /?token=TOKEN (the content of --token-file), or send Authorization: Bearer TOKEN")
}

fn refuse(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message.to_owned()).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    secure_headers(r.headers_mut());
    r
}

/// Whether a `Cookie` header carries the current session (compared in constant time).
fn session_ok(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(want) = shared.session.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return false };
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).any(|c| {
        c.trim()
            .strip_prefix(COOKIE)
            .and_then(|r| r.strip_prefix('='))
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(want.as_bytes())))
    })
}

/// `%XX` decoded (a `+` stays a `+`: tokens may hold one).
fn percent_decode(s: &str) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn query_param(uri: &Uri, name: &str) -> Option<Vec<u8>> {
    uri.query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn without_param(uri: &Uri, name: &str) -> String {
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && p.split_once('=').map_or(*p, |(k, _)| k) != name)
        .collect();
    if rest.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), rest.join("&"))
    }
}

/// The query parameters as decoded strings (UTF-8 required).
fn params(uri: &Uri) -> Result<HashMap<String, String>, ApiError> {
    let mut out = HashMap::new();
    for p in uri.query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let v = String::from_utf8(percent_decode(&v.replace('+', " ")))
            .map_err(|_| ApiError::bad(format!("parameter {}: not UTF-8", k.escape_debug())))?;
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

/// `GET /api/hosts`.
async fn api_hosts(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let snap = shared.snapshot()?;
    let error = shared.current.lock().unwrap_or_else(|e| e.into_inner()).error.clone();
    let hosts: Vec<Value> = snap
        .hosts
        .iter()
        .map(|(id, h)| {
            let r = &h.record;
            let mut qemu: Vec<&str> = r.emulators.iter().filter_map(|e| e.version.as_deref()).collect();
            qemu.sort_unstable();
            qemu.dedup();
            json!({
                "id": id,
                "arch": r.cpu.arch,
                "cpu_vendor": r.cpu.vendor,
                "cpu_model": r.cpu.model,
                "libvirt_version": r.libvirt_version,
                "qemu_versions": qemu,
                "capsd_version": r.capsd_version,
                "driver": r.driver,
                "updated_ms": r.updated_ms,
                "inputs_changed_ms": r.inputs_changed_ms,
                "documents": h.docs.len(),
                "queries": h.docs.keys().map(ToString::to_string).collect::<Vec<_>>(),
                "damaged": h.damaged,
            })
        })
        .collect();
    Ok(json_response(&json!({
        "revision": snap.revision,
        "now_ms": capsd_fleet::now_ms(),
        "error": error,
        "hosts": hosts,
        "problems": snap.problems,
    })))
}

/// `GET /api/wait?after=REV`: the revision once it is newer than REV (or after [`WAIT`]).
async fn api_wait(State(shared): State<Arc<Shared>>, uri: Uri) -> Result<Response, ApiError> {
    let p = params(&uri)?;
    let after: i64 = match p.get("after") {
        Some(s) => {
            s.parse().map_err(|_| ApiError::bad(format!("after={}: not a revision number", s.escape_debug())))?
        }
        None => 0,
    };
    let mut rx = shared.revision.subscribe();
    // Answer at a newer revision, or at the next read after this request came (a failed read
    // too, or a good one at the same revision after a failure: the page shows the store's state).
    let _ = tokio::time::timeout(WAIT, async {
        if *rx.borrow_and_update() <= after {
            let _ = rx.changed().await;
        }
    })
    .await;
    let rev = *rx.borrow();
    let error = shared.current.lock().unwrap_or_else(|e| e.into_inner()).error.clone();
    Ok(json_response(&json!({"revision": rev, "error": error})))
}

/// A row of the matrix: a fact and what each group's document says of it.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    section: String,
    item: String,
    /// The fact's key (capsd-analysis's `facts` path).
    path: String,
    /// Per group: the value stated, `yes`/`no`, or null: not stated (omitted).
    cells: Vec<Option<String>>,
}

/// Sections shown first, in the order operators ask (key: the enum, element or attribute
/// path under `/domainCapabilities`).
const SECTIONS: &[(&str, &str)] = &[
    ("/domainCapabilities/machine", "Machine type"),
    ("/domainCapabilities/arch", "Arch"),
    ("/domainCapabilities/os/enum[@name='firmware']", "Firmware"),
    ("/domainCapabilities/os/loader/enum[@name='type']", "Firmware loader type"),
    ("/domainCapabilities/os/loader/enum[@name='secure']", "Secure boot (loader)"),
    ("/domainCapabilities/os/firmwareFeatures/enum[@name='secureBoot']", "Secure boot (firmware feature)"),
    ("/domainCapabilities/os/firmwareFeatures/enum[@name='enrolledKeys']", "Enrolled keys"),
    ("/domainCapabilities/devices/tpm/@supported", "TPM"),
    ("/domainCapabilities/devices/tpm/enum[@name='model']", "TPM models"),
    ("/domainCapabilities/devices/tpm/enum[@name='backendModel']", "TPM backends"),
    ("/domainCapabilities/devices/tpm/enum[@name='backendVersion']", "TPM versions"),
    ("/domainCapabilities/features/launchSecurity/enum[@name='sectype']", "Launch security"),
    ("/domainCapabilities/features/sev/@supported", "SEV"),
    ("/domainCapabilities/features/s390-pv/@supported", "s390 protected virtualization"),
    ("/domainCapabilities/features/sgx/@supported", "SGX"),
    ("/domainCapabilities/cpu/mode", "CPU modes"),
    ("/domainCapabilities/cpu/mode[@name='custom']/model", "CPU models (usable)"),
    ("/domainCapabilities/devices/graphics/enum[@name='type']", "Graphics"),
    ("/domainCapabilities/devices/video/enum[@name='modelType']", "Video"),
    ("/domainCapabilities/devices/disk/enum[@name='bus']", "Disk buses"),
    ("/domainCapabilities/devices/disk/enum[@name='diskDevice']", "Disk devices"),
    ("/domainCapabilities/vcpu/@max", "Max vCPUs"),
];

/// How a fact becomes a row: its section key, the item and the container whose presence
/// makes an absent item a "no" (an enum that lists other values; None: absent is unstated).
fn classify(path: &str, value: Option<&str>) -> Option<(String, String, Option<String>)> {
    // Enum values: `.../enum[@name='E']/value[.='V']`.
    if let Some((en, v)) = path.rsplit_once("/value[.='") {
        if en.ends_with(']') && en.rsplit('/').next().is_some_and(|l| l.starts_with("enum[@name=")) {
            let v = v.strip_suffix("']")?;
            return Some((en.to_owned(), v.to_owned(), Some(en.to_owned())));
        }
    }
    // CPU models of the custom mode: `.../mode[@name='custom']/model[.='M']/@usable`.
    if let Some(rest) = path.strip_prefix("/domainCapabilities/cpu/mode[@name='custom']/model[.='") {
        let m = rest.strip_suffix("']/@usable")?;
        return Some((
            "/domainCapabilities/cpu/mode[@name='custom']/model".into(),
            m.to_owned(),
            Some("/domainCapabilities/cpu/mode[@name='custom']".into()),
        ));
    }
    // CPU modes: `/domainCapabilities/cpu/mode[@name='X']/@supported`.
    if let Some(rest) = path.strip_prefix("/domainCapabilities/cpu/mode[@name='") {
        let m = rest.strip_suffix("']/@supported")?;
        return Some(("/domainCapabilities/cpu/mode".into(), m.to_owned(), None));
    }
    // Flags: `.../@supported`.
    if path.ends_with("/@supported") {
        return Some((path.to_owned(), "supported".into(), None));
    }
    // Single values of the document.
    if value.is_some()
        && matches!(path, "/domainCapabilities/machine" | "/domainCapabilities/arch" | "/domainCapabilities/vcpu/@max")
    {
        return Some((path.to_owned(), String::new(), None));
    }
    None
}

/// A section key as people read it: `devices › hostdev › subsysType`.
fn section_label(key: &str) -> String {
    if let Some((_, l)) = SECTIONS.iter().find(|(k, _)| *k == key) {
        return (*l).to_owned();
    }
    let rest = key.strip_prefix("/domainCapabilities/").unwrap_or(key);
    rest.split('/')
        .filter(|s| *s != "@supported")
        .map(|s| {
            s.strip_prefix("enum[@name='")
                .or_else(|| s.split_once("[@name='").map(|(_, n)| n))
                .map_or(s, |n| n.trim_end_matches("']"))
        })
        .collect::<Vec<_>>()
        .join(" › ")
}

/// A row being built: the fact's path, its container (see [`classify`]), a cell per group.
type Pending = (String, Option<String>, Vec<Option<String>>);

/// The matrix of the documents `groups` (distinct), rows in the order of [`SECTIONS`] then
/// by section key, items in document order.
fn matrix_rows(groups: &[Arc<capsd_core::DomainCapabilities>]) -> Vec<Row> {
    let facts: Vec<Vec<capsd_analysis::Fact>> = groups.iter().map(|d| capsd_analysis::facts(d)).collect();
    // (section, item) → (path, container, cell per group), in first-seen order.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut rows: HashMap<(String, String), Pending> = HashMap::new();
    for (g, fs) in facts.iter().enumerate() {
        for f in fs {
            let Some((section, item, container)) = classify(&f.path, f.value.as_deref()) else { continue };
            let key = (section.clone(), item.clone());
            let e = rows.entry(key.clone()).or_insert_with(|| {
                order.push(key);
                (f.path.clone(), container, vec![None; groups.len()])
            });
            // A listed value is "yes"; flags, usability and single values are as stated.
            e.2[g] = Some(f.value.clone().unwrap_or_else(|| "yes".into()));
        }
    }
    // An item absent where its container is present: "no" (as `check` judges a value an
    // enum does not list); absent with its container: not stated.
    for (_, container, cells) in rows.values_mut() {
        let Some(c) = container else { continue };
        let inside = format!("{c}/");
        for (g, cell) in cells.iter_mut().enumerate() {
            if cell.is_none() && facts[g].iter().any(|f| f.path == *c || f.path.starts_with(&inside)) {
                *cell = Some("no".into());
            }
        }
    }
    let rank = |s: &str| SECTIONS.iter().position(|(k, _)| *k == s).unwrap_or(SECTIONS.len());
    let mut keyed: Vec<(usize, usize, (String, String))> =
        order.into_iter().enumerate().map(|(i, k)| (rank(&k.0), i, k)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2 .0.cmp(&b.2 .0)).then(a.1.cmp(&b.1)));
    keyed
        .into_iter()
        .filter_map(|(_, _, k)| {
            let (path, _, cells) = rows.remove(&k)?;
            Some(Row { section: section_label(&k.0), item: k.1, path, cells })
        })
        .collect()
}

/// `GET /api/matrix?virttype=T&arch=A&machine=M` (arch: each host's own when empty;
/// machine: the default when empty).
async fn api_matrix(State(shared): State<Arc<Shared>>, uri: Uri) -> Result<Response, ApiError> {
    let p = params(&uri)?;
    let nonempty = |k: &str| p.get(k).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let virt_type = nonempty("virttype").unwrap_or_else(|| "kvm".into());
    let arch = nonempty("arch");
    let machine = nonempty("machine");
    capsd_fleet::QueryKey::new(&virt_type, arch.as_deref().unwrap_or("any"), machine.as_deref())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let mut snap = (*shared.snapshot()?).clone();
    let sel = Selection::default();
    let need = capsd_fleet::analysis::needed(&snap, &sel, &virt_type, arch.as_deref(), machine.as_deref())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    snap.fetch(&shared.client, &shared.layout, need).await.map_err(store_error)?;
    let (snap, out) = tokio::task::spawn_blocking(move || {
        let out = matrix(&snap, &virt_type, arch.as_deref(), machine.as_deref());
        (snap, out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    shared.offer(snap);
    Ok(json_response(&out?))
}

fn store_error(e: capsd_fleet::FleetError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store", format!("reading the fleet: {e}"))
}

fn matrix(snap: &Snapshot, virt_type: &str, arch: Option<&str>, machine: Option<&str>) -> Result<Value, ApiError> {
    // Hosts grouped by the document that answers the query for them (the lookup of
    // `fleet baseline`/`diff`/`check`).
    let mut groups: Vec<(String, String, Vec<String>)> = Vec::new(); // hash, query, hosts
    let mut missing = Vec::new();
    for id in snap.hosts.keys() {
        match capsd_fleet::analysis::find_document(snap, id, virt_type, arch, machine)
            .map_err(|e| ApiError::bad(e.to_string()))?
        {
            Found::Document(q, hash) => match groups.iter_mut().find(|g| g.0 == hash) {
                Some(g) => g.2.push(id.clone()),
                None => groups.push((hash, q.to_string(), vec![id.clone()])),
            },
            Found::Nothing => missing.push(json!({"host": id, "why": "publishes no document for this query"})),
            Found::Unusable(why) => missing.push(json!({"host": id, "why": why})),
        }
    }
    let docs: Vec<Arc<capsd_core::DomainCapabilities>> = groups
        .iter()
        .map(|g| snap.document(&g.0))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let rows = matrix_rows(&docs);
    let mut by_section: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rows {
        *by_section.entry(r.section.as_str()).or_default() += 1;
    }
    Ok(json!({
        "revision": snap.revision,
        "query": {"virttype": virt_type, "arch": arch, "machine": machine},
        "groups": groups.iter().map(|(hash, q, hosts)| json!({"hash": hash, "query": q, "hosts": hosts})).collect::<Vec<_>>(),
        "missing": missing,
        "rows": rows,
    }))
}

/// `POST /api/check[?strict=1]`: the body is a domain definition; the answer is `capsd
/// fleet check --format json`'s.
async fn api_check(State(shared): State<Arc<Shared>>, uri: Uri, body: Body) -> Result<Response, ApiError> {
    let p = params(&uri)?;
    let strict = matches!(p.get("strict").map(String::as_str), Some("1" | "true" | "yes" | "on"));
    let bytes: Bytes = axum::body::to_bytes(body, MAX_DOMAIN).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the domain definition is larger than {} MiB (or was cut off)", MAX_DOMAIN >> 20),
        )
    })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::bad(format!("the domain definition is not UTF-8 text (byte {})", e.valid_up_to())))?;
    if text.trim().is_empty() {
        return Err(ApiError::bad("no domain definition: paste or upload a libvirt <domain> XML".into()));
    }
    let domain = Domain::parse(text).map_err(|e| ApiError::bad(format!("not a usable domain definition: {e}")))?;
    let mut snap = (*shared.snapshot()?).clone();
    let sel = Selection::default();
    let need = capsd_fleet::analysis::needed(&snap, &sel, domain.virt_type(), domain.arch(), domain.machine())
        .map_err(|e| ApiError::bad(e.to_string()))?;
    snap.fetch(&shared.client, &shared.layout, need).await.map_err(store_error)?;
    let (snap, out) = tokio::task::spawn_blocking(move || {
        let mut json = Vec::new();
        let out = super::fleet::check(&snap, "domain", &domain, &sel, strict, true, &mut json).map(|_| json);
        (snap, out)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    shared.offer(snap);
    let text = out.map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let mut r =
        ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], text).into_response();
    secure_headers(r.headers_mut());
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_are_classified_into_rows() {
        let c = |p: &str, v: Option<&str>| classify(p, v).map(|(s, i, c)| (s, i, c.is_some()));
        assert_eq!(
            c("/domainCapabilities/devices/disk/enum[@name='bus']/value[.='sata']", None),
            Some(("/domainCapabilities/devices/disk/enum[@name='bus']".into(), "sata".into(), true))
        );
        assert_eq!(
            c("/domainCapabilities/cpu/mode[@name='custom']/model[.='Haswell']/@usable", Some("no")),
            Some(("/domainCapabilities/cpu/mode[@name='custom']/model".into(), "Haswell".into(), true))
        );
        assert_eq!(
            c("/domainCapabilities/cpu/mode[@name='host-model']/@supported", Some("yes")),
            Some(("/domainCapabilities/cpu/mode".into(), "host-model".into(), false))
        );
        assert_eq!(c("/domainCapabilities/path", Some("/usr/bin/qemu")), None);
        assert_eq!(
            section_label("/domainCapabilities/devices/hostdev/enum[@name='subsysType']"),
            "devices › hostdev › subsysType"
        );
    }

    #[test]
    fn the_token_leaves_the_address() {
        let u: Uri = "/x?a=1&token=abc%2Bd&b=2".parse().unwrap();
        assert_eq!(query_param(&u, "token").unwrap(), b"abc+d");
        assert_eq!(without_param(&u, "token"), "/x?a=1&b=2");
        let u: Uri = "/?token=a+b".parse().unwrap();
        assert_eq!(query_param(&u, "token").unwrap(), b"a+b");
        assert_eq!(without_param(&u, "token"), "/");
        assert_eq!(percent_decode("%4"), b"%4");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
        // Not ASCII after a '%': kept as is, no panic on a character boundary.
        assert_eq!(percent_decode("%é%41"), "%éA".as_bytes());
        assert_eq!(percent_decode("a%"), b"a%");
    }
}

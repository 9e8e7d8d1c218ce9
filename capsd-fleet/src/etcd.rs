//! A small etcd v3 client over etcd's own JSON gateway (`/v3/...` on the client port, on by
//! default since etcd 3.4): HTTP/1.1 POSTs of JSON bodies, keys and values base64, 64-bit
//! numbers as strings, streams (watch) as one JSON object per line. hyper carries it, rustls
//! (ring) secures `https://` endpoints, so the crate builds with the Rust toolchain alone (no
//! `protoc`, no system OpenSSL).
//!
//! Authentication: TLS client certificates (`--etcd-cert`/`--etcd-key`) and etcd users
//! (`/v3/auth/authenticate` gives a token sent as `Authorization`; an expired token is
//! renewed once per request). etcd's gateway does not pass the client certificate's name on
//! to its RBAC, so a role is reached through a user name and password.
//!
//! One member at a time: [`Client::connect`] tries the endpoints in turn (one further on each
//! call in this process) until one answers a status request; a caller whose request failed
//! connects again, to the next member.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take (a watch: its start).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one range may take: a page of 100,000 keys is a few seconds of a loaded etcd's
/// JSON encoding.
const RANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest reply read: etcd's gateway itself sets no limit, so this bounds the client's
/// memory; a range page above it is read again in smaller pages (`store::range_all`).
const MAX_REPLY: usize = 64 << 20;

/// What failed talking to etcd, naming the endpoint.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// A file given for TLS or authentication could not be used.
    #[error("{what} {path}: {reason}")]
    Config { what: &'static str, path: String, reason: String },
    /// An endpoint that is not `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT`.
    #[error("etcd endpoint '{0}': expected http://HOST:PORT, https://HOST:PORT or HOST:PORT")]
    BadEndpoint(String),
    /// TCP connection refused, unreachable, timed out.
    #[error("{endpoint}: cannot connect: {reason}")]
    Connect { endpoint: String, reason: String },
    /// The TLS handshake failed (certificate not trusted, name mismatch, client certificate refused).
    #[error("{endpoint}: TLS: {reason}")]
    Tls { endpoint: String, reason: String },
    /// The HTTP exchange failed (connection closed, a reply that is not etcd's).
    #[error("{endpoint}: {reason}")]
    Http { endpoint: String, reason: String },
    /// etcd answered with an error (gRPC code and message: permission denied, invalid token...).
    #[error("{endpoint}{path}: {message} (gRPC code {code})")]
    Server { endpoint: String, path: String, code: i64, message: String },
    /// No answer in time.
    #[error("{endpoint}{path}: no answer within {secs} s")]
    Timeout { endpoint: String, path: String, secs: u64 },
}

impl EtcdError {
    /// etcd said permission denied (RBAC).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, EtcdError::Server { code: 7, .. })
    }
    fn is_invalid_token(&self) -> bool {
        matches!(self, EtcdError::Server { code: 16, .. })
            || matches!(self, EtcdError::Server { message, .. } if message.contains("invalid auth token"))
    }
}

/// How to reach etcd: endpoints, TLS files, user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// CA certificates (PEM) the members' certificates must chain to (default for `https://`:
    /// the system's bundle, `/etc/ssl/certs/ca-certificates.crt`).
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) and its key, for members that require client certificates.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user, with its password (read from a file by the caller).
    pub user: Option<String>,
    pub password: Option<String>,
}

impl EtcdConfig {
    /// Plain endpoints, nothing else.
    pub fn new(endpoints: Vec<String>) -> EtcdConfig {
        EtcdConfig { endpoints, ..EtcdConfig::default() }
    }
    /// The endpoints as given, comma-separated (for messages).
    pub fn endpoints_str(&self) -> String {
        self.endpoints.join(",")
    }
}

/// Read a password file: its first line (without the newline).
pub fn read_password_file(path: &Path) -> Result<String, EtcdError> {
    let text = std::fs::read_to_string(path).map_err(|e| EtcdError::Config {
        what: "etcd password file",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let pw = text.lines().next().unwrap_or("").to_owned();
    if pw.is_empty() {
        return Err(EtcdError::Config {
            what: "etcd password file",
            path: path.display().to_string(),
            reason: "is empty".into(),
        });
    }
    Ok(pw)
}

#[derive(Debug, Clone)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    /// As given (for messages).
    shown: String,
}

fn parse_endpoint(s: &str) -> Result<Endpoint, EtcdError> {
    let s = s.trim();
    let bad = || EtcdError::BadEndpoint(s.to_owned());
    let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("http://") {
        (false, r)
    } else {
        (false, s)
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok(Endpoint { tls, host: host.to_owned(), port, shown: s.to_owned() })
}

type Conn = SendRequest<Full<Bytes>>;

struct Inner {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
    user: Option<(String, String)>,
    token: Mutex<Option<String>>,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("endpoint", &self.endpoint)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .finish_non_exhaustive()
    }
}

/// A client of one etcd member (cheap to clone; connections are pooled).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// One key and value read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl KeyValue {
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.key)
    }
}

/// A range's answer.
#[derive(Debug, Clone, Default)]
pub struct RangeResponse {
    pub revision: i64,
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

/// A range request (`range_end` empty: the key alone).
#[derive(Debug, Clone, Default)]
pub struct Range {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub limit: i64,
    pub revision: i64,
    pub keys_only: bool,
    pub count_only: bool,
}

impl Range {
    pub fn key(key: impl Into<Vec<u8>>) -> Range {
        Range { key: key.into(), ..Range::default() }
    }
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Range {
        let key: Vec<u8> = prefix.into();
        Range { range_end: prefix_end(&key), key, ..Range::default() }
    }
    fn json(&self) -> Value {
        let mut v = json!({ "key": b64(&self.key) });
        if !self.range_end.is_empty() {
            v["range_end"] = b64(&self.range_end).into();
        }
        if self.limit > 0 {
            v["limit"] = self.limit.to_string().into();
        }
        if self.revision > 0 {
            v["revision"] = self.revision.to_string().into();
        }
        if self.keys_only {
            v["keys_only"] = true.into();
        }
        if self.count_only {
            v["count_only"] = true.into();
        }
        v
    }
}

/// The end of the range of keys starting with `prefix` (etcd's prefix rule).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A transaction's comparison.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's version (0: absent) equals.
    VersionEq(Vec<u8>, i64),
    /// Every key in `[key, end)` was last modified before `revision`.
    ModLessInRange { key: Vec<u8>, end: Vec<u8>, revision: i64 },
    /// The key's value equals.
    ValueEq(Vec<u8>, Vec<u8>),
    /// The key's lease equals (0: none).
    LeaseEq(Vec<u8>, i64),
}

impl Compare {
    fn json(&self) -> Value {
        match self {
            Compare::VersionEq(k, v) => {
                json!({"key": b64(k), "result": "EQUAL", "target": "VERSION", "version": v.to_string()})
            }
            Compare::ModLessInRange { key, end, revision } => json!({
                "key": b64(key), "range_end": b64(end), "result": "LESS", "target": "MOD",
                "mod_revision": revision.to_string()
            }),
            Compare::ValueEq(k, v) => json!({"key": b64(k), "result": "EQUAL", "target": "VALUE", "value": b64(v)}),
            Compare::LeaseEq(k, l) => {
                json!({"key": b64(k), "result": "EQUAL", "target": "LEASE", "lease": l.to_string()})
            }
        }
    }
}

/// A transaction's operation.
#[derive(Debug, Clone)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, lease: i64 },
    Delete { key: Vec<u8>, range_end: Vec<u8> },
    Range(Range),
    Txn(Box<Txn>),
}

impl Op {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Op {
        Op::Put { key: key.into(), value: value.into(), lease }
    }
    pub fn delete(key: impl Into<Vec<u8>>) -> Op {
        Op::Delete { key: key.into(), range_end: Vec::new() }
    }
    fn json(&self) -> Value {
        match self {
            Op::Put { key, value, lease } => {
                let mut p = json!({"key": b64(key), "value": b64(value)});
                if *lease != 0 {
                    p["lease"] = lease.to_string().into();
                }
                json!({ "request_put": p })
            }
            Op::Delete { key, range_end } => {
                let mut d = json!({"key": b64(key)});
                if !range_end.is_empty() {
                    d["range_end"] = b64(range_end).into();
                }
                json!({ "request_delete_range": d })
            }
            Op::Range(r) => json!({ "request_range": r.json() }),
            Op::Txn(t) => json!({ "request_txn": t.json() }),
        }
    }
}

/// A transaction: if every compare holds, `success`, else `failure`.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    fn json(&self) -> Value {
        json!({
            "compare": self.compare.iter().map(Compare::json).collect::<Vec<_>>(),
            "success": self.success.iter().map(Op::json).collect::<Vec<_>>(),
            "failure": self.failure.iter().map(Op::json).collect::<Vec<_>>(),
        })
    }
}

/// A transaction's answer: which branch ran, and the ranges it read (in order).
#[derive(Debug, Clone, Default)]
pub struct TxnResponse {
    pub succeeded: bool,
    pub revision: i64,
    pub ranges: Vec<RangeResponse>,
}

/// A watch event.
#[derive(Debug, Clone)]
pub struct Event {
    pub deleted: bool,
    pub kv: KeyValue,
}

/// A running watch (its own connection).
#[derive(Debug)]
pub struct Watch {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    endpoint: String,
}

impl Watch {
    /// The next batch of events (None: the stream ended).
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>, EtcdError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let v: Value = serde_json::from_slice(&line).map_err(|e| EtcdError::Http {
                    endpoint: self.endpoint.clone(),
                    reason: format!("watch: a line that is not JSON: {e}"),
                })?;
                if let Some(err) = v.get("error") {
                    return Err(server_error(&self.endpoint, "/v3/watch", err));
                }
                let r = &v["result"];
                let events: Vec<Event> = r["events"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| Some(Event { deleted: e["type"] == "DELETE", kv: kv_from(&e["kv"]).ok()? }))
                            .collect()
                    })
                    .unwrap_or_default();
                if events.is_empty() {
                    continue;
                }
                return Ok(Some(events));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(EtcdError::Http { endpoint: self.endpoint.clone(), reason: e.to_string() }),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

/// etcd's 64-bit numbers: strings in its JSON (numbers accepted too).
#[derive(Debug, Default, Clone, Copy)]
struct Num(i64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Num, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or a string of one")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Num, E> {
                s.parse().map(Num).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Num, E> {
                Ok(Num(n))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Num, E> {
                i64::try_from(n).map(Num).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, Deserialize)]
struct RawHeader {
    #[serde(default)]
    revision: Num,
}

#[derive(Debug, Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    mod_revision: Num,
    #[serde(default)]
    create_revision: Num,
    #[serde(default)]
    version: Num,
    #[serde(default)]
    lease: Num,
}

#[derive(Debug, Deserialize)]
struct RawRange {
    #[serde(default)]
    header: RawHeader,
    #[serde(default)]
    kvs: Vec<RawKv>,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    count: Num,
}

fn decode(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("base64: {e}"))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unb64(v: &Value) -> Result<Vec<u8>, String> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("base64: {e}")),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_from(v: &Value) -> Result<KeyValue, String> {
    Ok(KeyValue {
        key: unb64(&v["key"])?,
        value: unb64(&v["value"])?,
        mod_revision: int(&v["mod_revision"]),
        create_revision: int(&v["create_revision"]),
        version: int(&v["version"]),
        lease: int(&v["lease"]),
    })
}

fn range_from(v: &Value) -> Result<RangeResponse, String> {
    let kvs = v["kvs"].as_array().map(|a| a.iter().map(kv_from).collect::<Result<Vec<_>, _>>()).transpose()?;
    Ok(RangeResponse {
        revision: int(&v["header"]["revision"]),
        kvs: kvs.unwrap_or_default(),
        more: v["more"].as_bool().unwrap_or(false),
        count: int(&v["count"]),
    })
}

fn server_error(endpoint: &str, path: &str, v: &Value) -> EtcdError {
    let message = v["message"].as_str().or(v["error"].as_str()).unwrap_or("an error without a message").to_owned();
    let code = if v.get("code").is_some() { int(&v["code"]) } else { int(&v["grpc_code"]) };
    EtcdError::Server { endpoint: endpoint.to_owned(), path: path.to_owned(), code, message }
}

/// Build the TLS settings of `cfg` (None when no endpoint is `https://`).
fn tls_connector(cfg: &EtcdConfig) -> Result<Option<tokio_rustls::TlsConnector>, EtcdError> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let any_tls = cfg.endpoints.iter().any(|e| e.trim().starts_with("https://"));
    if !any_tls {
        return Ok(None);
    }
    // ring: no cmake or C++ toolchain needed (aws-lc-rs needs both); no post-quantum key
    // exchange, which etcd's Go TLS does not require.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_path = cfg.cacert.clone().unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let cfg_err = |what: &'static str, path: &Path, reason: String| EtcdError::Config {
        what,
        path: path.display().to_string(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&ca_path)
        .map_err(|e| cfg_err("etcd CA certificate file", &ca_path, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cfg_err("etcd CA certificate file", &ca_path, e.to_string()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(cfg_err("etcd CA certificate file", &ca_path, "holds no usable certificate".into()));
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cfg_err("TLS", &ca_path, e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| cfg_err("etcd client certificate", cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| cfg_err("etcd client certificate", cert, e.to_string()))?;
            if chain.is_empty() {
                return Err(cfg_err("etcd client certificate", cert, "holds no certificate".into()));
            }
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| cfg_err("etcd client key", key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| cfg_err("etcd client certificate", cert, e.to_string()))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(c), None) => return Err(cfg_err("etcd client certificate", c, "needs --etcd-key too".into())),
        (None, Some(k)) => return Err(cfg_err("etcd client key", k, "needs --etcd-cert too".into())),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// Connect to one of `cfg`'s members (see the module docs).
pub async fn connect(cfg: &EtcdConfig) -> Result<Client, EtcdError> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    if cfg.endpoints.is_empty() {
        return Err(EtcdError::BadEndpoint(String::new()));
    }
    let eps: Vec<Endpoint> = cfg.endpoints.iter().map(|e| parse_endpoint(e)).collect::<Result<_, _>>()?;
    let tls = tls_connector(cfg)?;
    let user = match (&cfg.user, &cfg.password) {
        (Some(u), Some(p)) => Some((u.clone(), p.clone())),
        (Some(u), None) => {
            return Err(EtcdError::Config {
                what: "etcd user",
                path: u.clone(),
                reason: "needs a password (--etcd-password-file)".into(),
            })
        }
        _ => None,
    };
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut last = None;
    for i in 0..eps.len() {
        let ep = eps[(start + i) % eps.len()].clone();
        let client = Client {
            inner: Arc::new(Inner {
                tls: if ep.tls { tls.clone() } else { None },
                endpoint: ep,
                user: user.clone(),
                token: Mutex::new(None),
                idle: Mutex::new(Vec::new()),
            }),
        };
        let r = async {
            if client.inner.user.is_some() {
                client.authenticate().await?;
            }
            client.call("/v3/maintenance/status", &json!({})).await
        }
        .await;
        match r {
            Ok(_) => return Ok(client),
            Err(e @ (EtcdError::Config { .. } | EtcdError::Server { .. } | EtcdError::Tls { .. }))
                if eps.len() == 1 =>
            {
                return Err(e)
            }
            Err(e) => {
                tracing::debug!(endpoint = %client.inner.endpoint.shown, error = %e, "etcd: member not answering; trying the next");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(EtcdError::BadEndpoint(String::new())))
}

impl Client {
    /// The member this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint.shown
    }

    async fn authenticate(&self) -> Result<(), EtcdError> {
        let Some((user, pw)) = &self.inner.user else { return Ok(()) };
        let v = self.post("/v3/auth/authenticate", &json!({"name": user, "password": pw}), false).await?;
        let token = v["token"].as_str().unwrap_or("").to_owned();
        if token.is_empty() {
            return Err(EtcdError::Server {
                endpoint: self.endpoint().to_owned(),
                path: "/v3/auth/authenticate".into(),
                code: 0,
                message: format!("user '{user}' authenticated but etcd gave no token (is authentication enabled?)"),
            });
        }
        *self.inner.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    /// POST `body` to `path`, the answer as JSON; an expired token is renewed once.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        match self.post(path, body, true).await {
            Err(e) if e.is_invalid_token() && self.inner.user.is_some() => {
                self.authenticate().await?;
                self.post(path, body, true).await
            }
            r => r,
        }
    }

    async fn open(&self) -> Result<Conn, EtcdError> {
        let ep = &self.inner.endpoint;
        let shown = ep.shown.clone();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)))
            .await
            .map_err(|_| EtcdError::Connect { endpoint: shown.clone(), reason: "timed out".into() })?
            .map_err(|e| EtcdError::Connect { endpoint: shown.clone(), reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        let sender = if let Some(tls) = &self.inner.tls {
            let name = rustls_pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|e| EtcdError::Tls { endpoint: shown.clone(), reason: format!("server name: {e}") })?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| EtcdError::Tls { endpoint: shown.clone(), reason: "handshake timed out".into() })?
                .map_err(|e| EtcdError::Tls { endpoint: shown.clone(), reason: tls_reason(&e) })?;
            handshake(hyper_util::rt::TokioIo::new(stream), &shown).await?
        } else {
            handshake(hyper_util::rt::TokioIo::new(tcp), &shown).await?
        };
        Ok(sender)
    }

    fn request(&self, path: &str, body: &Value, with_token: bool) -> hyper::Request<Full<Bytes>> {
        let ep = &self.inner.endpoint;
        let mut req = hyper::Request::post(path)
            .header(hyper::header::HOST, format!("{}:{}", ep.host, ep.port))
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if with_token {
            if let Some(t) = self.inner.token.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                req = req.header(hyper::header::AUTHORIZATION, t.as_str());
            }
        }
        req.body(Full::new(Bytes::from(body.to_string()))).unwrap_or_else(|_| hyper::Request::new(Full::default()))
    }

    async fn post(&self, path: &str, body: &Value, with_token: bool) -> Result<Value, EtcdError> {
        let v: Value = self.post_as(path, body, with_token).await?;
        if v.get("error").is_some() && v.get("header").is_none() {
            return Err(server_error(self.endpoint(), path, &v));
        }
        Ok(v)
    }

    /// POST and read the answer as `T` (an error answer as etcd's error).
    async fn post_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
        with_token: bool,
    ) -> Result<T, EtcdError> {
        let shown = self.endpoint().to_owned();
        let limit = if path == "/v3/kv/range" { RANGE_TIMEOUT } else { REQUEST_TIMEOUT };
        let timeout = || EtcdError::Timeout { endpoint: shown.clone(), path: path.to_owned(), secs: limit.as_secs() };
        let work = async {
            let pooled = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match pooled {
                Some(mut c) if !c.is_closed() => match c.ready().await {
                    Ok(()) => c,
                    Err(_) => self.open().await?,
                },
                _ => self.open().await?,
            };
            let resp = conn
                .send_request(self.request(path, body, with_token))
                .await
                .map_err(|e| hyper_error(&shown, path, &e))?;
            let status = resp.status();
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_REPLY);
            let bytes = limited
                .collect()
                .await
                .map_err(|e| EtcdError::Http {
                    endpoint: shown.clone(),
                    reason: format!("{path}: reading the reply: {e}"),
                })?
                .to_bytes();
            if !conn.is_closed() {
                self.inner.idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
            }
            if bytes.starts_with(b"CommonName of client") {
                return Err(EtcdError::Tls {
                    endpoint: shown.clone(),
                    reason: "the member refuses client certificates with a CommonName on its JSON gateway \
                             (etcd 3.4 and later): give --etcd-cert a certificate without CN (a role is reached \
                             through --etcd-user)"
                        .into(),
                });
            }
            let not_json = |e: serde_json::Error| EtcdError::Http {
                endpoint: shown.clone(),
                reason: format!(
                    "{path}: HTTP {status}, not etcd's JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).escape_debug()
                ),
            };
            if !status.is_success() {
                let v: Value = serde_json::from_slice(&bytes).map_err(not_json)?;
                return Err(server_error(&shown, path, &v));
            }
            serde_json::from_slice(&bytes).map_err(not_json)
        };
        tokio::time::timeout(limit, work).await.map_err(|_| timeout())?
    }

    /// `/v3/kv/range` (the answer decoded straight into its types: a page of thousands of
    /// keys is the hot path of `check` at scale).
    pub async fn range(&self, r: &Range) -> Result<RangeResponse, EtcdError> {
        let body = r.json();
        let raw: RawRange = match self.post_as("/v3/kv/range", &body, true).await {
            Err(e) if e.is_invalid_token() && self.inner.user.is_some() => {
                self.authenticate().await?;
                self.post_as("/v3/kv/range", &body, true).await?
            }
            r => r?,
        };
        let kvs = raw
            .kvs
            .into_iter()
            .map(|kv| {
                Ok(KeyValue {
                    key: decode(&kv.key)?,
                    value: decode(&kv.value)?,
                    mod_revision: kv.mod_revision.0,
                    create_revision: kv.create_revision.0,
                    version: kv.version.0,
                    lease: kv.lease.0,
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| self.bad_reply("/v3/kv/range", e))?;
        Ok(RangeResponse { revision: raw.header.revision.0, kvs, more: raw.more, count: raw.count.0 })
    }

    /// `/v3/kv/put`.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Result<i64, EtcdError> {
        let (key, value): (Vec<u8>, Vec<u8>) = (key.into(), value.into());
        let mut body = json!({"key": b64(&key), "value": b64(&value)});
        if lease != 0 {
            body["lease"] = lease.to_string().into();
        }
        let v = self.call("/v3/kv/put", &body).await?;
        Ok(int(&v["header"]["revision"]))
    }

    /// `/v3/kv/deleterange` of one key, or of `[key, range_end)`; how many were deleted.
    pub async fn delete(&self, key: &[u8], range_end: &[u8]) -> Result<i64, EtcdError> {
        let mut body = json!({"key": b64(key)});
        if !range_end.is_empty() {
            body["range_end"] = b64(range_end).into();
        }
        let v = self.call("/v3/kv/deleterange", &body).await?;
        Ok(int(&v["deleted"]))
    }

    /// `/v3/kv/txn`.
    pub async fn txn(&self, t: &Txn) -> Result<TxnResponse, EtcdError> {
        let v = self.call("/v3/kv/txn", &t.json()).await?;
        let mut ranges = Vec::new();
        for r in v["responses"].as_array().into_iter().flatten() {
            if let Some(rr) = r.get("response_range") {
                ranges.push(range_from(rr).map_err(|e| self.bad_reply("/v3/kv/txn", e))?);
            }
        }
        Ok(TxnResponse {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision: int(&v["header"]["revision"]),
            ranges,
        })
    }

    /// `/v3/lease/grant`: a new lease's id.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl_secs.to_string()})).await?;
        if let Some(e) = v["error"].as_str().filter(|e| !e.is_empty()) {
            return Err(self.bad_reply("/v3/lease/grant", e.to_owned()));
        }
        Ok(int(&v["ID"]))
    }

    /// `/v3/lease/keepalive` once: the lease's remaining TTL (0: it expired or was revoked).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()})).await?;
        if let Some(e) = v.get("error") {
            return Err(server_error(self.endpoint(), "/v3/lease/keepalive", e));
        }
        Ok(int(&v["result"]["TTL"]))
    }

    /// `/v3/lease/timetolive` with the keys: remaining TTL (-1: no such lease) and its keys.
    pub async fn lease_keys(&self, id: i64) -> Result<(i64, Vec<Vec<u8>>), EtcdError> {
        let v = self.call("/v3/lease/timetolive", &json!({"ID": id.to_string(), "keys": true})).await?;
        let keys = v["keys"]
            .as_array()
            .map(|a| a.iter().map(unb64).collect::<Result<Vec<_>, _>>())
            .transpose()
            .map_err(|e| self.bad_reply("/v3/lease/timetolive", e))?
            .unwrap_or_default();
        Ok((int(&v["TTL"]), keys))
    }

    /// `/v3/lease/revoke` (a lease already gone is not an error).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})).await {
            Err(EtcdError::Server { message, .. }) if message.contains("lease not found") => Ok(()),
            r => r.map(drop),
        }
    }

    /// `/v3/maintenance/status`: the database size in bytes.
    pub async fn db_size(&self) -> Result<i64, EtcdError> {
        let v = self.call("/v3/maintenance/status", &json!({})).await?;
        Ok(int(&v["dbSize"]).max(int(&v["db_size"])))
    }

    /// `/v3/watch` of `[key, range_end)` (empty: the key alone) from the next revision.
    pub async fn watch(&self, key: &[u8], range_end: &[u8]) -> Result<Watch, EtcdError> {
        let shown = self.endpoint().to_owned();
        let mut create = json!({"key": b64(key)});
        if !range_end.is_empty() {
            create["range_end"] = b64(range_end).into();
        }
        let body = json!({ "create_request": create });
        let mut conn = self.open().await?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, conn.send_request(self.request("/v3/watch", &body, true)))
            .await
            .map_err(|_| EtcdError::Timeout {
                endpoint: shown.clone(),
                path: "/v3/watch".into(),
                secs: REQUEST_TIMEOUT.as_secs(),
            })?
            .map_err(|e| hyper_error(&shown, "/v3/watch", &e))?;
        // The connection ends with the stream; keep driving it from the body.
        let mut w = Watch { body: resp.into_body(), buf: Vec::new(), endpoint: shown };
        // The first line confirms the watch ("created"); events follow.
        loop {
            if w.buf.contains(&b'\n') {
                break;
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, w.body.frame()).await {
                Ok(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        w.buf.extend_from_slice(&d);
                    }
                }
                Ok(Some(Err(e))) => {
                    return Err(EtcdError::Http { endpoint: w.endpoint.clone(), reason: e.to_string() })
                }
                Ok(None) => {
                    return Err(EtcdError::Http {
                        endpoint: w.endpoint.clone(),
                        reason: "watch: the stream ended at once".into(),
                    })
                }
                Err(_) => {
                    return Err(EtcdError::Timeout {
                        endpoint: w.endpoint.clone(),
                        path: "/v3/watch".into(),
                        secs: REQUEST_TIMEOUT.as_secs(),
                    })
                }
            }
        }
        let nl = w.buf.iter().position(|&b| b == b'\n').unwrap_or(0);
        let first: Vec<u8> = w.buf.drain(..=nl).collect();
        let v: Value = serde_json::from_slice(&first).unwrap_or(Value::Null);
        if let Some(e) = v.get("error") {
            return Err(server_error(&w.endpoint, "/v3/watch", e));
        }
        if v["result"]["created"] != true {
            return Err(EtcdError::Http {
                endpoint: w.endpoint.clone(),
                reason: format!("/v3/watch: not created: {}", String::from_utf8_lossy(&first).escape_debug()),
            });
        }
        Ok(w)
    }

    fn bad_reply(&self, path: &str, reason: String) -> EtcdError {
        EtcdError::Http { endpoint: self.endpoint().to_owned(), reason: format!("{path}: {reason}") }
    }

    // --- Authentication and roles (`capsd fleet grant-*`) ---

    /// `/v3/auth/user/add` (an existing user keeps its password: `user/changepw` is used).
    pub async fn user_add(&self, name: &str, password: &str) -> Result<(), EtcdError> {
        match self.call("/v3/auth/user/add", &json!({"name": name, "password": password})).await {
            Err(EtcdError::Server { message, .. }) if message.contains("already exists") => {
                self.call("/v3/auth/user/changepw", &json!({"name": name, "password": password})).await.map(drop)
            }
            r => r.map(drop),
        }
    }

    /// `/v3/auth/role/add` (an existing role is not an error).
    pub async fn role_add(&self, name: &str) -> Result<(), EtcdError> {
        match self.call("/v3/auth/role/add", &json!({"name": name})).await {
            Err(EtcdError::Server { message, .. }) if message.contains("already exists") => Ok(()),
            r => r.map(drop),
        }
    }

    /// `/v3/auth/role/grant` of `[key, range_end)` (empty: the key alone).
    pub async fn role_grant(&self, role: &str, perm: Perm, key: &[u8], range_end: &[u8]) -> Result<(), EtcdError> {
        let mut p = json!({"permType": perm.as_str(), "key": b64(key)});
        if !range_end.is_empty() {
            p["range_end"] = b64(range_end).into();
        }
        self.call("/v3/auth/role/grant", &json!({"name": role, "perm": p})).await.map(drop)
    }

    /// `/v3/auth/user/grant`.
    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<(), EtcdError> {
        self.call("/v3/auth/user/grant", &json!({"user": user, "role": role})).await.map(drop)
    }
}

/// What a role may do with a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Perm {
    Read,
    Write,
    ReadWrite,
}

impl Perm {
    fn as_str(self) -> &'static str {
        match self {
            Perm::Read => "READ",
            Perm::Write => "WRITE",
            Perm::ReadWrite => "READWRITE",
        }
    }
}

async fn handshake<I>(io: I, shown: &str) -> Result<Conn, EtcdError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| EtcdError::Http { endpoint: shown.to_owned(), reason: format!("HTTP handshake: {e}") })?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An HTTP exchange's failure; a TLS alert (a client certificate refused after the
/// handshake, as TLS 1.3 reports it) is named as TLS.
fn hyper_error(endpoint: &str, path: &str, e: &hyper::Error) -> EtcdError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                return EtcdError::Tls { endpoint: endpoint.to_owned(), reason: tls_reason(io) };
            }
        }
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, r.clone());
            return EtcdError::Tls { endpoint: endpoint.to_owned(), reason: tls_reason(&io) };
        }
        source = s.source();
    }
    EtcdError::Http { endpoint: endpoint.to_owned(), reason: format!("{path}: {e}") }
}

/// Name what failed in a TLS handshake: the member's certificate (untrusted, wrong name,
/// expired) or ours (refused by the member).
fn tls_reason(e: &std::io::Error) -> String {
    let inner = e.get_ref().map(|i| i.to_string()).unwrap_or_else(|| e.to_string());
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return match r {
            rustls::Error::InvalidCertificate(c) => match c {
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. } => {
                    format!("the member's certificate is not valid for this host name ({inner})")
                }
                rustls::CertificateError::UnknownIssuer => {
                    format!("the member's certificate is not signed by a trusted CA (--etcd-cacert) ({inner})")
                }
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                    format!("the member's certificate has expired ({inner})")
                }
                _ => format!("the member's certificate is not acceptable ({inner})"),
            },
            rustls::Error::AlertReceived(a) => {
                format!("the member refused the handshake ({a:?}): is a client certificate (--etcd-cert, --etcd-key) required or not trusted there?")
            }
            _ => inner,
        };
    }
    inner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_bad_ones_are_named() {
        let e = parse_endpoint("https://etcd-1.example:2379").unwrap();
        assert!(e.tls);
        assert_eq!((e.host.as_str(), e.port), ("etcd-1.example", 2379));
        let e = parse_endpoint("127.0.0.1:2379").unwrap();
        assert!(!e.tls);
        for bad in ["http://nohost", "ftp://x:1/y:z", "host:port"] {
            assert!(parse_endpoint(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/capsd/hosts/"), b"/capsd/hosts0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}

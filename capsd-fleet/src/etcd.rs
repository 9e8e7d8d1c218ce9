//! A small etcd v3 client speaking etcd's own gRPC API: HTTP/2 (hyper) with the protobuf
//! messages capsd needs declared by hand in [`pb`] with prost's derive (field numbers and
//! types from etcd's `rpc.proto`, `kv.proto` and `auth.proto`), so the crate builds with
//! the Rust toolchain alone (no `protoc`, no build script, no system OpenSSL: rustls with
//! ring secures `https://` endpoints).
//!
//! gRPC on the wire: `POST /etcdserverpb.SERVICE/METHOD`, `content-type: application/grpc`,
//! `te: trailers`, the request one message behind a 5-byte prefix (a zero compression flag
//! and the length, big-endian), the answer the same, its status in the `grpc-status`
//! trailer (or in the headers of an answer without a body). Streams (watch, lease
//! keep-alive) are sent one request message then closed on our side, which etcd answers as
//! it would a client that has nothing more to send: a keep-alive answers once, a watch keeps
//! sending events.
//!
//! Authentication: TLS client certificates (`--etcd-cert`/`--etcd-key`) and etcd users
//! (`Authenticate` gives a token sent as the `token` metadata; an expired token is renewed
//! once per request). Without a user, etcd maps a client certificate's CommonName to the
//! user of that name when authentication is on.
//!
//! One member at a time: [`Client::connect`] tries the endpoints in turn (one further on each
//! call in this process) until one answers a status request; a caller whose request failed
//! connects again, to the next member. Each client keeps one HTTP/2 connection to its
//! member; concurrent requests share it as streams.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::SendRequest;
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one request may take (a watch: its start).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one range may take (a page of thousands of keys on a loaded member).
const RANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer read: etcd itself sends answers of any size (its server side has no send
/// limit), so this bounds the client's memory; a range page above it is read again in
/// smaller pages (`store::range_all`).
pub const MAX_REPLY: usize = 64 << 20;

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
    /// The HTTP/2 exchange failed (connection closed, an answer that is not etcd's).
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
            || matches!(self, EtcdError::Server { message, .. }
                if message.contains("invalid auth token") || message.contains("revision in header is old"))
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

/// The messages of etcd's gRPC API that capsd uses, declared by hand: names, field numbers
/// and types as in etcd's `etcdserverpb/rpc.proto`, `mvccpb/kv.proto` and
/// `authpb/auth.proto` (fields capsd never sets or reads are left out; protobuf skips
/// unknown fields when decoding). Enums are carried as their `int32` values.
pub mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    /// mvccpb.KeyValue.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(int64, tag = "2")]
        pub create_revision: i64,
        #[prost(int64, tag = "3")]
        pub mod_revision: i64,
        #[prost(int64, tag = "4")]
        pub version: i64,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
        #[prost(int64, tag = "6")]
        pub lease: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub limit: i64,
        #[prost(int64, tag = "4")]
        pub revision: i64,
        #[prost(bool, tag = "7")]
        pub serializable: bool,
        #[prost(bool, tag = "8")]
        pub keys_only: bool,
        #[prost(bool, tag = "9")]
        pub count_only: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, repeated, tag = "2")]
        pub kvs: Vec<KeyValue>,
        #[prost(bool, tag = "3")]
        pub more: bool,
        #[prost(int64, tag = "4")]
        pub count: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub lease: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeleteRangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeleteRangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub deleted: i64,
    }

    /// Any answer read for its header alone (PutResponse, LeaseRevokeResponse, the auth calls').
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderOnly {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestOp {
        #[prost(oneof = "Request", tags = "1, 2, 3, 4")]
        pub request: Option<Request>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Request {
        #[prost(message, tag = "1")]
        Range(RangeRequest),
        #[prost(message, tag = "2")]
        Put(PutRequest),
        #[prost(message, tag = "3")]
        DeleteRange(DeleteRangeRequest),
        #[prost(message, tag = "4")]
        Txn(TxnRequest),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseOp {
        #[prost(oneof = "Response", tags = "1, 2, 3, 4")]
        pub response: Option<Response>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Response {
        #[prost(message, tag = "1")]
        Range(RangeResponse),
        #[prost(message, tag = "2")]
        Put(HeaderOnly),
        #[prost(message, tag = "3")]
        DeleteRange(DeleteRangeResponse),
        #[prost(message, tag = "4")]
        Txn(TxnResponse),
    }

    /// Compare.CompareResult.
    pub const EQUAL: i32 = 0;
    pub const LESS: i32 = 2;
    /// Compare.CompareTarget.
    pub const VERSION: i32 = 0;
    pub const MOD: i32 = 2;
    pub const VALUE: i32 = 3;
    pub const LEASE: i32 = 4;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Compare {
        #[prost(int32, tag = "1")]
        pub result: i32,
        #[prost(int32, tag = "2")]
        pub target: i32,
        #[prost(bytes = "vec", tag = "3")]
        pub key: Vec<u8>,
        #[prost(oneof = "TargetUnion", tags = "4, 6, 7, 8")]
        pub target_union: Option<TargetUnion>,
        #[prost(bytes = "vec", tag = "64")]
        pub range_end: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum TargetUnion {
        #[prost(int64, tag = "4")]
        Version(i64),
        #[prost(int64, tag = "6")]
        ModRevision(i64),
        #[prost(bytes = "vec", tag = "7")]
        Value(Vec<u8>),
        #[prost(int64, tag = "8")]
        Lease(i64),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnRequest {
        #[prost(message, repeated, tag = "1")]
        pub compare: Vec<Compare>,
        #[prost(message, repeated, tag = "2")]
        pub success: Vec<RequestOp>,
        #[prost(message, repeated, tag = "3")]
        pub failure: Vec<RequestOp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TxnResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(bool, tag = "2")]
        pub succeeded: bool,
        #[prost(message, repeated, tag = "3")]
        pub responses: Vec<ResponseOp>,
    }

    /// LeaseGrantRequest (`TTL`, `ID`), LeaseRevokeRequest and LeaseKeepAliveRequest (`ID`
    /// alone), LeaseTimeToLiveRequest (`ID`, `keys`): one shape, fields 1 and 2.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseGrantRequest {
        #[prost(int64, tag = "1")]
        pub ttl: i64,
        #[prost(int64, tag = "2")]
        pub id: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseGrantResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
        #[prost(string, tag = "4")]
        pub error: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseIdRequest {
        #[prost(int64, tag = "1")]
        pub id: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseKeepAliveResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseTimeToLiveRequest {
        #[prost(int64, tag = "1")]
        pub id: i64,
        #[prost(bool, tag = "2")]
        pub keys: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LeaseTimeToLiveResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub id: i64,
        #[prost(int64, tag = "3")]
        pub ttl: i64,
        #[prost(int64, tag = "4")]
        pub granted_ttl: i64,
        #[prost(bytes = "vec", repeated, tag = "5")]
        pub keys: Vec<Vec<u8>>,
    }

    /// WatchRequest with its `create_request` (field 1 of the `request_union` oneof, which
    /// encodes as this optional field).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchRequest {
        #[prost(message, optional, tag = "1")]
        pub create_request: Option<WatchCreateRequest>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchCreateRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub start_revision: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub watch_id: i64,
        #[prost(bool, tag = "3")]
        pub created: bool,
        #[prost(bool, tag = "4")]
        pub canceled: bool,
        #[prost(int64, tag = "5")]
        pub compact_revision: i64,
        #[prost(string, tag = "6")]
        pub cancel_reason: String,
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<Event>,
    }

    /// mvccpb.Event (`type`: 0 PUT, 1 DELETE).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(int32, tag = "1")]
        pub r#type: i32,
        #[prost(message, optional, tag = "2")]
        pub kv: Option<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(int64, tag = "3")]
        pub db_size: i64,
    }

    /// AuthenticateRequest, AuthUserAddRequest, AuthUserChangePasswordRequest (`name`,
    /// `password`); AuthRoleAddRequest (`name` alone).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamePassword {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub password: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthenticateResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(string, tag = "2")]
        pub token: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthUserGrantRoleRequest {
        #[prost(string, tag = "1")]
        pub user: String,
        #[prost(string, tag = "2")]
        pub role: String,
    }

    /// authpb.Permission (`permType`: 0 READ, 1 WRITE, 2 READWRITE).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Permission {
        #[prost(int32, tag = "1")]
        pub perm_type: i32,
        #[prost(bytes = "vec", tag = "2")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub range_end: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AuthRoleGrantPermissionRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub perm: Option<Permission>,
    }
}

/// The gRPC methods used.
mod method {
    pub const RANGE: &str = "/etcdserverpb.KV/Range";
    pub const PUT: &str = "/etcdserverpb.KV/Put";
    pub const DELETE_RANGE: &str = "/etcdserverpb.KV/DeleteRange";
    pub const TXN: &str = "/etcdserverpb.KV/Txn";
    pub const LEASE_GRANT: &str = "/etcdserverpb.Lease/LeaseGrant";
    pub const LEASE_REVOKE: &str = "/etcdserverpb.Lease/LeaseRevoke";
    pub const LEASE_KEEP_ALIVE: &str = "/etcdserverpb.Lease/LeaseKeepAlive";
    pub const LEASE_TIME_TO_LIVE: &str = "/etcdserverpb.Lease/LeaseTimeToLive";
    pub const WATCH: &str = "/etcdserverpb.Watch/Watch";
    pub const STATUS: &str = "/etcdserverpb.Maintenance/Status";
    pub const AUTHENTICATE: &str = "/etcdserverpb.Auth/Authenticate";
    pub const AUTH_ENABLE: &str = "/etcdserverpb.Auth/AuthEnable";
    pub const USER_ADD: &str = "/etcdserverpb.Auth/UserAdd";
    pub const USER_CHANGE_PASSWORD: &str = "/etcdserverpb.Auth/UserChangePassword";
    pub const USER_GRANT_ROLE: &str = "/etcdserverpb.Auth/UserGrantRole";
    pub const ROLE_ADD: &str = "/etcdserverpb.Auth/RoleAdd";
    pub const ROLE_GRANT_PERMISSION: &str = "/etcdserverpb.Auth/RoleGrantPermission";
}

/// An HTTP/2 connection: its request handle, and how it ended (a TLS alert from the member
/// arrives on the connection, not on the request it cancels).
#[derive(Debug, Clone)]
struct Conn {
    send: SendRequest<Full<Bytes>>,
    ended: tokio::sync::watch::Receiver<Option<EtcdError>>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
    /// Why the connection ended, when it ended with an error (waiting a little for it: a
    /// request can see the cancellation before the connection's task recorded why).
    async fn failure(&self) -> Option<EtcdError> {
        let mut rx = self.ended.clone();
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(Option::is_some)).await;
        let e = rx.borrow().clone();
        e
    }
}

struct Inner {
    endpoint: Endpoint,
    tls: Option<tokio_rustls::TlsConnector>,
    user: Option<(String, String)>,
    token: Mutex<Option<String>>,
    /// A client certificate is configured.
    client_cert: bool,
    /// The HTTP/2 connection (opened on first use, again after it closed).
    conn: tokio::sync::Mutex<Option<Conn>>,
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

/// A client of one etcd member (cheap to clone; requests share one HTTP/2 connection).
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

impl From<pb::KeyValue> for KeyValue {
    fn from(kv: pb::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            mod_revision: kv.mod_revision,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        }
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

impl From<pb::RangeResponse> for RangeResponse {
    fn from(r: pb::RangeResponse) -> RangeResponse {
        RangeResponse {
            revision: r.header.map_or(0, |h| h.revision),
            kvs: r.kvs.into_iter().map(KeyValue::from).collect(),
            more: r.more,
            count: r.count,
        }
    }
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
    /// Served by the member from its own state, without confirming with the cluster's
    /// leader that it is current (etcd's `serializable`).
    pub serializable: bool,
}

impl Range {
    pub fn key(key: impl Into<Vec<u8>>) -> Range {
        Range { key: key.into(), ..Range::default() }
    }
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Range {
        let key: Vec<u8> = prefix.into();
        Range { range_end: prefix_end(&key), key, ..Range::default() }
    }
    fn pb(&self) -> pb::RangeRequest {
        pb::RangeRequest {
            key: self.key.clone(),
            range_end: self.range_end.clone(),
            limit: self.limit,
            revision: self.revision,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
        }
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
    fn pb(&self) -> pb::Compare {
        use pb::TargetUnion as U;
        let c = |result, target, key: &[u8], u| pb::Compare {
            result,
            target,
            key: key.to_vec(),
            target_union: Some(u),
            range_end: Vec::new(),
        };
        match self {
            Compare::VersionEq(k, v) => c(pb::EQUAL, pb::VERSION, k, U::Version(*v)),
            Compare::ModLessInRange { key, end, revision } => {
                pb::Compare { range_end: end.clone(), ..c(pb::LESS, pb::MOD, key, U::ModRevision(*revision)) }
            }
            Compare::ValueEq(k, v) => c(pb::EQUAL, pb::VALUE, k, U::Value(v.clone())),
            Compare::LeaseEq(k, l) => c(pb::EQUAL, pb::LEASE, k, U::Lease(*l)),
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
    fn pb(&self) -> pb::RequestOp {
        let request = match self {
            Op::Put { key, value, lease } => {
                pb::Request::Put(pb::PutRequest { key: key.clone(), value: value.clone(), lease: *lease })
            }
            Op::Delete { key, range_end } => {
                pb::Request::DeleteRange(pb::DeleteRangeRequest { key: key.clone(), range_end: range_end.clone() })
            }
            Op::Range(r) => pb::Request::Range(r.pb()),
            Op::Txn(t) => pb::Request::Txn(t.pb()),
        };
        pb::RequestOp { request: Some(request) }
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
    fn pb(&self) -> pb::TxnRequest {
        pb::TxnRequest {
            compare: self.compare.iter().map(Compare::pb).collect(),
            success: self.success.iter().map(Op::pb).collect(),
            failure: self.failure.iter().map(Op::pb).collect(),
        }
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

/// A running watch (a stream of the client's connection, which it keeps open).
#[derive(Debug)]
pub struct Watch {
    body: hyper::body::Incoming,
    buf: BytesMut,
    endpoint: String,
    _conn: Conn,
}

impl Watch {
    /// The next batch of events (None: the stream ended).
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>, EtcdError> {
        loop {
            while let Some(msg) = take_message(&mut self.buf).map_err(|e| self.bad(e))? {
                let r = pb::WatchResponse::decode(msg).map_err(|e| self.bad(format!("a watch answer: {e}")))?;
                if r.canceled {
                    let why = if r.compact_revision > 0 {
                        format!("compacted at revision {}", r.compact_revision)
                    } else {
                        r.cancel_reason.clone()
                    };
                    return Err(self.bad(format!("the watch was cancelled by etcd: {why}")));
                }
                let events: Vec<Event> = r
                    .events
                    .into_iter()
                    .filter_map(|e| Some(Event { deleted: e.r#type == 1, kv: KeyValue::from(e.kv?) }))
                    .collect();
                if !events.is_empty() {
                    return Ok(Some(events));
                }
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(self.bad(e.to_string())),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(f) => {
                        if let Some(t) = f.trailers_ref() {
                            if let Some((code, message)) = grpc_status(t) {
                                if code != 0 {
                                    return Err(EtcdError::Server {
                                        endpoint: self.endpoint.clone(),
                                        path: method::WATCH.into(),
                                        code,
                                        message,
                                    });
                                }
                            }
                        }
                        return Ok(None);
                    }
                },
            }
        }
    }

    fn bad(&self, reason: String) -> EtcdError {
        EtcdError::Http { endpoint: self.endpoint.clone(), reason: format!("{}: {reason}", method::WATCH) }
    }
}

/// One gRPC message out of `buf` when it holds a whole one.
fn take_message(buf: &mut BytesMut) -> Result<Option<Bytes>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] != 0 {
        return Err("a compressed gRPC message (none was asked for)".into());
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_REPLY {
        return Err(format!("a gRPC message of {len} bytes: too large (more than {MAX_REPLY})"));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A message behind gRPC's 5-byte prefix.
fn framed(msg: &impl prost::Message) -> Bytes {
    let len = msg.encoded_len();
    let mut v = Vec::with_capacity(5 + len);
    v.push(0);
    v.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(&mut v).unwrap_or_default();
    Bytes::from(v)
}

/// `grpc-status` and `grpc-message` (percent-decoded) of headers or trailers, when present.
fn grpc_status(h: &hyper::HeaderMap) -> Option<(i64, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().unwrap_or(2);
    let raw = h.get("grpc-message").map(|v| v.as_bytes().to_vec()).unwrap_or_default();
    let mut msg = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let (Some(a), Some(b)) = (hex(raw[i + 1]), hex(raw[i + 2])) {
                msg.push((a * 16 + b) as u8);
                i += 3;
                continue;
            }
        }
        msg.push(raw[i]);
        i += 1;
    }
    let message = String::from_utf8_lossy(&msg).into_owned();
    Some((code, if message.is_empty() { format!("gRPC status {code}") } else { message }))
}

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
    config.alpn_protocols = vec![b"h2".to_vec()];
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
                client_cert: cfg.cert.is_some(),
                conn: tokio::sync::Mutex::new(None),
            }),
        };
        let r = async {
            if client.inner.user.is_some() {
                client.authenticate().await?;
            }
            client.db_size().await
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
        let req = pb::NamePassword { name: user.clone(), password: pw.clone() };
        let r: pb::AuthenticateResponse = self.unary_once(method::AUTHENTICATE, &req, false).await?;
        if r.token.is_empty() {
            return Err(EtcdError::Server {
                endpoint: self.endpoint().to_owned(),
                path: method::AUTHENTICATE.into(),
                code: 0,
                message: format!("user '{user}' authenticated but etcd gave no token (is authentication enabled?)"),
            });
        }
        *self.inner.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.token);
        Ok(())
    }

    /// The connection, opened when there is none or it closed.
    async fn conn(&self) -> Result<Conn, EtcdError> {
        let mut slot = self.inner.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let c = self.open().await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn open(&self) -> Result<Conn, EtcdError> {
        let ep = &self.inner.endpoint;
        let shown = ep.shown.clone();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)))
            .await
            .map_err(|_| EtcdError::Connect { endpoint: shown.clone(), reason: "timed out".into() })?
            .map_err(|e| EtcdError::Connect { endpoint: shown.clone(), reason: e.to_string() })?;
        let _ = tcp.set_nodelay(true);
        if let Some(tls) = &self.inner.tls {
            let name = rustls_pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|e| EtcdError::Tls { endpoint: shown.clone(), reason: format!("server name: {e}") })?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| EtcdError::Tls { endpoint: shown.clone(), reason: "handshake timed out".into() })?
                .map_err(|e| EtcdError::Tls { endpoint: shown.clone(), reason: tls_reason(&e) })?;
            if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(EtcdError::Tls {
                    endpoint: shown,
                    reason: "the member did not agree to HTTP/2 (ALPN h2): is it etcd's client port?".into(),
                });
            }
            handshake(hyper_util::rt::TokioIo::new(stream), &shown).await
        } else {
            handshake(hyper_util::rt::TokioIo::new(tcp), &shown).await
        }
    }

    /// Forget the connection (after a failure on it: the next request opens another).
    async fn drop_conn(&self) {
        *self.inner.conn.lock().await = None;
    }

    fn request(&self, path: &str, body: Bytes, with_token: bool) -> hyper::Request<Full<Bytes>> {
        let ep = &self.inner.endpoint;
        let scheme = if self.inner.tls.is_some() { "https" } else { "http" };
        let host = if ep.host.contains(':') { format!("[{}]", ep.host) } else { ep.host.clone() };
        let mut req = hyper::Request::post(format!("{scheme}://{host}:{}{path}", ep.port))
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header(hyper::header::TE, "trailers");
        if with_token {
            if let Some(t) = self.inner.token.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                req = req.header("token", t.as_str());
            }
        }
        req.body(Full::new(body)).unwrap_or_else(|_| hyper::Request::new(Full::default()))
    }

    /// Send one request message on a new stream; the answer's head (a gRPC error carried
    /// in the headers already refused).
    async fn start(
        &self,
        path: &str,
        body: Bytes,
        with_token: bool,
    ) -> Result<(Conn, hyper::Response<hyper::body::Incoming>), EtcdError> {
        let shown = self.endpoint();
        let mut conn = self.conn().await?;
        let sent = async {
            conn.send.ready().await?;
            conn.send.send_request(self.request(path, body, with_token)).await
        }
        .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                self.drop_conn().await;
                let mine = hyper_error(shown, path, &e);
                if matches!(mine, EtcdError::Tls { .. }) {
                    return Err(mine);
                }
                // A request cancelled because the connection ended: why it ended.
                return Err(match conn.failure().await {
                    Some(why @ EtcdError::Tls { .. }) => why,
                    // TLS 1.3 refuses a missing client certificate after the handshake: the
                    // member's alert is often lost as it closes the connection.
                    Some(EtcdError::Http { reason, .. }) if self.inner.tls.is_some() && !self.inner.client_cert => {
                        EtcdError::Tls {
                            endpoint: shown.to_owned(),
                            reason: format!(
                                "the member closed the connection after the TLS handshake ({e}: {reason}): does it \
                                 require a client certificate (--etcd-cert, --etcd-key)?"
                            ),
                        }
                    }
                    Some(EtcdError::Http { reason, .. }) => {
                        EtcdError::Http { endpoint: shown.to_owned(), reason: format!("{path}: {e}: {reason}") }
                    }
                    _ => mine,
                });
            }
        };
        if let Some((code, message)) = grpc_status(resp.headers()).filter(|(c, _)| *c != 0) {
            return Err(EtcdError::Server { endpoint: shown.to_owned(), path: path.to_owned(), code, message });
        }
        if !resp.status().is_success() {
            return Err(EtcdError::Http {
                endpoint: shown.to_owned(),
                reason: format!("{path}: HTTP {}, not a gRPC answer (is this etcd's client port?)", resp.status()),
            });
        }
        Ok((conn, resp))
    }

    /// One request, one answer.
    async fn unary_once<Q: prost::Message, R: prost::Message + Default>(
        &self,
        path: &str,
        req: &Q,
        with_token: bool,
    ) -> Result<R, EtcdError> {
        let shown = self.endpoint();
        let limit = if path == method::RANGE { RANGE_TIMEOUT } else { REQUEST_TIMEOUT };
        let http = |reason: String| EtcdError::Http { endpoint: shown.to_owned(), reason: format!("{path}: {reason}") };
        let work = async {
            let (_conn, resp) = self.start(path, framed(req), with_token).await?;
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            let mut status = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| hyper_error(shown, path, &e))?;
                match frame.into_data() {
                    Ok(d) => {
                        if buf.len() + d.len() > MAX_REPLY + 5 {
                            return Err(http(format!("answer too large (more than {MAX_REPLY} bytes)")));
                        }
                        if buf.is_empty() && d.len() >= 5 {
                            // The message's length is in its prefix: one allocation for a
                            // range page of many MiB rather than doublings and copies.
                            let len = u32::from_be_bytes([d[1], d[2], d[3], d[4]]) as usize;
                            buf.reserve(len.min(MAX_REPLY) + 5);
                        }
                        buf.extend_from_slice(&d);
                    }
                    Err(f) => status = f.trailers_ref().and_then(grpc_status),
                }
            }
            match status {
                Some((0, _)) => {}
                Some((code, message)) => {
                    return Err(EtcdError::Server { endpoint: shown.to_owned(), path: path.to_owned(), code, message })
                }
                None => return Err(http("the answer ended without a gRPC status".into())),
            }
            let msg =
                take_message(&mut buf).map_err(http)?.ok_or_else(|| http("an answer without a message".into()))?;
            R::decode(msg).map_err(|e| http(format!("not etcd's answer: {e}")))
        };
        tokio::time::timeout(limit, work).await.map_err(|_| EtcdError::Timeout {
            endpoint: shown.to_owned(),
            path: path.to_owned(),
            secs: limit.as_secs(),
        })?
    }

    /// One request, one answer; an expired token is renewed once.
    async fn unary<Q: prost::Message, R: prost::Message + Default>(&self, path: &str, req: &Q) -> Result<R, EtcdError> {
        match self.unary_once(path, req, true).await {
            Err(e) if e.is_invalid_token() && self.inner.user.is_some() => {
                self.authenticate().await?;
                self.unary_once(path, req, true).await
            }
            r => r,
        }
    }

    /// `KV.Range`.
    pub async fn range(&self, r: &Range) -> Result<RangeResponse, EtcdError> {
        let r: pb::RangeResponse = self.unary(method::RANGE, &r.pb()).await?;
        Ok(r.into())
    }

    /// `KV.Put`: the revision written.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, lease: i64) -> Result<i64, EtcdError> {
        let req = pb::PutRequest { key: key.into(), value: value.into(), lease };
        let r: pb::HeaderOnly = self.unary(method::PUT, &req).await?;
        Ok(r.header.map_or(0, |h| h.revision))
    }

    /// `KV.DeleteRange` of one key, or of `[key, range_end)`; how many were deleted.
    pub async fn delete(&self, key: &[u8], range_end: &[u8]) -> Result<i64, EtcdError> {
        let req = pb::DeleteRangeRequest { key: key.to_vec(), range_end: range_end.to_vec() };
        let r: pb::DeleteRangeResponse = self.unary(method::DELETE_RANGE, &req).await?;
        Ok(r.deleted)
    }

    /// `KV.Txn`.
    pub async fn txn(&self, t: &Txn) -> Result<TxnResponse, EtcdError> {
        let r: pb::TxnResponse = self.unary(method::TXN, &t.pb()).await?;
        Ok(TxnResponse {
            succeeded: r.succeeded,
            revision: r.header.map_or(0, |h| h.revision),
            ranges: r
                .responses
                .into_iter()
                .filter_map(|op| match op.response {
                    Some(pb::Response::Range(rr)) => Some(rr.into()),
                    _ => None,
                })
                .collect(),
        })
    }

    /// `Lease.LeaseGrant`: a new lease's id.
    pub async fn lease_grant(&self, ttl_secs: i64) -> Result<i64, EtcdError> {
        let r: pb::LeaseGrantResponse =
            self.unary(method::LEASE_GRANT, &pb::LeaseGrantRequest { ttl: ttl_secs, id: 0 }).await?;
        if !r.error.is_empty() {
            return Err(EtcdError::Server {
                endpoint: self.endpoint().to_owned(),
                path: method::LEASE_GRANT.into(),
                code: 2,
                message: r.error,
            });
        }
        Ok(r.id)
    }

    /// `Lease.LeaseKeepAlive` once: the lease's remaining TTL (0: it expired or was revoked).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let r: pb::LeaseKeepAliveResponse = self.unary(method::LEASE_KEEP_ALIVE, &pb::LeaseIdRequest { id }).await?;
        Ok(r.ttl)
    }

    /// `Lease.LeaseTimeToLive` with the keys: remaining TTL (-1: no such lease) and its keys.
    pub async fn lease_keys(&self, id: i64) -> Result<(i64, Vec<Vec<u8>>), EtcdError> {
        let r: pb::LeaseTimeToLiveResponse =
            self.unary(method::LEASE_TIME_TO_LIVE, &pb::LeaseTimeToLiveRequest { id, keys: true }).await?;
        Ok((r.ttl, r.keys))
    }

    /// `Lease.LeaseRevoke` (a lease already gone is not an error).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.unary::<_, pb::HeaderOnly>(method::LEASE_REVOKE, &pb::LeaseIdRequest { id }).await {
            Err(EtcdError::Server { message, .. }) if message.contains("lease not found") => Ok(()),
            r => r.map(drop),
        }
    }

    /// `Maintenance.Status`: the database size in bytes.
    pub async fn db_size(&self) -> Result<i64, EtcdError> {
        let r: pb::StatusResponse = self.unary(method::STATUS, &pb::Empty {}).await?;
        Ok(r.db_size)
    }

    /// `Watch.Watch` of `[key, range_end)` (empty: the key alone) from the next revision.
    pub async fn watch(&self, key: &[u8], range_end: &[u8]) -> Result<Watch, EtcdError> {
        let req = pb::WatchRequest {
            create_request: Some(pb::WatchCreateRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                start_revision: 0,
            }),
        };
        let started = async {
            match self.start(method::WATCH, framed(&req), true).await {
                Err(e) if e.is_invalid_token() && self.inner.user.is_some() => {
                    self.authenticate().await?;
                    self.start(method::WATCH, framed(&req), true).await
                }
                r => r,
            }
        };
        let timeout = || EtcdError::Timeout {
            endpoint: self.endpoint().to_owned(),
            path: method::WATCH.into(),
            secs: REQUEST_TIMEOUT.as_secs(),
        };
        let (conn, resp) = tokio::time::timeout(REQUEST_TIMEOUT, started).await.map_err(|_| timeout())??;
        let mut w =
            Watch { body: resp.into_body(), buf: BytesMut::new(), endpoint: self.endpoint().to_owned(), _conn: conn };
        // The first answer confirms the watch ("created"); events follow.
        let first = async {
            loop {
                if let Some(msg) = take_message(&mut w.buf).map_err(|e| w.bad(e))? {
                    return Ok(msg);
                }
                match w.body.frame().await {
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => w.buf.extend_from_slice(&d),
                        Err(f) => {
                            if let Some((code, message)) = f.trailers_ref().and_then(grpc_status).filter(|s| s.0 != 0) {
                                return Err(EtcdError::Server {
                                    endpoint: w.endpoint.clone(),
                                    path: method::WATCH.into(),
                                    code,
                                    message,
                                });
                            }
                            return Err(w.bad("the stream ended at once".into()));
                        }
                    },
                    Some(Err(e)) => return Err(w.bad(e.to_string())),
                    None => return Err(w.bad("the stream ended at once".into())),
                }
            }
        };
        let msg = tokio::time::timeout(REQUEST_TIMEOUT, first).await.map_err(|_| timeout())??;
        let r = pb::WatchResponse::decode(msg).map_err(|e| w.bad(format!("a watch answer: {e}")))?;
        if !r.created || r.canceled {
            return Err(w.bad(format!("not created: {}", r.cancel_reason)));
        }
        Ok(w)
    }

    // --- Authentication and roles (`capsd fleet grant-*`) ---

    /// `Auth.UserAdd` (an existing user gets this password: `Auth.UserChangePassword`).
    pub async fn user_add(&self, name: &str, password: &str) -> Result<(), EtcdError> {
        let req = pb::NamePassword { name: name.to_owned(), password: password.to_owned() };
        match self.unary::<_, pb::HeaderOnly>(method::USER_ADD, &req).await {
            Err(EtcdError::Server { message, .. }) if message.contains("already exists") => {
                self.unary::<_, pb::HeaderOnly>(method::USER_CHANGE_PASSWORD, &req).await.map(drop)
            }
            r => r.map(drop),
        }
    }

    /// `Auth.RoleAdd` (an existing role is not an error).
    pub async fn role_add(&self, name: &str) -> Result<(), EtcdError> {
        let req = pb::NamePassword { name: name.to_owned(), password: String::new() };
        match self.unary::<_, pb::HeaderOnly>(method::ROLE_ADD, &req).await {
            Err(EtcdError::Server { message, .. }) if message.contains("already exists") => Ok(()),
            r => r.map(drop),
        }
    }

    /// `Auth.RoleGrantPermission` of `[key, range_end)` (empty: the key alone).
    pub async fn role_grant(&self, role: &str, perm: Perm, key: &[u8], range_end: &[u8]) -> Result<(), EtcdError> {
        let req = pb::AuthRoleGrantPermissionRequest {
            name: role.to_owned(),
            perm: Some(pb::Permission { perm_type: perm.code(), key: key.to_vec(), range_end: range_end.to_vec() }),
        };
        self.unary::<_, pb::HeaderOnly>(method::ROLE_GRANT_PERMISSION, &req).await.map(drop)
    }

    /// `Auth.UserGrantRole`.
    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<(), EtcdError> {
        let req = pb::AuthUserGrantRoleRequest { user: user.to_owned(), role: role.to_owned() };
        self.unary::<_, pb::HeaderOnly>(method::USER_GRANT_ROLE, &req).await.map(drop)
    }

    /// `Auth.AuthEnable` (needs a user `root` with role `root`).
    pub async fn auth_enable(&self) -> Result<(), EtcdError> {
        self.unary::<_, pb::HeaderOnly>(method::AUTH_ENABLE, &pb::Empty {}).await.map(drop)
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
    /// authpb.Permission.Type.
    fn code(self) -> i32 {
        match self {
            Perm::Read => 0,
            Perm::Write => 1,
            Perm::ReadWrite => 2,
        }
    }
}

async fn handshake<I>(io: I, shown: &str) -> Result<Conn, EtcdError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        // Large windows and frames: a range page of thousands of keys streams without
        // waiting on window updates.
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .handshake(io)
        .await
        .map_err(|e| EtcdError::Http { endpoint: shown.to_owned(), reason: format!("HTTP/2 handshake: {e}") })?;
    let (tx, ended) = tokio::sync::watch::channel(None);
    let shown = shown.to_owned();
    tokio::spawn(async move {
        let why = match conn.await {
            Ok(()) => EtcdError::Http { endpoint: shown, reason: "the connection was closed".into() },
            Err(e) => hyper_error(&shown, "", &e),
        };
        let _ = tx.send(Some(why));
    });
    Ok(Conn { send: sender, ended })
}

/// handshake, as TLS 1.3 reports it) is named as TLS.
fn hyper_error(endpoint: &str, path: &str, e: &hyper::Error) -> EtcdError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
                return EtcdError::Tls { endpoint: endpoint.to_owned(), reason: tls_reason(io) };
            }
        }
        if let Some(io) = s.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
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
    fn grpc_messages_are_framed_and_read_back_whole_only() {
        let req = pb::RangeRequest { key: b"/capsd/refs/".to_vec(), limit: 7, keys_only: true, ..Default::default() };
        let framed = framed(&req);
        assert_eq!(framed[0], 0, "not compressed");
        assert_eq!(u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize, framed.len() - 5);
        // Arriving in pieces: nothing until the message is whole, then exactly it.
        let mut buf = BytesMut::new();
        for (i, b) in framed.iter().enumerate() {
            assert!(take_message(&mut buf).unwrap().is_none(), "{i}");
            buf.extend_from_slice(&[*b]);
        }
        let msg = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(pb::RangeRequest::decode(msg).unwrap(), req);
        assert!(buf.is_empty());
        // A compressed message (never asked for) and one above the limit are refused.
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 1, 0][..]);
        assert!(take_message(&mut buf).unwrap_err().contains("compressed"));
        let mut buf = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(take_message(&mut buf).unwrap_err().contains("too large"));
    }

    #[test]
    fn grpc_status_and_its_percent_encoded_message_are_read() {
        let mut h = hyper::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "7".parse().unwrap());
        h.insert("grpc-message", "etcdserver: permission denied %E2%9C%93 100%".parse().unwrap());
        assert_eq!(grpc_status(&h), Some((7, "etcdserver: permission denied \u{2713} 100%".to_owned())));
        let e = EtcdError::Server { endpoint: "e".into(), path: "p".into(), code: 7, message: "m".into() };
        assert!(e.is_permission_denied());
    }

    #[test]
    fn prefix_end_is_the_next_key() {
        assert_eq!(prefix_end(b"/capsd/hosts/"), b"/capsd/hosts0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }
}

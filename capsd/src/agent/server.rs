//! HTTP side of the agent: routes, query validation, errors as statuses with a JSON body,
//! and the listeners (a Unix socket with chosen mode and group; loopback TCP on request).
//!
//! Routes:
//! - `GET /v1/domcapabilities?emulatorbin=&arch=&machine=&virttype=&driver=&libvirt=`: the document
//!   (`libvirt=X.Y[.Z]` asks for that libvirt release's form instead of the installed one's),
//!   XML, or JSON with `Accept: application/json`; the same bytes as the CLI prints. For
//!   driver qemu the headers name the release (`Capsd-Libvirt-Version`) and the release whose
//!   rules were applied (`Capsd-Libvirt-Rules`); for a release newer than every one capsd
//!   knows, a `Warning: 299 capsd "..."` says later changes are unknown.
//! - `GET /v1/drivers`: the drivers, their availability and refused plugins (JSON, the same
//!   as `capsd drivers --json`).
//! - `GET /healthz`: `ok`.
//! - `GET /metrics`: OpenMetrics text (Prometheus reads it).
//! - `GET /v1/openapi.json`: the OpenAPI 3.1 description of all of this ([`super::openapi`]).
//!
//! Every route is registered through [`api_routes`] from its handler's `#[utoipa::path]`
//! annotation (path, method, parameters, answers), so the description cannot name another
//! path than the one served; a test enumerates the routes the router serves and fails on one
//! the description lacks.
//!
//! Errors: `{"error": KIND, "message": TEXT, ...}` with 400 for bad input (unknown or repeated
//! parameter, malformed value, a value the driver rejects), 401 on loopback TCP without the
//! token (`auth`), 503 when a TCP connection's first request with the token finds no free
//! authenticated slot (`conn`), 403 for an `emulatorbin` the agent does not run (`emulators`), 404 for a
//! combination the driver does not offer, 501 for a driver not built in or not working on
//! this host, 502 when probing the hypervisor failed, 504 past the request timeout, 500 for
//! other failures; 405 for a method but GET on a route, 404 `not-found` for any other path.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query as QueryParams, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use capsd_core::{DomainCapsDriver, DriverError, Query};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::TokenFile;
use super::openapi::{self, DomainCapabilitiesJson, DomcapsQuery, DriverEntry, ErrorBody, OpenApiDocument};
use super::{conn, metrics, Agent, DocKey};
use crate::cmd::drivers;
use crate::registry::{self, IN_TREE};

/// The parameters `/v1/domcapabilities` takes.
pub(crate) const PARAMS: [&str; 6] = ["emulatorbin", "arch", "machine", "virttype", "driver", "libvirt"];

/// An error answer: status and JSON body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: String) -> Self {
        ApiError { status, body: json!({"error": kind, "message": message}) }
    }

    fn bad_parameter(name: &str, value: &str, reason: &str) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid-parameter", format!("parameter '{name}': {reason}"));
        e.body["parameter"] = json!(name);
        e.body["value"] = json!(value);
        e
    }
}

impl From<DriverError> for ApiError {
    fn from(e: DriverError) -> Self {
        let (status, kind) = match &e {
            DriverError::InvalidInput { .. } => (StatusCode::BAD_REQUEST, "invalid-input"),
            DriverError::NotSupported { .. } => (StatusCode::NOT_FOUND, "not-supported"),
            DriverError::Unavailable { .. } => (StatusCode::NOT_IMPLEMENTED, "driver-unavailable"),
            DriverError::ProbeFailed { .. } => (StatusCode::BAD_GATEWAY, "probe-failed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let mut err = ApiError::new(status, kind, e.to_string());
        if let DriverError::InvalidInput { field, value, .. } = &e {
            err.body["parameter"] = json!(field);
            err.body["value"] = json!(value);
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.body.to_string();
        body.push('\n');
        (self.status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
    }
}

/// How a router guards its routes.
#[derive(Debug, Clone, Default)]
pub struct RouterOptions {
    /// The token every route but `/healthz` and `/metrics` needs (loopback TCP); `None`:
    /// no token (the Unix socket, guarded by its mode and group).
    pub token: Option<Arc<TokenFile>>,
}

/// The router, with request metrics around every route and, when `opts.token` is set, the
/// token check. Routes that wait (a derivation, the driver listing) answer 504 past the
/// agent's request timeout ([`within`]); a warm answer sets no timer.
pub fn router(agent: Arc<Agent>, opts: &RouterOptions) -> Router {
    // Rendered now, once for the process, rather than on the first request.
    let _ = openapi::json();
    let (routes, _) = api_routes().split_for_parts();
    routes
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{} {}: only GET is served", req.method(), req.uri().path()),
            )
        })
        .fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no such endpoint: {} {}", req.method(), req.uri().path()),
            )
        })
        // One middleware for all of it: each layer costs a boxed future per request.
        .layer(middleware::from_fn_with_state(
            Arc::new(Guard { agent: agent.clone(), token: opts.token.clone() }),
            guard,
        ))
        .with_state(agent)
}

/// Every route, each registered from its handler's annotation (path and method are taken
/// from it, so the description in [`openapi`] is of these very routes). A route added any
/// other way is missing from the description, which a test catches.
pub fn api_routes() -> OpenApiRouter<Arc<Agent>> {
    OpenApiRouter::new()
        .routes(routes!(domcapabilities))
        .routes(routes!(explain))
        .routes(routes!(drivers))
        .routes(routes!(healthz))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi_json))
}

/// Whether a path needs the token where the router has one (loopback TCP): all but
/// `/healthz` and `/metrics`.
pub fn needs_token(path: &str) -> bool {
    !matches!(path, "/healthz" | "/metrics")
}

/// What [`guard`] needs.
#[derive(Debug)]
struct Guard {
    agent: Arc<Agent>,
    token: Option<Arc<TokenFile>>,
}

/// Around every request: the token check (when the router has a token) and the request's
/// metrics.
async fn guard(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let t = Instant::now();
    let endpoint = metrics::endpoint_of(req.uri().path());
    let resp = match unauthorized(&g, &req) {
        Some(refusal) => refusal,
        None => next.run(req).await,
    };
    let took = t.elapsed();
    g.agent.metrics.record_request(endpoint, resp.status().as_u16(), took);
    tracing::debug!(endpoint, status = resp.status().as_u16(), micros = took.as_micros() as u64, "request");
    resp
}

/// `work`'s output, or 504 once the agent's request timeout has passed (the work itself,
/// a derivation on its own task, goes on and keeps its document).
async fn within<T>(agent: &Agent, what: &str, work: impl std::future::Future<Output = T>) -> Result<T, ApiError> {
    let limit = agent.request_timeout();
    tokio::time::timeout(limit, work).await.map_err(|_| {
        agent.metrics.requests_timed_out.fetch_add(1, Ordering::Relaxed);
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("{what}: no answer within {limit:?} (the agent goes on working on it; ask again later)"),
        )
    })
}

/// With a token, everything but `/healthz` and `/metrics` needs `Authorization: Bearer TOKEN`:
/// the 401 answer when it is missing or wrong.
/// A request with the token moves its connection into the authenticated pool
/// ([`conn::Upgrade`]); when that pool is full, the answer is 503 and the connection closes.
fn unauthorized(g: &Guard, req: &Request) -> Option<Response> {
    let token = g.token.as_ref()?;
    if token.admits(req.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes)) {
        let upgraded = req.extensions().get::<Arc<conn::Upgrade>>().is_none_or(|u| u.authenticated());
        if upgraded {
            return None;
        }
        g.agent.metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
        let mut resp = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-connections",
            "every authenticated TCP connection slot (--max-connections) is taken; try again later".to_owned(),
        )
        .into_response();
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(resp);
    }
    if !needs_token(req.uri().path()) {
        return None;
    }
    g.agent.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
    let given = if req.headers().contains_key(header::AUTHORIZATION) { "a wrong" } else { "no" };
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!(
            "{} {}: {given} token; on TCP this needs 'Authorization: Bearer TOKEN' with the token of the agent's --token-file",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response();
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}

/// Liveness: answers while the agent serves.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    responses((status = 200, description = "The agent is serving.", body = String, content_type = "text/plain; charset=utf-8", example = "ok\n")),
)]
async fn healthz() -> &'static str {
    "ok\n"
}

/// This description.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 description of this agent (what `capsd generate-assets --openapi FILE` writes).", body = OpenApiDocument, content_type = "application/json")),
)]
async fn openapi_json() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], openapi::json())
}

/// The agent's counters and histograms for Prometheus.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses((status = 200, description = "OpenMetrics text (requests by endpoint and status, latencies, derivations, cache, refusals, time-outs), ending in `# EOF`.", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
)]
async fn metrics_text(State(agent): State<Arc<Agent>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(metrics::CONTENT_TYPE))], agent.metrics.render())
}

/// The drivers, whether each can answer here, and refused or failed plugins (the same as
/// `capsd drivers --json`).
#[utoipa::path(
    get,
    path = "/v1/drivers",
    tag = "documents",
    operation_id = "drivers",
    responses(
        (status = 200, description = "One entry per driver, in-tree driver not built in, refused plugin and failed plugin.", body = Vec<DriverEntry>, content_type = "application/json"),
        (status = 504, description = "The availability checks took longer than the request timeout (`timeout`).", body = ErrorBody, content_type = "application/json"),
    ),
)]
async fn drivers(State(agent): State<Arc<Agent>>) -> Result<Response, ApiError> {
    // `availability()` looks at the host (PATH directories, device nodes) and a plugin's runs
    // foreign code: off the async workers, like a derivation.
    let me = agent.clone();
    let listing = tokio::task::spawn_blocking(move || drivers::render(&me.registry, true));
    let body = within(&agent, "GET /v1/drivers", listing).await?.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("driver listing failed: {e}"))
    })?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// Whether the client asked for JSON (`Accept` naming `application/json` before any XML type).
fn wants_json(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return false };
    let json = accept.find("application/json");
    let xml = accept.find("/xml");
    match (json, xml) {
        (Some(j), Some(x)) => j < x,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Check a token-like value: non-empty, at most 64 characters of `allowed`.
fn check_token(name: &str, value: &str, allowed: impl Fn(char) -> bool, what: &str) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad_parameter(name, value, "empty value"));
    }
    if value.len() > 64 || !value.chars().all(allowed) {
        return Err(ApiError::bad_parameter(name, value, &format!("not a valid {what}")));
    }
    Ok(())
}

/// The driver name and query of a `/v1/domcapabilities` request.
pub fn parse_query(params: &[(String, String)]) -> Result<(String, Query), ApiError> {
    let mut driver = None;
    let mut q = Query::default();
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in params {
        let Some(name) = PARAMS.iter().find(|p| **p == k) else {
            return Err(ApiError::bad_parameter(k, v, &format!("unknown parameter; allowed: {}", PARAMS.join(", "))));
        };
        if seen.contains(name) {
            return Err(ApiError::bad_parameter(k, v, "given more than once"));
        }
        seen.push(name);
        match *name {
            "emulatorbin" => {
                if v.is_empty() {
                    return Err(ApiError::bad_parameter(k, v, "empty value"));
                }
                if !v.starts_with('/') || v.len() > 4096 || v.chars().any(char::is_control) {
                    return Err(ApiError::bad_parameter(
                        k,
                        v,
                        "bad path: must be an absolute path to the emulator binary",
                    ));
                }
                if let Some(long) = v.split('/').find(|c| c.len() > 255) {
                    return Err(ApiError::bad_parameter(
                        k,
                        v,
                        &format!(
                            "bad path: a file name may have at most 255 bytes, '{}...' has {}",
                            long.chars().take(16).collect::<String>(),
                            long.len()
                        ),
                    ));
                }
                // Documents and probe cache entries are kept per path as spelled: '.', '..'
                // and '//' would give one binary endlessly many spellings, each probed and
                // stored anew.
                let normal = Path::new(v).components().collect::<PathBuf>();
                if normal.as_os_str() != v.as_str() || v.split('/').any(|c| c == "..") {
                    return Err(ApiError::bad_parameter(
                        k,
                        v,
                        "bad path: must be in plain form (no '.', '..', '//' or trailing '/')",
                    ));
                }
                q.emulator = Some(PathBuf::from(v));
            }
            "arch" => {
                check_token(k, v, |c| c.is_ascii_alphanumeric() || c == '_', "architecture name")?;
                q.arch = Some(v.clone());
            }
            "machine" => {
                check_token(k, v, |c| c.is_ascii_alphanumeric() || "_.-".contains(c), "machine type")?;
                q.machine = Some(v.clone());
            }
            "virttype" => {
                check_token(k, v, |c| c.is_ascii_alphanumeric(), "virtualization type")?;
                q.virt_type = Some(v.clone());
            }
            "libvirt" => {
                check_token(k, v, |c| c.is_ascii_digit() || c == '.', "libvirt version (X.Y or X.Y.Z)")?;
                q.libvirt = Some(v.clone());
            }
            _ => {
                check_token(k, v, |c| c.is_ascii_alphanumeric() || "_-".contains(c), "driver name")?;
                driver = Some(v.clone());
            }
        }
    }
    Ok((driver.unwrap_or_else(|| "qemu".to_owned()), q))
}

/// The `<domainCapabilities>` document of a query, as `capsd domcapabilities` prints it.
#[utoipa::path(
    get,
    path = "/v1/domcapabilities",
    tag = "documents",
    operation_id = "domcapabilities",
    params(DomcapsQuery),
    responses(
        (status = 200,
            description = "The document: XML (libvirt's form, the default), or its JSON form when `Accept` names `application/json` before any XML type.",
            headers(
                ("Capsd-Libvirt-Version" = String, description = "Driver qemu: the libvirt release (X.Y.Z) the document is for."),
                ("Capsd-Libvirt-Rules" = String, description = "Driver qemu: the release whose rules were applied (the newest capsd knows, for a newer release)."),
                ("Warning" = String, description = "Driver qemu, for a release newer than every one capsd knows: `299 capsd \"...\"` (later changes are unknown)."),
            ),
            content(
                (String = "application/xml"),
                (DomainCapabilitiesJson = "application/json"),
            ),
        ),
        (status = 400, description = "A bad query: unknown or repeated parameter, malformed value, unknown driver (`invalid-parameter`), or a value the driver rejects (`invalid-input`).", body = ErrorBody, content_type = "application/json"),
        (status = 403, description = "An `emulatorbin` the agent does not run (`emulator-not-allowed`).", body = ErrorBody, content_type = "application/json"),
        (status = 404, description = "A combination the driver does not offer (`not-supported`).", body = ErrorBody, content_type = "application/json"),
        (status = 501, description = "A driver not built into this capsd (`driver-not-built-in`) or unusable on this host (`driver-unavailable`).", body = ErrorBody, content_type = "application/json"),
        (status = 502, description = "Probing the hypervisor failed, or the plugin failed (`probe-failed`).", body = ErrorBody, content_type = "application/json"),
        (status = 504, description = "No document within the request timeout (`timeout`); the derivation goes on and is kept.", body = ErrorBody, content_type = "application/json"),
    ),
)]
async fn domcapabilities(
    State(agent): State<Arc<Agent>>,
    headers: HeaderMap,
    params: Result<QueryParams<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_pairs(params)?;
    let (driver_name, mut query) = parse_query(&params)?;
    let driver = driver_named(&agent, &driver_name)?;
    if let Some(requested) = query.emulator.as_deref().filter(|_| registry::reads_emulator(&driver_name)) {
        // What runs is the resolved file the policy allowed, whatever a link points to later.
        let allowed = allowed_emulator(&agent, requested)?;
        query.emulator = Some(allowed);
    }
    let key = DocKey { driver: driver_name, query };
    let doc = match agent.hit(&key) {
        Some(doc) => doc,
        None => within(&agent, "GET /v1/domcapabilities", agent.document(key, driver)).await??,
    };
    let (body, ctype) = if wants_json(&headers) {
        (doc.json.clone(), "application/json")
    } else {
        (doc.xml.clone(), "application/xml")
    };
    let mut resp = ([(header::CONTENT_TYPE, HeaderValue::from_static(ctype))], Body::from(body)).into_response();
    for (name, value) in &doc.headers {
        resp.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(resp)
}

/// `GET /v1/explain?<the parameters of /v1/domcapabilities>&select=SELECTOR...`: the
/// evidence of the qemu driver's document (`capsd explain --format json`), every node or
/// those the `select` parameters name. Derived anew each time with the evidence recorder on
/// (the probe itself comes from the cache as for a document), bounded like a document's
/// derivation by the agent's turns and request timeout. A selector that does not parse or
/// matches nothing is a 400 naming it.
#[utoipa::path(
    get,
    path = "/v1/explain",
    tag = "documents",
    operation_id = "explain",
    params(openapi::ExplainQuery),
    responses(
        (status = 200, description = "The evidence behind the qemu driver's document (`capsd explain --format json`): one selection per `select` (or one with every node).", body = openapi::ExplainBody, content_type = "application/json"),
        (status = 400, description = "A bad query (`invalid-parameter`: also a selector that does not parse or matches nothing, and a driver other than qemu), or a value the driver rejects (`invalid-input`).", body = ErrorBody, content_type = "application/json"),
        (status = 403, description = "An `emulatorbin` the agent does not run (`emulator-not-allowed`).", body = ErrorBody, content_type = "application/json"),
        (status = 404, description = "A combination the driver does not offer (`not-supported`).", body = ErrorBody, content_type = "application/json"),
        (status = 501, description = "The qemu driver is not built into this capsd (`driver-not-built-in`) or unusable on this host (`driver-unavailable`).", body = ErrorBody, content_type = "application/json"),
        (status = 502, description = "Probing the hypervisor failed (`probe-failed`).", body = ErrorBody, content_type = "application/json"),
        (status = 504, description = "No answer within the request timeout (`timeout`).", body = ErrorBody, content_type = "application/json"),
    ),
)]
async fn explain(
    State(agent): State<Arc<Agent>>,
    params: Result<QueryParams<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let params = query_pairs(params)?;
    let (selectors, rest): (Vec<_>, Vec<_>) = params.into_iter().partition(|(k, _)| k == "select");
    let selectors: Vec<String> = selectors.into_iter().map(|(_, v)| v).collect();
    for s in &selectors {
        capsd_core::evidence::Selector::parse(s).map_err(|e| ApiError::bad_parameter("select", s, &e.reason))?;
    }
    let (driver_name, mut query) = parse_query(&rest)?;
    if driver_name != "qemu" {
        return Err(ApiError::bad_parameter("driver", &driver_name, "only the qemu driver records evidence"));
    }
    let driver = driver_named(&agent, "qemu")?;
    if let Some(requested) = query.emulator.as_deref() {
        let allowed = allowed_emulator(&agent, requested)?;
        query.emulator = Some(allowed);
    }
    let work = async {
        let turn = agent.turns.clone().acquire_owned().await.map_err(|_| {
            ApiError::from(DriverError::probe_failed("qemu".to_owned(), "the agent is shutting down".to_owned()))
        })?;
        let q = query.clone();
        let (caps, evidence) = tokio::task::spawn_blocking(move || {
            let r = capsd_core::evidence::record(|| driver.domain_capabilities(&q));
            drop(turn);
            r
        })
        .await
        .map_err(|e| {
            ApiError::from(DriverError::probe_failed("qemu".to_owned(), format!("driver task failed: {e}")))
        })?;
        Ok::<_, ApiError>(crate::cmd::explain::Explained { caps: caps.map_err(ApiError::from)?, evidence })
    };
    let explained = within(&agent, "GET /v1/explain", work).await??;
    let selections = crate::cmd::explain::select(&explained, &selectors).map_err(|e| {
        let bad = e.downcast_ref::<capsd_core::evidence::NoMatch>().map(|m| m.0.clone()).unwrap_or_default();
        ApiError::bad_parameter("select", &bad, &e.to_string())
    })?;
    let mut body = json!({ "selections": selections }).to_string();
    body.push('\n');
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// A route's query parameters in order, or 400 when the query string cannot be read.
fn query_pairs(
    params: Result<QueryParams<Vec<(String, String)>>, QueryRejection>,
) -> Result<Vec<(String, String)>, ApiError> {
    let QueryParams(params) = params.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid-parameter", format!("cannot read the query string: {e}"))
    })?;
    Ok(params)
}

/// The registered driver called `name`: 501 for an in-tree driver this build leaves out,
/// 400 naming the parameter for a name nobody knows.
fn driver_named(agent: &Agent, name: &str) -> Result<Arc<dyn DomainCapsDriver>, ApiError> {
    if let Some(d) = agent.registry.all().iter().find(|d| d.name() == name) {
        return Ok(d.clone());
    }
    if IN_TREE.contains(&name) {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "driver-not-built-in",
            format!("driver '{name}' is not built into this capsd (rebuild with --features {name})"),
        ));
    }
    let have: Vec<&str> = agent.registry.all().iter().map(|d| d.name()).collect();
    Err(ApiError::bad_parameter("driver", name, &format!("unknown driver; drivers here: {}", have.join(", "))))
}

/// The file the agent runs for a requested `emulatorbin` (the resolved file its policy
/// allowed, whatever a link points to later), or 403 naming the parameter.
fn allowed_emulator(agent: &Agent, requested: &Path) -> Result<PathBuf, ApiError> {
    agent.policy.check(requested).map_err(|why| {
        let mut e =
            ApiError::new(StatusCode::FORBIDDEN, "emulator-not-allowed", format!("parameter 'emulatorbin': {why}"));
        e.body["parameter"] = json!("emulatorbin");
        e.body["value"] = json!(requested.display().to_string());
        e
    })
}

/// `Capsd-Libvirt-Version` (the release the document is for), `Capsd-Libvirt-Rules` (the
/// release whose rules it follows) and, for a release newer than every one capsd knows, a
/// `Warning` (RFC 9111's code 299, persistent) saying later changes are unknown.
/// Made once, when the document is kept: a warm answer clones them (reference counts).
pub(super) fn libvirt_headers(l: &registry::LibvirtRules) -> Vec<(HeaderName, HeaderValue)> {
    let value = |s: &str| HeaderValue::from_str(s).ok();
    let mut h = Vec::with_capacity(3);
    if let Some(v) = value(&l.target) {
        h.push((HeaderName::from_static("capsd-libvirt-version"), v));
    }
    if let Some(v) = value(&l.rules) {
        h.push((HeaderName::from_static("capsd-libvirt-rules"), v));
    }
    if let Some(v) = l.warning.as_deref().and_then(|w| value(&format!("299 capsd \"{}\"", w.replace(['"', '\\'], "'"))))
    {
        h.push((header::WARNING, v));
    }
    h
}

/// How the Unix socket is set up.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    pub path: PathBuf,
    /// Permission bits (default 0660).
    pub mode: u32,
    /// Group to own the socket (name or number); the process's group when `None`.
    pub group: Option<String>,
}

/// Bind the Unix socket: create its directory when missing (0755, as systemd's
/// `RuntimeDirectory=` would: the default `/run/capsd` does not exist outside the unit),
/// refuse to replace a live socket or a non-socket file, remove a stale one. The socket is
/// bound in a private directory made beside it (mode 0700, so nobody else can reach or swap
/// anything there), given its group and mode there, and only then renamed into place: no
/// window in which it is more open than asked, and nothing done by path at its final name
/// (where a link swapped in, in a directory others can write, would be followed).
pub fn bind_unix(opts: &SocketOptions) -> Result<tokio::net::UnixListener> {
    let path = &opts.path;
    if path.file_name().is_none() {
        bail!("{}: not a socket file name", path.display());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("cannot create the socket's directory {}", dir.display()))?;
        // Whatever the umask: clients must be able to reach the socket.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set mode 755 on {}", dir.display()))?;
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            bail!("{} exists and is not a socket; refusing to replace it", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{}: another process is already serving on this socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let gid = opts.group.as_deref().map(resolve_group).transpose()?;
    // mkdtemp makes it with mode 0700; removed on every path out of here.
    let private = nix::unistd::mkdtemp(&dir.join(".capsd-XXXXXX"))
        .with_context(|| format!("cannot create a private directory in {}", dir.display()))?;
    let private = PrivateDir(private);
    let staged = private.0.join("s");
    let listener = std::os::unix::net::UnixListener::bind(&staged)
        .with_context(|| format!("cannot bind {} (staged as {})", path.display(), staged.display()))?;
    #[cfg(debug_assertions)]
    test_hook_bound();
    if let Some(gid) = gid {
        nix::unistd::chown(&staged, None, Some(gid))
            .with_context(|| format!("cannot give {} to group {gid}", path.display()))?;
    }
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(opts.mode))
        .with_context(|| format!("cannot set mode {:o} on {}", opts.mode, path.display()))?;
    // rename replaces whatever took the name meanwhile (a link is replaced, not followed).
    std::fs::rename(&staged, path)
        .with_context(|| format!("cannot move the socket into place at {}", path.display()))?;
    drop(private);
    listener.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(listener)?)
}

/// The private directory a socket is bound in, removed when dropped (with the staged socket
/// when something failed before the rename).
struct PrivateDir(PathBuf);

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Test builds only: with `CAPSD_TEST_HOOK_BOUND=DIR`, once the socket is bound (before its
/// group and mode are set) `DIR/bound` is created and nothing proceeds until `DIR/go` exists:
/// a test swaps a link in at the socket's name at that point, deterministically.
#[cfg(debug_assertions)]
fn test_hook_bound() {
    let Some(dir) = std::env::var_os("CAPSD_TEST_HOOK_BOUND").map(PathBuf::from) else { return };
    let _ = std::fs::write(dir.join("bound"), b"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !dir.join("go").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn resolve_group(g: &str) -> Result<nix::unistd::Gid> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid),
        Ok(None) => bail!("no such group '{g}'"),
        Err(e) => bail!("cannot look up group '{g}': {e}"),
    }
}

/// Bind a loopback TCP address; other addresses are refused (the token travels in clear).
pub async fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    if !addr.ip().is_loopback() {
        bail!("--listen {addr}: only loopback addresses are allowed (the token travels in clear text); use the Unix socket or a TLS proxy");
    }
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))
}

/// Tell systemd we are ready (`Type=notify`), when started by it.
pub fn notify_ready() {
    let Some(sock) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = PathBuf::from(sock);
    let Ok(s) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let r = if let Some(abstract_name) = sock.to_str().and_then(|s| s.strip_prefix('@')) {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|a| s.send_to_addr(b"READY=1\n", &a))
    } else {
        s.send_to(b"READY=1\n", &sock)
    };
    if let Err(e) = r {
        tracing::warn!(socket = %sock.display(), error = %e, "cannot notify systemd");
    }
}

/// Remove the socket file on exit.
pub fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!(path = %path.display(), error = %e, "cannot remove socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    #[test]
    fn query_parameters_are_checked() {
        let (_, q) = parse_query(&p(&[("emulatorbin", "/usr/bin/qemu-system-x86_64")])).unwrap();
        assert_eq!(q.emulator.as_deref(), Some(Path::new("/usr/bin/qemu-system-x86_64")));
        let (d, q) = parse_query(&p(&[("arch", "x86_64"), ("virttype", "kvm"), ("machine", "pc-q35-7.2")])).unwrap();
        assert_eq!(d, "qemu");
        assert_eq!(
            (q.arch.as_deref(), q.virt_type.as_deref(), q.machine.as_deref()),
            (Some("x86_64"), Some("kvm"), Some("pc-q35-7.2"))
        );
        for (bad, why) in [
            (vec![("archh", "x86_64")], "unknown parameter"),
            (vec![("arch", "x86_64"), ("arch", "i686")], "more than once"),
            (vec![("arch", "")], "empty value"),
            (vec![("arch", "x86 64")], "not a valid architecture"),
            (vec![("emulatorbin", "qemu-system-x86_64")], "bad path"),
            (vec![("emulatorbin", "/usr/bin/q\u{0}")], "bad path"),
            (vec![("emulatorbin", "/usr/bin/../bin/qemu-system-x86_64")], "plain form"),
            (vec![("emulatorbin", "/usr/bin/./qemu-system-x86_64")], "plain form"),
            (vec![("emulatorbin", "/usr//bin/qemu-system-x86_64")], "plain form"),
            (vec![("emulatorbin", "/usr/bin/qemu-system-x86_64/")], "plain form"),
            (vec![("machine", "pc;rm")], "not a valid machine"),
            (vec![("driver", "../x")], "not a valid driver"),
        ] {
            let e = parse_query(&p(&bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.body["message"].as_str().unwrap().contains(why), "{bad:?}: {}", e.body);
            assert_eq!(e.body["parameter"], bad.last().unwrap().0, "{}", e.body);
        }
    }

    #[tokio::test]
    async fn the_socket_directory_is_created_when_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/capsd/capsd.sock");
        let l = bind_unix(&SocketOptions { path: path.clone(), mode: 0o660, group: None }).unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        assert!(meta(&path).file_type().is_socket());
        assert_eq!(meta(&path).permissions().mode() & 0o777, 0o660);
        assert_eq!(meta(path.parent().unwrap()).permissions().mode() & 0o777, 0o755);
        drop(l);
    }

    /// A driver whose availability check takes a while.
    struct SlowToCheck;

    impl capsd_core::DomainCapsDriver for SlowToCheck {
        fn name(&self) -> &str {
            "slow-check"
        }

        fn availability(&self) -> capsd_core::Availability {
            std::thread::sleep(std::time::Duration::from_millis(400));
            capsd_core::Availability::Available
        }

        fn domain_capabilities(&self, _: &Query) -> Result<capsd_core::DomainCapabilities, DriverError> {
            Err(DriverError::not_supported("slow-check", "anything"))
        }
    }

    async fn get(socket: PathBuf, target: &'static str) -> (Instant, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        let req = format!("GET {target} HTTP/1.1\r\nHost: capsd\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        (Instant::now(), out)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn listing_drivers_does_not_hold_up_other_requests() {
        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("capsd.sock");
        let mut reg = crate::registry::Registry::default();
        reg.add(Arc::new(SlowToCheck));
        let listener = bind_unix(&SocketOptions { path: socket.clone(), mode: 0o600, group: None }).unwrap();
        let r = router(Arc::new(Agent::new(reg)), &RouterOptions::default());
        tokio::spawn(async move { axum::serve(listener, r).await });
        let slow = tokio::spawn(get(socket.clone(), "/v1/drivers"));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (healthy_at, health) = get(socket, "/healthz").await;
        let (listed_at, listing) = slow.await.unwrap();
        assert!(health.ends_with("ok\n") && listing.contains("slow-check"), "{health}\n{listing}");
        // Not an in-tree driver: not "built in" (as `capsd drivers` says of plugins).
        let body: serde_json::Value = serde_json::from_str(listing.split_once("\r\n\r\n").unwrap().1).unwrap();
        let entry = body.as_array().unwrap().iter().find(|d| d["name"] == "slow-check").unwrap();
        assert_eq!(entry["built_in"], false, "{body}");
        assert!(healthy_at < listed_at, "/healthz waited for the driver listing (one async worker)");
    }

    #[test]
    fn driver_errors_map_to_statuses() {
        let cases = [
            (DriverError::invalid("arch", "z80", "unknown"), 400),
            (DriverError::not_supported("qemu", "machine 'foo'"), 404),
            (DriverError::Unavailable { driver: "xen".into(), reason: "no /dev/xen".into() }, 501),
            (DriverError::probe_failed("qemu-system-x86_64", "crashed"), 502),
            (DriverError::io("/x", std::io::Error::other("boom")), 500),
        ];
        for (e, code) in cases {
            assert_eq!(ApiError::from(e).status.as_u16(), code);
        }
    }

    #[test]
    fn accept_header_chooses_json() {
        let mut h = HeaderMap::new();
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/xml, application/json"));
        assert!(!wants_json(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_json(&h));
    }
}

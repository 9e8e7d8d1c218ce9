//! The agent's OpenAPI 3.1 description, served at `/v1/openapi.json` and written by `capsd
//! generate-assets --openapi FILE`.
//!
//! It is built from the router itself: every route is registered through utoipa-axum
//! ([`super::server::api_routes`]), which takes the path and method from the handler's
//! `#[utoipa::path]` annotation, so a route cannot be served under another path than the
//! one described. What the annotations give per route (parameters, the answers its handler
//! makes) is completed here by what the router adds around every route, from the same
//! predicates the router uses: the token check of loopback TCP ([`super::server::needs_token`]:
//! security, 401), the 503 of a full authenticated pool, the 405 of the method fallback and
//! the 500 of an internal failure. Unknown paths (404 `not-found`) are said in the description.
//!
//! The document is rendered once per process ([`json`]); the route serves those bytes.
//!
//! Body schemas: the error body and the driver listing (structs here mirroring what the
//! handlers write, checked against real answers by `capsd/tests/openapi.rs`), and the
//! document's JSON form, every element of it, traced from `capsd_core`'s model itself
//! ([`model_schemas`]). The XML form is a string here; its schema is libvirt's
//! `domaincaps.rng`.

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Schema, Type};
use utoipa::{IntoParams, ToSchema};

/// The security scheme's name in the document.
pub const BEARER: &str = "bearer";

/// The document, pretty-printed JSON with a trailing newline, built on first use.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(document()).expect("the OpenAPI document always serializes");
        require_headers(&mut doc);
        model_schemas(&mut doc);
        let mut s = serde_json::to_string_pretty(&doc).expect("a JSON value always serializes");
        s.push('\n');
        s
    })
}

/// The schemas of the document's JSON form, traced from `capsd_core::DomainCapabilities`'s
/// own serde definitions (serde-reflection), replacing the placeholder
/// [`DomainCapabilitiesJson`] the annotations name. Every model struct is
/// `deny_unknown_fields` (no other key); `Option` and `Vec` fields may be absent (they are
/// left out when empty), any other field is required; unit enums are their names.
///
/// Should the model ever hold something serde-reflection cannot trace, the placeholder (an
/// object) stays and a warning is logged; `tests::the_document_is_rendered_once` fails then.
fn model_schemas(doc: &mut serde_json::Value) {
    let registry = match trace_model() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot trace the model's JSON schema; /v1/openapi.json describes the document's JSON form as an object only");
            return;
        }
    };
    let schemas = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
        .expect("the annotations name component schemas");
    let placeholder = schemas.remove("DomainCapabilities").expect("an annotation names the DomainCapabilities schema");
    for (name, container) in &registry {
        let mut schema = container_schema(container);
        if name == "DomainCapabilities" {
            schema["description"] = placeholder["description"].clone();
        }
        let clash = schemas.insert(name.clone(), schema);
        assert!(clash.is_none(), "the model's type {name} has the name of another schema of the description");
    }
}

/// The model's types as serde sees them. An enum is explored variant by variant only when
/// traced on its own: every enum of the model is listed (a new one makes `registry()` fail,
/// naming it).
fn trace_model() -> serde_reflection::Result<serde_reflection::Registry> {
    use capsd_core::model::{DomainCapabilities, Fallback, FeaturePolicy, MaxPhysAddrMode, Support, Usable};
    let mut tracer = serde_reflection::Tracer::new(serde_reflection::TracerConfig::default());
    tracer.trace_simple_type::<DomainCapabilities>()?;
    tracer.trace_simple_type::<Support>()?;
    tracer.trace_simple_type::<Fallback>()?;
    tracer.trace_simple_type::<FeaturePolicy>()?;
    tracer.trace_simple_type::<MaxPhysAddrMode>()?;
    tracer.trace_simple_type::<Usable>()?;
    tracer.registry()
}

fn container_schema(c: &serde_reflection::ContainerFormat) -> serde_json::Value {
    use serde_json::json;
    use serde_reflection::{ContainerFormat, VariantFormat};
    match c {
        ContainerFormat::UnitStruct => json!({"type": "null"}),
        ContainerFormat::NewTypeStruct(f) => format_schema(f),
        ContainerFormat::TupleStruct(fs) => tuple_schema(fs),
        ContainerFormat::Struct(fields) => struct_schema(fields),
        ContainerFormat::Enum(variants) => {
            let named: Vec<_> = variants.values().collect();
            if named.iter().all(|v| matches!(v.value, VariantFormat::Unit)) {
                return json!({"type": "string", "enum": named.iter().map(|v| v.name.clone()).collect::<Vec<_>>()});
            }
            // Externally tagged, serde's default.
            let one_of: Vec<_> = named
                .iter()
                .map(|v| {
                    let inner = match &v.value {
                        VariantFormat::Unit => return json!({"const": v.name}),
                        VariantFormat::NewType(f) => format_schema(f),
                        VariantFormat::Tuple(fs) => tuple_schema(fs),
                        VariantFormat::Struct(fields) => struct_schema(fields),
                        VariantFormat::Variable(_) => json!({}),
                    };
                    json!({"type": "object", "properties": {(v.name.clone()): inner}, "required": [v.name], "additionalProperties": false})
                })
                .collect();
            json!({"oneOf": one_of})
        }
    }
}

fn struct_schema(fields: &[serde_reflection::Named<serde_reflection::Format>]) -> serde_json::Value {
    use serde_reflection::Format;
    let mut properties = serde_json::Map::new();
    let mut required = Vec::new();
    for f in fields {
        if !matches!(f.value, Format::Option(_) | Format::Seq(_)) {
            required.push(serde_json::Value::from(f.name.clone()));
        }
        properties.insert(f.name.clone(), format_schema(&f.value));
    }
    serde_json::json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false})
}

fn tuple_schema(fs: &[serde_reflection::Format]) -> serde_json::Value {
    let items: Vec<_> = fs.iter().map(format_schema).collect();
    serde_json::json!({"type": "array", "prefixItems": items, "items": false})
}

fn format_schema(f: &serde_reflection::Format) -> serde_json::Value {
    use serde_json::json;
    use serde_reflection::Format;
    match f {
        Format::TypeName(n) => json!({"$ref": format!("#/components/schemas/{n}")}),
        Format::Unit => json!({"type": "null"}),
        Format::Bool => json!({"type": "boolean"}),
        Format::I8 | Format::I16 | Format::I32 | Format::I64 | Format::I128 => json!({"type": "integer"}),
        Format::U8 | Format::U16 | Format::U32 | Format::U64 | Format::U128 => {
            json!({"type": "integer", "minimum": 0})
        }
        Format::F32 | Format::F64 => json!({"type": "number"}),
        Format::Char | Format::Str => json!({"type": "string"}),
        Format::Bytes => json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}}),
        // Left out when absent (the model skips every `None`).
        Format::Option(inner) => format_schema(inner),
        Format::Seq(inner) => json!({"type": "array", "items": format_schema(inner)}),
        Format::Map { value, .. } => json!({"type": "object", "additionalProperties": format_schema(value)}),
        Format::Tuple(fs) => tuple_schema(fs),
        Format::TupleArray { content, size } => {
            json!({"type": "array", "items": format_schema(content), "minItems": size, "maxItems": size})
        }
        Format::Variable(_) => json!({}),
    }
}

/// The headers the router always sends with a status (utoipa's `Header` has no `required`).
const REQUIRED_HEADERS: [(&str, &str); 3] = [("401", "WWW-Authenticate"), ("405", "Allow"), ("503", "Connection")];

/// The form of header values (utoipa's header annotation takes a type only).
const HEADER_PATTERNS: [(&str, &str); 3] = [
    ("Capsd-Libvirt-Version", "^[0-9]+\\.[0-9]+\\.[0-9]+$"),
    ("Capsd-Libvirt-Rules", "^[0-9]+\\.[0-9]+\\.[0-9]+$"),
    ("Warning", "^299 capsd \".*\"$"),
];

/// What utoipa cannot say: required headers, header value patterns.
fn require_headers(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    for item in paths.values_mut().filter_map(|i| i.as_object_mut()) {
        for op in item.values_mut() {
            for (status, name) in REQUIRED_HEADERS {
                if let Some(h) = op.pointer_mut(&format!("/responses/{status}/headers/{name}")) {
                    h["required"] = serde_json::Value::Bool(true);
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
            for r in responses.values_mut() {
                for (name, pattern) in HEADER_PATTERNS {
                    if let Some(schema) = r.pointer_mut(&format!("/headers/{name}/schema")) {
                        schema["pattern"] = serde_json::Value::from(pattern);
                    }
                }
            }
        }
    }
}

/// The document: the routes' annotations, completed by what the router adds to each.
pub fn document() -> OpenApi {
    let mut api = super::server::api_routes().into_openapi();
    api.info.title = "capsd agent".to_owned();
    api.info.version = env!("CARGO_PKG_VERSION").to_owned();
    api.info.description = Some(DESCRIPTION.to_owned());
    // utoipa would name its own authors.
    api.info.contact = None;
    api.info.license = Some(
        utoipa::openapi::LicenseBuilder::new().name("MIT OR Apache-2.0").identifier(Some("MIT OR Apache-2.0")).build(),
    );
    api.servers = Some(vec![
        utoipa::openapi::ServerBuilder::new()
            .url("http://localhost")
            .description(Some(
                "The Unix socket (`capsd serve --socket`, default /run/capsd/capsd.sock), e.g. \
                 `curl --unix-socket /run/capsd/capsd.sock http://localhost/v1/drivers`: no token; \
                 whoever may open the socket may ask anything.",
            ))
            .build(),
        utoipa::openapi::ServerBuilder::new()
            .url("http://127.0.0.1:{port}")
            .description(Some(
                "Loopback TCP (`capsd serve --listen ADDR --token-file FILE`): every route but \
                 /healthz and /metrics needs `Authorization: Bearer TOKEN`.",
            ))
            .parameter(
                "port",
                utoipa::openapi::server::ServerVariableBuilder::new()
                    .default_value("8095")
                    .description(Some("the port of --listen")),
            )
            .build(),
    ]);
    let components = api.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The token of the agent's --token-file; required on loopback TCP only (the Unix \
                     socket is guarded by its mode and group and takes no token).",
                ))
                .build(),
        ),
    );
    for (path, item) in api.paths.paths.iter_mut() {
        // axum's 405 names the methods served (HEAD with GET).
        let only_get = item.get.is_some() && operations(item).count() == 1;
        let allow = if only_get { "^GET,HEAD$" } else { "^[A-Z]+(,[A-Z]+)*$" };
        for op in operations(item) {
            complete(path, op, allow);
        }
    }
    api
}

/// Every operation of a path item.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// What the router adds around every route (see the module docs).
fn complete(path: &str, op: &mut Operation, allow: &str) {
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, r: Response| {
        responses.entry(status.to_owned()).or_insert(RefOr::T(r));
    };
    if super::server::needs_token(path) {
        // Either requirement: the bearer token (loopback TCP) or none (the Unix socket).
        op.security =
            Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new()), SecurityRequirement::default()]);
        add(
            "401",
            with_header(
                error("On loopback TCP: no token, or a wrong one (`unauthorized`). Never on the Unix socket."),
                "WWW-Authenticate",
                "`Bearer`",
                "^Bearer$",
            ),
        );
    } else {
        op.security = Some(vec![SecurityRequirement::default()]);
    }
    add(
        "405",
        with_header(
            error("Any method but GET (and HEAD) on this path (`method-not-allowed`); no operation answers it."),
            "Allow",
            "The methods this path serves.",
            allow,
        ),
    );
    add(
        "503",
        with_header(
            error(
                "On loopback TCP: the connection's first request with the token found every authenticated \
                 slot (--max-connections) taken (`too-many-connections`); the connection is closed.",
            ),
            "Connection",
            "`close`",
            "^close$",
        ),
    );
    add("500", error("An internal failure (`internal`)."));
}

/// An error answer: `application/json` with the [`ErrorBody`] schema.
fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(RefOr::<Schema>::Ref(Ref::from_schema_name("Error")))).build(),
        )
        .build()
}

/// `r` with a header of the given value pattern (required: [`REQUIRED_HEADERS`]).
fn with_header(mut r: Response, name: &str, what: &str, pattern: &str) -> Response {
    let schema = ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern.to_owned())).build();
    r.headers.insert(name.to_owned(), HeaderBuilder::new().schema(schema).description(Some(what.to_owned())).build());
    r
}

const DESCRIPTION: &str = "\
The HTTP API of `capsd serve`: libvirt's `<domainCapabilities>` documents of this host \
(the same bytes as `capsd domcapabilities` prints), the drivers, health and metrics.\n\n\
**Transports.** The Unix socket takes no token (its mode and group say who may connect); \
loopback TCP needs `Authorization: Bearer TOKEN` on every route but `/healthz` and \
`/metrics` (security `bearer`; the empty alternative is the Unix socket).\n\n\
**Errors** are `application/json` bodies `{\"error\": KIND, \"message\": TEXT}`, with \
`parameter` and `value` when one input was at fault. A path that is not listed here \
answers 404 `not-found`.\n\n\
**Content.** `/v1/domcapabilities` answers XML, or JSON when `Accept` names \
`application/json` before any XML type.\n\n\
This description is generated from the routes the agent serves (`capsd generate-assets \
--openapi FILE` writes the same bytes).";

/// The query of `/v1/domcapabilities` (what [`super::server::parse_query`] accepts: any other
/// parameter, one given twice or a value outside these forms is 400 `invalid-parameter`).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // A description: the handler reads the query itself, by the same rules.
pub struct DomcapsQuery {
    /// The emulator binary, an absolute path in plain form (no `.`, `..`, `//` or trailing
    /// `/`; file names of at most 255 bytes). For the agent it must be a root-owned
    /// `qemu-system-*` in a system directory or one given with `--emulator`, else 403.
    #[param(min_length = 1, max_length = 4096, pattern = "^/", example = "/usr/bin/qemu-system-x86_64")]
    emulatorbin: Option<String>,
    /// The guest architecture (libvirt's name).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_]+$", example = "x86_64")]
    arch: Option<String>,
    /// The machine type, or an alias of one.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$", example = "q35")]
    machine: Option<String>,
    /// The virtualization type.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9]+$", example = "kvm")]
    virttype: Option<String>,
    /// The driver that answers (default `qemu`; `capsd drivers` lists them). One that is not
    /// built in or not usable here is 501; an unknown name is 400.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$", example = "test")]
    driver: Option<String>,
    /// The libvirt release (`X.Y` or `X.Y.Z`, 9.0 or newer) whose document to print; default
    /// the installed libvirt's.
    #[param(min_length = 1, max_length = 64, pattern = "^[0-9.]+$", example = "9.0")]
    libvirt: Option<String>,
}

/// The query of `/v1/explain`: that of `/v1/domcapabilities` for the qemu driver (the one
/// whose derivation records evidence), and the nodes to explain.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // A description: the handler reads the query itself, by the same rules.
pub struct ExplainQuery {
    /// As for `/v1/domcapabilities`.
    #[param(min_length = 1, max_length = 4096, pattern = "^/", example = "/usr/bin/qemu-system-x86_64")]
    emulatorbin: Option<String>,
    /// As for `/v1/domcapabilities`.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_]+$", example = "x86_64")]
    arch: Option<String>,
    /// As for `/v1/domcapabilities`.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$", example = "q35")]
    machine: Option<String>,
    /// As for `/v1/domcapabilities`.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9]+$", example = "kvm")]
    virttype: Option<String>,
    /// Only `qemu` (the default) records evidence; another driver is 400.
    #[param(min_length = 1, max_length = 64, pattern = "^qemu$", example = "qemu")]
    driver: Option<String>,
    /// As for `/v1/domcapabilities`.
    #[param(min_length = 1, max_length = 64, pattern = "^[0-9.]+$", example = "9.0")]
    libvirt: Option<String>,
    /// A node of the document to explain, XPath-like (`os/loader/enum[@name='secure']`,
    /// `devices/tpm`); repeat for several; none: every node. One that does not parse or
    /// matches nothing is 400.
    #[param(example = json!(["os"]))]
    select: Option<Vec<String>>,
}

/// The answer of `/v1/explain`: `capsd explain --format json`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Explanation)]
#[allow(dead_code)] // A description of what `server::explain` writes.
pub struct ExplainBody {
    /// One per selector, in order (one with every node when none was given): the nodes it
    /// names with the facts that decided each, as `capsd explain --format json` prints them.
    #[schema(value_type = Vec<Object>)]
    selections: Vec<serde_json::Value>,
}

/// An error answer's body.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Error)]
#[allow(dead_code)] // A description of what `server::ApiError` writes.
pub struct ErrorBody {
    /// What kind of error.
    error: ErrorKind,
    /// What was wrong, naming the bad input.
    message: String,
    /// The parameter at fault (400 `invalid-parameter`/`invalid-input`, 403).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    parameter: Option<String>,
    /// Its value as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    value: Option<String>,
}

/// The `error` of an error body, one per cause.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum ErrorKind {
    /// 400: an unknown or repeated parameter, a malformed value, an unknown driver.
    InvalidParameter,
    /// 400: a value the driver rejects.
    InvalidInput,
    /// 401: no token or a wrong one (loopback TCP).
    Unauthorized,
    /// 403: an `emulatorbin` the agent does not run.
    EmulatorNotAllowed,
    /// 404: a combination the driver does not offer.
    NotSupported,
    /// 404: no such path.
    NotFound,
    /// 405: a method other than GET.
    MethodNotAllowed,
    /// 500: any other failure.
    Internal,
    /// 501: a driver not built into this capsd.
    DriverNotBuiltIn,
    /// 501: a driver that cannot answer on this host.
    DriverUnavailable,
    /// 502: probing the hypervisor failed (or a plugin failed).
    ProbeFailed,
    /// 503: every authenticated TCP connection slot is taken.
    TooManyConnections,
    /// 504: no answer within the request timeout (the work goes on).
    Timeout,
}

/// The JSON form of a `<domainCapabilities>` document (`capsd domcapabilities --format
/// json`): element names in camelCase, absent elements left out, no other key. The schema the
/// annotations name; [`model_schemas`] puts the one traced from `capsd_core`'s model in its place.
#[derive(Debug)]
pub struct DomainCapabilitiesJson;

impl utoipa::PartialSchema for DomainCapabilitiesJson {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "The JSON form of a `<domainCapabilities>` document (`capsd domcapabilities --format json`): \
                 element and attribute names in camelCase, absent elements left out, no other key.",
            ))
            .into()
    }
}

impl ToSchema for DomainCapabilitiesJson {
    fn name() -> std::borrow::Cow<'static, str> {
        "DomainCapabilities".into()
    }
}

/// One entry of `/v1/drivers` (the same as `capsd drivers --json`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum DriverEntry {
    /// A driver this capsd has (built in or a plugin).
    Driver(DriverInfo),
    /// An in-tree driver this capsd was built without.
    NotBuiltIn(NotBuiltIn),
    /// A plugin file refused before loading (owner, mode, ...).
    Refused(RefusedPlugin),
    /// A plugin whose helper failed while loading it.
    Failed(FailedPlugin),
}

/// A driver this capsd has.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct DriverInfo {
    name: String,
    /// In-tree (a cargo feature) rather than a plugin.
    built_in: bool,
    availability: DriverAvailability,
    /// How it answers here (for qemu: `libvirt_version`, `libvirt_version_source`,
    /// `libvirt_rules`, `libvirt_rules_warning`; for a plugin its file and helper).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    details: Option<std::collections::BTreeMap<String, String>>,
}

/// An in-tree driver this capsd was built without.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct NotBuiltIn {
    name: String,
    /// Always false.
    built_in: bool,
}

/// Whether a driver can answer here.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "lowercase")]
#[allow(dead_code)]
pub enum DriverAvailability {
    Available,
    Unavailable { reason: String },
}

/// A plugin file refused before loading.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct RefusedPlugin {
    refused_plugin: String,
    reason: String,
}

/// A plugin whose helper failed while loading it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct FailedPlugin {
    failed_plugin: String,
    reason: String,
}

/// What `/v1/openapi.json` answers: this document (an OpenAPI 3.1 object).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OpenApiDocument)]
#[allow(dead_code)]
pub struct OpenApiDocument {
    /// The OpenAPI version.
    #[schema(pattern = "^3\\.1\\.[0-9]+$")]
    openapi: String,
    #[schema(value_type = Object)]
    info: serde_json::Value,
    #[schema(value_type = Object)]
    paths: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::agent::server::{bind_unix, router, RouterOptions, SocketOptions};
    use crate::agent::Agent;

    /// The paths the router serves, read from its `Debug` form (axum lists every registered
    /// path there; it has no other way to enumerate them).
    fn served_paths(r: &axum::Router) -> Vec<String> {
        let text = format!("{r:?}");
        // The routes proper, not the fallback router's.
        let own = text.split_once("path_router:").map(|(_, rest)| rest).unwrap_or("");
        let own = own.split_once("fallback_router:").map(|(own, _)| own).unwrap_or(own);
        let mut out = Vec::new();
        for piece in own.split("RouteId(").skip(1) {
            let Some((_, rest)) = piece.split_once("): \"") else { continue };
            let Some((path, _)) = rest.split_once('"') else { continue };
            out.push(path.to_owned());
        }
        out.sort();
        out.dedup();
        out
    }

    /// One request over the socket; the status.
    async fn status(socket: &std::path::Path, method: &str, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: capsd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("{method} {path}: {out}"))
    }

    /// Methods a route could be served with (HEAD comes with GET in axum and in HTTP).
    const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"];

    /// The router's routes and the description's operations are the same set: a route added
    /// to the router without its annotation (`.route(...)` instead of `.routes(routes!(...))`)
    /// fails here, naming it.
    #[tokio::test]
    async fn every_route_the_router_serves_is_described_and_every_described_one_is_served() {
        let agent = Arc::new(Agent::new(crate::registry::Registry::default()));
        let r = router(agent, &RouterOptions::default());
        let paths = served_paths(&r);
        // The enumeration itself works (a change in axum's Debug form would fail here, not pass).
        for known in ["/healthz", "/metrics", "/v1/domcapabilities", "/v1/drivers", "/v1/openapi.json"] {
            assert!(paths.iter().any(|p| p == known), "{known} not found among the router's paths {paths:?}");
        }
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();

        let tmp = tempfile::tempdir().unwrap();
        let socket = tmp.path().join("s");
        let listener = bind_unix(&SocketOptions { path: socket.clone(), mode: 0o600, group: None }).unwrap();
        tokio::spawn(async move { axum::serve(listener, r).await });

        let mut served = Vec::new();
        for path in &paths {
            // A path parameter gets a value.
            let concrete: String =
                path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/");
            for method in METHODS {
                let code = status(&socket, method, &concrete).await;
                if code != 405 {
                    served.push(format!("{method} {path}"));
                }
            }
        }
        let mut described = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method.to_lowercase()).is_some() {
                    described.push(format!("{method} {path}"));
                }
            }
        }
        served.sort();
        described.sort();
        let undescribed: Vec<&String> = served.iter().filter(|s| !described.contains(s)).collect();
        assert!(
            undescribed.is_empty(),
            "routes served without a description (register them with .routes(routes!(handler)) and a #[utoipa::path] annotation): {undescribed:?}"
        );
        assert_eq!(served, described, "described but not served");
        // The probing tells served from not served: a path nobody registered is the 404 fallback.
        assert_eq!(status(&socket, "GET", "/v1/no-such-route").await, 404);
    }

    /// The description's query parameters are those the handler accepts.
    #[test]
    fn the_query_description_names_every_parameter_the_handler_reads() {
        let described: Vec<String> =
            <DomcapsQuery as IntoParams>::into_params(|| None).into_iter().map(|p| p.name).collect();
        assert_eq!(described, crate::agent::server::PARAMS);
    }

    /// Served bytes and generated bytes are one rendering, made once.
    #[test]
    fn the_document_is_rendered_once() {
        assert!(std::ptr::eq(json(), json()));
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        // The document's JSON form is the model's, traced in full.
        trace_model().unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["DomainCapabilities"]["additionalProperties"], false, "{}", schemas["DomainCapabilities"]);
        assert_eq!(schemas["Support"]["enum"], serde_json::json!(["yes", "no"]), "{}", schemas["Support"]);
    }
}

//! The control's HTTP API: JSON over HTTP/1.1 and HTTP/2 (h2c, or TLS with `--trust-domain`),
//! every `/v1` call behind [`auth::require`] (the operator's token, or a proxy's certificate
//! for what a proxy may do). `/healthz`, `/metrics`, `/openapi.json` and the trust bundle are
//! open (no secrets in them); certificate issuance authenticates its callers itself.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Extension;
use axum::{Json, Router};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use strait_config::Source;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{self, Caller, Token};
use crate::ca::Ca;
use crate::policy::{canonical_kind, PolicyError, PolicyStore};
use crate::push::{Ack, Push};
use crate::registry::{Query as RegistryQuery, Registration, Registry, RegistryError};
use crate::store::StoreError;

/// Largest request body accepted (an `apply` of many files).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most files in one apply.
const MAX_FILES: usize = 256;

/// What handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Policy store.
    pub policy: Arc<PolicyStore>,
    /// Registry.
    pub registry: Arc<Registry>,
    /// Push hub.
    pub push: Arc<Push>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// The OpenAPI document.
    pub openapi: serde_json::Value,
    /// The CA, with `--trust-domain`.
    pub ca: Option<Arc<Ca>>,
}

/// An API failure, answered as `{"error": ..., "errors": [...]}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 400 with every validation error.
    #[error("invalid configuration")]
    Invalid(Vec<String>),
    /// 401.
    #[error("{0}")]
    Unauthorized(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409.
    #[error("{0}")]
    Conflict(String),
    /// 405: the resource is not written through this API.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "request failed");
        }
        let body = match &self {
            Self::Invalid(errors) => json!({"error": self.to_string(), "errors": errors}),
            _ => json!({"error": self.to_string()}),
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Invalid(errors) => {
                Self::Invalid(errors.iter().map(ToString::to_string).collect())
            }
            PolicyError::Conflict { .. } | PolicyError::Busy => Self::Conflict(e.to_string()),
            PolicyError::NotFound { .. } => Self::NotFound(e.to_string()),
            PolicyError::Store(s) => s.into(),
            PolicyError::ReadOnly(_) => Self::MethodNotAllowed(e.to_string()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(m) => Self::BadRequest(m),
            RegistryError::NotFound(_) => Self::NotFound(e.to_string()),
            RegistryError::Store(s) => s.into(),
            RegistryError::Random(_) => Self::Internal(e.to_string()),
        }
    }
}

/// The whole API; `extra` (the event bus) is served behind the same token.
pub fn router(state: Arc<AppState>, token: Token, extra: Router) -> Router {
    let v1 = Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/resources", get(list_all))
        .route("/v1/resources/{kind}", get(list))
        .route(
            "/v1/resources/{kind}/{namespace}/{name}",
            get(get_one).delete(delete),
        )
        .route(
            "/v1/resources/{kind}/{namespace}/{name}/history",
            get(history),
        )
        .route("/v1/registry/instances", post(register).get(find_instances))
        .route(
            "/v1/registry/instances/{id}",
            axum::routing::delete(deregister),
        )
        .route("/v1/registry/instances/{id}/heartbeat", put(heartbeat))
        .route("/v1/push/stream", get(stream))
        .route("/v1/push/ack", post(ack))
        .route("/v1/proxies", get(proxies))
        .with_state(state.clone())
        .merge(extra)
        .merge(crate::ca::api::operator_routes(state.ca.clone()))
        .layer(axum::middleware::from_fn_with_state(token, auth::require));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .with_state(state.clone())
        .merge(crate::ca::api::open_routes(state.ca.clone()))
        .merge(v1)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        s.prometheus.render(),
    )
}

async fn openapi(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(s.openapi.clone())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}")))
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    files: Vec<ApplyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyFile {
    name: String,
    content: String,
}

/// `POST /v1/apply`: JSON `{"files": [{"name", "content"}]}`, or a YAML body.
async fn apply(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let sources: Vec<Source> = if is_json {
        let body: ApplyBody = parse(&body)?;
        if body.files.is_empty() || body.files.len() > MAX_FILES {
            return Err(ApiError::BadRequest(format!(
                "files: between 1 and {MAX_FILES} files"
            )));
        }
        body.files
            .into_iter()
            .map(|f| Source {
                file: f.name.into(),
                text: f.content,
            })
            .collect()
    } else {
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::BadRequest("body is not UTF-8 YAML".into()))?;
        vec![Source {
            file: "<request>".into(),
            text,
        }]
    };
    let policy = s.policy.clone();
    let applied = blocking(move || Ok(policy.apply(&sources)?)).await?;
    Ok(Json(json!({ "applied": applied })))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    namespace: Option<String>,
}

fn kind(user: &str) -> Result<&'static str, ApiError> {
    canonical_kind(user).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown kind `{user}`; known: Service, HTTPRoute, TCPRoute, TLSRoute, ProxyConfig, \
             AuthorizationPolicy"
        ))
    })
}

async fn list_all(
    State(s): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let items = s.policy.list(None, q.namespace.as_deref())?;
    Ok(Json(json!({ "items": items })))
}

async fn list(
    State(s): State<Arc<AppState>>,
    Path(k): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let items = s.policy.list(Some(kind(&k)?), q.namespace.as_deref())?;
    Ok(Json(json!({ "items": items })))
}

async fn get_one(
    State(s): State<Arc<AppState>>,
    Path((k, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kind = kind(&k)?;
    match s.policy.get(kind, &namespace, &name)? {
        Some(r) => Ok(Json(serde_json::to_value(r).unwrap_or_default())),
        None => Err(ApiError::NotFound(format!(
            "{kind} {namespace}/{name} not found"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteQuery {
    resource_version: Option<String>,
}

async fn delete(
    State(s): State<Arc<AppState>>,
    Path((k, namespace, name)): Path<(String, String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kind = kind(&k)?;
    let policy = s.policy.clone();
    let deleted = blocking(move || {
        Ok(policy.delete(kind, &namespace, &name, q.resource_version.as_deref())?)
    })
    .await?;
    Ok(Json(json!({ "deleted": deleted })))
}

async fn history(
    State(s): State<Arc<AppState>>,
    Path((k, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let items = s.policy.history(kind(&k)?, &namespace, &name)?;
    if items.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no history for {k} {namespace}/{name}"
        )));
    }
    Ok(Json(json!({ "items": items })))
}

/// The caller (the operator when the middleware did not run, as in unit tests).
pub(crate) fn caller(c: Option<Extension<Caller>>) -> Caller {
    c.map_or(Caller::Operator, |Extension(c)| c)
}

/// 403 unless `caller` may act on instances of `namespace`.
fn own_namespace(caller: &Caller, namespace: Option<String>) -> Result<(), ApiError> {
    match namespace {
        Some(ns) if !auth::may_register(caller, &ns) => Err(ApiError::Forbidden(format!(
            "a proxy identity may only act on instances of its own namespace, not `{ns}`"
        ))),
        _ => Ok(()),
    }
}

async fn register(
    State(s): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let registration: Registration = parse(&body)?;
    own_namespace(&caller(who), Some(registration.namespace.clone()))?;
    let registry = s.registry.clone();
    let instance = blocking(move || Ok(registry.register(registration)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::to_value(instance).unwrap_or_default()),
    ))
}

async fn heartbeat(
    State(s): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    own_namespace(&caller(who), s.registry.namespace_of(&id))?;
    s.registry.heartbeat(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn deregister(
    State(s): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    own_namespace(&caller(who), s.registry.namespace_of(&id))?;
    let registry = s.registry.clone();
    let instance = blocking(move || Ok(registry.deregister(&id)?)).await?;
    Ok(Json(json!({ "deregistered": instance })))
}

async fn find_instances(
    State(s): State<Arc<AppState>>,
    Query(q): Query<RegistryQuery>,
) -> Json<serde_json::Value> {
    Json(json!({ "items": s.registry.find(&q) }))
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    node: String,
    #[serde(default)]
    listeners: String,
}

pub(crate) fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `GET /v1/push/stream?node=N&listeners=a,b`: the proxy's long-lived config stream.
/// 403 unless `caller` may read node `node`'s config (see [`auth::may_stream`]).
pub(crate) fn own_node(s: &AppState, caller: &Caller, node: &str) -> Result<(), ApiError> {
    if *caller == Caller::Operator {
        return Ok(());
    }
    if s.push
        .with_proxy_config(node, |config| auth::may_stream(caller, config))?
    {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "node `{node}`: its ProxyConfig's spec.identity does not name this proxy's identity"
        )))
    }
}

async fn stream(
    State(s): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Query(q): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    if !valid_node(&q.node) {
        return Err(ApiError::BadRequest(
            "node: 1-253 characters of letters, digits, `-`, `.`, `_`".into(),
        ));
    }
    let caller = caller(who);
    own_node(&s, &caller, &q.node)?;
    let listeners: Vec<String> = q
        .listeners
        .split(',')
        .filter(|l| !l.is_empty())
        .take(64)
        .map(str::to_owned)
        .collect();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    tokio::spawn(crate::push::stream::serve(
        s.push.clone(),
        caller,
        q.node,
        listeners,
        tx,
    ));
    let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

async fn ack(
    State(s): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let ack: Ack = parse(&body)?;
    if !valid_node(&ack.node) {
        return Err(ApiError::BadRequest("node: invalid name".into()));
    }
    own_node(&s, &caller(who), &ack.node)?;
    s.push.answer(&ack);
    Ok(StatusCode::NO_CONTENT)
}

async fn proxies(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "items": s.push.list_all() }))
}

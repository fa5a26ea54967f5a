//! `/v1/identity/*`: certificates for CSRs, the trust bundle, join tokens, status, rotation.
//!
//! | call | who |
//! |---|---|
//! | `POST /v1/identity/certificates` `{"csr": PEM}` | a join token (`Authorization: Bearer strait-join.…`) for the CSR's identity, in Kubernetes the pod's ServiceAccount token (TokenReview), or a client certificate of that identity (renewal) |
//! | `GET /v1/identity/bundle` | anyone (public data; a joining proxy checks its hash against its token) |
//! | `POST /v1/identity/tokens` `{"namespace","serviceAccount","ttl"}` | the operator |
//! | `GET /v1/identity/status` | the operator |
//! | `POST /v1/identity/rotate` `{"step"}` | the operator |

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{header, HeaderMap};
use serde::Deserialize;
use serde_json::{json, Value};

use super::authority::CaError;
use super::bundle::rfc3339;
use super::join::PREFIX;
use super::service::{Ca, ServiceError};
use super::tls::PeerIdentity;
use super::{parse_ttl, RotationStep};
use crate::api::ApiError;

/// Largest CSR body accepted.
const MAX_CSR: usize = 16 * 1024;

type CaState = Option<Arc<Ca>>;

fn ca(state: &CaState) -> Result<&Arc<Ca>, ApiError> {
    state.as_ref().ok_or_else(|| {
        ApiError::NotFound("identity is off: start the control with --trust-domain".into())
    })
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Join(j) => Self::Unauthorized(j.to_string()),
            ServiceError::Invalid(m) => Self::BadRequest(m),
            ServiceError::External => Self::Conflict(e.to_string()),
            ServiceError::Ca(c) => c.into(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        match e {
            CaError::BadCsr(_) => Self::BadRequest(e.to_string()),
            CaError::WrongIdentity { .. } => Self::Forbidden(e.to_string()),
            CaError::Rotation(_) => Self::Conflict(e.to_string()),
            CaError::Material(_) | CaError::Chain(_) => Self::Internal(e.to_string()),
        }
    }
}

/// Routes anyone may call (each authenticates its caller itself).
pub fn open_routes(ca: CaState) -> Router {
    Router::new()
        .route("/v1/identity/certificates", post(certificate))
        .route("/v1/identity/bundle", get(bundle))
        .with_state(ca)
}

/// Routes for the operator (mounted behind the bearer token).
pub fn operator_routes(ca: CaState) -> Router {
    Router::new()
        .route("/v1/identity/tokens", post(token))
        .route("/v1/identity/status", get(status))
        .route("/v1/identity/rotate", post(rotate))
        .with_state(ca)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateBody {
    csr: String,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// `POST /v1/identity/certificates`: a leaf for the CSR's identity, if the caller may have it.
async fn certificate(
    State(state): State<CaState>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let ca = ca(&state)?.clone();
    let presented_token = bearer(request.headers()).map(str::to_owned);
    let peer = request.extensions().get::<PeerIdentity>().cloned();
    let body = axum::body::to_bytes(request.into_body(), MAX_CSR)
        .await
        .map_err(|_| ApiError::BadRequest(format!("body: at most {MAX_CSR} bytes")))?;
    let body: CertificateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("bad JSON body: {e}; want {{\"csr\": PEM}}")))?;
    let (allowed, method) = match (presented_token, peer) {
        (Some(token), _) if token.starts_with(PREFIX) => (ca.redeem(&token)?, "join-token"),
        (_, Some(PeerIdentity(id))) => (id, "certificate"),
        (Some(token), None) => (service_account(&ca, &token).await?, "kubernetes"),
        (None, None) => {
            return Err(ApiError::Unauthorized(
                "present a join token (Authorization: Bearer strait-join....), a Kubernetes ServiceAccount token, or your current certificate".into(),
            ))
        }
    };
    let issuer = ca.clone();
    let id = allowed.clone();
    let issued = tokio::task::spawn_blocking(move || issuer.issue(&body.csr, &id))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    metrics::counter!("strait_control_certificates_issued_total", "auth" => method).increment(1);
    tracing::info!(spiffe_id = %allowed, serial = %issued.serial, auth = method, "issued a certificate");
    Ok(Json(json!({
        "spiffeId": allowed.to_string(),
        "certificateChain": issued.chain_pem,
        "trustBundle": ca.authority().bundle().pem(),
        "notAfter": rfc3339(issued.not_after),
        "notAfterUnix": issued.not_after.unix_timestamp(),
        "serial": issued.serial,
    })))
}

/// The identity a Kubernetes ServiceAccount token stands for, as TokenReview says.
async fn service_account(ca: &Ca, token: &str) -> Result<super::SpiffeId, ApiError> {
    use super::token_review::{ReviewError, TokenReviewer};
    let reviewer = TokenReviewer::in_cluster()
        .ok_or_else(|| ApiError::Unauthorized(ReviewError::NoCluster.to_string()))?;
    let (namespace, service_account) = reviewer.review(token).await.map_err(|e| match e {
        ReviewError::Unavailable(_) => {
            tracing::warn!(error = %e, "TokenReview failed");
            ApiError::Internal(e.to_string())
        }
        _ => ApiError::Unauthorized(e.to_string()),
    })?;
    super::SpiffeId::new(ca.authority().trust_domain(), &namespace, &service_account)
        .map_err(|e| ApiError::Forbidden(e.to_string()))
}

/// `GET /v1/identity/bundle`: the roots (PEM) and their hash.
async fn bundle(State(state): State<CaState>) -> Result<Json<Value>, ApiError> {
    let authority = ca(&state)?.authority();
    Ok(Json(json!({
        "trustDomain": authority.trust_domain(),
        "trustBundle": authority.bundle().pem(),
        "sha256": authority.bundle().sha256(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenBody {
    namespace: String,
    service_account: String,
    #[serde(default)]
    ttl: Option<String>,
}

/// `POST /v1/identity/tokens`: a join token for one identity.
async fn token(
    State(state): State<CaState>,
    Json(body): Json<TokenBody>,
) -> Result<Json<Value>, ApiError> {
    let ca = ca(&state)?.clone();
    let ttl = parse_ttl(body.ttl.as_deref().unwrap_or("1h"))
        .map_err(|e| ApiError::BadRequest(format!("ttl: {e}")))?;
    let (token, identity, expires_at) = tokio::task::spawn_blocking(move || {
        ca.create_token(&body.namespace, &body.service_account, ttl)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(json!({
        "token": token.to_string(),
        "spiffeId": identity.to_string(),
        "expiresAtUnix": expires_at,
    })))
}

/// `GET /v1/identity/status`.
async fn status(State(state): State<CaState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(ca(&state)?.status()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    step: String,
}

/// `POST /v1/identity/rotate`: one rotation step.
async fn rotate(
    State(state): State<CaState>,
    Json(body): Json<RotateBody>,
) -> Result<Json<Value>, ApiError> {
    let ca = ca(&state)?.clone();
    let step = RotationStep::parse(&body.step).ok_or_else(|| {
        ApiError::BadRequest("step: add-root, switch-issuer or remove-old-roots".into())
    })?;
    let worker = ca.clone();
    let detail = tokio::task::spawn_blocking(move || worker.rotate(step))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(
        json!({"step": step.name(), "result": detail, "status": ca.status()}),
    ))
}

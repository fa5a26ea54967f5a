//! The mutating admission webhook's logic: AdmissionReview (`admission.k8s.io/v1`) in, the
//! AdmissionReview answer out. Pure: the TLS server is in [`super::server`].
//!
//! The answer is written by hand rather than with kube-core's types, whose `patch` field
//! serialises as an array of numbers where the API server wants a base64 string.

use base64::Engine;
use serde_json::{json, Value};

use super::pod::{plan, Decision, Scope};
use super::settings::Settings;

/// The body is not an AdmissionReview the webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an `admission.k8s.io/v1` AdmissionReview with a request.
    #[error("not an admission.k8s.io/v1 AdmissionReview request: {0}")]
    Shape(&'static str),
}

/// What the webhook did, for its log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Patched.
    Injected,
    /// Allowed unchanged, and why.
    Unchanged(&'static str),
    /// Refused, and why.
    Denied(String),
}

/// Answers one AdmissionReview. `scope` is [`Scope::Everything`] when the request came
/// through the webhook entry whose `namespaceSelector` matches opted-in namespaces.
pub fn review(
    body: &[u8],
    scope: Scope,
    settings: &Settings,
) -> Result<(Value, Verdict), ReviewError> {
    let review: Value = serde_json::from_slice(body)?;
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1") {
        return Err(ReviewError::Shape("apiVersion must be admission.k8s.io/v1"));
    }
    let request = review
        .get("request")
        .ok_or(ReviewError::Shape("no `request`"))?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::Shape("no `request.uid`"))?;
    let kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let operation = request.get("operation").and_then(Value::as_str);
    // The namespace the pod is created in: the request's (a pod made by a controller may not
    // name it in its own metadata yet).
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .or_else(|| {
            request
                .pointer("/object/metadata/namespace")
                .and_then(Value::as_str)
        })
        .unwrap_or("default");
    let (response, verdict) = match (kind, operation, request.get("object")) {
        (Some("Pod"), Some("CREATE"), Some(pod)) => match plan(pod, namespace, scope, settings) {
            Ok(Decision::Inject(ops)) => {
                let patch = serde_json::to_vec(&ops)?;
                (
                    json!({
                        "uid": uid,
                        "allowed": true,
                        "patchType": "JSONPatch",
                        "patch": base64::engine::general_purpose::STANDARD.encode(patch),
                    }),
                    Verdict::Injected,
                )
            }
            Ok(Decision::Skip(why)) => (
                json!({"uid": uid, "allowed": true}),
                Verdict::Unchanged(why.reason()),
            ),
            Err(e) => {
                let message = format!("strait sidecar injection: {e}");
                (
                    json!({
                        "uid": uid,
                        "allowed": false,
                        "status": {"code": 400, "reason": "BadRequest", "message": message},
                    }),
                    Verdict::Denied(message),
                )
            }
        },
        _ => (
            json!({"uid": uid, "allowed": true}),
            Verdict::Unchanged("not a Pod CREATE"),
        ),
    };
    Ok((
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        verdict,
    ))
}

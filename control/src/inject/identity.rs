//! How an injected proxy becomes `spiffe://TD/ns/NS/sa/SA` with nothing but what the pod
//! already is, and no credential of anyone else's:
//!
//! - its bootstrap `ProxyConfig` (the one baked into the proxy image, plus `spec.identity`
//!   for the pod's namespace and ServiceAccount) and the mesh's trust bundle travel in two
//!   annotations, mounted as files through a `downwardAPI` volume;
//! - its first credential is a projected ServiceAccount token for audience `strait`,
//!   short-lived and rotated by the kubelet, which the control checks with TokenReview. After
//!   the first certificate the proxy speaks to the control with that certificate (mTLS).
//!
//! No operator token is mounted or referenced: a compromised pod can read its own config,
//! renew its own certificate and publish events, and nothing more.

use serde_json::{json, Value};

use super::annotations::{BOOTSTRAP, TRUST_BUNDLE};
use super::patch::Op;
use super::settings::Settings;
use super::yaml;

/// The bootstrap baked into the proxy image (`/etc/strait/sidecar.yaml`).
const IMAGE_BOOTSTRAP: &str = include_str!("../../../deploy/proxy/sidecar.yaml");

/// Name of the projected ServiceAccount token volume.
pub const TOKEN_VOLUME: &str = "strait-identity-token";
/// Where the token is mounted in the proxy.
pub const TOKEN_DIR: &str = "/var/run/secrets/strait/serviceaccount";
/// The token file, as the proxy's `--token-file`.
pub const TOKEN_FILE: &str = "/var/run/secrets/strait/serviceaccount/token";
/// The audience the token is minted for (the control's TokenReview asks for it).
pub const TOKEN_AUDIENCE: &str = "strait";
/// Token lifetime: Kubernetes' minimum (10 minutes); the kubelet replaces it at 80%. It only
/// gets the first certificate (and a new one after the proxy restarts), so short is enough.
pub const TOKEN_EXPIRATION_SECONDS: u32 = 600;
/// Name of the downwardAPI volume holding the bootstrap and the trust bundle.
pub const BOOTSTRAP_VOLUME: &str = "strait-bootstrap";
/// Where that volume is mounted in the proxy.
pub const BOOTSTRAP_DIR: &str = "/var/run/strait/bootstrap";
/// The bootstrap file, as the proxy's `--config`.
pub const BOOTSTRAP_FILE: &str = "/var/run/strait/bootstrap/sidecar.yaml";
/// The trust bundle's file name, next to the bootstrap (its `identity.trustBundleFile`).
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

/// Who the pod is: its namespace and ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// The namespace the pod is created in.
    pub namespace: String,
    /// `spec.serviceAccountName` (or the deprecated `spec.serviceAccount`), else `default`.
    pub service_account: String,
}

impl WorkloadIdentity {
    /// The identity of `spec` (a pod's) created in `namespace`.
    pub fn of(namespace: &str, spec: &Value) -> Self {
        let named = |key: &str| {
            spec.get(key)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let service_account = named("serviceAccountName")
            .or_else(|| named("serviceAccount"))
            .unwrap_or("default");
        Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }
}

/// The workload a pod belongs to, as its labels name it (`app.kubernetes.io/name`, else `app`):
/// the proxy's `spec.workload`, the source of its metrics and of its edges on the live page.
pub fn workload_name(labels: &serde_json::Map<String, Value>) -> Option<&str> {
    ["app.kubernetes.io/name", "app"]
        .iter()
        .filter_map(|key| labels.get(*key).and_then(Value::as_str))
        .map(str::trim)
        .find(|name| strait_config::compile::is_workload_name(name))
}

/// The bootstrap `ProxyConfig` of a proxy with `identity` beside `workload`: the image's, plus
/// `spec.identity`, `spec.workload`, and mesh TLS on its inbound listener (`permissive`:
/// meshed callers come in over mTLS and are told apart by identity; the rest, in plaintext,
/// as before).
pub fn bootstrap(
    identity: &WorkloadIdentity,
    workload: Option<&str>,
    settings: &Settings,
) -> Result<String, String> {
    let mut doc = yaml::parse(IMAGE_BOOTSTRAP)?.ok_or("the image bootstrap is empty")?;
    let spec = json!({
        "trustDomain": settings.trust_domain,
        "namespace": identity.namespace,
        "serviceAccount": identity.service_account,
        "trustBundleFile": TRUST_BUNDLE_FILE,
    });
    let mut ops = vec![Op::add("/spec/identity", spec)];
    if let Some(workload) = workload {
        ops.push(Op::add("/spec/workload", json!(workload)));
    }
    let listeners = yaml::to_json(&doc)["spec"]["listeners"].clone();
    let inbound = listeners
        .as_array()
        .and_then(|all| all.iter().position(|l| l["mode"] == "inbound"))
        .ok_or("the image bootstrap has no `mode: inbound` listener")?;
    ops.push(Op::add(
        format!("/spec/listeners/{inbound}/tls"),
        json!({"mode": "permissive"}),
    ));
    yaml::apply(&mut doc, &ops).map_err(|e| e.to_string())?;
    yaml::emit(&doc)
}

/// The annotations the identity travels in (mounted by [`bootstrap_volume`]).
pub fn annotations(
    identity: &WorkloadIdentity,
    workload: Option<&str>,
    settings: &Settings,
) -> Result<Vec<(String, Value)>, String> {
    Ok(vec![
        (
            BOOTSTRAP.to_owned(),
            json!(bootstrap(identity, workload, settings)?),
        ),
        (TRUST_BUNDLE.to_owned(), json!(settings.trust_bundle)),
    ])
}

fn annotation_file(path: &str, key: &str) -> Value {
    json!({"path": path, "fieldRef": {"fieldPath": format!("metadata.annotations['{key}']")}})
}

/// The bootstrap and the trust bundle, as files, from the pod's own annotations.
pub fn bootstrap_volume() -> Value {
    json!({
        "name": BOOTSTRAP_VOLUME,
        "downwardAPI": {
            "defaultMode": 0o444,
            "items": [
                annotation_file("sidecar.yaml", BOOTSTRAP),
                annotation_file(TRUST_BUNDLE_FILE, TRUST_BUNDLE),
            ],
        },
    })
}

/// The projected ServiceAccount token for audience `strait`.
pub fn token_volume() -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "defaultMode": 0o444,
            "sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE,
                "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
                "path": "token",
            }}],
        },
    })
}

/// The proxy's mounts of both volumes.
pub fn volume_mounts() -> Value {
    json!([
        {"name": BOOTSTRAP_VOLUME, "mountPath": BOOTSTRAP_DIR, "readOnly": true},
        {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_account_is_the_pods_or_default() {
        let named = WorkloadIdentity::of("shop", &json!({"serviceAccountName": "cart"}));
        assert_eq!(named.service_account, "cart");
        assert_eq!(named.namespace, "shop");
        let legacy = WorkloadIdentity::of("shop", &json!({"serviceAccount": "old"}));
        assert_eq!(legacy.service_account, "old");
        let none = WorkloadIdentity::of("shop", &json!({"containers": []}));
        assert_eq!(none.service_account, "default");
    }

    #[test]
    fn the_workload_is_named_by_the_pods_labels() {
        let labels = |v: Value| v.as_object().cloned().unwrap_or_default();
        let both = labels(json!({"app.kubernetes.io/name": "cart", "app": "old"}));
        assert_eq!(workload_name(&both), Some("cart"));
        assert_eq!(workload_name(&labels(json!({"app": "cart"}))), Some("cart"));
        let unusable = labels(json!({"app.kubernetes.io/name": "", "app": "a b"}));
        assert_eq!(workload_name(&unusable), None);
        assert_eq!(workload_name(&labels(json!({"tier": "web"}))), None);
    }

    #[test]
    fn the_bootstrap_is_the_images_with_the_pods_identity_and_validates() {
        let identity = WorkloadIdentity::of("shop", &json!({"serviceAccountName": "cart"}));
        let settings = Settings {
            trust_domain: "example.org".into(),
            ..Settings::default()
        };
        let text = bootstrap(&identity, Some("cart"), &settings).expect("bootstrap");
        let snapshot = strait_config::load_str("sidecar.yaml", &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(snapshot.proxy.workload.as_deref(), Some("cart"));
        let id = snapshot.proxy.identity.expect("spec.identity");
        assert_eq!(
            id.spiffe_id().as_deref(),
            Some("spiffe://example.org/ns/shop/sa/cart")
        );
        assert_eq!(snapshot.listeners.len(), 2, "{text}");
        let inbound = snapshot
            .listeners
            .iter()
            .find(|l| l.name.as_ref() == "inbound")
            .expect("inbound listener");
        assert_eq!(
            inbound.tls,
            strait_config::snapshot::ListenerTls::Permissive,
            "{text}"
        );
    }
}

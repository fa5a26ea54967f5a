//! What every injected pod gets that the pod itself does not choose: images, the control's
//! address, the mesh's trust domain and trust bundle, default resources. From
//! strait-control's flags and CA (webhook) or straitctl's flags (CLI).

use strait_config::sidecar;

/// Injection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Image of the proxy (also runs `strait-proxy init-iptables` in `strait-init`).
    pub proxy_image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    /// URL proxies reach the control at (`https://`: proxies authenticate with their
    /// certificates, never with the operator's token).
    pub control_address: String,
    /// The mesh's trust domain: proxies are `spiffe://{trust_domain}/ns/NS/sa/SA`.
    pub trust_domain: String,
    /// The mesh's trust bundle (PEM): how a proxy verifies the control on first contact (a
    /// ServiceAccount token, unlike a join token, carries no bundle hash).
    pub trust_bundle: String,
    /// Default proxy resources (annotations override each).
    pub resources: Resources,
}

/// Requests and limits of the proxy container (Kubernetes quantities; empty = not set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu`.
    pub cpu_request: String,
    /// `requests.memory`.
    pub memory_request: String,
    /// `limits.cpu` (empty by default: CPU limits throttle latency-sensitive proxies).
    pub cpu_limit: String,
    /// `limits.memory`.
    pub memory_limit: String,
}

/// The proxy image `deploy/` builds and the manifests use.
pub const DEFAULT_PROXY_IMAGE: &str = "strait/proxy:0.1.0";
/// The control's in-cluster address in `deploy/`.
pub const DEFAULT_CONTROL_ADDRESS: &str = "https://strait-control.strait-system.svc:15010";
/// The trust domain `deploy/` gives the control.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

impl Default for Settings {
    fn default() -> Self {
        Self {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            image_pull_policy: "IfNotPresent".into(),
            control_address: DEFAULT_CONTROL_ADDRESS.into(),
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            trust_bundle: String::new(),
            resources: Resources {
                cpu_request: "50m".into(),
                memory_request: "32Mi".into(),
                cpu_limit: String::new(),
                memory_limit: "256Mi".into(),
            },
        }
    }
}

/// The fixed ports and UID, re-exported for the manifests' sake.
pub use sidecar::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID, TELEMETRY_PORT};

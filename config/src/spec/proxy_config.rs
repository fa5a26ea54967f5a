//! `ProxyConfig`: the proxy's bootstrap — listeners, admin address, limits, control address.

use serde::{Deserialize, Serialize};

use super::Duration;

/// `ProxyConfig.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyConfigSpec {
    /// Admin server address: `/metrics`, `/ready`, `/live`, `/config`, `/clusters`,
    /// `POST /shutdown`, e.g. `127.0.0.1:15000`. It shows the config and can stop the proxy:
    /// keep it on loopback, and give probes and Prometheus `telemetry`.
    pub admin: String,
    /// Telemetry listener address: `/metrics`, `/ready` and `/live` only (every other path is
    /// 404), for the kubelet's probes and Prometheus on the pod's address while `admin` stays
    /// on loopback, e.g. `0.0.0.0:15303`. Default: none (the admin server serves those too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<String>,
    /// The ports the proxy serves.
    #[serde(default)]
    pub listeners: Vec<ListenerSpec>,
    /// Where to take config from instead of files (used by `--control`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlSpec>,
    /// The proxy's workload identity (mTLS): issued by the control, or read from files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentitySpec>,
    /// With a control: `/ready` answers 503 until the control's first config is applied (the
    /// proxy serves this bootstrap meanwhile). After this long without one, `/ready` answers
    /// 200 on the bootstrap instead. Default: none (unready until the control answers, as
    /// Istio's sidecar). Without a control, ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_without_control_after: Option<Duration>,
    /// How long SIGTERM waits for in-flight requests before exiting. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Duration>,
    /// One log line per request. Default on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogSpec>,
    /// Limits on what clients may send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,
    /// The workload this proxy sits beside, e.g. `frontend`: the source (`client_id`) of the
    /// requests it counts from clients without a certificate on listeners other than
    /// `mode: inbound` (their clients are the workload itself), and the `service.name` of its
    /// spans. Default: none (`client_id=""`, spans named `strait-proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Trace context and span export. Default: none (trace headers pass through untouched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<super::TracingSpec>,
}

/// `ProxyConfig.spec.identity`: who the proxy is in the mesh.
///
/// With a control, the proxy generates its key and gets a short-lived certificate for
/// `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>` (renewed before it expires).
/// With `certFile`, `keyFile` and `trustBundleFile` (all three), it uses certificates issued
/// elsewhere (cert-manager, SPIRE), re-read when the files change; the identity is then the
/// SPIFFE ID in the certificate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    /// The mesh's trust domain, e.g. `cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_domain: Option<String>,
    /// The workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The workload's service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// PEM certificate chain (leaf first); relative to the config's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1); relative to the config's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// PEM trust bundle: the roots peers are verified against; relative to the config's
    /// directory. With a control and no files, the control's bundle is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_bundle_file: Option<String>,
}

/// One listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Name routes attach to with `parentRefs`.
    pub name: String,
    /// `ip:port` to bind; port 0 picks a free one (logged at startup).
    pub address: String,
    /// `http` (HTTP/1.1 and h2c, detected per connection) or `tcp` (opaque bytes).
    pub protocol: ListenerProtocol,
    /// Concurrent connections accepted on this listener; overrides `limits.maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// `explicit` (default: clients address the listener), or `inbound` / `outbound`: the
    /// listener receives connections redirected by `strait-proxy init-iptables` and recovers
    /// each one's original destination (`SO_ORIGINAL_DST`). On an intercepting listener
    /// traffic no route claims is passed through to that original destination, and an `http`
    /// listener also passes through connections that are not HTTP.
    #[serde(default, skip_serializing_if = "ListenerMode::is_explicit")]
    pub mode: ListenerMode,
    /// TLS on the listener's side (the clients'). Default: none (plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTlsSpec>,
}

/// `listeners[].tls`: whether clients speak TLS to the listener, and with which certificate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerTlsSpec {
    /// `mutual`, `permissive`, `disabled` (default) or `simple`.
    #[serde(default)]
    pub mode: ListenerTlsMode,
    /// `simple` only: the PEM certificate chain (leaf first) the listener presents; relative to
    /// the config's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// `simple` only: the PEM private key of `certFile`; relative to the config's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

/// How a listener treats TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ListenerTlsMode {
    /// Plaintext only, as without `tls`.
    #[default]
    Disabled,
    /// mTLS only: the client must present a certificate of the proxy's trust domain (from
    /// `spec.identity`'s trust bundle, with a SPIFFE ID); the listener presents the proxy's
    /// identity.
    Mutual,
    /// mTLS from clients that open with a TLS handshake, plaintext from the rest.
    Permissive,
    /// TLS termination with the user's certificate (`certFile`/`keyFile`); no client
    /// certificate asked for.
    Simple,
}

impl ListenerTlsMode {
    /// Whether the mode uses the proxy's mesh identity (mutual or permissive).
    pub fn is_mesh(self) -> bool {
        matches!(self, Self::Mutual | Self::Permissive)
    }

    /// The name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Mutual => "mutual",
            Self::Permissive => "permissive",
            Self::Simple => "simple",
        }
    }
}

/// How traffic reaches a listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Clients connect to the listener's address.
    #[default]
    Explicit,
    /// The pod's inbound TCP, redirected here by the iptables rules.
    Inbound,
    /// The pod's outbound TCP, redirected here by the iptables rules.
    Outbound,
}

impl ListenerMode {
    /// Whether the listener is addressed directly (no original destination to recover).
    pub fn is_explicit(&self) -> bool {
        *self == Self::Explicit
    }

    /// The name used in YAML and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Explicit => "explicit",
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 prior knowledge on one port.
    Http,
    /// Opaque TCP.
    Tcp,
}

/// Connection to the control process.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlSpec {
    /// Control URL, e.g. `http://127.0.0.1:15010`, or a comma-separated list of the control's
    /// replicas (tried in turn when one goes away).
    pub address: String,
    /// This proxy's node name.
    pub node: String,
    /// File holding the bearer token (the token itself never appears in config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// Access log switch.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogSpec {
    /// Emit one line per request (target `strait::access`). Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// Limits protecting the proxy from clients.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Total bytes of request header names and values; more is answered 431. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u32>,
    /// Number of request headers; more is answered 431. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_headers: Option<u32>,
    /// Concurrent connections per listener; beyond it new connections are closed. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// How long an HTTP/1 client has to send a request's headers, counted from when the proxy
    /// starts waiting for them (so it also closes idle keep-alive connections); after it the
    /// connection is closed. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<Duration>,
    /// How long a request body may stall (no byte arrives) before the request ends with 408
    /// (or, once the upstream has begun answering, the connection is reset) and its upstream
    /// connection is freed. HTTP/1 and HTTP/2 alike. Default `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_read_timeout: Option<Duration>,
}

//! `Service`: a set of endpoints, how to balance across them and how to protect them.

use serde::{Deserialize, Serialize};

use super::Duration;

/// `Service.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Upstream protocol: `http1`, `http2` (h2c prior knowledge), `grpc` (same as http2) or `tcp`.
    pub protocol: ServiceProtocol,
    /// Static endpoints. Required unless `discovery` is `registry` or `kubernetes`.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// `registry` takes endpoints from the control's registry instead of `endpoints`;
    /// `kubernetes` from the cluster's EndpointSlices of the Service named in `kubernetes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    /// `discovery: kubernetes` only: which Kubernetes Service's endpoints, on which port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesDiscoverySpec>,
    /// How requests are spread over endpoints. Default round_robin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
    /// Active health checking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    /// Passive ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Breaker and concurrency limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerSpec>,
    /// Upstream connection pool tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSpec>,
    /// TLS to the endpoints. Default: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServiceTlsSpec>,
}

/// `Service.spec.tls`: how the proxy speaks TLS to the service's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceTlsSpec {
    /// `mesh` (mTLS with the proxy's identity; the peer must present one of `identities`) or
    /// `simple` (TLS origination to a non-mesh server, verified against `caFile` for `sni`).
    pub mode: ServiceTlsMode,
    /// `mesh` only: the SPIFFE IDs the peer may present, exact or with a trailing `*` (a
    /// prefix, e.g. `spiffe://cluster.local/ns/default/*`). Required for `mesh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// `simple` only: the name sent as SNI and verified in the server's certificate. Default:
    /// the endpoint's IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// `simple` only: PEM roots the server's certificate must chain to; relative to the
    /// config's directory. Default: the system bundle, `/etc/ssl/certs/ca-certificates.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// TLS modes of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServiceTlsMode {
    /// mTLS with the proxy's mesh identity.
    Mesh,
    /// TLS origination, server verified by a CA file.
    Simple,
}

/// Upstream protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 prior knowledge (h2c).
    Http2,
    /// gRPC: HTTP/2 with trailers.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl ServiceProtocol {
    /// Whether HTTP routes may point at this service.
    pub fn is_http(self) -> bool {
        !matches!(self, Self::Tcp)
    }
}

/// Where endpoints come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// The static `endpoints` list.
    Static,
    /// The control process's registry.
    Registry,
    /// The cluster's EndpointSlices, watched by the control.
    Kubernetes,
}

/// `Service.spec.kubernetes`: the Kubernetes Service whose ready endpoints the control pushes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubernetesDiscoverySpec {
    /// The Kubernetes Service's name (its EndpointSlices carry the label
    /// `kubernetes.io/service-name: NAME`).
    pub service: String,
    /// Its namespace. Default: this resource's `metadata.namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Which of its ports: the port's `name` in the Service (and so in its EndpointSlices), or
    /// a number, the endpoints' (target) port as the EndpointSlices list it.
    pub port: PortRef,
}

/// A port by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum PortRef {
    /// A port number (1-65535).
    Number(u32),
    /// A port name (an IANA service name: up to 15 lower-case letters, digits and `-`).
    Name(String),
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    /// `ip:port`, or `host:port`: a DNS name the proxy resolves in the background (every 5
    /// s; new connections go to the first address of the latest answer).
    pub address: String,
    /// Relative share of requests (1–1000). Default 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Load-balancer choice.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancerSpec {
    /// The policy. Default round_robin.
    #[serde(default)]
    pub policy: LbPolicy,
    /// ring_hash only: what identifies a client (a header or a cookie).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

/// Load-balancing policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight requests.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on `hashOn`.
    RingHash,
}

/// Affinity key for ring_hash: exactly one of `header` or `cookie`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashOn {
    /// Header name whose value is hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Cookie name whose value is hashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// Active health checking.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// HTTP check: GET `path`, 2xx is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// TCP check: a successful connect is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// Time between checks. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// One check's deadline. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failures in a row that mark an endpoint unhealthy. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Successes in a row that mark it healthy again. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

/// HTTP health check.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// Path to GET, e.g. `/healthz`.
    pub path: String,
}

/// TCP health check (no options).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TcpHealthCheck {}

/// Passive outlier detection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// 5xx/connect failures in a row that eject an endpoint. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_errors: Option<u32>,
    /// How often ejections are re-evaluated. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Ejection time, multiplied by the number of ejections. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Never eject more than this percent of the service's endpoints. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Circuit breaker and concurrency limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// Consecutive failures that open the breaker. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Time open before half-open probes. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_timeout: Option<Duration>,
    /// Successes in half-open that close it. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<u32>,
    /// Upstream connections across the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight across the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

/// Upstream connection pool tuning.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPoolSpec {
    /// Connect timeout. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Idle HTTP/1 connections kept per endpoint. Default 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<u32>,
    /// How long an upstream connection may go unused before the proxy closes it: a pooled
    /// HTTP/1 connection, or the shared HTTP/2 connection with no request in flight (an
    /// upstream that never times out its connections would otherwise keep every one a burst
    /// opened). Default 60s, as nginx's upstream `keepalive_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
}

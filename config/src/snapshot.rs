//! The compiled configuration: everything the proxy needs, checked and ready to use.
//!
//! A `Snapshot` is immutable. The proxy loads it once per request or connection and uses that
//! version to the end; nothing in here needs validating again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use crate::matching::authz::{Authorization, AuthzPolicy};
use crate::matching::sni::SniTable;
use crate::matching::RouteTable;
use crate::spec::{
    FaultSpec, LbPolicy, ListenerMode, ListenerProtocol, MirrorSpec, RateLimitSpec, Resource,
    ServiceProtocol,
};

/// Index of a service in [`Snapshot::services`].
pub type ServiceIndex = usize;

/// One validated, compiled configuration version.
#[derive(Debug)]
pub struct Snapshot {
    /// Proxy-wide settings from the ProxyConfig.
    pub proxy: ProxySettings,
    /// Listeners, in ProxyConfig order.
    pub listeners: Vec<Listener>,
    /// Services, sorted by namespace then name.
    pub services: Vec<Arc<Service>>,
    /// Number of HTTP rules; [`HttpRule::id`] is below it.
    pub rule_count: usize,
    /// Every AuthorizationPolicy, by [`AuthzPolicy::id`] (for per-policy metric handles).
    pub authorization_policies: Vec<Arc<AuthzPolicy>>,
    /// The resources as read, for `/config` (redact before showing).
    pub resources: Vec<Arc<Resource>>,
}

impl Snapshot {
    /// The service called `name` (in any namespace; first by namespace order).
    pub fn service_by_name(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.iter().find(|s| &*s.name == name)
    }
}

/// Where the proxy's workload identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// Issued by the control for `spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}`.
    Control {
        /// The mesh's trust domain.
        trust_domain: String,
        /// The workload's namespace.
        namespace: String,
        /// The workload's service account.
        service_account: String,
        /// Roots to verify peers (and the control) against instead of the control's bundle.
        trust_bundle: Option<std::path::PathBuf>,
    },
    /// Read from files (re-read when they change).
    Files {
        /// PEM certificate chain, leaf first.
        cert: std::path::PathBuf,
        /// PEM private key.
        key: std::path::PathBuf,
        /// PEM trust bundle.
        trust_bundle: std::path::PathBuf,
    },
}

impl IdentitySource {
    /// The SPIFFE ID a control-issued identity has; `None` for files (the certificate says).
    pub fn spiffe_id(&self) -> Option<String> {
        match self {
            Self::Control {
                trust_domain,
                namespace,
                service_account,
                ..
            } => Some(format!(
                "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
            )),
            Self::Files { .. } => None,
        }
    }
}

/// Proxy-wide settings.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The proxy's workload identity, if it has one (`spec.identity`).
    pub identity: Option<IdentitySource>,
    /// Admin server address.
    pub admin: SocketAddr,
    /// Telemetry listener address (`/metrics`, `/ready`, `/live` only), if any.
    pub telemetry: Option<SocketAddr>,
    /// With a control: how long `/ready` waits for the control's first config before it
    /// reports ready on the bootstrap (`None`: for ever).
    pub ready_without_control_after: Option<Duration>,
    /// SIGTERM drain deadline.
    pub drain_timeout: Duration,
    /// Whether to log one line per request.
    pub access_log: bool,
    /// Header limits.
    pub max_header_bytes: usize,
    /// Header count limit.
    pub max_headers: usize,
    /// How long an HTTP/1 client has to send a request head (idle keep-alive included).
    pub header_read_timeout: Duration,
    /// How long a request body may stall before the request ends (408).
    pub body_read_timeout: Duration,
    /// The workload beside the proxy (`spec.workload`).
    pub workload: Option<Arc<str>>,
    /// Trace propagation and export, if configured.
    pub tracing: Option<TracingSettings>,
}

/// `spec.tracing`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The collector's URL (for `http`, with its path: `/v1/traces` when none was given).
    pub endpoint: String,
    /// The OTLP transport.
    pub protocol: crate::spec::OtlpProtocol,
    /// For an `https://` collector, the roots its certificate is verified against; `None`
    /// for `http://`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Share of new traces recorded, in `0.0..=1.0`.
    pub sampling: f64,
    /// Spans waiting for export at most.
    pub queue_size: usize,
}

/// A listener and what it serves.
#[derive(Debug)]
pub struct Listener {
    /// Name from the ProxyConfig.
    pub name: Arc<str>,
    /// Address to bind (port 0: any free port).
    pub address: SocketAddr,
    /// Concurrent connection cap.
    pub max_connections: usize,
    /// Explicit, or intercepting inbound/outbound traffic (original destination recovered).
    pub mode: ListenerMode,
    /// TLS with the listener's clients.
    pub tls: ListenerTls,
    /// HTTP routes or the TCP route.
    pub serves: Serves,
    /// TLSRoutes: TLS connections passed through by their ClientHello's server name (none:
    /// connections are not looked at, no cost). What no TLSRoute claims goes on as without
    /// them: to the TCPRoute, or on an intercepting listener to its original destination.
    pub tls_routes: Option<SniTable>,
    /// The AuthorizationPolicies targeting this listener (none: no check, no cost); they
    /// apply to every request or connection on it, before routing.
    pub authorization: Option<Arc<Authorization>>,
}

impl Listener {
    /// The protocol, for comparing listener identities across reloads.
    pub fn protocol(&self) -> ListenerProtocol {
        match self.serves {
            Serves::Http(_) => ListenerProtocol::Http,
            Serves::Tcp(_) => ListenerProtocol::Tcp,
        }
    }
}

/// TLS with a listener's clients (`listeners[].tls`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plaintext.
    #[default]
    Disabled,
    /// mTLS with the proxy's identity; a client certificate of its trust domain required.
    Mutual,
    /// mTLS for connections that open with a TLS handshake, plaintext for the rest.
    Permissive,
    /// TLS termination with the user's certificate; no client certificate.
    Simple {
        /// PEM certificate chain, leaf first.
        cert: std::path::PathBuf,
        /// PEM private key.
        key: std::path::PathBuf,
    },
}

impl ListenerTls {
    /// Whether connections are verified against the proxy's identity (mutual or permissive).
    pub fn is_mesh(&self) -> bool {
        matches!(self, Self::Mutual | Self::Permissive)
    }
}

/// What a listener routes.
// One per listener, read on every request: kept inline rather than boxed (size is irrelevant
// at a handful per config, an extra pointer chase is not).
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Serves {
    /// HTTP/1.1 and h2c with this route table.
    Http(RouteTable),
    /// Opaque TCP to this route (none attached: connections are closed).
    Tcp(Option<Arc<TcpRoute>>),
}

/// A compiled TCP route.
#[derive(Debug)]
pub struct TcpRoute {
    /// `namespace/name` of the TCPRoute.
    pub name: Arc<str>,
    /// Weighted services.
    pub backends: WeightedServices,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
}

/// A compiled TLS route (TLS passed through, routed by SNI).
#[derive(Debug)]
pub struct TlsRoute {
    /// Name of the TLSRoute (the `route` label and the access log's).
    pub name: Arc<str>,
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Weighted services (`protocol: tcp`); each service's `connectTimeout` applies.
    pub backends: WeightedServices,
}

/// A compiled HTTP route rule: the unit a request is matched to.
#[derive(Debug)]
pub struct HttpRule {
    /// Name of the HTTPRoute it comes from (the `route` metric label).
    pub route: Arc<str>,
    /// Namespace of that HTTPRoute.
    pub namespace: Arc<str>,
    /// Index of the rule in the route.
    pub index: usize,
    /// Position of the rule among all rules of the snapshot (dense, from 0), for per-rule state.
    pub id: usize,
    /// Weighted services.
    pub backends: WeightedServices,
    /// Whole-exchange timeout.
    pub request_timeout: Option<Duration>,
    /// Per-attempt timeout.
    pub per_try_timeout: Option<Duration>,
    /// Edits applied to the forwarded request.
    pub request_headers: HeaderEdits,
    /// Edits applied to the returned response.
    pub response_headers: HeaderEdits,
    /// Resilience policies as validated (enforced by the proxy's policy layer).
    pub policies: RulePolicies,
    /// The AuthorizationPolicies targeting this rule's HTTPRoute (none: no check); checked
    /// after the listener's.
    pub authorization: Option<Arc<Authorization>>,
}

/// Resilience policies of a rule, validated.
#[derive(Debug, Clone, Default)]
pub struct RulePolicies {
    /// Retry policy.
    pub retries: Option<RetryPolicy>,
    /// Rate limit.
    pub rate_limit: Option<RateLimitSpec>,
    /// Fault injection.
    pub fault: Option<FaultSpec>,
    /// Mirroring, with the resolved service.
    pub mirror: Option<(MirrorSpec, ServiceIndex)>,
}

/// A compiled retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Extra tries after the first.
    pub attempts: u32,
    /// Which outcomes are retried.
    pub on: RetryOn,
    /// First backoff.
    pub backoff_base: Duration,
    /// Largest backoff.
    pub backoff_max: Duration,
    /// Retry budget: `(percent of recent requests, retries always allowed per second)`.
    pub budget: Option<(f64, u32)>,
    /// Request bodies up to this size are kept so they can be sent again.
    pub max_body_bytes: u64,
}

/// Retry conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx answer, connect failure, reset or per-try timeout.
    pub any_5xx: bool,
    /// 502, 503, 504 (including connect failures, resets and per-try timeouts).
    pub gateway_error: bool,
    /// The endpoint could not be reached.
    pub connect_failure: bool,
    /// The upstream reset or closed the connection before answering.
    pub reset: bool,
    /// These exact status codes.
    pub statuses: Vec<u16>,
}

impl RetryOn {
    /// Whether an answer with `status` is retried.
    pub fn status(&self, status: u16) -> bool {
        (self.any_5xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || self.statuses.contains(&status)
    }
}

/// Services with weights, picked per request or connection.
#[derive(Debug, Clone)]
pub struct WeightedServices {
    /// `(service, cumulative weight)`, ascending; the last cumulative weight is the total (> 0).
    entries: Vec<(ServiceIndex, u32)>,
}

impl WeightedServices {
    /// Builds from `(service, weight)` pairs; zero-weight entries never get traffic.
    /// Returns None when the total weight is 0.
    pub fn new(weights: impl IntoIterator<Item = (ServiceIndex, u32)>) -> Option<Self> {
        let mut total: u32 = 0;
        let mut entries = Vec::new();
        for (service, weight) in weights {
            if weight == 0 {
                continue;
            }
            total = total.saturating_add(weight);
            entries.push((service, total));
        }
        (total > 0).then_some(Self { entries })
    }

    /// `(position, service)` for a draw `r` in `0..total()`.
    pub fn pick_with(&self, r: u32) -> (usize, ServiceIndex) {
        let i = self.entries.partition_point(|&(_, cum)| cum <= r);
        let i = i.min(self.entries.len().saturating_sub(1));
        (i, self.entries.get(i).map_or(0, |&(s, _)| s))
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Never true: a `WeightedServices` has at least one backend.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of weights (> 0).
    pub fn total(&self) -> u32 {
        self.entries.last().map_or(0, |&(_, cum)| cum)
    }

    /// The only service, when there is exactly one (the common case: no draw needed).
    pub fn single(&self) -> Option<ServiceIndex> {
        // `(position 0, service)` is implied.
        match self.entries.as_slice() {
            [(only, _)] => Some(*only),
            _ => None,
        }
    }

    /// `(service, weight)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (ServiceIndex, u32)> + '_ {
        let mut prev = 0;
        self.entries.iter().map(move |&(s, cum)| {
            let w = cum - prev;
            prev = cum;
            (s, w)
        })
    }
}

/// Header edits compiled to header types.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// Replace or create.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Delete.
    pub remove: Vec<HeaderName>,
}

impl HeaderEdits {
    /// Whether there is nothing to do (lets the proxy skip the work).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits: remove, then set, then add.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// A compiled service.
#[derive(Debug)]
pub struct Service {
    /// Name.
    pub name: Arc<str>,
    /// Namespace.
    pub namespace: Arc<str>,
    /// Upstream protocol.
    pub protocol: ServiceProtocol,
    /// Endpoints (may be empty: requests get 503 no-healthy-endpoints).
    pub endpoints: Vec<Endpoint>,
    /// Load-balancing policy.
    pub lb_policy: LbPolicy,
    /// Affinity key for ring_hash.
    pub hash_on: Option<HashKey>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Idle HTTP/1 connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// How long an upstream connection may stay unused before it is closed.
    pub pool_idle_timeout: Duration,
    /// Active health checking.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection.
    pub outlier_detection: Option<OutlierPolicy>,
    /// Circuit breaker and concurrency limits.
    pub circuit_breaker: Option<BreakerPolicy>,
    /// TLS to the endpoints; `None`: plaintext.
    pub tls: Option<ServiceTls>,
}

/// TLS to a service's endpoints, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServiceTls {
    /// mTLS with the proxy's identity; the peer's certificate chains to the identity's trust
    /// bundle and carries one of `identities`.
    Mesh {
        /// Accepted peer SPIFFE IDs: exact, or a prefix when ending in `*`.
        identities: Vec<Arc<str>>,
    },
    /// TLS origination: the server's certificate chains to `ca_file`'s roots and is valid for
    /// `sni`.
    Simple {
        /// Server name; `None`: the endpoint's IP address.
        sni: Option<Arc<str>>,
        /// PEM roots (resolved path).
        ca_file: std::path::PathBuf,
    },
}

/// Active health checking of every endpoint of a service, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// What a check does.
    pub probe: HealthProbe,
    /// Time between checks.
    pub interval: Duration,
    /// One check's deadline.
    pub timeout: Duration,
    /// Failures in a row that take an endpoint out of rotation.
    pub unhealthy_threshold: u32,
    /// Successes in a row that bring it back.
    pub healthy_threshold: u32,
}

/// A health check's probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// `GET path`; a 2xx answer is healthy.
    Http {
        /// Path and query to request.
        path: Arc<str>,
    },
    /// A TCP connect that succeeds is healthy.
    Tcp,
}

/// Passive outlier detection, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// 5xx answers or connect failures in a row that eject an endpoint.
    pub consecutive_errors: u32,
    /// How often an ejection multiplier decays by one while the endpoint is in rotation.
    pub interval: Duration,
    /// Ejection time, multiplied by the number of (undecayed) ejections.
    pub base_ejection_time: Duration,
    /// At most this percent of the service's endpoints are ejected at once.
    pub max_ejection_percent: u32,
}

/// Circuit breaker and concurrency limits, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Time open before half-open probes are let through.
    pub open_timeout: Duration,
    /// Successful probes that close it again.
    pub success_threshold: u32,
    /// Upstream connections across the service.
    pub max_connections: Option<u32>,
    /// Requests waiting for a new upstream connection.
    pub max_pending_requests: Option<u32>,
    /// Requests in flight to the service.
    pub max_requests: Option<u32>,
}

/// One endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it listens.
    pub address: EndpointAddress,
    /// Relative weight (≥ 1).
    pub weight: u32,
}

/// Where an endpoint listens: as written in `endpoints[].address`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// `ip:port`: connected to as written.
    Ip(SocketAddr),
    /// `host:port`: the proxy resolves the name in the background and connects to the first
    /// address of the latest answer (Envoy's LOGICAL_DNS).
    Host {
        /// The DNS name (also the default TLS server name).
        name: Arc<str>,
        /// The port.
        port: u16,
    },
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(address) => write!(f, "{address}"),
            Self::Host { name, port } => write!(f, "{name}:{port}"),
        }
    }
}

/// What ring_hash hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header's value.
    Header(HeaderName),
    /// A cookie's value.
    Cookie(String),
}

//! Prometheus metrics: names, descriptions, and pre-registered handles for the request path.
//!
//! Handles are created at reload time so a request only touches atomics: no registry lookup,
//! no label hashing, no lock.

mod duration;

use std::sync::{Arc, OnceLock};

use metrics::{describe_counter, describe_gauge, Counter, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use duration::DurationHistogram;

/// `strait_requests_total{listener,route,service,code}`.
pub const REQUESTS_TOTAL: &str = "strait_requests_total";
/// `strait_request_duration_seconds{listener,route,service}`: time to response headers.
pub const REQUEST_DURATION: &str = "strait_request_duration_seconds";
/// `strait_config_reloads_total{result}`.
pub const CONFIG_RELOADS: &str = "strait_config_reloads_total";
/// `strait_config_version`.
pub const CONFIG_VERSION: &str = "strait_config_version";
/// `strait_tcp_connections_total{listener}`.
pub const TCP_CONNECTIONS: &str = "strait_tcp_connections_total";
/// `strait_tcp_bytes_total{listener,direction}`.
pub const TCP_BYTES: &str = "strait_tcp_bytes_total";
/// `strait_connections_rejected_total{listener}`: over the connection limit.
pub const CONNECTIONS_REJECTED: &str = "strait_connections_rejected_total";
/// `strait_connections_active{listener}`.
pub const CONNECTIONS_ACTIVE: &str = "strait_connections_active";
/// `strait_upstream_retries_total{service}`.
pub const UPSTREAM_RETRIES: &str = "strait_upstream_retries_total";
/// `strait_ratelimit_rejected_total{route}`.
pub const RATELIMIT_REJECTED: &str = "strait_ratelimit_rejected_total";
/// `strait_circuit_state{service}`: 0 closed, 1 open, 2 half-open.
pub const CIRCUIT_STATE: &str = "strait_circuit_state";
/// `strait_endpoint_healthy{service,endpoint}`.
pub const ENDPOINT_HEALTHY: &str = "strait_endpoint_healthy";
/// `strait_authz_decisions_total{policy,action,result}`.
pub const AUTHZ_DECISIONS: &str = "strait_authz_decisions_total";

/// `strait_identity_expiry_timestamp_seconds`: when the proxy's certificate expires.
pub const IDENTITY_EXPIRY: &str = "strait_identity_expiry_timestamp_seconds";

/// Installs the global recorder and describes every metric (promtool wants HELP lines).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe_counter!(
        REQUESTS_TOTAL,
        "HTTP requests answered, by listener, route, service and status code."
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Configuration reloads, by result (applied or rejected)."
    );
    describe_gauge!(
        CONFIG_VERSION,
        "This proxy's count of applied configurations, from 1 (/config's localVersion; with a control, /config's version is the control's revision)."
    );
    describe_counter!(TCP_CONNECTIONS, "TCP connections proxied, by listener.");
    describe_counter!(
        TCP_BYTES,
        Unit::Bytes,
        "Bytes proxied over TCP listeners, by direction (upstream = client to server)."
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections closed at accept because the listener's connection limit was reached."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        "Open downstream connections, by listener."
    );
    describe_counter!(
        UPSTREAM_RETRIES,
        "Retries sent to a service (attempts after the first)."
    );
    describe_counter!(
        RATELIMIT_REJECTED,
        "Requests answered 429 by a route's rate limit."
    );
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker state of a service: 0 closed, 1 open, 2 half-open."
    );
    describe_gauge!(
        ENDPOINT_HEALTHY,
        "1 when the endpoint is in rotation, 0 when it is out."
    );
    describe_gauge!(
        IDENTITY_EXPIRY,
        Unit::Seconds,
        "When the proxy's workload certificate expires (Unix time): alert when it nears now, renewal failed."
    );
    describe_counter!(
        AUTHZ_DECISIONS,
        "Authorization decisions on requests and TCP connections, by deciding policy (namespace/name, or default when no policy matched), its action and the result (allow or deny)."
    );
    Ok(handle)
}

/// The metrics text for `/metrics`: the exporter's, then the request-duration histograms.
pub fn render(prometheus: &PrometheusHandle) -> String {
    let mut out = prometheus.render();
    duration::render(
        REQUEST_DURATION,
        "Time from request received to response headers sent.",
        &mut out,
    );
    out
}

/// Counters per status code for one (listener, route, service), created on first use.
#[derive(Debug)]
pub struct RequestMetrics {
    labels: [(&'static str, Arc<str>); 3],
    /// One lazily filled block of 100 counters per status class (1xx..5xx).
    classes: [OnceLock<Box<[OnceLock<Counter>]>>; 5],
    duration: Arc<DurationHistogram>,
}

impl RequestMetrics {
    /// Registers the histogram; counters come on first use of each code.
    pub fn new(listener: &Arc<str>, route: &Arc<str>, service: &Arc<str>) -> Self {
        let labels = [
            ("listener", listener.clone()),
            ("route", route.clone()),
            ("service", service.clone()),
        ];
        let duration = duration::histogram(listener, route, service);
        Self {
            labels,
            classes: Default::default(),
            duration,
        }
    }

    /// Records one answered request.
    pub fn record(&self, status: u16, seconds: f64) {
        self.duration.record(seconds);
        let (class, offset) = ((status / 100) as usize, (status % 100) as usize);
        let Some(block) = class.checked_sub(1).and_then(|c| self.classes.get(c)) else {
            return;
        };
        let block = block.get_or_init(|| (0..100).map(|_| OnceLock::new()).collect());
        if let Some(slot) = block.get(offset) {
            slot.get_or_init(|| {
                let [(l0, v0), (l1, v1), (l2, v2)] = &self.labels;
                metrics::counter!(
                    REQUESTS_TOTAL,
                    *l0 => v0.clone(),
                    *l1 => v1.clone(),
                    *l2 => v2.clone(),
                    "code" => status.to_string()
                )
            })
            .increment(1);
        }
    }
}

/// Counter of requests the proxy answered before choosing a route or service (404, 400, 431).
pub fn unrouted(listener: &Arc<str>) -> RequestMetrics {
    let none: Arc<str> = Arc::from("");
    RequestMetrics::new(listener, &none, &none)
}

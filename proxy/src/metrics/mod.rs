//! Prometheus metrics: names, descriptions, and pre-registered handles for the request path.
//!
//! Handles are created at reload time so a request only touches atomics: no registry lookup,
//! no label hashing, no lock.

pub mod duration;

use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use metrics::{describe_counter, describe_gauge, Counter, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use duration::DurationHistogram;

/// `strait_requests_total{listener,route,service,client_id,code}`.
pub const REQUESTS_TOTAL: &str = "strait_requests_total";
/// `strait_request_duration_seconds{listener,route,service,client_id}`: time to response
/// headers.
pub const REQUEST_DURATION: &str = "strait_request_duration_seconds";
/// `strait_config_reloads_total{result}`.
pub const CONFIG_RELOADS: &str = "strait_config_reloads_total";
/// `strait_config_version`.
pub const CONFIG_VERSION: &str = "strait_config_version";
/// `strait_tcp_connections_total{listener}`.
pub const TCP_CONNECTIONS: &str = "strait_tcp_connections_total";
/// `strait_tcp_bytes_total{listener,direction}`.
pub const TCP_BYTES: &str = "strait_tcp_bytes_total";
/// `strait_tls_passthrough_connections_total{listener,route,service}`: TLS connections passed
/// through by SNI on listeners with TLSRoutes (`route=""`, `service="passthrough"`: to the
/// original destination, no TLSRoute claiming the name).
pub const TLS_PASSTHROUGH: &str = "strait_tls_passthrough_connections_total";
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

/// `strait_tracing_spans_dropped_total{reason}`: `queue_full` or `export_failed`.
pub const TRACING_SPANS_DROPPED: &str = "strait_tracing_spans_dropped_total";
/// `strait_tracing_spans_exported_total`.
pub const TRACING_SPANS_EXPORTED: &str = "strait_tracing_spans_exported_total";

/// `strait_identity_expiry_timestamp_seconds`: when the proxy's certificate expires.
pub const IDENTITY_EXPIRY: &str = "strait_identity_expiry_timestamp_seconds";

/// Installs the global recorder and describes every metric (promtool wants HELP lines).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    describe_counter!(
        REQUESTS_TOTAL,
        "HTTP requests answered, by listener, route, service, source (client_id: the mTLS peer's SPIFFE ID, else the proxy's workload on non-inbound listeners, else empty; at most 64 per route, then other) and status code."
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
        TLS_PASSTHROUGH,
        "TLS connections passed through untouched on listeners with TLSRoutes, by listener, TLSRoute and service (route empty and service passthrough: to the original destination)."
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
    describe_counter!(
        TRACING_SPANS_DROPPED,
        "Spans not exported, by reason: queue_full (the export queue was full when the span ended) or export_failed (the collector refused or could not be reached)."
    );
    describe_counter!(TRACING_SPANS_EXPORTED, "Spans the collector accepted.");
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

/// Most sources counted apart per (listener, route, service); the requests of further
/// sources are counted under `client_id="other"`. The label's values are bounded by the
/// mesh's identities (service accounts) and workload names, never by client addresses.
pub const MAX_CLIENT_IDS: usize = 64;

/// Counters per status code and a duration histogram for one (listener, route, service),
/// created on first use, per source (`client_id`: the mTLS peer's SPIFFE ID, else the
/// proxy's workload name on listeners other than `mode: inbound`, else empty).
#[derive(Debug)]
pub struct RequestMetrics {
    labels: [(&'static str, Arc<str>); 3],
    /// Clients without an identity (`client_id=""`).
    anonymous: Codes,
    /// Durations of `anonymous`'s requests.
    duration: Arc<DurationHistogram>,
    /// Per identity, appended as identities appear (read without a lock: a request loads the
    /// list, finds its identity's counters, and copies the list only for a new identity).
    identified: ArcSwap<Vec<Arc<ClientCodes>>>,
    /// Durations of the sources past [`MAX_CLIENT_IDS`] (made on first use).
    other_duration: OnceLock<Arc<DurationHistogram>>,
}

/// One lazily filled block of 100 counters per status class (1xx..5xx).
type Codes = [OnceLock<Box<[OnceLock<Counter>]>>; 5];

/// The counters of one client identity.
#[derive(Debug)]
struct ClientCodes {
    id: Arc<str>,
    codes: Codes,
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
        let duration = duration::histogram(listener, route, service, &Arc::from(""));
        Self {
            labels,
            anonymous: Default::default(),
            duration,
            identified: ArcSwap::default(),
            other_duration: OnceLock::new(),
        }
    }

    /// Records one answered request; `client`: its source (the mTLS peer's SPIFFE ID, or the
    /// workload's name).
    pub fn record(&self, status: u16, seconds: f64, client: Option<&Arc<str>>) {
        let Some(id) = client else {
            self.duration.record(seconds, status >= 500);
            return self.count(&self.anonymous, "", status);
        };
        let known = self.identified.load();
        if let Some(found) = known.iter().find(|c| Arc::ptr_eq(&c.id, id) || c.id == *id) {
            found.duration.record(seconds, status >= 500);
            return self.count(&found.codes, &found.id, status);
        }
        if known.len() >= MAX_CLIENT_IDS {
            return self.count_other(status, seconds);
        }
        drop(known);
        // A new identity (once per identity): the list is copied with it appended.
        let mut added = None;
        self.identified.rcu(|list| {
            if let Some(c) = list.iter().find(|c| c.id == *id) {
                added = Some(c.clone());
                return list.clone();
            }
            let mut list = Vec::clone(list);
            let [(_, listener), (_, route), (_, service)] = &self.labels;
            let entry = Arc::new(ClientCodes {
                id: id.clone(),
                codes: Default::default(),
                duration: duration::histogram(listener, route, service, id),
            });
            list.push(entry.clone());
            added = Some(entry);
            Arc::new(list)
        });
        match added {
            Some(c) => {
                c.duration.record(seconds, status >= 500);
                self.count(&c.codes, &c.id, status)
            }
            None => self.count_other(status, seconds),
        }
    }

    /// Identities past [`MAX_CLIENT_IDS`]: counted, not apart (rare: the counter is not cached).
    fn count_other(&self, status: u16, seconds: f64) {
        self.other_duration
            .get_or_init(|| {
                let [(_, listener), (_, route), (_, service)] = &self.labels;
                duration::histogram(listener, route, service, &Arc::from(OTHER_CLIENTS))
            })
            .record(seconds, status >= 500);
        self.counter(OTHER_CLIENTS, status).increment(1);
    }

    fn count(&self, codes: &Codes, client: &str, status: u16) {
        let (class, offset) = ((status / 100) as usize, (status % 100) as usize);
        let Some(block) = class.checked_sub(1).and_then(|c| codes.get(c)) else {
            return;
        };
        let block = block.get_or_init(|| (0..100).map(|_| OnceLock::new()).collect());
        if let Some(slot) = block.get(offset) {
            slot.get_or_init(|| self.counter(client, status))
                .increment(1);
        }
    }

    fn counter(&self, client: &str, status: u16) -> Counter {
        let [(l0, v0), (l1, v1), (l2, v2)] = &self.labels;
        metrics::counter!(
            REQUESTS_TOTAL,
            *l0 => v0.clone(),
            *l1 => v1.clone(),
            *l2 => v2.clone(),
            "client_id" => client.to_owned(),
            "code" => status.to_string()
        )
    }
}

/// The `client_id` of identities past [`MAX_CLIENT_IDS`].
const OTHER_CLIENTS: &str = "other";

/// Counter of requests the proxy answered before choosing a route or service (404, 400, 431).
pub fn unrouted(listener: &Arc<str>) -> RequestMetrics {
    let none: Arc<str> = Arc::from("");
    RequestMetrics::new(listener, &none, &none)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_is_counted_apart_up_to_the_bound() {
        let name: Arc<str> = Arc::from("l");
        let metrics = RequestMetrics::new(&name, &name, &name);
        for i in 0..MAX_CLIENT_IDS + 10 {
            // A new connection's Arc for a known identity finds its counters too.
            for _ in 0..2 {
                let id: Arc<str> = Arc::from(format!("spiffe://td/ns/default/sa/{i}"));
                metrics.record(200, 0.001, Some(&id));
            }
        }
        metrics.record(200, 0.001, None);
        assert_eq!(metrics.identified.load().len(), MAX_CLIENT_IDS);
    }
}

//! Compiling a `Service`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;

use super::{check_positive, check_range, Errors};
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::snapshot::{
    BreakerPolicy, Endpoint, EndpointAddress, HashKey, HealthCheck, HealthProbe, OutlierPolicy,
    Service, ServiceTls,
};
use crate::spec::{Discovery, Document, LbPolicy, ServiceSpec, ServiceTlsMode, ServiceTlsSpec};

/// How long an upstream connection stays unused before it is closed, unless
/// `connectionPool.idleTimeout` says otherwise: nginx's upstream `keepalive_timeout`.
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The roots `tls.mode: simple` trusts when no `caFile` is given: the system bundle (Debian's
/// `ca-certificates` path, also used by Alpine and Ubuntu).
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Largest endpoint weight accepted.
pub(crate) const MAX_WEIGHT: u32 = 1000;

/// Validates and compiles one Service (a best effort on error; the caller discards it then).
pub(crate) fn compile(
    doc: &LoadedDoc,
    svc: &Document<ServiceSpec>,
    errors: &mut Errors,
) -> Service {
    let spec = &svc.spec;
    let at = FieldPath::root().key("spec");

    super::discovery::check(doc, &at, spec, errors);
    let mut endpoints = Vec::with_capacity(spec.endpoints.len());
    let mut seen = HashSet::new();
    for (i, ep) in spec.endpoints.iter().enumerate() {
        let here = at.key("endpoints").index(i);
        match endpoint_address(&ep.address) {
            Some(address) => {
                if !seen.insert(address.clone()) {
                    errors.at(doc, &here.key("address"), format!("endpoint `{address}` is listed twice"));
                }
                endpoints.push(Endpoint { address, weight: ep.weight.max(1) });
            }
            None => errors.at(
                doc,
                &here.key("address"),
                format!("`{}` is not an ip:port or host:port address (e.g. 10.0.0.7:8080 or api.example.com:443)", ep.address),
            ),
        }
        check_range(
            errors,
            doc,
            &here.key("weight"),
            Some(ep.weight),
            1,
            MAX_WEIGHT,
        );
    }

    let lb = spec.load_balancer.clone().unwrap_or_default();
    let lb_at = at.key("loadBalancer");
    let hash_on = match (&lb.hash_on, lb.policy) {
        (None, LbPolicy::RingHash) => {
            errors.at(
                doc,
                &lb_at.key("policy"),
                "ring_hash needs `hashOn: {header: NAME}` or `hashOn: {cookie: NAME}`",
            );
            None
        }
        (Some(_), policy) if policy != LbPolicy::RingHash => {
            errors.at(
                doc,
                &lb_at.key("hashOn"),
                "`hashOn` only applies to `policy: ring_hash`",
            );
            None
        }
        (Some(on), _) => match (&on.header, &on.cookie) {
            (Some(h), None) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => Some(HashKey::Header(name)),
                Err(_) => {
                    errors.at(
                        doc,
                        &lb_at.key("hashOn").key("header"),
                        format!("`{h}` is not a valid header name"),
                    );
                    None
                }
            },
            (None, Some(c)) if !c.is_empty() => Some(HashKey::Cookie(c.clone())),
            _ => {
                errors.at(
                    doc,
                    &lb_at.key("hashOn"),
                    "set exactly one of `header` or `cookie`",
                );
                None
            }
        },
        (None, _) => None,
    };

    if let Some(hc) = &spec.health_check {
        let hc_at = at.key("healthCheck");
        match (&hc.http, &hc.tcp) {
            (Some(http), None) => {
                if !http.path.starts_with('/') {
                    errors.at(doc, &hc_at.key("http").key("path"), "must start with `/`");
                }
            }
            (None, Some(_)) => {}
            _ => errors.at(
                doc,
                &hc_at,
                "set exactly one of `http: {path: /healthz}` or `tcp: {}`",
            ),
        }
        check_positive(errors, doc, &hc_at.key("interval"), hc.interval);
        check_positive(errors, doc, &hc_at.key("timeout"), hc.timeout);
        check_range(
            errors,
            doc,
            &hc_at.key("unhealthyThreshold"),
            hc.unhealthy_threshold,
            1,
            100,
        );
        check_range(
            errors,
            doc,
            &hc_at.key("healthyThreshold"),
            hc.healthy_threshold,
            1,
            100,
        );
        if let (Some(t), Some(i)) = (hc.timeout, hc.interval) {
            if t > i {
                errors.at(
                    doc,
                    &hc_at.key("timeout"),
                    format!("timeout {t} is longer than interval {i}"),
                );
            }
        }
    }
    if let Some(od) = &spec.outlier_detection {
        let od_at = at.key("outlierDetection");
        check_range(
            errors,
            doc,
            &od_at.key("consecutiveErrors"),
            od.consecutive_errors,
            1,
            1000,
        );
        check_positive(errors, doc, &od_at.key("interval"), od.interval);
        check_positive(
            errors,
            doc,
            &od_at.key("baseEjectionTime"),
            od.base_ejection_time,
        );
        check_range(
            errors,
            doc,
            &od_at.key("maxEjectionPercent"),
            od.max_ejection_percent,
            0,
            100,
        );
    }
    if let Some(cb) = &spec.circuit_breaker {
        let cb_at = at.key("circuitBreaker");
        check_range(
            errors,
            doc,
            &cb_at.key("failureThreshold"),
            cb.failure_threshold,
            1,
            10_000,
        );
        check_positive(errors, doc, &cb_at.key("openTimeout"), cb.open_timeout);
        check_range(
            errors,
            doc,
            &cb_at.key("successThreshold"),
            cb.success_threshold,
            1,
            10_000,
        );
        check_range(
            errors,
            doc,
            &cb_at.key("maxConnections"),
            cb.max_connections,
            1,
            u32::MAX,
        );
        check_range(
            errors,
            doc,
            &cb_at.key("maxPendingRequests"),
            cb.max_pending_requests,
            1,
            u32::MAX,
        );
        check_range(
            errors,
            doc,
            &cb_at.key("maxRequests"),
            cb.max_requests,
            1,
            u32::MAX,
        );
    }
    let pool = spec.connection_pool.as_ref();
    if let Some(pool) = pool {
        check_positive(
            errors,
            doc,
            &at.key("connectionPool").key("connectTimeout"),
            pool.connect_timeout,
        );
        check_positive(
            errors,
            doc,
            &at.key("connectionPool").key("idleTimeout"),
            pool.idle_timeout,
        );
    }

    let tls = spec.tls.as_ref().and_then(|tls| {
        // Kubernetes discovery names the peers from the endpoints' pods; with no endpoints
        // (what the control pushes while none is ready) there is no peer to name.
        let peers_named_elsewhere = spec.discovery == Some(Discovery::Kubernetes)
            || (spec.discovery != Some(Discovery::Registry) && spec.endpoints.is_empty());
        compile_tls(doc, &at.key("tls"), tls, peers_named_elsewhere, errors)
    });

    Service {
        name: svc.metadata.name.as_str().into(),
        namespace: svc.metadata.namespace.as_str().into(),
        protocol: spec.protocol,
        endpoints,
        lb_policy: lb.policy,
        hash_on,
        connect_timeout: pool
            .and_then(|p| p.connect_timeout)
            .map_or(Duration::from_secs(5), |d| d.get()),
        max_idle_per_endpoint: pool
            .and_then(|p| p.max_idle_per_endpoint)
            .map_or(64, |n| n as usize),
        pool_idle_timeout: pool
            .and_then(|p| p.idle_timeout)
            .map_or(DEFAULT_POOL_IDLE_TIMEOUT, |d| d.get()),
        health_check: spec.health_check.as_ref().map(|hc| HealthCheck {
            probe: match &hc.http {
                Some(http) => HealthProbe::Http {
                    path: http.path.as_str().into(),
                },
                None => HealthProbe::Tcp,
            },
            interval: hc.interval.map_or(Duration::from_secs(10), |d| d.get()),
            timeout: hc.timeout.map_or(Duration::from_secs(1), |d| d.get()),
            unhealthy_threshold: hc.unhealthy_threshold.unwrap_or(3),
            healthy_threshold: hc.healthy_threshold.unwrap_or(1),
        }),
        outlier_detection: spec.outlier_detection.as_ref().map(|od| OutlierPolicy {
            consecutive_errors: od.consecutive_errors.unwrap_or(5),
            interval: od.interval.map_or(Duration::from_secs(10), |d| d.get()),
            base_ejection_time: od
                .base_ejection_time
                .map_or(Duration::from_secs(30), |d| d.get()),
            max_ejection_percent: od.max_ejection_percent.unwrap_or(10),
        }),
        circuit_breaker: spec.circuit_breaker.as_ref().map(|cb| BreakerPolicy {
            failure_threshold: cb.failure_threshold.unwrap_or(5),
            open_timeout: cb.open_timeout.map_or(Duration::from_secs(5), |d| d.get()),
            success_threshold: cb.success_threshold.unwrap_or(1),
            max_connections: cb.max_connections,
            max_pending_requests: cb.max_pending_requests,
            max_requests: cb.max_requests,
        }),
        tls,
    }
}

/// `spec.tls`: each mode's own fields, and only those. A relative `caFile` is relative to the
/// document's directory; the file itself is read by the proxy (it may live only there).
fn compile_tls(
    doc: &LoadedDoc,
    at: &FieldPath,
    tls: &ServiceTlsSpec,
    peers_named_elsewhere: bool,
    errors: &mut Errors,
) -> Option<ServiceTls> {
    let before = errors.len();
    match tls.mode {
        ServiceTlsMode::Mesh => {
            if tls.identities.is_empty() && !peers_named_elsewhere {
                errors.at(doc, &at.key("identities"), "`mode: mesh` needs the peer identities it accepts, e.g. `identities: [\"spiffe://cluster.local/ns/default/sa/ratings\"]` (or `discovery: kubernetes`, which takes them from the pods' ServiceAccounts)");
            }
            for (i, id) in tls.identities.iter().enumerate() {
                if let Err(why) = check_spiffe_pattern(id) {
                    errors.at(
                        doc,
                        &at.key("identities").index(i),
                        format!("`{id}`: {why}"),
                    );
                }
            }
            for (name, given) in [
                ("sni", tls.sni.is_some()),
                ("caFile", tls.ca_file.is_some()),
            ] {
                if given {
                    errors.at(doc, &at.key(name), format!("`{name}` applies to `mode: simple`; a mesh peer is verified by its identity against the proxy's trust bundle"));
                }
            }
            (errors.len() == before).then(|| ServiceTls::Mesh {
                identities: tls.identities.iter().map(|id| id.as_str().into()).collect(),
            })
        }
        ServiceTlsMode::Simple => {
            if !tls.identities.is_empty() {
                errors.at(doc, &at.key("identities"), "`identities` applies to `mode: mesh`; a `simple` server is verified by `sni` and `caFile`");
            }
            if let Some(sni) = &tls.sni {
                if !is_server_name(sni) {
                    errors.at(
                        doc,
                        &at.key("sni"),
                        format!("`{sni}` is not a DNS name or IP address"),
                    );
                }
            }
            if tls.ca_file.as_ref().is_some_and(|f| f.is_empty()) {
                errors.at(
                    doc,
                    &at.key("caFile"),
                    "is empty; leave it out to use the system roots",
                );
            }
            let base = doc.file.parent().unwrap_or(std::path::Path::new("."));
            (errors.len() == before).then(|| ServiceTls::Simple {
                sni: tls.sni.as_deref().map(Into::into),
                ca_file: tls
                    .ca_file
                    .as_ref()
                    .map_or_else(|| SYSTEM_CA_FILE.into(), |f| base.join(f)),
            })
        }
    }
}

/// An accepted peer identity: `spiffe://TRUST-DOMAIN/PATH`, or a prefix of one ending in `*`.
fn check_spiffe_pattern(id: &str) -> Result<(), &'static str> {
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err("a peer identity is a SPIFFE ID, `spiffe://TRUST-DOMAIN/PATH`");
    };
    let prefix = rest.strip_suffix('*').unwrap_or(rest);
    if prefix.contains('*') {
        return Err("`*` is allowed only at the end (a prefix)");
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err("the trust domain is missing");
    }
    if prefix
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("contains whitespace");
    }
    Ok(())
}

/// `ip:port` (`[v6]:port` for IPv6) or `host:port` with a DNS name and a port above 0.
fn endpoint_address(text: &str) -> Option<EndpointAddress> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Some(EndpointAddress::Ip(address));
    }
    let (name, port) = text.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    // An IP address without its port, or a bare IPv6 one, is not a host name.
    let name = name.trim_end_matches('.');
    (is_server_name(name) && name.parse::<std::net::IpAddr>().is_err() && !name.contains(':')).then(
        || EndpointAddress::Host {
            name: name.to_ascii_lowercase().into(),
            port,
        },
    )
}

/// A DNS name (letters, digits, `-`, dots between labels) or an IP address.
fn is_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

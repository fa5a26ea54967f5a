//! The admin server: `/metrics`, `/ready`, `/live`, `/config`, `/clusters`, and
//! `POST /shutdown` (from loopback only) so a Job's main container can end its sidecar; and
//! the telemetry listener (`spec.telemetry`), the same server limited to `/metrics`, `/ready`
//! and `/live`, for probes and Prometheus on the pod's address while the admin server stays
//! on loopback (as Istio splits its admin port from its stats and health ports).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use strait_config::redact::redacted;
use tokio::net::TcpListener;

use crate::service::endpoint::OutOfRotation;
use crate::shared::Shared;

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// Every admin endpoint (`spec.admin`).
    All,
    /// `/metrics`, `/ready` and `/live`: nothing that shows the config or changes state
    /// (`spec.telemetry`).
    Telemetry,
}

impl Endpoints {
    /// Whether `path` is served.
    fn serves(self, path: &str) -> bool {
        self == Self::All || matches!(path, "/metrics" | "/ready" | "/live")
    }
}

/// Accepts admin connections for the life of the process: while draining, `/ready` answers
/// 503 and `/metrics` stays scrapeable.
pub async fn serve(socket: TcpListener, shared: Arc<Shared>, endpoints: Endpoints) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, peer, shared.clone(), endpoints));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    endpoints: Endpoints,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !endpoints.serves(req.uri().path()) {
        return Ok(text(
            StatusCode::NOT_FOUND,
            "telemetry endpoints: /metrics /ready /live (the rest is on the admin address)\n",
        ));
    }
    if req.uri().path() == "/shutdown" {
        return Ok(shutdown(req.method(), peer, &shared));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render(
                &shared.prometheus,
            ))));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if shared.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/config" => json_response(&config(&shared)),
        "/clusters" => json_response(&clusters(&shared)),
        "/identity" => json_response(&identity(&shared)),
        _ => text(
            StatusCode::NOT_FOUND,
            "admin endpoints: /metrics /ready /live /config /clusters /identity, POST /shutdown\n",
        ),
    })
}

/// `POST /shutdown`: starts the same drain as SIGTERM. Only a process in the pod may ask (the
/// admin port is reachable from the pod network for probes and scrapes): the peer must be on
/// loopback. A Job's container calls it when its work is done, so the Job can complete.
fn shutdown(method: &Method, peer: std::net::SocketAddr, shared: &Shared) -> Response<Full<Bytes>> {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    if !peer.ip().to_canonical().is_loopback() {
        tracing::warn!(client = %peer, "POST /shutdown refused: not from loopback");
        return text(
            StatusCode::FORBIDDEN,
            "shutdown is accepted from loopback only\n",
        );
    }
    tracing::info!(client = %peer, "POST /shutdown: draining");
    shared.shutdown.notify_one();
    text(StatusCode::ACCEPTED, "draining\n")
}

/// `GET /identity`: the proxy's SPIFFE ID, its certificate's serial and validity, and the
/// trust bundle's roots — never the private key.
fn identity(shared: &Shared) -> serde_json::Value {
    use strait_config::snapshot::IdentitySource;
    let source = match shared.config.load().snapshot.proxy.identity {
        Some(IdentitySource::Control { .. }) => Some("control"),
        Some(IdentitySource::Files { .. }) => Some("files"),
        None => None,
    };
    let Some(id) = shared.identity.current() else {
        return serde_json::json!({
            "spiffeId": null,
            "source": source,
            "status": if source.is_some() { "pending" } else { "none" },
        });
    };
    let unix = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let roots: Vec<_> = id
        .bundle
        .iter()
        .map(|der| {
            let parsed = x509_parser::parse_x509_certificate(der)
                .ok()
                .map(|(_, c)| c);
            serde_json::json!({
                "subject": parsed.as_ref().map(|c| c.subject().to_string()),
                "notAfter": parsed.as_ref().map(|c| c.validity().not_after.timestamp()),
                "sha256": crate::identity::fingerprint(der),
            })
        })
        .collect();
    serde_json::json!({
        "spiffeId": &*id.spiffe_id,
        "source": source,
        "status": "active",
        "serial": id.serial,
        "notBefore": httpdate::fmt_http_date(id.not_before),
        "notAfter": httpdate::fmt_http_date(id.not_after),
        "notAfterUnix": unix(id.not_after),
        "renewAt": httpdate::fmt_http_date(id.renew_at()),
        "trustBundle": roots,
    })
}

/// The version users compare across the mesh (Envoy's `version_info`): the control's revision
/// when the config came from a control, so it matches `straitctl proxies`; otherwise the
/// proxy's own counter. The counter is always there as `localVersion`.
pub(crate) fn shown_version(active: &crate::active::Active) -> u64 {
    active.control_version.unwrap_or(active.version)
}

fn config(shared: &Shared) -> serde_json::Value {
    let active = shared.config.load();
    let resources: Vec<_> = active
        .snapshot
        .resources
        .iter()
        .map(|r| redacted(r))
        .collect();
    json!({
        "version": shown_version(&active),
        "localVersion": active.version,
        "source": &*active.source,
        "resources": resources,
    })
}

pub(crate) fn clusters(shared: &Shared) -> serde_json::Value {
    let active = shared.config.load();
    let services: Vec<_> = active
        .snapshot
        .services
        .iter()
        .zip(&active.services)
        .map(|(svc, rt)| {
            let endpoints: Vec<_> = svc
                .endpoints
                .iter()
                .zip(&rt.endpoints)
                .map(|(cfg, ep)| {
                    json!({
                        "address": &*ep.label,
                        "weight": cfg.weight,
                        "available": ep.is_available(),
                        "healthy": !ep.is_out_for(OutOfRotation::Unhealthy),
                        "ejected": ep.is_out_for(OutOfRotation::Ejected),
                        "ejections": ep.outlier.ejections(),
                        "inFlight": ep.in_flight(),
                        "idleConnections": ep.idle_connections(),
                    })
                })
                .collect();
            json!({
                "name": &*svc.name,
                "namespace": &*svc.namespace,
                "protocol": svc.protocol,
                "loadBalancer": svc.lb_policy,
                "healthChecked": svc.health_check.is_some(),
                "circuit": rt.breaker.as_ref().map(|b| {
                    let (requests, pending, connections) = b.load();
                    json!({
                        "state": b.state(),
                        "requests": requests,
                        "pendingRequests": pending,
                        "connections": connections,
                    })
                }),
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({
        "version": shown_version(&active),
        "localVersion": active.version,
        "services": services,
    })
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::Endpoints;

    #[test]
    fn the_telemetry_listener_serves_only_metrics_and_probes() {
        for path in ["/metrics", "/ready", "/live"] {
            assert!(Endpoints::Telemetry.serves(path), "{path}");
        }
        for path in ["/config", "/clusters", "/shutdown", "/", "/metrics/"] {
            assert!(!Endpoints::Telemetry.serves(path), "{path}");
            assert!(Endpoints::All.serves(path), "{path}");
        }
    }
}

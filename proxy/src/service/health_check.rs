//! Active health checks: one task per checked endpoint probes it every `interval` (HTTP `GET
//! path` answered 2xx, or a TCP connect) within `timeout`; `unhealthyThreshold` failures in a
//! row take it out of rotation, `healthyThreshold` successes bring it back.
//!
//! Endpoints start in rotation (a config never begins by refusing traffic). The task lives as
//! long as its [`Checker`] handle: the reloader drops it when the endpoint or the policy goes.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_config::snapshot::{HealthCheck, HealthProbe};
use strait_config::spec::ServiceProtocol;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::endpoint::{Endpoint, OutOfRotation};
use crate::tls::upstream_stream::UpstreamStream;

/// A running health check; dropping it stops the checks.
#[derive(Debug)]
pub struct Checker {
    /// The policy it runs.
    pub check: HealthCheck,
    task: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checking `endpoint` (of a service speaking `protocol`) under `check`. The endpoint
/// is put back in rotation first: a new policy starts from a clean slate.
pub fn start(endpoint: Arc<Endpoint>, protocol: ServiceProtocol, check: HealthCheck) -> Checker {
    endpoint.set_out(OutOfRotation::Unhealthy, false);
    let task = tokio::spawn(run(endpoint, protocol, check.clone()));
    Checker { check, task }
}

async fn run(endpoint: Arc<Endpoint>, protocol: ServiceProtocol, check: HealthCheck) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let (mut failures, mut successes) = (0u32, 0u32);
    loop {
        ticker.tick().await;
        let result =
            match tokio::time::timeout(check.timeout, probe(&endpoint, protocol, &check)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {:?}", check.timeout)),
            };
        let unhealthy = endpoint.is_out_for(OutOfRotation::Unhealthy);
        match result {
            Ok(()) => {
                failures = 0;
                successes = successes.saturating_add(1);
                if unhealthy
                    && successes >= check.healthy_threshold
                    && endpoint.set_out(OutOfRotation::Unhealthy, false)
                {
                    tracing::info!(service = %endpoint.service, endpoint = %endpoint.label, "endpoint healthy");
                    crate::control::publish(
                        "mesh.endpoint.healthy",
                        "normal",
                        || serde_json::json!({"service": &*endpoint.service, "endpoint": &*endpoint.label}),
                    );
                }
            }
            Err(why) => {
                successes = 0;
                failures = failures.saturating_add(1);
                tracing::debug!(service = %endpoint.service, endpoint = %endpoint.label, error = %why, "health check failed");
                if !unhealthy
                    && failures >= check.unhealthy_threshold
                    && endpoint.set_out(OutOfRotation::Unhealthy, true)
                {
                    tracing::warn!(service = %endpoint.service, endpoint = %endpoint.label, error = %why, "endpoint unhealthy");
                    crate::control::publish(
                        "mesh.endpoint.unhealthy",
                        "high",
                        || serde_json::json!({"service": &*endpoint.service, "endpoint": &*endpoint.label, "error": why}),
                    );
                }
            }
        }
    }
}

/// One check: Ok when the endpoint is healthy.
async fn probe(
    endpoint: &Endpoint,
    protocol: ServiceProtocol,
    check: &HealthCheck,
) -> Result<(), String> {
    let stream = endpoint
        .target
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let path = match &check.probe {
        HealthProbe::Tcp => return Ok(()),
        HealthProbe::Http { path } => path,
    };
    let _ = stream.set_nodelay(true);
    // An HTTP check of a TLS service speaks TLS, as requests do.
    let stream = match &endpoint.tls {
        Some(tls) => tls
            .handshake(stream, endpoint, check.timeout)
            .await
            .map_err(|e| e.to_string())?,
        None => UpstreamStream::Plain(stream),
    };
    let io = TokioIo::new(stream);
    let status = match protocol {
        ServiceProtocol::Http2 | ServiceProtocol::Grpc => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let uri = format!("http://{}{}", endpoint.label, path);
            let req = request(&uri, None)?;
            sender.send_request(req).await
        }
        _ => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            let req = request(path, Some(&endpoint.label))?;
            sender.send_request(req).await
        }
    }
    .map_err(|e| format!("request: {e}"))?
    .status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

fn request(uri: &str, host: Option<&str>) -> Result<Request<Empty<Bytes>>, String> {
    let mut req = Request::get(uri).header(header::USER_AGENT, "strait-health-check");
    if let Some(host) = host {
        req = req.header(header::HOST, host);
    }
    req.body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))
}

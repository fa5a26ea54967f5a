//! Request mirroring: a copy of the request goes, fire and forget, to another service. Its
//! answer is read and discarded; its failure or slowness never reaches the caller.
//!
//! As in Envoy, the copy's authority gets a `-shadow` suffix so the shadow can tell copies
//! from real traffic. Only requests whose body is kept in memory (at most
//! [`MAX_MIRRORED_BODY`] bytes, announced by Content-Length) are copied, and at most
//! [`MAX_IN_FLIGHT`] copies are outstanding per proxy, so a slow shadow cannot make the
//! proxy hoard memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use strait_config::snapshot::Service;

use super::body::UpstreamBody;
use super::upstream::{self, Dial};
use crate::active::ServiceRuntime;

/// Largest request body copied to a mirror.
pub const MAX_MIRRORED_BODY: u64 = 64 * 1024;
/// Copies outstanding at once; beyond this, requests are not mirrored.
pub const MAX_IN_FLIGHT: usize = 1024;
/// A copy that has not completed in this long is abandoned.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

struct Outstanding;

impl Drop for Outstanding {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends `head` + `body` to an endpoint of `service` in the background.
pub fn spawn(
    mut head: http::request::Parts,
    body: Bytes,
    service: &Service,
    runtime: &ServiceRuntime,
) {
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= MAX_IN_FLIGHT {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(service = %service.name, "mirror skipped: too many copies in flight");
        return;
    }
    let outstanding = Outstanding;
    let Some(endpoint) = runtime
        .pick(None, None)
        .and_then(|i| runtime.endpoints.get(i))
        .cloned()
    else {
        tracing::debug!(service = %service.name, "mirror skipped: no healthy endpoints");
        return;
    };
    let breaker = runtime.breaker.clone();
    let timeout = service.connect_timeout;
    tokio::spawn(async move {
        let _outstanding = outstanding;
        let _in_flight = endpoint.start_request();
        let dial = Dial {
            timeout,
            limits: breaker.as_ref(),
        };
        let copy = async {
            let head = upstream::Lent {
                head: &mut head,
                forwarding: None,
                last: true,
            };
            let response =
                upstream::send(&endpoint, dial, head, UpstreamBody::Full(Some(body))).await?;
            let status = response.status;
            // Read to the end, so that an HTTP/1 connection goes back to its pool.
            let _ = response.body.collect().await;
            Ok::<_, super::error::ProxyError>(status)
        };
        match tokio::time::timeout(MIRROR_TIMEOUT, copy).await {
            Ok(Ok(status)) => {
                tracing::debug!(endpoint = %endpoint.label, status = status.as_u16(), "mirror answered")
            }
            Ok(Err(e)) => tracing::debug!(endpoint = %endpoint.label, error = %e, "mirror failed"),
            Err(_) => tracing::debug!(endpoint = %endpoint.label, "mirror timed out"),
        }
    });
}

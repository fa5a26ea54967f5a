//! Sending a request to an endpoint over a pooled connection.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::UpstreamBody;
use super::error::ProxyError;
use crate::service::breaker::{Breaker, Slot};
use crate::service::endpoint::{Endpoint, Http1Sender, Http2Sender, Pool, PooledHttp1};

/// Opens a TCP connection to the endpoint within `timeout`.
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(endpoint.address))
        .await
        .map_err(|_| {
            ProxyError::Connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(ProxyError::Connect)?;
    // Latency matters more than packet count for proxied traffic.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// How to open a new connection to an endpoint: the deadline, and the service's limits on
/// pending requests and connections.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    /// Connect timeout.
    pub timeout: Duration,
    /// The service's circuit breaker, whose limits apply.
    pub limits: Option<&'a Arc<Breaker>>,
}

impl Dial<'_> {
    /// Slots for a request waiting on a new connection and for the connection itself; the
    /// first is released once connected, the second lives as long as the connection.
    fn slots(&self) -> Result<(Option<Slot>, Option<Slot>), ProxyError> {
        let Some(breaker) = self.limits else {
            return Ok((None, None));
        };
        let pending = breaker.start_pending()?;
        let connection = breaker.open_connection()?;
        Ok((pending, connection))
    }
}

/// Sends `req` to `endpoint`; on success also returns the HTTP/1 connection to give back to the
/// pool once the response body has been read.
pub async fn send(
    endpoint: &Arc<Endpoint>,
    dial: Dial<'_>,
    req: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Option<PooledHttp1>), ProxyError> {
    match &endpoint.pool {
        Pool::Http1(idle) => {
            let (mut sender, reused) = match checkout(idle).await {
                Some(sender) => (sender, true),
                // Connecting is the rare path: boxed, its future does not widen every
                // request's.
                None => (Box::pin(connect_http1(endpoint, dial)).await?, false),
            };
            let result = match sender.try_send_request(req).await {
                // A pooled connection closed by the upstream before the request went out: the
                // request is intact, so send it on a fresh connection.
                Err(mut e) if reused && e.message().is_some() => {
                    let req = e
                        .take_message()
                        .ok_or(ProxyError::UpstreamReset(e.into_error()))?;
                    sender = Box::pin(connect_http1(endpoint, dial)).await?;
                    sender.send_request(req).await
                }
                other => other.map_err(|e| e.into_error()),
            };
            let resp = result.map_err(classify)?;
            let pooled = PooledHttp1 {
                sender,
                endpoint: endpoint.clone(),
            };
            Ok((resp, Some(pooled)))
        }
        Pool::Http2(shared) => {
            let mut sender = match shared.load_full() {
                Some(s) if !s.is_closed() => (*s).clone(),
                _ => {
                    let s = Box::pin(connect_http2(endpoint, dial)).await?;
                    shared.store(Some(Arc::new(s.clone())));
                    s
                }
            };
            sender.ready().await.map_err(classify)?;
            let resp = sender.send_request(req).await.map_err(classify)?;
            Ok((resp, None))
        }
        Pool::Tcp => Err(ProxyError::Internal("HTTP request routed to a TCP service")),
    }
}

/// Takes an idle connection that is still usable, discarding dead ones.
async fn checkout(idle: &crossbeam_queue::ArrayQueue<Http1Sender>) -> Option<Http1Sender> {
    while let Some(mut sender) = idle.pop() {
        if sender.is_closed() {
            continue;
        }
        if sender.ready().await.is_ok() {
            return Some(sender);
        }
    }
    None
}

async fn connect_http1(endpoint: &Endpoint, dial: Dial<'_>) -> Result<Http1Sender, ProxyError> {
    let (pending, connection) = dial.slots()?;
    let io = TokioIo::new(connect(endpoint, dial.timeout).await?);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(io)
        .await
        .map_err(ProxyError::UpstreamReset)?;
    drop(pending);
    let label = endpoint.label.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(endpoint = %label, error = %e, "upstream connection closed");
        }
        drop(connection);
    });
    Ok(sender)
}

async fn connect_http2(endpoint: &Endpoint, dial: Dial<'_>) -> Result<Http2Sender, ProxyError> {
    let (pending, connection) = dial.slots()?;
    let io = TokioIo::new(connect(endpoint, dial.timeout).await?);
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(io)
        .await
        .map_err(ProxyError::UpstreamReset)?;
    drop(pending);
    let label = endpoint.label.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(endpoint = %label, error = %e, "upstream h2 connection closed");
        }
        drop(connection);
    });
    Ok(sender)
}

/// Splits send errors by side: a failing client body is the client's fault, the rest is the
/// upstream's.
fn classify(e: hyper::Error) -> ProxyError {
    if e.is_user() {
        ProxyError::RequestBody(e)
    } else {
        ProxyError::UpstreamReset(e)
    }
}

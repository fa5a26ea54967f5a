//! Sending a request to an endpoint over a pooled connection.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{BodyError, UpstreamBody, UpstreamResponseBody};
use super::error::ProxyError;
use super::h1;
use super::headers::ClientHeaders;
use super::response::Reply;
use crate::service::breaker::{Breaker, Slot};
use crate::service::endpoint::{Endpoint, Http2Sender, Pool};
use crate::service::idle::IdleStack;
use crate::tls::upstream_stream::UpstreamStream;

/// Opens a TCP connection to the endpoint within `timeout` (for a host-name endpoint, to the
/// address its name last resolved to).
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<TcpStream, ProxyError> {
    let stream = tokio::time::timeout(timeout, endpoint.target.connect())
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

/// Opens a connection to the endpoint, TCP within `timeout`, then the TLS handshake (within
/// `timeout` again) when the service asks for TLS.
pub async fn dial(endpoint: &Endpoint, timeout: Duration) -> Result<UpstreamStream, ProxyError> {
    let tcp = connect(endpoint, timeout).await?;
    match &endpoint.tls {
        None => Ok(UpstreamStream::Plain(tcp)),
        Some(tls) => tls.handshake(tcp, endpoint, timeout).await,
    }
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

/// A request head lent to one attempt. HTTP/1 writes it from where it is; HTTP/2 needs a
/// `Request` of its own, so it takes the head on the last attempt and a copy of it before.
/// (Lent rather than moved: each future on the way down would keep its own 224-byte copy.)
#[derive(Debug)]
pub struct Lent<'a> {
    /// The head, rewritten for the upstream.
    pub head: &'a mut Parts,
    /// Forwarding fields still to add (the head carries none of its own): HTTP/1 writes
    /// their preformatted lines after the head's fields, saving three map insertions.
    pub forwarding: Option<&'a ClientHeaders>,
    /// No attempt follows this one.
    pub last: bool,
}

impl Lent<'_> {
    /// The head to own, with its forwarding fields: taken on the last attempt, copied
    /// before it.
    fn into_owned(self) -> Parts {
        let mut head = if self.last {
            std::mem::replace(self.head, Request::new(()).into_parts().0)
        } else {
            clone_head(self.head)
        };
        if let Some(client) = self.forwarding {
            client.append_to(&mut head.headers);
        }
        head
    }
}

/// A copy of a request head (`Parts` is not `Clone`: its extensions may not be).
/// Extensions are not copied.
pub fn clone_head(head: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}

/// Sends the request to `endpoint` and returns the response once its head has arrived; its
/// body streams from the upstream as it is polled.
pub async fn send(
    endpoint: &Arc<Endpoint>,
    dial: Dial<'_>,
    head: Lent<'_>,
    body: UpstreamBody,
) -> Result<Reply<UpstreamResponseBody>, ProxyError> {
    match &endpoint.pool {
        Pool::Http1(idle) => {
            let extra = head.forwarding.map_or(&[][..], ClientHeaders::lines);
            send_http1(endpoint, idle, dial, head.head, extra, body).await
        }
        Pool::Http2(shared) => {
            let req = Request::from_parts(head.into_owned(), body);
            send_http2(endpoint, shared, dial, req).await
        }
        Pool::Tcp => Err(ProxyError::Internal("HTTP request routed to a TCP service")),
    }
}

/// One exchange on a pooled HTTP/1.1 connection (a new one when none is idle).
async fn send_http1(
    endpoint: &Arc<Endpoint>,
    idle: &IdleStack<h1::Connection>,
    dial: Dial<'_>,
    head: &Parts,
    extra: &[u8],
    body: UpstreamBody,
) -> Result<Reply<UpstreamResponseBody>, ProxyError> {
    let (mut conn, reused) = match checkout(idle) {
        Some(conn) => (conn, true),
        // Connecting is the rare path: boxed, its future does not widen every
        // request's.
        None => (Box::pin(connect_http1(endpoint, dial)).await?, false),
    };
    // A pooled connection the upstream closed while it idled (the race its keep-alive
    // timeout leaves): a request that can be sent again as it was, and whose method
    // makes a second delivery harmless, goes out once more on a fresh connection.
    let mut again = (reused && head.method.is_idempotent())
        .then(|| h1::encode::replayable(&body))
        .flatten();
    let mut sending = body;
    // One `send` call site: each would keep its own future in this one's state.
    let (head, unsent) = loop {
        match (conn.send(head, extra, sending).await, again.take()) {
            (Err(h1::Error::Closed), Some(replay)) => {
                conn = Box::pin(connect_http1(endpoint, dial)).await?;
                sending = replay;
            }
            (answer, _) => break answer?,
        }
    };
    let lease = h1::Lease {
        conn,
        endpoint: endpoint.clone(),
    };
    let body = h1::Body::new(&head, lease, unsent);
    Ok(Reply {
        status: head.status,
        fields: head.fields,
        body: UpstreamResponseBody::Http1(body),
    })
}

/// One stream on the endpoint's shared HTTP/2 connection (opened when there is none).
async fn send_http2(
    endpoint: &Arc<Endpoint>,
    shared: &arc_swap::ArcSwapOption<Http2Sender>,
    dial: Dial<'_>,
    req: Request<UpstreamBody>,
) -> Result<Reply<UpstreamResponseBody>, ProxyError> {
    let mut sender = match shared.load_full() {
        Some(s) if !s.is_closed() => (*s).clone(),
        _ => {
            let s = Box::pin(connect_http2(endpoint, dial)).await?;
            shared.store(Some(Arc::new(s.clone())));
            s
        }
    };
    endpoint.note_http2_use();
    sender.ready().await.map_err(classify)?;
    let resp = sender.send_request(req).await.map_err(classify)?;
    Ok(Reply::from(resp.map(UpstreamResponseBody::Http2)))
}

/// Takes an idle connection that is still usable, closing dead ones.
fn checkout(idle: &IdleStack<h1::Connection>) -> Option<Box<h1::Connection>> {
    while let Some(mut conn) = idle.pop() {
        if conn.is_reusable() {
            return Some(conn);
        }
    }
    None
}

async fn connect_http1(
    endpoint: &Endpoint,
    dial: Dial<'_>,
) -> Result<Box<h1::Connection>, ProxyError> {
    let (pending, connection) = dial.slots()?;
    let stream = self::dial(endpoint, dial.timeout).await?;
    drop(pending);
    Ok(h1::Connection::new(stream, connection))
}

async fn connect_http2(endpoint: &Endpoint, dial: Dial<'_>) -> Result<Http2Sender, ProxyError> {
    let (pending, connection) = dial.slots()?;
    let io = TokioIo::new(self::dial(endpoint, dial.timeout).await?);
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(io)
        .await
        .map_err(|e| ProxyError::UpstreamReset(e.into()))?;
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
    if !e.is_user() {
        return ProxyError::UpstreamReset(e.into());
    }
    // The client's body failed as hyper sent it: a stall keeps its own answer (408).
    let stalled = std::error::Error::source(&e)
        .and_then(|cause| cause.downcast_ref::<BodyError>())
        .and_then(|cause| match cause {
            BodyError::Stalled(after) => Some(*after),
            _ => None,
        });
    match stalled {
        Some(after) => ProxyError::RequestBody(BodyError::Stalled(after)),
        None => ProxyError::RequestBody(BodyError::Http2(e)),
    }
}

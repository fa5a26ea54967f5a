//! Serving one downstream HTTP connection: plain HTTP/1.1 requests on the fast path
//! ([`h1::serve`]), then — from the first request it leaves, or the first bytes when they are
//! HTTP/2's preface — hyper's server, with the configured limits and graceful shutdown on drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use strait_config::snapshot::ProxySettings;
use tokio::net::TcpStream;

use super::body::ClientBody;
use super::h1;
use super::headers::ClientHeaders;
use super::pipeline::{handle, Conn};
use crate::intercept::passthrough::OriginalDestination;
use crate::shared::{ConnToken, Shared};

/// Serves `stream` until the client closes or draining finishes it. `original` is where an
/// intercepted connection was going (requests no route claims are passed through to it).
///
/// The connection is set up before the returned future is first polled, which then holds
/// only what serving needs: this future is most of every idle connection's memory.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    token: ConnToken,
    original: Option<OriginalDestination>,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    let late = shared.drain.is_draining();
    let fast = {
        let limits = &shared.config.load().snapshot.proxy;
        h1::serve::Limits {
            header_read_timeout: limits.header_read_timeout,
            max_head: max_buf_size(limits),
        }
    };
    let conn = Arc::new(Conn {
        client: ClientHeaders::of(peer.ip()),
        listener,
        peer,
        shared,
        original,
    });
    // A combinator, not one `async` block around both parts: the block would keep the
    // arguments of the fast path beside the fast path's own copies, and room for its outcome.
    h1::serve::serve(stream, conn.clone(), fast, late).then(move |outcome| async move {
        if let h1::serve::Outcome::Handoff { read, stream } = outcome {
            // The limits in force now: the fast path may have served for a while, through
            // reloads.
            let limits = conn.shared.config.load().snapshot.proxy.clone();
            // Boxed: hyper's connection state would otherwise widen every connection's task,
            // most of which never leave the fast path.
            let io = TokioIo::new(h1::serve::Rewound::new(read.freeze(), stream));
            Box::pin(serve_with_hyper(io, conn, &limits, late)).await;
        }
        // Held to here: the drain waits for every connection's token.
        drop(token);
    })
}

/// The most a connection buffers of a request's head: twice the configured header limit, so
/// that our 431 (with a reason) answers before hyper's own limit is reached.
fn max_buf_size(limits: &ProxySettings) -> usize {
    (limits.max_header_bytes * 2).max(16 * 1024)
}

/// hyper's server, from where the fast path left the connection to its end.
async fn serve_with_hyper(
    io: TokioIo<h1::serve::Rewound>,
    conn: Arc<Conn>,
    limits: &ProxySettings,
    late: bool,
) {
    let max_buf_size = max_buf_size(limits);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit above ours so that our 431 (with a reason) answers first.
    builder
        .http1()
        .timer(TokioTimer::new())
        // The slowloris guard, which also closes idle keep-alive connections.
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(max_buf_size)
        .max_headers(limits.max_headers * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    let state = conn.shared.clone();
    let (listener, peer) = (conn.listener.clone(), conn.peer);
    // Accepted while draining (an outbound listener keeps accepting so the app can still call
    // out): serve one request and close, rather than shut down a connection whose request has
    // not been read yet.
    if late {
        builder.http1().keep_alive(false);
    }
    let service = service_fn(move |req: Request<Incoming>| {
        let version = req.version();
        let reply = handle(req.map(ClientBody::Streamed), conn.clone());
        async move { Ok::<_, Infallible>(reply.await.into_http(version)) }
    });
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = state.drain.drained(), if !late => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = %listener, client = %peer, error = %e, "connection ended with error");
    }
}

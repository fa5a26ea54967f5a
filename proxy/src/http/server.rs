//! Serving one downstream HTTP connection: HTTP/1.1 or h2c prior knowledge, detected from the
//! first bytes, with the configured limits and graceful shutdown on drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

use super::headers::ClientHeaders;
use super::pipeline::{handle, Conn};
use crate::intercept::passthrough::OriginalDestination;
use crate::shared::{draining, until_drain, ConnToken, Shared};

/// Serves `stream` until the client closes or draining finishes it. `original` is where an
/// intercepted connection was going (requests no route claims are passed through to it).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    _token: ConnToken,
    original: Option<OriginalDestination>,
) {
    let _ = stream.set_nodelay(true);
    let limits = shared.config.load().snapshot.proxy.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own limits sit above ours so that our 431 (with a reason) answers first.
    builder
        .http1()
        .timer(TokioTimer::new())
        // The slowloris guard, which also closes idle keep-alive connections.
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size((limits.max_header_bytes * 2).max(16 * 1024))
        .max_headers(limits.max_headers * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    let mut drain = shared.drain.watch();
    let state = shared.clone();
    // Accepted while draining (an outbound listener keeps accepting so the app can still call
    // out): serve one request and close, rather than shut down a connection whose request has
    // not been read yet.
    let late = shared.drain.is_draining();
    if late {
        builder.http1().keep_alive(false);
    }
    let conn = Arc::new(Conn {
        client: ClientHeaders::new(peer.ip()),
        listener: listener.clone(),
        peer,
        shared,
        original,
    });
    let service = service_fn(move |req| handle(req, conn.clone()));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = until_drain(&state.drain, draining(&mut drain)), if !late => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = %listener, client = %peer, error = %e, "connection ended with error");
    }
}

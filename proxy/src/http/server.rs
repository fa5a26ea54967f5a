//! Serving one downstream HTTP connection, plaintext or TLS: HTTP/1 by Strait's own server
//! ([`h1::serve`]) from the first byte to the close; a connection that opens with HTTP/2's
//! preface, or whose TLS handshake chose `h2` by ALPN, goes to hyper's HTTP/2 server, with the
//! configured limits and graceful shutdown on drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_config::snapshot::ProxySettings;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::body::ClientBody;
use super::h1;
use super::h1::downstream::Downstream;
use super::h2_preface;
use super::headers::{ClientHeaders, Proto};
use super::pipeline::{handle, Conn};
use crate::intercept::passthrough::OriginalDestination;
use crate::shared::{ConnToken, Shared};

/// Serves plaintext `stream` until the client closes or draining finishes it. `original` is
/// where an intercepted connection was going (requests no route claims are passed through to
/// it).
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
    let client = Client {
        peer,
        identity: None,
        h2: false,
        tls: false,
    };
    serve_downstream(
        Downstream::Plain(stream),
        client,
        listener,
        shared,
        token,
        original,
    )
}

/// Who the client is, as the connection's TLS (if any) says.
#[derive(Debug)]
pub struct Client {
    /// Its address.
    pub peer: SocketAddr,
    /// Its SPIFFE ID, when it authenticated with mTLS.
    pub identity: Option<Arc<str>>,
    /// TLS's ALPN chose HTTP/2.
    pub h2: bool,
    /// It spoke TLS (the app is told `https`).
    pub tls: bool,
}

/// Serves a connection a TLS listener accepted, as [`serve`] does a plaintext one.
pub async fn serve_tls(
    stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
    client: Client,
    listener: Arc<str>,
    shared: Arc<Shared>,
    token: ConnToken,
    original: Option<OriginalDestination>,
) {
    let _ = stream.get_ref().0.set_nodelay(true);
    if client.h2 {
        let conn = connection(&client, listener, shared, original);
        // Boxed: hyper's connection state would otherwise widen the task of every TLS
        // connection, most of which are HTTP/1.
        Box::pin(serve_tls_http2(*stream, conn)).await;
        drop(token);
        return;
    }
    serve_downstream(
        Downstream::tls(stream),
        client,
        listener,
        shared,
        token,
        original,
    )
    .await;
}

/// Serves a TLS connection whose handshake chose `h2`, once it opened with HTTP/2's preface.
async fn serve_tls_http2(mut stream: tokio_rustls::server::TlsStream<TcpStream>, conn: Arc<Conn>) {
    let limits = conn.shared.config.load().snapshot.proxy.clone();
    let late = conn.shared.drain.is_draining();
    // A connection still to send its preface closes on drain, as an idle HTTP/1 one does.
    let read = tokio::select! {
        read = h2_preface::read(&mut stream, limits.header_read_timeout) => read,
        () = conn.shared.drain.drained(), if !late => None,
    };
    let Some(read) = read else {
        return;
    };
    let io = TokioIo::new(h1::serve::Rewound::new(read.freeze(), stream));
    serve_http2(io, conn, &limits, late).await;
}

/// The connection's state as requests see it.
fn connection(
    client: &Client,
    listener: Arc<str>,
    shared: Arc<Shared>,
    original: Option<OriginalDestination>,
) -> Arc<Conn> {
    let client_id = client
        .identity
        .as_deref()
        .and_then(|id| http::HeaderValue::from_str(id).ok())
        .map(Box::new);
    Arc::new(Conn {
        client: ClientHeaders::of(
            client.peer.ip(),
            if client.tls {
                Proto::Https
            } else {
                Proto::Http
            },
        ),
        listener,
        peer: client.peer,
        shared,
        original,
        peer_identity: client.identity.clone(),
        client_id,
    })
}

fn serve_downstream(
    stream: Downstream,
    client: Client,
    listener: Arc<str>,
    shared: Arc<Shared>,
    token: ConnToken,
    original: Option<OriginalDestination>,
) -> impl Future<Output = ()> + Send + 'static {
    let late = shared.drain.is_draining();
    let limits = {
        let settings = &shared.config.load().snapshot.proxy;
        h1::serve::Limits::new(
            settings.header_read_timeout,
            max_head(settings),
            settings.max_headers,
            settings.body_read_timeout,
        )
    };
    let conn = connection(&client, listener, shared, original);
    // A combinator, not one `async` block around both parts: the block would keep the
    // arguments of the HTTP/1 server beside its own copies, and room for its outcome.
    h1::serve::serve(stream, conn, limits, late).then(move |outcome| async move {
        if let h1::serve::Outcome::Http2(handoff) = outcome {
            // Boxed: hyper's connection state would otherwise widen every connection's task,
            // most of which are HTTP/1.
            Box::pin(serve_handed_off(handoff)).await;
        }
        // Held to here: the drain waits for every connection's token.
        drop(token);
    })
}

/// Serves over HTTP/2 a connection the HTTP/1 server found opening with HTTP/2's preface.
async fn serve_handed_off(handoff: h1::serve::Handoff) {
    let h1::serve::Handoff {
        read,
        stream,
        conn,
        late,
    } = handoff;
    // The limits in force now: the connection may have waited through reloads.
    let limits = conn.shared.config.load().snapshot.proxy.clone();
    match stream {
        Downstream::Plain(stream) => {
            let io = TokioIo::new(h1::serve::Rewound::new(read.freeze(), stream));
            serve_http2(io, conn, &limits, late).await;
        }
        tls => {
            let io = TokioIo::new(h1::serve::Rewound::new(read.freeze(), tls));
            serve_http2(io, conn, &limits, late).await;
        }
    }
}

/// The most a connection buffers of a request's head before answering 431: the configured
/// header bytes, with room for the request line and the fields' separators.
fn max_head(limits: &ProxySettings) -> usize {
    (limits.max_header_bytes * 2).max(16 * 1024)
}

/// hyper's HTTP/2 server, from the connection's preface to its end.
async fn serve_http2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: TokioIo<S>,
    conn: Arc<Conn>,
    limits: &ProxySettings,
    late: bool,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    // hyper's own limit sits above ours so that our 431 (with a reason) answers first.
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    let state = conn.shared.clone();
    let (listener, peer) = (conn.listener.clone(), conn.peer);
    let stall = limits.body_read_timeout;
    let service = service_fn(move |req: Request<Incoming>| {
        let version = req.version();
        let reply = handle(req.map(|body| ClientBody::http2(body, stall)), conn.clone());
        async move { Ok::<_, Infallible>(reply.await.into_http(version)) }
    });
    let connection = builder.serve_connection(io, service);
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

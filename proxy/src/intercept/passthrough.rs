//! Passing intercepted traffic through to where it was going: what no route claims on an
//! intercepting listener reaches its original destination unchanged (no route is not a 404
//! for a pod's own traffic).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};
use tokio::net::TcpStream;

use crate::http::body::{ClientBody, ResponseBody, UpstreamBody};
use crate::http::error::ProxyError;
use crate::http::headers::{strip_hop_by_hop, wants_upgrade, CLIENT_ID_HEADER};
use crate::http::pipeline::for_client;
use crate::http::response::Reply;
use crate::http::upstream::{self, Dial};
use crate::metrics::TCP_CONNECTIONS;
use crate::service::endpoint::{Endpoint, Pool};
use crate::service::idle::IdleStack;

/// How long connecting to an original destination may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a passed-through TCP connection may stay silent both ways.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// The `service` label of passed-through requests.
pub const SERVICE: &str = "passthrough";
/// Idle upstream HTTP/1 connections kept per intercepted connection.
const IDLE_PER_CONNECTION: usize = 4;

/// The original destination of one intercepted connection, with a connection pool of its own
/// (created on first use: HTTP/2 when the client speaks HTTP/2, HTTP/1.1 otherwise).
#[derive(Debug)]
pub struct OriginalDestination {
    /// Where the connection was going.
    pub address: SocketAddr,
    endpoint: OnceLock<Arc<Endpoint>>,
}

impl OriginalDestination {
    /// The destination `address`, nothing connected yet.
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            endpoint: OnceLock::new(),
        }
    }

    fn endpoint(&self, http2: bool) -> &Arc<Endpoint> {
        self.endpoint.get_or_init(|| {
            let pool = if http2 {
                Pool::Http2(Default::default())
            } else {
                Pool::Http1(IdleStack::new(IDLE_PER_CONNECTION))
            };
            Arc::new(Endpoint::unlisted(SERVICE, self.address, pool))
        })
    }
}

/// Sends `req` to the original destination as it is (hop-by-hop headers aside, and
/// `x-strait-client-id` saying who the peer is: `client_id` when it came over mTLS, nobody
/// otherwise) and streams the answer back. Returns the endpoint label for the access log.
pub async fn http(
    req: Request<ClientBody>,
    authority: Authority,
    original: &OriginalDestination,
    client_id: Option<&HeaderValue>,
) -> Result<(Reply<ResponseBody>, Arc<str>), ProxyError> {
    let downstream_version = req.version();
    let http2 = downstream_version == Version::HTTP_2;
    let upgrade = downstream_version == Version::HTTP_11 && wants_upgrade(req.headers());
    let (mut parts, body) = req.into_parts();
    if parts.headers.contains_key(TRANSFER_ENCODING) {
        // RFC 9112 §6.3: never forward both.
        parts.headers.remove(CONTENT_LENGTH);
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // Only the proxy says who the peer is.
    parts.headers.remove(&CLIENT_ID_HEADER);
    if let Some(id) = client_id {
        parts.headers.insert(&CLIENT_ID_HEADER, id.clone());
    }
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if http2 {
        parts.headers.remove(HOST);
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadRequest("request target"))?;
    } else {
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(HOST) {
            let value = HeaderValue::from_str(authority.as_str())
                .map_err(|_| ProxyError::BadRequest("authority"))?;
            parts.headers.insert(HOST, value);
        }
        parts.uri = Uri::from(path);
    }
    let endpoint = original.endpoint(http2);
    let in_flight = endpoint.start_request();
    let dial = Dial {
        timeout: CONNECT_TIMEOUT,
        limits: None,
    };
    let head = upstream::Lent {
        head: &mut parts,
        forwarding: None,
        last: true,
    };
    let response = upstream::send(endpoint, dial, head, UpstreamBody::Streamed(body)).await?;
    let Reply {
        status,
        fields,
        body: inner,
    } = for_client(response, upgrade);
    let body = ResponseBody::Upstream {
        inner,
        in_flight: Some(in_flight),
        slot: None,
    };
    let reply = Reply {
        status,
        fields,
        body,
    };
    Ok((reply, endpoint.label.clone()))
}

/// Copies an opaque TCP connection to its original destination and back.
pub async fn tcp(client: TcpStream, peer: SocketAddr, destination: SocketAddr, listener: Arc<str>) {
    let Some(upstream) = connect(peer, destination, &listener).await else {
        return;
    };
    let result = crate::tcp::splice(client, upstream, TCP_IDLE_TIMEOUT, &listener).await;
    tracing::debug!(listener = %listener, client = %peer, endpoint = %destination, result = ?result, "passthrough connection closed");
}

/// Copies an opaque connection whose TLS ended here (an mTLS peer's TCP) to its original
/// destination, in plaintext, and back.
pub async fn tls(
    client: Box<tokio_rustls::server::TlsStream<TcpStream>>,
    identity: Option<Arc<str>>,
    peer: SocketAddr,
    destination: SocketAddr,
    listener: Arc<str>,
) {
    let Some(upstream) = connect(peer, destination, &listener).await else {
        return;
    };
    let result = crate::tcp::relay_buffered(*client, upstream, TCP_IDLE_TIMEOUT, &listener).await;
    tracing::debug!(
        listener = %listener,
        client = %peer,
        client_id = identity.as_deref().unwrap_or("-"),
        endpoint = %destination,
        result = ?result,
        "passthrough connection closed"
    );
}

/// Counts the connection and connects to its original destination (logged when it cannot).
async fn connect(
    peer: SocketAddr,
    destination: SocketAddr,
    listener: &Arc<str>,
) -> Option<TcpStream> {
    metrics::counter!(TCP_CONNECTIONS, "listener" => listener.clone()).increment(1);
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Some(stream)
        }
        Ok(Err(e)) => {
            tracing::warn!(listener = %listener, client = %peer, endpoint = %destination, error = %e, "passthrough connect failed");
            None
        }
        Err(_) => {
            tracing::warn!(listener = %listener, client = %peer, endpoint = %destination, "passthrough connect timed out");
            None
        }
    }
}

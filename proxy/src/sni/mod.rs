//! TLS passthrough routed by SNI: on a listener with TLSRoutes, a connection's ClientHello is
//! peeked at (not consumed), its server name picks the route, and the connection's bytes —
//! the ClientHello first — go to the route's service untouched: the proxy terminates nothing,
//! so the client verifies the upstream's own certificate end to end.
//!
//! ```text
//! accept ─▶ peek ClientHello (first byte within the sniff time, all of it within
//!           limits.headerReadTimeout; at most 16 KiB)
//!    SNI claimed by a TLSRoute ─▶ authorize ─▶ weighted service ─▶ endpoint ─▶ splice
//!    no TLS, no SNI, SNI unclaimed ─▶ what the listener does without TLSRoutes
//!                                     (its TCPRoute; the original destination; close)
//!    malformed, too large, too slow ─▶ close
//! ```

pub mod client_hello;
pub mod peek;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_config::snapshot::TlsRoute;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::active::Active;
use crate::intercept::passthrough;
use crate::intercept::sniff::SNIFF_TIMEOUT;
use crate::metrics::{TCP_CONNECTIONS, TLS_PASSTHROUGH};
use crate::shared::{ConnToken, Shared};
use crate::tcp::TcpClient;
use crate::tls::upstream_stream::UpstreamStream;
use peek::Peeked;

/// How long a connection routed by SNI may stay silent both ways (as a TCPRoute's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where a connection goes that no TLSRoute claims: what the listener does without them.
#[derive(Debug, Clone, Copy)]
pub enum Otherwise {
    /// The listener's TCPRoute (closed without one).
    TcpRoute,
    /// An intercepted connection's original destination.
    OriginalDestination(SocketAddr),
    /// Closed (an intercepting HTTP listener's connection that was not redirected).
    Close,
}

/// Whether the listener called `name` has TLSRoutes in the config being served.
pub fn routes_by_sni(shared: &Shared, name: &str) -> bool {
    shared
        .config
        .load()
        .listener(name)
        .is_some_and(|(_, l)| l.tls_routes.is_some())
}

/// Serves one connection on a listener with TLSRoutes. `sniffed`: the interception sniffer
/// has already waited for the first byte (so a silent client is not waited for twice).
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    token: ConnToken,
    otherwise: Otherwise,
    sniffed: bool,
) {
    let within = shared.config.load().snapshot.proxy.header_read_timeout;
    let first_byte_within = if sniffed {
        Duration::ZERO
    } else {
        SNIFF_TIMEOUT
    };
    let server_name = match peek::client_hello(&stream, first_byte_within, within).await {
        Peeked::Hello(name) => name,
        Peeked::NotTls => None,
        Peeked::Refused(why) => {
            tracing::debug!(listener = %listener, client = %peer, reason = why, "ClientHello refused; closing");
            return;
        }
    };
    // The version in force once the ClientHello is in: a reload switches new connections.
    let active = shared.config.load_full();
    let Some((_, l)) = active.listener(&listener) else {
        return;
    };
    let route = server_name
        .as_deref()
        .and_then(|name| l.tls_routes.as_ref()?.find(name))
        .cloned();
    let passthrough = match (route, otherwise) {
        (Some(route), _) => Target::Route(route),
        (None, Otherwise::OriginalDestination(address)) => Target::Original(address),
        (None, Otherwise::TcpRoute) => {
            drop(active);
            tracing::debug!(listener = %listener, client = %peer, sni = server_name.as_deref().unwrap_or("-"), "no TLSRoute claims the server name; to the TCPRoute");
            let client = TcpClient::Plain(stream);
            return crate::tcp::serve_client(client, peer, listener, shared, token).await;
        }
        (None, Otherwise::Close) => {
            tracing::debug!(listener = %listener, client = %peer, sni = server_name.as_deref().unwrap_or("-"), "no TLSRoute claims the server name and not redirected; closing");
            return;
        }
    };
    if !crate::authz::admit_connection(l, None, &active.authz) {
        tracing::debug!(listener = %listener, client = %peer, "denied by authorization policy; closing");
        return;
    }
    let connection = Connection {
        peer,
        listener,
        server_name,
        access_log: active.snapshot.proxy.access_log,
    };
    connection.pass_through(stream, active, passthrough).await;
    drop(token);
}

/// Where a connection's bytes go.
enum Target {
    /// The service a TLSRoute picks.
    Route(Arc<TlsRoute>),
    /// Where it was going (intercepted, no route claims it).
    Original(SocketAddr),
}

/// What the access log says of a connection.
struct Connection {
    peer: SocketAddr,
    listener: Arc<str>,
    server_name: Option<Box<str>>,
    access_log: bool,
}

impl Connection {
    /// Dials the target and relays both ways until done; logs the connection.
    async fn pass_through(self, client: TcpStream, active: Arc<Active>, target: Target) {
        let listener = &self.listener;
        // The labels: route, service, endpoint.
        let (route, service, endpoint, picked) = match target {
            Target::Route(route) => {
                let Some(picked) = crate::tcp::pick(&active, &route.backends, listener) else {
                    return;
                };
                let (service, endpoint) = (picked.service.clone(), picked.endpoint.label.clone());
                (route.name.clone(), service, endpoint, Ok(picked))
            }
            Target::Original(address) => (
                Arc::from(""),
                Arc::from(passthrough::SERVICE),
                Arc::from(address.to_string()),
                Err(address),
            ),
        };
        // Hold no config version for the life of a long connection.
        drop(active);
        metrics::counter!(TCP_CONNECTIONS, "listener" => listener.clone()).increment(1);
        metrics::counter!(TLS_PASSTHROUGH, "listener" => listener.clone(), "route" => route.clone(), "service" => service.clone()).increment(1);
        let started = Instant::now();
        let _in_flight = picked.as_ref().ok().map(|p| p.endpoint.start_request());
        let dialled = match &picked {
            Ok(p) => crate::http::upstream::dial(&p.endpoint, p.connect_timeout)
                .await
                .map_err(|e| e.to_string()),
            Err(address) => dial_original(*address).await,
        };
        let upstream = match dialled {
            Ok(upstream) => upstream,
            Err(e) => {
                tracing::warn!(listener = %listener, client = %self.peer, endpoint = %endpoint, error = %e, "TLS passthrough connect failed");
                return;
            }
        };
        let client = TcpClient::Plain(client);
        let (result, _) = crate::tcp::relay_client(client, upstream, IDLE_TIMEOUT, listener).await;
        let (to_upstream, to_client) = result.as_ref().map_or((0, 0), |&(up, down)| (up, down));
        if self.access_log {
            tracing::info!(
                target: "strait::access",
                listener = %listener,
                client = %self.peer,
                sni = self.server_name.as_deref().unwrap_or("-"),
                route = if route.is_empty() { "-" } else { &*route },
                service = %service,
                endpoint = %endpoint,
                bytes_to_upstream = to_upstream,
                bytes_to_client = to_client,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "tls passthrough"
            );
        }
        if let Err(e) = result {
            tracing::debug!(listener = %listener, client = %self.peer, error = %e, "TLS passthrough connection ended");
        }
    }
}

/// Connects to an intercepted connection's original destination.
async fn dial_original(address: SocketAddr) -> Result<UpstreamStream, String> {
    match tokio::time::timeout(passthrough::CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(UpstreamStream::Plain(stream))
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".to_owned()),
    }
}

//! Transparent interception: the pod's traffic, redirected by `strait-proxy init-iptables`,
//! arrives on `mode: inbound` / `mode: outbound` listeners.
//!
//! ```text
//! accept ─▶ original destination (SO_ORIGINAL_DST) ─▶ sniff first bytes
//!    http listener:  HTTP ─▶ http::server (route by Host; no route ─▶ passthrough::http)
//!                    other ─▶ passthrough::tcp (to the original destination)
//!    tcp listener:   TCPRoute attached ─▶ tcp::serve;  none ─▶ passthrough::tcp
//!    with TLSRoutes: TLS (and opaque bytes) ─▶ sni::serve: the ClientHello's server name
//!                    picks a TLSRoute; unclaimed ─▶ as above
//!    (opaque connections the listener's authorization policies deny are closed)
//! ```
//!
//! A connection that was not redirected (someone dialled the listener itself) has no original
//! destination: it is served like an explicit listener's (no passthrough, so no loop).

pub mod iptables;
pub mod orig_dst;
pub mod passthrough;
pub mod sniff;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::future::Either;
use futures_util::FutureExt;
use strait_config::snapshot::Serves;
use strait_config::spec::ListenerProtocol;
use tokio::net::TcpStream;

use crate::shared::{ConnToken, Shared};
use crate::sni::Otherwise;
use passthrough::OriginalDestination;
use sniff::Sniffed;

/// Serves one connection accepted on an intercepting listener.
///
/// Sniffing and what follows are chained with `then` rather than written as one `async`
/// block, which would keep the connection's parts (socket, peer, names: ~100 bytes) beside
/// the HTTP server's own copies for the connection's whole life; this future is most of every
/// intercepted connection's task. The opaque and TCP paths are boxed (once per opaque
/// connection, which dials one anyway) so that their larger state does not size every
/// intercepted HTTP connection's task.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    protocol: ListenerProtocol,
    shared: Arc<Shared>,
    token: ConnToken,
) -> impl Future<Output = ()> + Send + 'static {
    let original = orig_dst::original_destination(&stream);
    match protocol {
        ListenerProtocol::Http => {
            let sniffed = async move {
                let verdict = sniff::sniff(&stream).await;
                (verdict, stream)
            };
            Either::Left(sniffed.then(move |(verdict, stream)| match (verdict, original) {
                (Sniffed::Http, original) => {
                    let original = original.map(OriginalDestination::new);
                    Either::Left(crate::http::server::serve(
                        stream, peer, listener, shared, token, original,
                    ))
                }
                // Authorized by the TLSRoute path itself, once it knows where the bytes go.
                (Sniffed::Opaque, original) if crate::sni::routes_by_sni(&shared, &listener) => {
                    let otherwise = original.map_or(Otherwise::Close, Otherwise::OriginalDestination);
                    Either::Right(boxed(crate::sni::serve(
                        stream, peer, listener, shared, token, otherwise, true,
                    )))
                }
                (Sniffed::Opaque, Some(_)) if !admitted(&shared, &listener, None) => {
                    tracing::debug!(listener = %listener, client = %peer, "denied by authorization policy; closing");
                    Either::Right(rare(std::future::ready(()), token))
                }
                (Sniffed::Opaque, Some(destination)) => Either::Right(rare(
                    passthrough::tcp(stream, peer, destination, listener),
                    token,
                )),
                (Sniffed::Opaque, None) => {
                    tracing::debug!(listener = %listener, client = %peer, "not HTTP and not redirected; closing");
                    Either::Right(rare(std::future::ready(()), token))
                }
            }))
        }
        ListenerProtocol::Tcp => {
            let (routed, by_sni) =
                shared
                    .config
                    .load()
                    .listener(&listener)
                    .map_or((false, false), |(_, l)| {
                        let routed = matches!(l.serves, Serves::Tcp(Some(_)));
                        (routed, l.tls_routes.is_some())
                    });
            Either::Right(match (routed, original) {
                (routed, original) if by_sni => {
                    let otherwise = match original {
                        Some(destination) if !routed => Otherwise::OriginalDestination(destination),
                        _ => Otherwise::TcpRoute,
                    };
                    boxed(crate::sni::serve(
                        stream, peer, listener, shared, token, otherwise, false,
                    ))
                }
                (false, Some(_)) if !admitted(&shared, &listener, None) => {
                    tracing::debug!(listener = %listener, client = %peer, "denied by authorization policy; closing");
                    rare(std::future::ready(()), token)
                }
                (false, Some(destination)) => {
                    rare(passthrough::tcp(stream, peer, destination, listener), token)
                }
                // tcp::serve holds the token itself.
                _ => Box::pin(crate::tcp::serve(stream, peer, listener, shared, token)),
            })
        }
    }
}

/// Whether the listener's authorization policies let an opaque connection pass through (it
/// shows no method or path; `identity`: the client's SPIFFE ID, when it came over mTLS).
pub(crate) fn admitted(shared: &Shared, listener: &str, identity: Option<&str>) -> bool {
    let active = shared.config.load();
    active
        .listener(listener)
        .is_none_or(|(_, l)| crate::authz::admit_connection(l, identity, &active.authz))
}

/// A connection's path on the heap (it holds the connection's token itself).
fn boxed(
    path: impl Future<Output = ()> + Send + 'static,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(path)
}

/// A connection's path that few connections take, on the heap, holding the connection's
/// token (which the drain waits for) until it ends.
fn rare(
    path: impl Future<Output = ()> + Send + 'static,
    token: ConnToken,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(path.map(move |()| drop(token)))
}

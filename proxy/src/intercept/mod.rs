//! Transparent interception: the pod's traffic, redirected by `strait-proxy init-iptables`,
//! arrives on `mode: inbound` / `mode: outbound` listeners.
//!
//! ```text
//! accept ─▶ original destination (SO_ORIGINAL_DST) ─▶ sniff first bytes
//!    http listener:  HTTP ─▶ http::server (route by Host; no route ─▶ passthrough::http)
//!                    other ─▶ passthrough::tcp (to the original destination)
//!    tcp listener:   TCPRoute attached ─▶ tcp::serve;  none ─▶ passthrough::tcp
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
use std::sync::Arc;

use strait_config::snapshot::Serves;
use strait_config::spec::ListenerProtocol;
use tokio::net::TcpStream;

use crate::shared::{ConnToken, Shared};
use passthrough::OriginalDestination;
use sniff::Sniffed;

/// Serves one connection accepted on an intercepting listener.
///
/// An `async` block rather than an `async fn`: an async fn keeps its arguments twice in its
/// state (as taken and as rebound), and this future is most of every connection's task. The
/// TCP paths are boxed (once per opaque connection, which dials one anyway) so that their
/// larger state does not size every intercepted HTTP connection's task.
#[allow(clippy::manual_async_fn)]
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    protocol: ListenerProtocol,
    shared: Arc<Shared>,
    token: ConnToken,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let original = orig_dst::original_destination(&stream);
        match protocol {
            ListenerProtocol::Http => match (sniff::sniff(&stream).await, original) {
                (Sniffed::Http, original) => {
                    let original = original.map(OriginalDestination::new);
                    crate::http::server::serve(stream, peer, listener, shared, token, original)
                        .await
                }
                (Sniffed::Opaque, Some(destination)) => {
                    Box::pin(passthrough::tcp(stream, peer, destination, listener)).await
                }
                (Sniffed::Opaque, None) => {
                    tracing::debug!(listener = %listener, client = %peer, "not HTTP and not redirected; closing");
                }
            },
            ListenerProtocol::Tcp => {
                let routed = shared
                    .config
                    .load()
                    .listener(&listener)
                    .is_some_and(|(_, l)| matches!(l.serves, Serves::Tcp(Some(_))));
                match (routed, original) {
                    (false, Some(destination)) => {
                        Box::pin(passthrough::tcp(stream, peer, destination, listener)).await
                    }
                    _ => Box::pin(crate::tcp::serve(stream, peer, listener, shared, token)).await,
                }
            }
        }
    }
}

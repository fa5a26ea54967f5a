//! Listeners: binding, accepting under a connection limit, and reconciling on reload.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use strait_config::snapshot::{ListenerTls, Serves};
use strait_config::spec::{ListenerMode, ListenerProtocol};
use strait_config::Snapshot;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::metrics::{CONNECTIONS_ACTIVE, CONNECTIONS_REJECTED};
use crate::shared::{ConnToken, Shared};
use crate::tls::server::{Accepted, Alpn, TlsServer};

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind listener `{name}` on {address}: {source}")]
pub struct BindError {
    /// Listener name.
    pub name: String,
    /// Address asked for.
    pub address: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// What identifies a running listener: changing any of it rebinds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shape {
    address: SocketAddr,
    protocol: ListenerProtocol,
    max_connections: usize,
    mode: ListenerMode,
    tls: ListenerTls,
}

struct Running {
    shape: Shape,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// The running listeners, keyed by name. Owned by the reloader.
#[derive(Default)]
pub struct Listeners {
    running: HashMap<Arc<str>, Running>,
}

impl Listeners {
    /// Makes the running listeners match `snapshot`: new ones are bound, changed ones rebound,
    /// removed ones closed (their open connections carry on). New listeners are bound before
    /// anything is stopped, so a bind failure leaves the running set untouched.
    pub async fn reconcile(
        &mut self,
        snapshot: &Snapshot,
        shared: &Arc<Shared>,
    ) -> Result<(), BindError> {
        let wanted: Vec<(Arc<str>, Shape)> = snapshot
            .listeners
            .iter()
            .map(|l| {
                let shape = Shape {
                    address: l.address,
                    protocol: l.protocol(),
                    max_connections: l.max_connections,
                    mode: l.mode,
                    tls: l.tls.clone(),
                };
                (l.name.clone(), shape)
            })
            .collect();
        let stale: Vec<Arc<str>> = self
            .running
            .iter()
            .filter(|(name, r)| !wanted.iter().any(|(n, s)| n == *name && *s == r.shape))
            .map(|(name, _)| name.clone())
            .collect();
        // Bind every new address (and read TLS files) before touching a running listener: if one fails, the
        // config is rejected and everything keeps serving as it was.
        let mut fresh = Vec::new();
        let mut rebind_in_place = Vec::new();
        for (name, shape) in &wanted {
            let tls = || tls_server(name, shape, shared);
            match self.running.get(name) {
                None => fresh.push((
                    name.clone(),
                    shape.clone(),
                    tls()?,
                    bind(name, shape.address).await?,
                )),
                Some(r) if r.shape == *shape => {}
                Some(r) if r.shape.address == shape.address => {
                    rebind_in_place.push((name.clone(), shape.clone(), tls()?));
                }
                Some(_) => fresh.push((
                    name.clone(),
                    shape.clone(),
                    tls()?,
                    bind(name, shape.address).await?,
                )),
            }
        }
        for name in stale {
            if let Some(old) = self.running.remove(&name) {
                let _ = old.stop.send(());
                let _ = old.task.await;
            }
        }
        // Same address, new settings: the port is free only once the old listener stopped.
        for (name, shape, tls) in rebind_in_place {
            let socket = bind(&name, shape.address).await?;
            fresh.push((name, shape, tls, socket));
        }
        for (name, shape, tls, socket) in fresh {
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(accept_loop(
                socket,
                name.clone(),
                shape.clone(),
                tls,
                shared.clone(),
                stopped,
            ));
            self.running.insert(name, Running { shape, stop, task });
        }
        Ok(())
    }
}

async fn bind(name: &str, address: SocketAddr) -> Result<TcpListener, BindError> {
    let socket = TcpListener::bind(address)
        .await
        .map_err(|source| BindError {
            name: name.to_owned(),
            address,
            source,
        })?;
    let bound = socket.local_addr().unwrap_or(address);
    tracing::info!(listener = name, address = %bound, "listening");
    Ok(socket)
}

/// The listener's TLS server (read from files now for `simple`): a failure rejects the config
/// as a bind failure does.
fn tls_server(
    name: &str,
    shape: &Shape,
    shared: &Shared,
) -> Result<Option<Arc<TlsServer>>, BindError> {
    match TlsServer::new(&shape.tls, &shared.identity) {
        Ok(server) => Ok(server.map(Arc::new)),
        Err(e) => Err(BindError {
            name: name.to_owned(),
            address: shape.address,
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("tls: {e}")),
        }),
    }
}

async fn accept_loop(
    socket: TcpListener,
    name: Arc<str>,
    shape: Shape,
    tls: Option<Arc<TlsServer>>,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Slots {
        limit: Semaphore::new(shape.max_connections),
        active: metrics::gauge!(CONNECTIONS_ACTIVE, "listener" => name.clone()),
    });
    let rejected = metrics::counter!(CONNECTIONS_REJECTED, "listener" => name.clone());
    let drained = shared.drain.drained();
    tokio::pin!(drained);
    // The app may still call out while it shuts down: an outbound listener keeps accepting
    // through the drain window, until the process exits.
    // (The reloader stops at the drain and drops its senders: only an explicit stop, a reload
    // that removes the listener, ends an outbound listener then.)
    let keep_accepting = shape.mode == ListenerMode::Outbound;
    let mut stop_pending = true;
    loop {
        let (stream, peer) = tokio::select! {
            stopped = &mut stop, if stop_pending => {
                if stopped.is_ok() || !keep_accepting {
                    break;
                }
                stop_pending = false;
                continue;
            }
            () = drained.as_mut(), if !keep_accepting => break,
            accepted = socket.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(held) = Held::take(&slots) else {
            rejected.increment(1);
            tracing::debug!(listener = %name, client = %peer, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        let token = shared.drain.track();
        let (shared, name) = (shared.clone(), name.clone());
        // One spawn per kind of connection: a task is as large as its future's largest state,
        // and a single future for all three kinds would size every HTTP connection for an
        // opaque TCP one (1152 bytes a task instead of 512).
        if let Some(tls) = &tls {
            // Redirected to an inbound listener: where it was going, asked before the
            // handshake (the socket is the TLS stream's afterwards).
            let original = match shape.mode {
                ListenerMode::Inbound => crate::intercept::orig_dst::original_destination(&stream),
                _ => None,
            };
            let on = On {
                name,
                protocol: shape.protocol,
                intercepting: shape.mode == ListenerMode::Inbound,
                original,
            };
            spawn_held(
                serve_tls(stream, peer, on, tls.clone(), shared, token),
                held,
            );
            continue;
        }
        match (shape.mode, shape.protocol) {
            (ListenerMode::Inbound | ListenerMode::Outbound, protocol) => spawn_held(
                crate::intercept::serve(stream, peer, name, protocol, shared, token),
                held,
            ),
            (ListenerMode::Explicit, ListenerProtocol::Http) => spawn_held(
                crate::http::server::serve(stream, peer, name, shared, token, None),
                held,
            ),
            (ListenerMode::Explicit, ListenerProtocol::Tcp) => {
                spawn_held(crate::tcp::serve(stream, peer, name, shared, token), held)
            }
        }
    }
    tracing::debug!(listener = %name, "listener closed");
}

/// Where a TLS listener's connection arrived.
struct On {
    name: Arc<str>,
    protocol: ListenerProtocol,
    /// An intercepting (inbound) listener: what no route claims goes to `original`.
    intercepting: bool,
    /// The redirected connection's original destination.
    original: Option<SocketAddr>,
}

/// Serves a connection of a TLS listener: the handshake (or, on a permissive listener, the
/// plaintext it opens with) within the head's time, then HTTP or TCP over it. On an
/// intercepting listener, plaintext is intercepted as on any other, and a TLS client that
/// chose no HTTP protocol by ALPN is opaque: passed through to where it was going.
async fn serve_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    on: On,
    tls: Arc<TlsServer>,
    shared: Arc<Shared>,
    token: ConnToken,
) {
    let On {
        name,
        protocol,
        intercepting,
        original,
    } = on;
    let within = shared.config.load().snapshot.proxy.header_read_timeout;
    // Boxed, as every path below but HTTP's: a task is as large as its future's largest
    // state, and the handshake's (rustls' session in the making), the TCP relay's or the
    // passthrough's would otherwise size the task of every idle HTTP/1 connection over TLS.
    let accepted = match Box::pin(tokio::time::timeout(within, tls.accept(stream))).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            tracing::debug!(listener = %name, client = %peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::debug!(listener = %name, client = %peer, "TLS handshake timed out");
            return;
        }
    };
    let (stream, identity, alpn) = match accepted {
        Accepted::Plain(stream) if intercepting => {
            Box::pin(crate::intercept::serve(
                stream, peer, name, protocol, shared, token,
            ))
            .await;
            return;
        }
        Accepted::Plain(stream) => {
            match protocol {
                ListenerProtocol::Http => {
                    crate::http::server::serve(stream, peer, name, shared, token, None).await;
                }
                ListenerProtocol::Tcp => {
                    Box::pin(crate::tcp::serve(stream, peer, name, shared, token)).await;
                }
            }
            return;
        }
        Accepted::Tls {
            stream,
            peer: identity,
            alpn,
        } => (stream, identity, alpn),
    };
    let opaque = match protocol {
        ListenerProtocol::Http => intercepting && alpn == Alpn::None,
        ListenerProtocol::Tcp => intercepting && !has_tcp_route(&shared, &name),
    };
    if opaque {
        let Some(destination) = original else {
            tracing::debug!(listener = %name, client = %peer, "not HTTP and not redirected; closing");
            return;
        };
        if !crate::intercept::admitted(&shared, &name, identity.as_deref()) {
            tracing::debug!(listener = %name, client = %peer, "denied by authorization policy; closing");
            return;
        }
        Box::pin(crate::intercept::passthrough::tls(
            stream,
            identity,
            peer,
            destination,
            name,
        ))
        .await;
        drop(token);
        return;
    }
    match protocol {
        ListenerProtocol::Http => {
            let client = crate::http::server::Client {
                peer,
                identity,
                h2: alpn == Alpn::H2,
                tls: true,
            };
            let original = original.map(crate::intercept::passthrough::OriginalDestination::new);
            crate::http::server::serve_tls(stream, client, name, shared, token, original).await;
        }
        ListenerProtocol::Tcp => {
            let client = crate::tcp::TcpClient::Tls { stream, identity };
            Box::pin(crate::tcp::serve_client(client, peer, name, shared, token)).await;
        }
    }
}

/// Whether a TCPRoute is attached to the TCP listener `name`.
fn has_tcp_route(shared: &Shared, name: &str) -> bool {
    shared
        .config
        .load()
        .listener(name)
        .is_some_and(|(_, l)| matches!(l.serves, Serves::Tcp(Some(_))))
}

/// A listener's connection slots: its limit on connections and its active-connections gauge.
struct Slots {
    limit: Semaphore,
    active: metrics::Gauge,
}

/// What a served connection holds while it lives: its place under the listener's connection
/// limit and its count in the active-connections gauge, both given back when it ends (or its
/// task is dropped). One pointer, in every connection's task (a semaphore permit and a gauge
/// handle took 32 bytes).
struct Held {
    slots: Arc<Slots>,
}

impl Held {
    /// A slot, unless the listener is at its limit.
    fn take(slots: &Arc<Slots>) -> Option<Self> {
        // Forgotten here, given back by `drop`.
        slots.limit.try_acquire().ok()?.forget();
        slots.active.increment(1.0);
        Some(Self {
            slots: slots.clone(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.slots.limit.add_permits(1);
        self.slots.active.decrement(1.0);
    }
}

/// Serves one connection on its own task, holding `held` until it ends. A combinator rather
/// than an `async` block, which would keep `connection` twice: as captured and as awaited.
fn spawn_held(connection: impl Future<Output = ()> + Send + 'static, held: Held) {
    tokio::spawn(connection.map(move |()| drop(held)));
}

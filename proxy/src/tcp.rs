//! Opaque TCP proxying: pick a backend per connection, then copy bytes both ways (zero-copy
//! through kernel pipes where possible), honouring half-close, until both sides finish or the
//! idle timeout passes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use strait_config::snapshot::{Serves, WeightedServices};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::active::Active;
use crate::metrics::{TCP_BYTES, TCP_CONNECTIONS};
use crate::service::breaker::Slot;
use crate::service::endpoint::Endpoint;
use crate::shared::{ConnToken, Shared};
use crate::tls::upstream_stream::UpstreamStream;
use zero_copy::Pipe;

mod zero_copy;

/// The client side of a proxied connection.
#[derive(Debug)]
pub enum TcpClient {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS terminated here; `identity`: the client's SPIFFE ID (mTLS).
    Tls {
        /// The connection.
        stream: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        /// The client's SPIFFE ID.
        identity: Option<Arc<str>>,
    },
}

/// Proxies one plaintext client connection accepted on a TCP listener.
pub fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    token: ConnToken,
) -> impl Future<Output = ()> + Send + 'static {
    if crate::sni::routes_by_sni(&shared, &listener) {
        // Boxed: the ClientHello's path does not size every TCP connection's task.
        let routed = crate::sni::serve(
            client,
            peer,
            listener,
            shared,
            token,
            crate::sni::Otherwise::TcpRoute,
            false,
        );
        return Either::Left(Box::pin(routed));
    }
    Either::Right(serve_client(
        TcpClient::Plain(client),
        peer,
        listener,
        shared,
        token,
    ))
}

/// Proxies one client connection accepted on a TCP listener; a client that authenticated with
/// mTLS is checked against the listener's authorization policies by its SPIFFE ID. (A
/// function returning an `async` block: an `async fn` would keep its arguments twice in every
/// TCP connection's task.)
#[allow(clippy::manual_async_fn)]
pub fn serve_client(
    client: TcpClient,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    token: ConnToken,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // Held to the end: the drain waits for every connection's token. (A block captures
        // only what it names; a token it does not name is dropped when this function returns.)
        let _token = token;
        let active = shared.config.load_full();
        let Some((_, l)) = active.listener(&listener) else {
            return;
        };
        let peer_identity = match &client {
            TcpClient::Tls { identity, .. } => identity.as_deref(),
            TcpClient::Plain(_) => None,
        };
        if !crate::authz::admit_connection(l, peer_identity, &active.authz) {
            tracing::debug!(listener = %listener, client = %peer, "denied by authorization policy; closing");
            return;
        }
        let Serves::Tcp(Some(route)) = &l.serves else {
            tracing::debug!(listener = %listener, "no TCPRoute attached; closing");
            return;
        };
        let Some(picked) = pick(&active, &route.backends, &listener) else {
            return;
        };
        metrics::counter!(TCP_CONNECTIONS, "listener" => listener.clone()).increment(1);
        let _in_flight = picked.endpoint.start_request();
        let upstream = match crate::http::upstream::dial(&picked.endpoint, route.connect_timeout)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(listener = %listener, endpoint = %picked.endpoint.label, error = %e, "upstream connect failed");
                return;
            }
        };
        let idle = route.idle_timeout;
        // Hold no config version for the life of a long connection.
        drop(active);
        let started = Instant::now();
        let (result, client_id) = relay_client(client, upstream, idle, &listener).await;
        tracing::debug!(
            listener = %listener,
            client = %peer,
            client_id = client_id.as_deref().unwrap_or("-"),
            endpoint = %picked.endpoint.label,
            duration_ms = started.elapsed().as_millis() as u64,
            result = ?result,
            "tcp connection closed"
        );
    }
}

/// The upstream side of a routed connection: the service picked, its endpoint, and the place
/// the connection holds under the service's `maxConnections` while it lives.
pub(crate) struct Picked {
    /// The service's name.
    pub service: Arc<str>,
    /// The endpoint to dial.
    pub endpoint: Arc<Endpoint>,
    /// The service's `connectTimeout`.
    pub connect_timeout: Duration,
    _connection: Option<Slot>,
}

/// Picks a service among `backends` by weight, then one of its endpoints by its balancer.
/// `None` (logged) when the service has no healthy endpoint or its breaker refuses.
pub(crate) fn pick(
    active: &Active,
    backends: &WeightedServices,
    listener: &Arc<str>,
) -> Option<Picked> {
    let si = match backends.single() {
        Some(si) => si,
        None => backends.pick_with(fastrand::u32(0..backends.total())).1,
    };
    let (service, runtime) = (active.snapshot.services.get(si)?, active.services.get(si)?);
    let Some(endpoint) = runtime
        .balancer
        .pick(&runtime.endpoints, None)
        .and_then(|i| runtime.endpoints.get(i))
        .cloned()
    else {
        tracing::warn!(listener = %listener, service = %service.name, "no healthy endpoints; closing");
        return None;
    };
    // A circuit breaker's maxConnections also bounds proxied TCP connections.
    let connection = match runtime.breaker.as_ref().map(|b| b.open_connection()) {
        Some(Err(_)) => {
            tracing::warn!(listener = %listener, service = %service.name, "maxConnections reached; closing");
            return None;
        }
        Some(Ok(slot)) => slot,
        None => None,
    };
    Some(Picked {
        service: service.name.clone(),
        endpoint,
        connect_timeout: service.connect_timeout,
        _connection: connection,
    })
}

/// Relays a client and a dialled upstream until both are done or idle for `idle`: spliced
/// when both are plaintext, through buffers when TLS is on either side. Returns the result
/// and the client's SPIFFE ID (mTLS).
pub(crate) async fn relay_client(
    client: TcpClient,
    upstream: UpstreamStream,
    idle: Duration,
    listener: &Arc<str>,
) -> (std::io::Result<(u64, u64)>, Option<Arc<str>>) {
    match (client, upstream) {
        (TcpClient::Plain(client), UpstreamStream::Plain(upstream)) => {
            (splice(client, upstream, idle, listener).await, None)
        }
        (TcpClient::Plain(client), UpstreamStream::Tls(upstream)) => (
            relay_buffered(client, *upstream, idle, listener).await,
            None,
        ),
        (TcpClient::Tls { stream, identity }, UpstreamStream::Plain(upstream)) => {
            let relayed = relay_buffered(*stream, upstream, idle, listener);
            (relayed.await, identity)
        }
        (TcpClient::Tls { stream, identity }, UpstreamStream::Tls(upstream)) => {
            let relayed = relay_buffered(*stream, *upstream, idle, listener);
            (relayed.await, identity)
        }
    }
}

/// Copies both ways; each direction's EOF is passed on as a write shutdown (half-close).
/// Returns `(bytes to upstream, bytes to client)`.
///
/// Bytes move through kernel pipes with splice(2) (`zero_copy`); when the pipes cannot be had
/// (out of descriptors, pipe budget spent) through a buffer in user space.
///
/// Not an `async fn`: the pipes are made at once and the relay's future is returned as it is,
/// without a wrapper keeping this function's arguments beside it for the connection's life.
pub(crate) fn splice<'a>(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    listener: &'a Arc<str>,
) -> impl Future<Output = std::io::Result<(u64, u64)>> + 'a {
    let mode = match (Pipe::new(), Pipe::new()) {
        (Ok(up), Ok(down)) => Mode::ZeroCopy { up, down },
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(listener = %listener, error = %e, "no pipes for splice; copying through a buffer");
            Mode::Buffered
        }
    };
    relay(client, upstream, mode, idle, listener)
}

/// How the bytes of one connection cross the proxy.
enum Mode {
    /// socket → pipe → socket with splice(2), one pipe per direction.
    ZeroCopy { up: Pipe, down: Pipe },
    /// read into a buffer, write it out.
    Buffered,
}

/// `splice` with the mode chosen.
async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    mode: Mode,
    idle: Duration,
    listener: &Arc<str>,
) -> std::io::Result<(u64, u64)> {
    let clock = IdleClock::new();
    let (up_progress, down_progress) = clock.progress(listener);
    let copy = async {
        match mode {
            Mode::ZeroCopy { up, down } => tokio::try_join!(
                zero_copy::pump(&client, &upstream, up, &up_progress),
                zero_copy::pump(&upstream, &client, down, &down_progress)
            ),
            Mode::Buffered => {
                let (cr, cw) = client.split();
                let (ur, uw) = upstream.split();
                tokio::try_join!(pump(cr, uw, &up_progress), pump(ur, cw, &down_progress))
            }
        }
    };
    clock.until_idle(copy, idle).await
}

/// Copies both ways through buffers, for a connection with TLS on either side (TLS
/// terminated or originated here: those bytes are encrypted or decrypted here, so they cannot
/// be spliced).
pub(crate) async fn relay_buffered<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    listener: &Arc<str>,
) -> std::io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let clock = IdleClock::new();
    let (up_progress, down_progress) = clock.progress(listener);
    let copy = async {
        let (cr, cw) = tokio::io::split(client);
        let (ur, uw) = tokio::io::split(upstream);
        tokio::try_join!(pump(cr, uw, &up_progress), pump(ur, cw, &down_progress))
    };
    clock.until_idle(copy, idle).await
}

/// When bytes last moved either way, for the idle timeout.
struct IdleClock {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last: AtomicU64,
}

impl IdleClock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Where each direction (to the upstream, to the client) reports its bytes.
    fn progress(&self, listener: &Arc<str>) -> (Progress<'_>, Progress<'_>) {
        let direction = |direction: &'static str| Progress {
            bytes: metrics::counter!(TCP_BYTES, "listener" => listener.clone(), "direction" => direction),
            last: &self.last,
            epoch: self.epoch,
        };
        (direction("upstream"), direction("downstream"))
    }

    /// Runs `copy` until it ends or no byte has moved for `idle`.
    async fn until_idle(
        &self,
        copy: impl Future<Output = std::io::Result<(u64, u64)>>,
        idle: Duration,
    ) -> std::io::Result<(u64, u64)> {
        let watchdog = async {
            loop {
                let since = Duration::from_millis(self.last.load(Ordering::Relaxed));
                let deadline = self.epoch + since + idle;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        tokio::select! {
            result = copy => result,
            () = watchdog => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle timeout")),
        }
    }
}

/// Where one direction reports the bytes that reached the other side: its byte counter and the
/// idle watchdog's clock (shared by both directions).
struct Progress<'a> {
    bytes: metrics::Counter,
    last: &'a AtomicU64,
    epoch: Instant,
}

impl Progress<'_> {
    fn moved(&self, n: usize) {
        self.bytes.increment(n as u64);
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The buffered copy of one direction.
async fn pump<R, W>(mut from: R, mut to: W, progress: &Progress<'_>) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(buf.get(..n).unwrap_or_default()).await?;
        total += n as u64;
        progress.moved(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair of loopback sockets.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (near, far) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (near.expect("connect"), far.expect("accept").0)
    }

    fn payload(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    /// client ⇄ relay ⇄ server: a few MiB each way at once; the client then half-closes, and
    /// the server, having seen that EOF, still answers before it closes too.
    async fn both_ways_with_half_close(mode: Mode) {
        let (client, proxy_client) = socket_pair().await;
        let (proxy_upstream, server) = socket_pair().await;
        let listener: Arc<str> = Arc::from("test");
        let relay = tokio::spawn(async move {
            relay(
                proxy_client,
                proxy_upstream,
                mode,
                Duration::from_secs(30),
                &listener,
            )
            .await
        });
        let up = payload(5 << 20, 1);
        let down = payload(3 << 20, 2);
        let after_eof = b"sent after the client's EOF".to_vec();

        let (mut client_r, mut client_w) = client.into_split();
        let (mut server_r, mut server_w) = server.into_split();
        let sent = up.clone();
        let client_writes = tokio::spawn(async move {
            client_w.write_all(&sent).await.expect("client write");
            client_w.shutdown().await.expect("client shutdown");
        });
        let client_reads = tokio::spawn(async move {
            let mut got = Vec::new();
            client_r.read_to_end(&mut got).await.expect("client read");
            got
        });
        let (sent, tail) = (down.clone(), after_eof.clone());
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            let (read, ()) = tokio::join!(server_r.read_to_end(&mut got), async {
                server_w.write_all(&sent).await.expect("server write");
            });
            read.expect("server read");
            // The client's EOF has arrived; this direction must still be open.
            server_w.write_all(&tail).await.expect("write after EOF");
            server_w.shutdown().await.expect("server shutdown");
            got
        });

        let deadline = Duration::from_secs(20);
        let at_server = tokio::time::timeout(deadline, server)
            .await
            .expect("server done in time")
            .expect("server task");
        client_writes.await.expect("client writer");
        let at_client = tokio::time::timeout(deadline, client_reads)
            .await
            .expect("client sees EOF in time")
            .expect("client reader");
        let moved = tokio::time::timeout(deadline, relay)
            .await
            .expect("relay ends")
            .expect("relay task")
            .expect("relay result");

        assert!(at_server == up, "upstream bytes differ");
        let mut expected = down;
        expected.extend_from_slice(&after_eof);
        assert!(at_client == expected, "downstream bytes differ");
        assert_eq!(moved, (up.len() as u64, expected.len() as u64));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn zero_copy_moves_both_ways_intact_and_passes_half_close_on() {
        let (up, down) = (Pipe::new().expect("pipe"), Pipe::new().expect("pipe"));
        both_ways_with_half_close(Mode::ZeroCopy { up, down }).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_buffered_fallback_does_the_same() {
        both_ways_with_half_close(Mode::Buffered).await;
    }
}

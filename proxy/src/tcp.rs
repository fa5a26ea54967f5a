//! Opaque TCP proxying: pick a backend per connection, then copy bytes both ways, honouring
//! half-close, until both sides finish or the idle timeout passes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strait_config::snapshot::Serves;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::metrics::{TCP_BYTES, TCP_CONNECTIONS};
use crate::shared::{ConnToken, Shared};

/// Proxies one client connection accepted on a TCP listener.
pub async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    shared: Arc<Shared>,
    _token: ConnToken,
) {
    let active = shared.config.load_full();
    let Some((_, l)) = active.listener(&listener) else {
        return;
    };
    let Serves::Tcp(Some(route)) = &l.serves else {
        tracing::debug!(listener = %listener, "no TCPRoute attached; closing");
        return;
    };
    let si = match route.backends.single() {
        Some(si) => si,
        None => {
            route
                .backends
                .pick_with(fastrand::u32(0..route.backends.total()))
                .1
        }
    };
    let (Some(service), Some(runtime)) =
        (active.snapshot.services.get(si), active.services.get(si))
    else {
        return;
    };
    let Some(endpoint) = runtime
        .balancer
        .pick(&runtime.endpoints, None)
        .and_then(|i| runtime.endpoints.get(i))
        .cloned()
    else {
        tracing::warn!(listener = %listener, service = %service.name, "no healthy endpoints; closing");
        return;
    };
    // A circuit breaker's maxConnections also bounds proxied TCP connections.
    let _connection = match runtime.breaker.as_ref().map(|b| b.open_connection()) {
        Some(Err(_)) => {
            tracing::warn!(listener = %listener, service = %service.name, "maxConnections reached; closing");
            return;
        }
        Some(Ok(slot)) => slot,
        None => None,
    };
    metrics::counter!(TCP_CONNECTIONS, "listener" => listener.clone()).increment(1);
    let _in_flight = endpoint.start_request();
    let upstream = match crate::http::upstream::connect(&endpoint, route.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(listener = %listener, endpoint = %endpoint.label, error = %e, "upstream connect failed");
            return;
        }
    };
    let idle = route.idle_timeout;
    // Hold no config version for the life of a long connection.
    drop(active);
    let started = Instant::now();
    let result = splice(client, upstream, idle, &listener).await;
    tracing::debug!(
        listener = %listener,
        client = %peer,
        endpoint = %endpoint.label,
        duration_ms = started.elapsed().as_millis() as u64,
        result = ?result,
        "tcp connection closed"
    );
}

/// Copies both ways; each direction's EOF is passed on as a write shutdown (half-close).
/// Returns `(bytes to upstream, bytes to client)`.
pub(crate) async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle: Duration,
    listener: &Arc<str>,
) -> std::io::Result<(u64, u64)> {
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let up_bytes =
        metrics::counter!(TCP_BYTES, "listener" => listener.clone(), "direction" => "upstream");
    let down_bytes =
        metrics::counter!(TCP_BYTES, "listener" => listener.clone(), "direction" => "downstream");
    let copy = async {
        tokio::try_join!(
            pump(cr, uw, &up_bytes, &last, epoch),
            pump(ur, cw, &down_bytes, &last, epoch)
        )
    };
    let watchdog = async {
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = epoch + since + idle;
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

async fn pump<R, W>(
    mut from: R,
    mut to: W,
    bytes: &metrics::Counter,
    last: &AtomicU64,
    epoch: Instant,
) -> std::io::Result<u64>
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
        bytes.increment(n as u64);
        last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

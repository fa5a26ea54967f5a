//! Load over mTLS, as the outbound hop calls the inbound one: a new connection per request
//! (each a handshake, full or resumed), and idle keep-alive connections held open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::certs::SERVER_NAME;
use crate::load;

/// What a run of handshakes produced.
#[derive(Debug, Default)]
pub struct Handshakes {
    /// Connections that answered their request 2xx.
    pub ok: u64,
    /// Of those, how many resumed a session.
    pub resumed: u64,
    /// Connections or requests that failed.
    pub errors: u64,
}

/// A TLS connection to `addr` with one request answered on it, ready for another; and
/// whether its handshake resumed a session.
async fn connect(
    addr: SocketAddr,
    connector: &TlsConnector,
) -> Option<(http1::SendRequest<Empty<Bytes>>, bool)> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(SERVER_NAME).ok()?;
    let tls = connector.connect(name, tcp).await.ok()?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let (mut sender, conn) = http1::handshake(TokioIo::new(tls)).await.ok()?;
    tokio::spawn(conn);
    load::once(&mut sender, "bench", "/").await?;
    Some((sender, resumed))
}

/// `conns` clients, each opening a new connection for every request (one handshake, one
/// request, closed) for `duration`.
pub async fn handshakes(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    conns: usize,
    duration: Duration,
) -> Handshakes {
    let connector = TlsConnector::from(config);
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (connector, counts) = (connector.clone(), counts.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    match connect(addr, &connector).await {
                        Some((_, resumed)) => {
                            counts[0].fetch_add(1, Ordering::Relaxed);
                            counts[1].fetch_add(u64::from(resumed), Ordering::Relaxed);
                        }
                        None => {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    Handshakes {
        ok: counts[0].load(Ordering::Relaxed),
        resumed: counts[1].load(Ordering::Relaxed),
        errors: counts[2].load(Ordering::Relaxed),
    }
}

/// Opens `n` mTLS keep-alive connections to `addr`, each after one answered request, 16 at a
/// time; holds them open. Returns them and the count that failed.
pub async fn idle_connections(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    n: usize,
) -> (Vec<http1::SendRequest<Empty<Bytes>>>, u64) {
    const AT_ONCE: usize = 16;
    let connector = TlsConnector::from(config);
    let (mut held, mut failed) = (Vec::with_capacity(n), 0);
    let mut opening = tokio::task::JoinSet::new();
    let mut settle = |opened: Result<Option<_>, tokio::task::JoinError>| match opened {
        Ok(Some((sender, _))) => held.push(sender),
        _ => failed += 1,
    };
    for _ in 0..n {
        if opening.len() >= AT_ONCE {
            if let Some(opened) = opening.join_next().await {
                settle(opened);
            }
        }
        let connector = connector.clone();
        opening.spawn(async move {
            tokio::time::timeout(Duration::from_secs(2), connect(addr, &connector))
                .await
                .ok()
                .flatten()
        });
    }
    while let Some(opened) = opening.join_next().await {
        settle(opened);
    }
    (held, failed)
}

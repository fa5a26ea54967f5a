//! Long-lived per-endpoint state: in-flight count, whether it is in rotation, outlier counts,
//! and the connection pool.
//!
//! An `Endpoint` outlives config reloads: the reloader keeps it for as long as its service
//! still lists its address with the same protocol, so pools, counters, health and ejections
//! carry over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2;

use super::balance::Candidate;
use super::dns::Resolution;
use super::idle::IdleStack;
use super::outlier::EndpointOutlier;
use crate::http::body::UpstreamBody;
use crate::http::h1;
use crate::tls::client::UpstreamTls;

/// A shared HTTP/2 connection.
pub type Http2Sender = http2::SendRequest<UpstreamBody>;

/// How the proxy keeps connections to one endpoint.
#[derive(Debug)]
pub enum Pool {
    /// Idle HTTP/1 keep-alive connections, the last given back taken first.
    Http1(IdleStack<h1::Connection>),
    /// One multiplexed HTTP/2 connection, replaced when it closes.
    Http2(ArcSwapOption<Http2Sender>),
    /// TCP: a connection per client connection, nothing pooled.
    Tcp,
}

/// Why an endpoint is out of rotation: bits of `Endpoint::out`; none set means in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OutOfRotation {
    /// Active health checks failed.
    Unhealthy = 1,
    /// Outlier detection ejected it.
    Ejected = 2,
}

/// Where an endpoint is dialled.
#[derive(Debug, Clone)]
pub enum Target {
    /// An IP address and port.
    Fixed(SocketAddr),
    /// A host name and port, kept resolved in the background.
    Host(Arc<Resolution>),
}

impl Target {
    /// A new TCP connection: to the address, or to a host name's latest answer (its
    /// addresses in order until one accepts; only before the first answer does this wait).
    pub async fn connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        match self {
            Self::Fixed(address) => tokio::net::TcpStream::connect(address).await,
            Self::Host(resolution) => {
                let addresses = resolution.addresses().await?;
                tokio::net::TcpStream::connect(&addresses[..]).await
            }
        }
    }

    /// The host name, for a host-name endpoint (the default TLS server name).
    pub fn host(&self) -> Option<&Arc<str>> {
        match self {
            Self::Fixed(_) => None,
            Self::Host(resolution) => Some(resolution.host()),
        }
    }
}

/// One upstream endpoint of one service.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub target: Target,
    /// `ip:port` or `host:port` as configured, for logs, metrics and `/clusters`.
    pub label: Arc<str>,
    /// Name of the service it belongs to.
    pub service: Arc<str>,
    in_flight: AtomicU64,
    /// Sweeps that have found the shared HTTP/2 connection unused since a request last went
    /// out on it (HTTP/1 connections count their own).
    unused_sweeps: AtomicU32,
    /// [`OutOfRotation`] bits: one load tells a picker whether the endpoint is usable.
    out: AtomicU8,
    /// Passive outlier-detection counts.
    pub outlier: EndpointOutlier,
    healthy: metrics::Gauge,
    /// Its connections.
    pub pool: Pool,
    /// TLS to it (`Service.spec.tls`); `None`: plaintext.
    pub tls: Option<Arc<UpstreamTls>>,
}

impl Endpoint {
    /// A fresh endpoint of `service` labelled `label`, in rotation, with an empty pool.
    pub fn new(service: &Arc<str>, target: Target, label: Arc<str>, pool: Pool) -> Self {
        let healthy = metrics::gauge!(
            crate::metrics::ENDPOINT_HEALTHY,
            "service" => service.clone(),
            "endpoint" => label.clone()
        );
        healthy.set(1.0);
        Self {
            target,
            label,
            service: service.clone(),
            in_flight: AtomicU64::new(0),
            unused_sweeps: AtomicU32::new(0),
            out: AtomicU8::new(0),
            outlier: EndpointOutlier::default(),
            healthy,
            pool,
            tls: None,
        }
    }

    /// The endpoint, spoken to over `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<UpstreamTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// An endpoint outside any configured service (an intercepted connection's original
    /// destination): same pool and accounting, but no `strait_endpoint_healthy` series, whose
    /// cardinality would follow every address the pod talks to.
    pub fn unlisted(service: &str, address: SocketAddr, pool: Pool) -> Self {
        Self {
            target: Target::Fixed(address),
            label: address.to_string().into(),
            service: service.into(),
            in_flight: AtomicU64::new(0),
            unused_sweeps: AtomicU32::new(0),
            out: AtomicU8::new(0),
            outlier: EndpointOutlier::default(),
            healthy: metrics::Gauge::noop(),
            pool,
            tls: None,
        }
    }

    /// Whether the endpoint takes requests now.
    pub fn is_available(&self) -> bool {
        self.out.load(Ordering::Relaxed) == 0
    }

    /// Whether `reason` currently keeps the endpoint out of rotation.
    pub fn is_out_for(&self, reason: OutOfRotation) -> bool {
        self.out.load(Ordering::Relaxed) & reason as u8 != 0
    }

    /// Sets or clears one reason for being out of rotation; returns whether it changed.
    /// `strait_endpoint_healthy` follows whether the endpoint is in rotation.
    pub fn set_out(&self, reason: OutOfRotation, out: bool) -> bool {
        let bit = reason as u8;
        let before = if out {
            self.out.fetch_or(bit, Ordering::AcqRel)
        } else {
            self.out.fetch_and(!bit, Ordering::AcqRel)
        };
        let after = if out { before | bit } else { before & !bit };
        if (before == 0) != (after == 0) {
            self.healthy.set(if after == 0 { 1.0 } else { 0.0 });
        }
        before != after
    }

    /// Requests (or TCP connections) in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Notes a request sent on the shared HTTP/2 connection: its idle time starts again.
    pub fn note_http2_use(&self) {
        self.unused_sweeps.store(0, Ordering::Relaxed);
    }

    /// One sweep of the pool, which closes what has idled past `sweeps_allowed` sweeps (see
    /// [`idle_sweeps_allowed`]) and, of HTTP/1 connections, those the upstream closed (or
    /// spoke on) since they went idle, which would otherwise wait in CLOSE_WAIT — holding a
    /// file descriptor and a `maxConnections` slot — until a request took them. Returns how
    /// many it closed.
    pub fn close_idle(&self, sweeps_allowed: u32) -> usize {
        match &self.pool {
            Pool::Http1(idle) => close_idle_http1(idle, sweeps_allowed),
            Pool::Http2(shared) => {
                if self.in_flight() > 0 {
                    self.unused_sweeps.store(0, Ordering::Relaxed);
                    return 0;
                }
                let unused = self.unused_sweeps.fetch_add(1, Ordering::Relaxed) + 1;
                if unused <= sweeps_allowed {
                    return 0;
                }
                self.unused_sweeps.store(0, Ordering::Relaxed);
                // The connection closes with the last handle to it: this one, unless a
                // request started since the check above holds another.
                let dropped = shared.swap(None);
                usize::from(dropped.is_some_and(|sender| !sender.is_closed()))
            }
            Pool::Tcp => 0,
        }
    }

    /// Idle HTTP/1 connections now pooled.
    pub fn idle_connections(&self) -> usize {
        match &self.pool {
            Pool::Http1(q) => q.len(),
            Pool::Http2(c) => usize::from(c.load().as_ref().is_some_and(|s| !s.is_closed())),
            Pool::Tcp => 0,
        }
    }
}

/// One sweep of an HTTP/1 pool (see [`Endpoint::close_idle`]).
fn close_idle_http1(idle: &IdleStack<h1::Connection>, sweeps_allowed: u32) -> usize {
    // What is there now taken out (top first) and the live ones put back bottom first, so
    // that their order stands; a check costs a syscall only for a socket that turned
    // readable, so requests find the pool empty for microseconds at most.
    let now = idle.len();
    let mut taken: Vec<_> = std::iter::from_fn(|| idle.pop()).take(now).collect();
    let before = taken.len();
    taken.retain_mut(|conn| conn.swept_idle() <= sweeps_allowed && conn.is_reusable());
    let closed = before - taken.len();
    for conn in taken.into_iter().rev() {
        // Full only if requests returned more meanwhile: then this one closes.
        let _ = idle.push(conn);
    }
    closed
}

/// How many sweeps, `every` apart, may find a pooled connection unused before the next one
/// closes it, for it to close once it has idled `timeout` (and at most `every` later): the
/// first sweep to find it can come right after it went idle, so the one that closes it is
/// the first after `timeout` has certainly passed.
pub fn idle_sweeps_allowed(timeout: Duration, every: Duration) -> u32 {
    let every = every.as_nanos().max(1);
    u32::try_from(timeout.as_nanos().div_ceil(every)).unwrap_or(u32::MAX)
}

impl Candidate for Arc<Endpoint> {
    fn in_flight(&self) -> u64 {
        Endpoint::in_flight(self)
    }

    fn is_available(&self) -> bool {
        Endpoint::is_available(self)
    }
}

/// Holds one in-flight slot on an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::tls::upstream_stream::UpstreamStream;

    #[test]
    fn a_connection_closes_at_the_first_sweep_after_its_idle_timeout() {
        let every = Duration::from_secs(2);
        let allowed = |timeout| idle_sweeps_allowed(timeout, every);
        // Found idle by sweep k (the first can come right after it went idle), a connection
        // has idled at least (k - 1) * 2 s: the one closing it is the first with that ≥ timeout.
        assert_eq!(allowed(Duration::from_secs(60)), 30);
        assert_eq!(allowed(Duration::from_secs(2)), 1);
        assert_eq!(allowed(Duration::from_millis(2001)), 2);
        assert_eq!(allowed(Duration::from_millis(500)), 1);
        assert_eq!(allowed(Duration::MAX), u32::MAX);
    }

    /// An endpoint with `n` open, idle pooled connections (and their server sides, kept open).
    async fn pooled(n: usize) -> (Endpoint, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let endpoint = Endpoint::unlisted("test", address, Pool::Http1(IdleStack::new(8)));
        let mut servers = Vec::new();
        for _ in 0..n {
            let client = TcpStream::connect(address).await.unwrap();
            servers.push(listener.accept().await.unwrap().0);
            let Pool::Http1(idle) = &endpoint.pool else {
                unreachable!()
            };
            let mut conn = h1::Connection::new(UpstreamStream::Plain(client), None);
            conn.idle();
            idle.push(conn).unwrap();
        }
        (endpoint, servers)
    }

    #[tokio::test]
    async fn sweeps_close_connections_left_unused_past_the_allowed_count_and_no_others() {
        let (endpoint, _servers) = pooled(2).await;
        let Pool::Http1(idle) = &endpoint.pool else {
            unreachable!()
        };
        assert_eq!(endpoint.close_idle(2), 0, "first sweep");
        // One is used and given back between the sweeps: its idle time starts again.
        let mut used = idle.pop().unwrap();
        used.idle();
        idle.push(used).unwrap();
        assert_eq!(endpoint.close_idle(2), 0, "second sweep");
        assert_eq!(
            endpoint.close_idle(2),
            1,
            "third sweep: the unused one goes"
        );
        assert_eq!(endpoint.idle_connections(), 1);
        assert_eq!(
            endpoint.close_idle(2),
            1,
            "fourth: the one used before the second"
        );
        assert_eq!(endpoint.idle_connections(), 0);
    }

    #[test]
    fn the_http2_connection_is_idle_only_while_no_request_is_in_flight_or_sent() {
        let address = ([127, 0, 0, 1], 9).into();
        let endpoint = Arc::new(Endpoint::unlisted(
            "test",
            address,
            Pool::Http2(Default::default()),
        ));
        let unused = || endpoint.unused_sweeps.load(Ordering::Relaxed);
        endpoint.close_idle(2);
        assert_eq!(unused(), 1);
        let in_flight = endpoint.start_request();
        endpoint.close_idle(2);
        assert_eq!(unused(), 0, "a request in flight (a long stream) is use");
        drop(in_flight);
        endpoint.close_idle(2);
        endpoint.note_http2_use();
        assert_eq!(unused(), 0, "a request sent since the last sweep is use");
        endpoint.close_idle(2);
        endpoint.close_idle(2);
        assert_eq!(unused(), 2);
        endpoint.close_idle(2);
        assert_eq!(unused(), 0, "the third unused sweep lets the connection go");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_goes_at_the_next_sweep() {
        let (endpoint, mut servers) = pooled(2).await;
        drop(servers.pop());
        // The reactor learns of the close asynchronously.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut closed = 0;
        while closed == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
            closed = endpoint.close_idle(u32::MAX);
        }
        assert_eq!(closed, 1);
        assert_eq!(endpoint.idle_connections(), 1, "the live one stays");
    }
}

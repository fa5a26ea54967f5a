//! Long-lived per-endpoint state: in-flight count, whether it is in rotation, outlier counts,
//! and the connection pool.
//!
//! An `Endpoint` outlives config reloads: the reloader keeps it for as long as its service
//! still lists its address with the same protocol, so pools, counters, health and ejections
//! carry over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2;

use super::balance::Candidate;
use super::idle::IdleStack;
use super::outlier::EndpointOutlier;
use crate::http::body::UpstreamBody;
use crate::http::h1;

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

/// One upstream endpoint of one service.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub address: SocketAddr,
    /// `ip:port`, for logs, metrics and `/clusters`.
    pub label: Arc<str>,
    /// Name of the service it belongs to.
    pub service: Arc<str>,
    in_flight: AtomicU64,
    /// [`OutOfRotation`] bits: one load tells a picker whether the endpoint is usable.
    out: AtomicU8,
    /// Passive outlier-detection counts.
    pub outlier: EndpointOutlier,
    healthy: metrics::Gauge,
    /// Its connections.
    pub pool: Pool,
}

impl Endpoint {
    /// A fresh endpoint of `service`, in rotation, with an empty pool.
    pub fn new(service: &Arc<str>, address: SocketAddr, pool: Pool) -> Self {
        let label: Arc<str> = address.to_string().into();
        let healthy = metrics::gauge!(
            crate::metrics::ENDPOINT_HEALTHY,
            "service" => service.clone(),
            "endpoint" => label.clone()
        );
        healthy.set(1.0);
        Self {
            address,
            label,
            service: service.clone(),
            in_flight: AtomicU64::new(0),
            out: AtomicU8::new(0),
            outlier: EndpointOutlier::default(),
            healthy,
            pool,
        }
    }

    /// An endpoint outside any configured service (an intercepted connection's original
    /// destination): same pool and accounting, but no `strait_endpoint_healthy` series, whose
    /// cardinality would follow every address the pod talks to.
    pub fn unlisted(service: &str, address: SocketAddr, pool: Pool) -> Self {
        Self {
            address,
            label: address.to_string().into(),
            service: service.into(),
            in_flight: AtomicU64::new(0),
            out: AtomicU8::new(0),
            outlier: EndpointOutlier::default(),
            healthy: metrics::Gauge::noop(),
            pool,
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

    /// Closes the idle HTTP/1 connections the upstream closed (or spoke on) since they went
    /// idle, which would otherwise wait in CLOSE_WAIT — holding a file descriptor and a
    /// `maxConnections` slot — until a request took them. Returns how many it closed.
    pub fn close_dead_idle(&self) -> usize {
        let Pool::Http1(idle) = &self.pool else {
            return 0;
        };
        // What is there now taken out (top first) and the live ones put back bottom first, so
        // that their order stands; a check costs a syscall only for a socket that turned
        // readable, so requests find the pool empty for microseconds at most.
        let now = idle.len();
        let mut taken: Vec<_> = std::iter::from_fn(|| idle.pop()).take(now).collect();
        let before = taken.len();
        taken.retain_mut(|conn| conn.is_reusable());
        let closed = before - taken.len();
        for conn in taken.into_iter().rev() {
            // Full only if requests returned more meanwhile: then this one closes.
            let _ = idle.push(conn);
        }
        closed
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

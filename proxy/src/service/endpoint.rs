//! Long-lived per-endpoint state: in-flight count and the connection pool.
//!
//! An `Endpoint` outlives config reloads: the reloader keeps it for as long as its service
//! still lists its address with the same protocol, so pools and counters carry over.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use crossbeam_queue::ArrayQueue;
use hyper::client::conn::{http1, http2};

use super::balance::Candidate;
use crate::http::body::UpstreamBody;

/// An HTTP/1 connection ready for its next request.
pub type Http1Sender = http1::SendRequest<UpstreamBody>;
/// A shared HTTP/2 connection.
pub type Http2Sender = http2::SendRequest<UpstreamBody>;

/// How the proxy keeps connections to one endpoint.
#[derive(Debug)]
pub enum Pool {
    /// Idle HTTP/1 keep-alive connections (lock-free queue; boxed: it is cache-padded).
    Http1(Box<ArrayQueue<Http1Sender>>),
    /// One multiplexed HTTP/2 connection, replaced when it closes.
    Http2(ArcSwapOption<Http2Sender>),
    /// TCP: a connection per client connection, nothing pooled.
    Tcp,
}

/// One upstream endpoint of one service.
#[derive(Debug)]
pub struct Endpoint {
    /// Where it listens.
    pub address: SocketAddr,
    /// `ip:port`, for logs, metrics and `/clusters`.
    pub label: Arc<str>,
    in_flight: AtomicU64,
    /// Its connections.
    pub pool: Pool,
}

impl Endpoint {
    /// A fresh endpoint with an empty pool.
    pub fn new(address: SocketAddr, pool: Pool) -> Self {
        Self {
            address,
            label: address.to_string().into(),
            in_flight: AtomicU64::new(0),
            pool,
        }
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
        true
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

/// An HTTP/1 connection lent to one exchange; [`release`](Self::release) gives it back.
#[derive(Debug)]
pub struct PooledHttp1 {
    /// The connection.
    pub sender: Http1Sender,
    /// Whose pool it returns to.
    pub endpoint: Arc<Endpoint>,
}

impl PooledHttp1 {
    /// Returns the connection to the idle queue (dropped, and so closed, when the queue is full).
    pub fn release(self) {
        if let Pool::Http1(queue) = &self.endpoint.pool {
            if !self.sender.is_closed() {
                let _ = queue.push(self.sender);
            }
        }
    }
}

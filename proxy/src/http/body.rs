//! Body types: what goes to the upstream and what comes back to the client, without boxing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::service::breaker::Slot;
use crate::service::endpoint::{InFlight, PooledHttp1};

/// The body sent upstream: the client's streamed body, or a small body the proxy made.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The downstream request body, streamed as it arrives.
    Streamed(Incoming),
    /// A body kept in memory (for retries), sent in one frame.
    Full(Option<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Streamed(b) => Pin::new(b).poll_frame(cx),
            Self::Full(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Streamed(b) => b.is_end_stream(),
            Self::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Streamed(b) => b.size_hint(),
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// The body returned to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// An upstream response streamed through; holds the endpoint's in-flight slot until the
    /// body ends, and gives the HTTP/1 connection back to its pool when it ends cleanly.
    Upstream {
        /// The upstream body.
        inner: Incoming,
        /// Counts the request as in flight on its endpoint while the body streams.
        in_flight: Option<InFlight>,
        /// Counts it against the service's `maxRequests` while the body streams.
        slot: Option<Slot>,
        /// The HTTP/1 connection to return to the pool at end of stream.
        reuse: Option<PooledHttp1>,
    },
    /// A response the proxy made itself.
    Local(Full<Bytes>),
}

impl ResponseBody {
    /// A proxy-made body.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        Self::Local(Full::new(bytes.into()))
    }

    /// An empty proxy-made body.
    pub fn empty() -> Self {
        Self::Local(Full::new(Bytes::new()))
    }

    fn finish(&mut self) {
        if let Self::Upstream {
            in_flight,
            slot,
            reuse,
            ..
        } = self
        {
            in_flight.take();
            slot.take();
            if let Some(conn) = reuse.take() {
                conn.release();
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match this {
            Self::Upstream { inner, .. } => Pin::new(inner).poll_frame(cx),
            Self::Local(full) => {
                return Pin::new(full)
                    .poll_frame(cx)
                    .map_err(|never| match never {})
            }
        };
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => {
                // A broken upstream body: the connection is not reusable.
                if let Self::Upstream {
                    reuse,
                    in_flight,
                    slot,
                    ..
                } = this
                {
                    reuse.take();
                    in_flight.take();
                    slot.take();
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { inner, .. } => inner.is_end_stream(),
            Self::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { inner, .. } => inner.size_hint(),
            Self::Local(full) => full.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // The server may never poll a body it knows is empty (HEAD, 204, 304): still reuse it.
        if let Self::Upstream { inner, reuse, .. } = self {
            if !inner.is_end_stream() {
                reuse.take();
            }
        }
        self.finish();
    }
}

//! Body types: what goes to the upstream and what comes back to the client, without boxing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use super::error::UpstreamError;
use super::h1;
use crate::service::breaker::Slot;
use crate::service::endpoint::InFlight;

/// A client's request body: read whole with its head by the HTTP/1 fast path (a small body of
/// announced length, or none; see [`super::h1::serve`]), or by hyper's server as it arrives.
#[derive(Debug)]
pub enum ClientBody {
    /// The whole body (empty: none), sent as one frame.
    Whole(Bytes),
    /// Read by hyper's server as it arrives.
    Streamed(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Whole(bytes) if bytes.is_empty() => Poll::Ready(None),
            Self::Whole(bytes) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes))))),
            Self::Streamed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole(bytes) => bytes.is_empty(),
            Self::Streamed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Self::Streamed(b) => b.size_hint(),
        }
    }
}

/// The body sent upstream: the client's streamed body, or a small body the proxy made.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The downstream request body, streamed as it arrives.
    Streamed(ClientBody),
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

/// An upstream's response body, by the client that read its head.
#[derive(Debug)]
pub enum UpstreamResponseBody {
    /// Read off a pooled HTTP/1 connection by the task polling it.
    Http1(h1::Body),
    /// Streamed from hyper's HTTP/2 client.
    Http2(Incoming),
}

impl Body for UpstreamResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match self.get_mut() {
            Self::Http1(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamError::Http1),
            Self::Http2(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamError::Http2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1(b) => b.is_end_stream(),
            Self::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http1(b) => b.size_hint(),
            Self::Http2(b) => b.size_hint(),
        }
    }
}

/// The body returned to the client.
#[derive(Debug)]
pub enum ResponseBody {
    /// An upstream response streamed through; holds the endpoint's in-flight slot until the
    /// body ends (an HTTP/1 connection goes back to its pool by itself when its body is read).
    Upstream {
        /// The upstream body.
        inner: UpstreamResponseBody,
        /// Counts the request as in flight on its endpoint while the body streams.
        in_flight: Option<InFlight>,
        /// Counts it against the service's `maxRequests` while the body streams.
        slot: Option<Slot>,
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

    /// The exchange is over: the endpoint and the breaker stop counting it.
    fn finish(&mut self) {
        if let Self::Upstream {
            in_flight, slot, ..
        } = self
        {
            in_flight.take();
            slot.take();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self.get_mut();
        let polled = match this {
            Self::Upstream { inner, .. } => Pin::new(inner).poll_frame(cx),
            Self::Local(full) => {
                return Pin::new(full)
                    .poll_frame(cx)
                    .map_err(|never| match never {})
            }
        };
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.finish();
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

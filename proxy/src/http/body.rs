//! Body types: what goes to the upstream and what comes back to the client, without boxing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use super::error::UpstreamError;
use super::h1;
use super::stall::StallTimer;
use crate::service::breaker::Slot;
use crate::service::endpoint::InFlight;

/// Why a client's request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// No byte arrived for `limits.bodyReadTimeout`.
    #[error("no body bytes for {0:?}")]
    Stalled(std::time::Duration),
    /// The client closed the connection before the body's end.
    #[error("connection closed before the body's end")]
    Truncated,
    /// The chunked framing is malformed.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    /// Reading the client's connection failed.
    #[error("reading the body: {0}")]
    Io(#[source] std::io::Error),
    /// The HTTP/2 stream failed.
    #[error("HTTP/2 body: {0}")]
    Http2(#[source] hyper::Error),
}

/// A client's request body: read whole with its head (a small body of announced length
/// already in the buffer, or none), or streamed off the connection as it is polled.
#[derive(Debug)]
pub enum ClientBody {
    /// The whole body (empty: none), sent as one frame.
    Whole(Bytes),
    /// Read off an HTTP/1 connection by whoever polls it.
    Http1(h1::RequestBody),
    /// An HTTP/2 stream's body, guarded against stalls.
    Http2 {
        /// The stream's data.
        body: Incoming,
        /// Fails the body when nothing arrives for the configured time.
        stall: Box<StallTimer>,
    },
}

impl ClientBody {
    /// An HTTP/2 request's body, failing after `stall` without a byte.
    pub fn http2(body: Incoming, stall: std::time::Duration) -> Self {
        if body.is_end_stream() {
            return Self::Whole(Bytes::new());
        }
        Self::Http2 {
            body,
            stall: Box::new(StallTimer::new(stall)),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Whole(bytes) if bytes.is_empty() => Poll::Ready(None),
            Self::Whole(bytes) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(bytes))))),
            Self::Http1(b) => Pin::new(b).poll_frame(cx),
            Self::Http2 { body, stall } => match Pin::new(body).poll_frame(cx) {
                Poll::Pending => {
                    let stalled = std::task::ready!(stall.poll_expired(cx));
                    Poll::Ready(Some(Err(BodyError::Stalled(stalled))))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    stall.progress();
                    let frame = match frame.into_trailers() {
                        Ok(mut trailers) => {
                            h1::strip_framing_fields(&mut trailers);
                            Frame::trailers(trailers)
                        }
                        Err(frame) => frame,
                    };
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Http2(e)))),
                Poll::Ready(None) => Poll::Ready(None),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Whole(bytes) => bytes.is_empty(),
            Self::Http1(b) => b.is_end_stream(),
            Self::Http2 { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Self::Http1(b) => b.size_hint(),
            Self::Http2 { body, .. } => body.size_hint(),
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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
    /// After a 101 to an upgrade: the upstream's connection, now another protocol's, and
    /// the bytes it sent right behind its 101.
    pub fn take_upgraded(
        &mut self,
    ) -> Option<(crate::tls::upstream_stream::UpstreamStream, bytes::BytesMut)> {
        match self {
            Self::Upstream {
                inner: UpstreamResponseBody::Http1(body),
                ..
            } => body.take_upgraded(),
            _ => None,
        }
    }

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

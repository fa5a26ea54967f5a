//! A response body read straight off the upstream connection by whoever polls it (the
//! downstream connection's task): no second task, no channel. The connection goes back to its
//! pool the moment the body's last byte is read.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::conn::Connection;
use super::decode::{Chunked, Framing, Head, Step};
use super::write::{RequestWriter, WriteFailure};
use super::Error;
use crate::service::endpoint::{Endpoint, Pool};
use crate::tls::upstream_stream::UpstreamStream;

/// A connection lent to one exchange, and the endpoint whose pool it returns to.
#[derive(Debug)]
pub struct Lease {
    /// The connection.
    pub conn: Box<Connection>,
    /// Whose pool it returns to.
    pub endpoint: Arc<Endpoint>,
}

impl Lease {
    /// Gives the connection back to the idle pool (closed instead when the pool is full).
    pub fn release(mut self) {
        if let Pool::Http1(idle) = &self.endpoint.pool {
            self.conn.idle();
            let _ = idle.push(self.conn);
        }
    }
}

/// Reads at most this much at once for a large body.
const MAX_READ: usize = 128 * 1024;
/// Reads at least this much at once.
const MIN_READ: usize = 8 * 1024;

/// Room to read into for a body with `left` bytes to come.
fn read_size(left: u64) -> usize {
    usize::try_from(left)
        .unwrap_or(usize::MAX)
        .clamp(MIN_READ, MAX_READ)
}

/// What remains of the body.
#[derive(Debug)]
enum Remaining {
    /// Bytes already read: the whole body.
    Whole(Bytes),
    /// This many bytes still to read.
    Length(u64),
    /// A chunked body, being decoded.
    Chunked(Chunked),
    /// Until the upstream closes.
    UntilClose,
    /// A 101: the connection is waiting to be taken for a tunnel.
    Switched,
    /// Nothing more.
    Done,
}

/// An upstream's HTTP/1 response body.
#[derive(Debug)]
pub struct Body {
    remaining: Remaining,
    /// The connection it is read from; `None` once the body is complete or broken.
    lease: Option<Lease>,
    /// The rest of the request, when the upstream answered before reading all of it.
    writer: Option<Box<RequestWriter>>,
    keep_alive: bool,
}

impl Body {
    /// The body that follows `head` on the leased connection, with what is left to write of
    /// the request. A body already read whole with its head (the common small response)
    /// releases the connection at once.
    pub fn new(head: &Head, mut lease: Lease, writer: Option<Box<RequestWriter>>) -> Self {
        let input = &mut lease.conn.input;
        let remaining = match head.framing {
            Framing::Empty => Remaining::Done,
            Framing::Length(n) if n <= input.len() as u64 => {
                Remaining::Whole(input.split_to(n as usize).freeze())
            }
            Framing::Length(n) => Remaining::Length(n),
            Framing::Chunked => Remaining::Chunked(Chunked::Size),
            Framing::UntilClose => Remaining::UntilClose,
            Framing::Switched => Remaining::Switched,
        };
        let mut body = Self {
            remaining,
            lease: Some(lease),
            writer,
            keep_alive: head.keep_alive,
        };
        if matches!(body.remaining, Remaining::Whole(_) | Remaining::Done) {
            body.finish();
        }
        body
    }

    /// The upgraded connection after a 101 (once).
    pub fn take_upgraded(&mut self) -> Option<(UpstreamStream, bytes::BytesMut)> {
        if !matches!(self.remaining, Remaining::Switched) {
            return None;
        }
        self.remaining = Remaining::Done;
        self.lease.take().map(|l| (*l.conn).into_upgraded())
    }

    /// The body is read: keep the connection when the exchange left it clean (the request
    /// all sent, nothing unread).
    fn finish(&mut self) {
        let unsent = self.writer.take().is_some();
        if let Some(lease) = self.lease.take() {
            if self.keep_alive && !unsent && lease.conn.input.is_empty() {
                lease.release();
            }
        }
    }

    /// Sends more of the request, when the upstream answered before reading all of it.
    fn poll_request(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let (Some(writer), Some(lease)) = (self.writer.as_mut(), self.lease.as_mut()) else {
            return Ok(());
        };
        match writer.poll_write(cx, &mut lease.conn.stream) {
            Poll::Pending => {}
            Poll::Ready(Ok(())) => {
                if let Some(done) = self.writer.take() {
                    lease.conn.output = done.into_buffer();
                }
            }
            // The upstream stopped reading: its answer still comes, the connection goes.
            Poll::Ready(Err(WriteFailure::Socket(_))) => {
                self.writer = None;
                self.keep_alive = false;
            }
            Poll::Ready(Err(WriteFailure::Client(e))) => return Err(e),
        }
        Ok(())
    }

    /// A broken body: the connection goes.
    fn fail(&mut self, e: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.remaining = Remaining::Done;
        self.lease = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        if let Err(e) = this.poll_request(cx) {
            return this.fail(e);
        }
        loop {
            match &mut this.remaining {
                Remaining::Whole(bytes) => {
                    let bytes = std::mem::take(bytes);
                    this.remaining = Remaining::Done;
                    if !bytes.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Remaining::Done | Remaining::Switched => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Remaining::Length(left) => {
                    let left = *left;
                    let Some(lease) = this.lease.as_mut() else {
                        return this.fail(Error::Truncated);
                    };
                    if lease.conn.input.is_empty() {
                        match ready!(lease.conn.poll_fill(cx, read_size(left))) {
                            Ok(0) => return this.fail(Error::Truncated),
                            Ok(_) => {}
                            Err(e) => return this.fail(Error::Io(e)),
                        }
                    }
                    let input = &mut lease.conn.input;
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let data = input.split_to(n).freeze();
                    let left = left - n as u64;
                    if left == 0 {
                        // Released before the last bytes are even written downstream.
                        this.remaining = Remaining::Done;
                        this.finish();
                    } else {
                        this.remaining = Remaining::Length(left);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Remaining::Chunked(state) => {
                    let Some(lease) = this.lease.as_mut() else {
                        return this.fail(Error::Truncated);
                    };
                    match state.step(&mut lease.conn.input) {
                        Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Step::Trailers(trailers)) => {
                            // The last frame: the server may not poll again after it.
                            this.remaining = Remaining::Done;
                            this.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(Step::End) => this.remaining = Remaining::Done,
                        Ok(Step::NeedMore) => match ready!(lease.conn.poll_fill(cx, MIN_READ)) {
                            Ok(0) => return this.fail(Error::Truncated),
                            Ok(_) => {}
                            Err(e) => return this.fail(Error::Io(e)),
                        },
                        Err(e) => return this.fail(e),
                    }
                }
                Remaining::UntilClose => {
                    let Some(lease) = this.lease.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if lease.conn.input.is_empty() {
                        match ready!(lease.conn.poll_fill(cx, MIN_READ)) {
                            Ok(0) => {
                                this.remaining = Remaining::Done;
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(Error::Io(e)),
                        }
                    }
                    let data = lease.conn.input.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.remaining, Remaining::Done | Remaining::Switched)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.remaining {
            Remaining::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Remaining::Length(n) => SizeHint::with_exact(*n),
            Remaining::Done | Remaining::Switched => SizeHint::with_exact(0),
            Remaining::Chunked(_) | Remaining::UntilClose => SizeHint::default(),
        }
    }
}

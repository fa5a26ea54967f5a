//! A client's request body streamed off its connection by whoever polls it (the upstream
//! writer), while the same connection may already carry the response back: the socket is
//! shared for the length of the exchange ([`Inbound`]), read here and written by the server.
//!
//! The body reads only what the request's framing says is its own; bytes read past its end
//! (a pipelined request behind a chunked body) go back to the connection with the buffer when
//! the body ends, and so does whether it was read whole — a connection whose last body was
//! not read to its end cannot carry another request.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::decode::{Chunked, Step};
use super::downstream::Downstream;
use super::request::BodyFraming;
use crate::http::body::BodyError;
use crate::http::stall::StallTimer;

/// Reads at least this much at once.
const MIN_READ: usize = 8 * 1024;
/// Reads at most this much at once.
const MAX_READ: usize = 64 * 1024;
/// The interim answer a client that sent `Expect: 100-continue` waits for.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A client connection shared by the server (which writes the response) and the request
/// body (which reads the rest of the request) for one exchange.
#[derive(Debug)]
pub struct Inbound {
    stream: Downstream,
    /// What the body left: set once, when it ends or is dropped.
    leftover: OnceLock<Leftover>,
}

/// What a request body gives back to its connection.
#[derive(Debug, Default)]
pub struct Leftover {
    /// Bytes read past the body's end (the next request's).
    pub read: BytesMut,
    /// The body was read to its end: the connection can carry another request.
    pub complete: bool,
}

impl Inbound {
    /// Shares `stream` for an exchange.
    pub fn new(stream: Downstream) -> Arc<Self> {
        Arc::new(Self {
            stream,
            leftover: OnceLock::new(),
        })
    }

    /// The socket.
    pub fn stream(&self) -> &Downstream {
        &self.stream
    }

    /// The connection back, once nothing else holds it, with what its body left; `None`
    /// while the body is still held somewhere (the connection cannot be reused then).
    pub fn reclaim(this: Arc<Self>) -> Option<(Downstream, Leftover)> {
        let Self { stream, leftover } = Arc::into_inner(this)?;
        Some((stream, leftover.into_inner().unwrap_or_default()))
    }
}

/// Writes to a shared connection (`&TcpStream` has no `AsyncWrite` of its own). Over TLS,
/// what is written is sent once flushed.
#[derive(Debug, Clone, Copy)]
pub struct SharedWriter<'a>(pub &'a Downstream);

impl AsyncWrite for SharedWriter<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.poll_write_shared(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush_shared(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The server shuts the socket down itself once it has it back.
        Poll::Ready(Ok(()))
    }
}

/// Where the body is.
#[derive(Debug)]
enum Remaining {
    /// This many bytes still to come.
    Length(u64),
    /// A chunked body, being decoded.
    Chunked(Chunked),
    /// Over: everything was yielded.
    Done,
}

/// A request body read off the client connection as it is polled.
#[derive(Debug)]
pub struct RequestBody {
    /// The connection; given up when the body ends.
    io: Option<Arc<Inbound>>,
    /// Bytes read and not yielded yet (the start of the body comes with the head's read).
    buf: BytesMut,
    remaining: Remaining,
    /// Bytes of `100 Continue` still to write before the first read.
    continue_left: usize,
    /// `100 Continue` was written and is still to be flushed (TLS holds it back until then).
    continue_unsent: bool,
    /// Fails the body when no byte arrives for the configured time.
    stall: StallTimer,
}

impl RequestBody {
    /// The body framed by `framing` on `io`, whose first bytes are in `read`; `expect`: the
    /// client waits for `100 Continue`. A body that stalls for `stall` fails.
    pub fn new(
        io: Arc<Inbound>,
        read: BytesMut,
        framing: BodyFraming,
        expect: bool,
        stall: Duration,
    ) -> Self {
        let remaining = match framing {
            BodyFraming::None => Remaining::Done,
            BodyFraming::Length(n) => Remaining::Length(n),
            BodyFraming::Chunked => Remaining::Chunked(Chunked::Size),
        };
        let mut body = Self {
            io: Some(io),
            buf: read,
            remaining,
            continue_left: if expect { CONTINUE.len() } else { 0 },
            continue_unsent: expect,
            stall: StallTimer::new(stall),
        };
        if matches!(body.remaining, Remaining::Done) {
            body.finish(true);
        }
        body
    }

    /// Hands the connection back with what was read past the body, and whether the body
    /// was read whole.
    fn finish(&mut self, complete: bool) {
        self.remaining = Remaining::Done;
        if let Some(io) = self.io.take() {
            let _ = io.leftover.set(Leftover {
                read: std::mem::take(&mut self.buf),
                complete,
            });
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.finish(false);
        Poll::Ready(Some(Err(e)))
    }

    /// Writes what is left of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = &self.io else {
            return Poll::Ready(Ok(()));
        };
        while self.continue_left > 0 {
            let from = CONTINUE.len() - self.continue_left;
            let mut writer = SharedWriter(io.stream());
            let n = ready!(Pin::new(&mut writer).poll_write(cx, &CONTINUE[from..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.continue_left -= n;
        }
        ready!(io.stream().poll_flush_shared(cx))?;
        self.continue_unsent = false;
        Poll::Ready(Ok(()))
    }

    /// Reads more of the body into the buffer: `Ready(Ok(()))` when some arrived.
    fn poll_read(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<Result<(), BodyError>> {
        let Some(io) = &self.io else {
            return Poll::Ready(Err(BodyError::Truncated));
        };
        let room = usize::try_from(want)
            .unwrap_or(usize::MAX)
            .clamp(MIN_READ, MAX_READ);
        match io.stream().poll_read_shared(cx, &mut self.buf, room) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(BodyError::Truncated)),
            Poll::Ready(Ok(_)) => {
                self.stall.progress();
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(BodyError::Io(e))),
            Poll::Pending => {
                let stall = ready!(self.stall.poll_expired(cx));
                Poll::Ready(Err(BodyError::Stalled(stall)))
            }
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let complete = matches!(self.remaining, Remaining::Done);
        self.finish(complete);
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.continue_unsent {
            if let Err(e) = ready!(this.poll_continue(cx)) {
                return this.fail(BodyError::Io(e));
            }
        }
        loop {
            match &mut this.remaining {
                Remaining::Done => return Poll::Ready(None),
                Remaining::Length(left) => {
                    if !this.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(this.buf.len());
                        *left -= n as u64;
                        let data = this.buf.split_to(n).freeze();
                        if *left == 0 {
                            this.finish(true);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    let want = *left;
                    if let Err(e) = ready!(this.poll_read(cx, want)) {
                        return this.fail(e);
                    }
                }
                Remaining::Chunked(decoder) => match decoder.step(&mut this.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Trailers(mut trailers)) => {
                        this.finish(true);
                        strip_framing_fields(&mut trailers);
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Step::End) => {
                        this.finish(true);
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {
                        if let Err(e) = ready!(this.poll_read(cx, 0)) {
                            return this.fail(e);
                        }
                    }
                    Err(super::Error::Malformed(what)) => {
                        return this.fail(BodyError::Chunked(what))
                    }
                    Err(_) => return this.fail(BodyError::Chunked("chunked body")),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.remaining, Remaining::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Remaining::Length(n) => SizeHint::with_exact(n),
            Remaining::Done => SizeHint::with_exact(0),
            Remaining::Chunked(_) => SizeHint::new(),
        }
    }
}

/// Removes from request trailers the fields that frame or route a message: a trailer may not
/// change how the request was read or where it went (RFC 9110 §6.5.1).
pub fn strip_framing_fields(trailers: &mut HeaderMap) {
    use http::header::{
        AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
        HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    };
    if trailers.is_empty() {
        return;
    }
    for name in [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        HOST,
        CONNECTION,
        TE,
        TRAILER,
        UPGRADE,
        CONTENT_ENCODING,
        CONTENT_RANGE,
        CONTENT_TYPE,
        AUTHORIZATION,
    ] {
        trailers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection", "expect", "max-forwards"] {
        trailers.remove(name);
    }
}

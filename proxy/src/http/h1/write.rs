//! Writing a request body to the upstream as the client's body arrives, framed by length or
//! in chunks, driven by polling (by the request's task until the response head arrives, by
//! the response body after that).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::encode::{self, Framing};
use super::Error;
use crate::http::body::UpstreamBody;
use crate::tls::upstream_stream::UpstreamStream;

/// A data frame this small is copied into the output buffer; a larger one is written from
/// where it is.
const COPY_AT_MOST: usize = 16 * 1024;
/// Output gathered before it is written.
const BATCH: usize = 64 * 1024;

/// Why writing a request stopped.
#[derive(Debug)]
pub enum WriteFailure {
    /// The client's body broke or did not match its framing.
    Client(Error),
    /// The upstream socket failed.
    Socket(io::Error),
}

/// A request on its way out: the head and body bytes queued, the rest of the body to come.
#[derive(Debug)]
pub struct RequestWriter {
    /// Bytes to write, from `written` on: the head, framing and small frames.
    out: Vec<u8>,
    written: usize,
    /// A large frame, written after `out`.
    large: Option<Bytes>,
    /// The body still to read; `None` once it has ended (its framing is in `out`).
    body: Option<UpstreamBody>,
    framing: Framing,
    /// Bytes a length-framed body may still carry.
    left: u64,
    trailers: Option<HeaderMap>,
}

impl RequestWriter {
    /// A writer for `body`, after the head already in `out`.
    pub fn new(out: Vec<u8>, body: UpstreamBody, framing: Framing) -> Self {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let ended = framing == Framing::None;
        Self {
            out,
            written: 0,
            large: None,
            body: (!ended).then_some(body),
            framing,
            left,
            trailers: None,
        }
    }

    /// The output buffer, for the next request on the connection.
    pub fn into_buffer(self) -> Vec<u8> {
        self.out
    }

    /// Writes what the body has ready; `Ready(Ok)` once the whole request is written.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut UpstreamStream,
    ) -> Poll<Result<(), WriteFailure>> {
        loop {
            // Gather what the body has ready (a body that is already here leaves in the same
            // write as the head).
            while self.large.is_none() && self.out.len() < BATCH {
                let Some(body) = self.body.as_mut() else {
                    break;
                };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(frame) => self.queue(frame).map_err(WriteFailure::Client)?,
                }
            }
            if self.written == self.out.len() && self.large.is_none() {
                self.out.clear();
                self.written = 0;
                // TLS may hold records back when the socket would block (plaintext: a no-op).
                ready!(Pin::new(&mut *stream).poll_flush(cx)).map_err(WriteFailure::Socket)?;
                return if self.body.is_none() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            ready!(self.poll_flush(cx, stream)).map_err(WriteFailure::Socket)?;
        }
    }

    /// Queues one frame of the body (or its end).
    fn queue(
        &mut self,
        frame: Option<Result<http_body::Frame<Bytes>, crate::http::body::BodyError>>,
    ) -> Result<(), Error> {
        let chunked = self.framing == Framing::Chunked;
        let frame = match frame {
            None => {
                self.body = None;
                if chunked {
                    encode::last_chunk(&mut self.out, self.trailers.as_ref());
                } else if self.left != 0 {
                    return Err(Error::RequestBodyLength);
                }
                return Ok(());
            }
            Some(frame) => frame.map_err(Error::RequestBody)?,
        };
        let data = match frame.into_data() {
            Ok(data) if data.is_empty() => return Ok(()),
            Ok(data) => data,
            Err(frame) => {
                self.trailers = frame.into_trailers().ok();
                return Ok(());
            }
        };
        if chunked {
            encode::chunk_start(&mut self.out, data.len());
        } else {
            // Never more than announced: the rest would be read as another request.
            self.left = self
                .left
                .checked_sub(data.len() as u64)
                .ok_or(Error::RequestBodyLength)?;
        }
        if data.len() <= COPY_AT_MOST {
            self.out.extend_from_slice(&data);
            if chunked {
                encode::chunk_end(&mut self.out);
            }
        } else {
            self.large = Some(data);
        }
        Ok(())
    }

    /// Writes everything queued.
    fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut UpstreamStream,
    ) -> Poll<io::Result<()>> {
        loop {
            let queued = &self.out[self.written..];
            let large = self.large.as_deref().unwrap_or_default();
            if queued.is_empty() && large.is_empty() {
                let chunk_done = self.large.take().is_some();
                self.out.clear();
                self.written = 0;
                if chunk_done && self.framing == Framing::Chunked {
                    encode::chunk_end(&mut self.out);
                    continue;
                }
                return Poll::Ready(Ok(()));
            }
            let n = if large.is_empty() {
                ready!(Pin::new(&mut *stream).poll_write(cx, queued))?
            } else {
                let slices = [IoSlice::new(queued), IoSlice::new(large)];
                ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &slices))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let from_queue = n.min(queued.len());
            self.written += from_queue;
            if let Some(large) = self.large.as_mut() {
                large.advance(n - from_queue);
            }
        }
    }
}

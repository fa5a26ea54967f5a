//! The downstream HTTP/1.1 fast path: plain requests — no upgrade, no expectation, no body or a
//! small one of announced length (read whole with the head), the bulk of what a sidecar
//! proxies — are read, handled and answered straight off the socket, in the connection's task,
//! with one buffer each way.
//!
//! Everything else goes to hyper's server, which takes the connection from the first request
//! the fast path does not serve (with the bytes already read, see [`Rewound`]) and serves it
//! to its end: chunked and large bodies, a small body still arriving when the head's time is
//! up, `Expect: 100-continue`, upgrades, HTTP/1.0, HTTP/2's preface, and every malformed or
//! oversized head (hyper answers those with its 400/414/431). hyper's dispatcher cost 8.4k of
//! the 25k instructions a small proxied request took (callgrind), for a job this loop does in
//! a fraction.

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::Request;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::encode::{chunk_end, chunk_start, last_chunk};
use super::recycle;
use super::request::{self, Parsed, Plain};
use super::respond::{self, Framing};
use crate::http::body::{ClientBody, ResponseBody};
use crate::http::pipeline::{handle, Conn};
use crate::http::response::Reply;
use crate::shared::Drained;

/// Room a read asks for: a request of usual size in one read (a request split across reads
/// costs a second read and a second parse).
const READ_SIZE: usize = 1024;
/// Body bytes gathered behind the head into one write; larger frames are written as they are.
const COALESCE: usize = 16 * 1024;
/// A read buffer with more room than this left is not kept for the next head.
const KEEP_READ_BUFFER: usize = 4 * READ_SIZE;
/// A write buffer grown larger than this (by a big head, or a small body written with its
/// head) goes back to the allocator, not to the thread's free list.
const KEEP_WRITE_BUFFER: usize = 8 * 1024;

/// The connection's limits on reading heads.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed for a request head to arrive, counted from when the previous response was
    /// written (the slowloris guard, which also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Longest incomplete head the fast path holds before hyper's server judges it.
    pub max_head: usize,
}

/// How the fast path left the connection.
#[derive(Debug)]
pub enum Outcome {
    /// The connection is over.
    Closed,
    /// hyper's server goes on with the connection; `read` was read off `stream` and not served.
    Handoff {
        /// Bytes read and not served.
        read: BytesMut,
        /// The connection.
        stream: TcpStream,
    },
}

/// Serves plain requests on `stream` until the connection ends or a request needs hyper's
/// server. `late`: accepted while draining, so one request is served and the connection
/// closed.
///
/// This future is most of an idle connection's task, so it keeps only what the wait for the
/// next head needs: an exchange (the request handled, its response written) runs in a room
/// from the thread's free list, which holds the socket and the write buffer meanwhile. (A
/// function returning an `async` block: an `async fn` keeps its arguments twice.)
#[allow(clippy::manual_async_fn)]
pub fn serve(
    mut stream: TcpStream,
    conn: Arc<Conn>,
    limits: Limits,
    late: bool,
) -> impl Future<Output = Outcome> + Send + 'static {
    async move {
        let idle = Idle {
            timeout: tokio::time::sleep(limits.header_read_timeout),
            drained: conn.shared.drain.drained(),
            draining_seen: late,
        };
        let mut idle = std::pin::pin!(idle);
        let mut buf = BytesMut::new();
        loop {
            // The next head: the timeout counts from here, and an idle connection closes on
            // drain.
            idle.as_mut()
                .project()
                .timeout
                .reset(tokio::time::Instant::now() + limits.header_read_timeout);
            // A block ends the head's storage before the await that follows it: the
            // connection's task keeps room only for what each await needs.
            let (mut in_flight, close) = {
                // A complete head whose body is still arriving: the request's length.
                let mut awaiting = None;
                let Plain { head, body, close } = loop {
                    // Between requests the buffer is usually empty: nothing to parse yet.
                    if !buf.is_empty() {
                        awaiting = None;
                        match request::request(&mut buf) {
                            Parsed::Plain(plain) => break plain,
                            Parsed::Other => return Outcome::Handoff { read: buf, stream },
                            Parsed::Partial if buf.len() >= limits.max_head => {
                                return Outcome::Handoff { read: buf, stream }
                            }
                            Parsed::Partial => {}
                            // (Never 0: the head is part of it.)
                            Parsed::BodyToCome { total } => awaiting = NonZeroUsize::new(total),
                        }
                    }
                    let woken = std::future::poll_fn(|cx| {
                        poll_next_head(&mut stream, &mut buf, awaiting, idle.as_mut(), cx)
                    });
                    match woken.await {
                        Woken::Read(Ok(0) | Err(_)) => return Outcome::Closed,
                        Woken::Read(Ok(_)) => {}
                        // The head's time covers a small body too; one still arriving when it
                        // is up goes on through hyper's server, which waits for bodies.
                        Woken::TimedOut => {
                            return match awaiting {
                                Some(_) => Outcome::Handoff { read: buf, stream },
                                None => Outcome::Closed,
                            }
                        }
                        Woken::Draining if buf.is_empty() => return Outcome::Closed,
                        Woken::Draining => {}
                    }
                };
                let request = Request::from_parts(head, ClientBody::Whole(body));
                let mut room = recycle::room();
                room.set(Some(exchange(request, conn.clone(), stream)));
                (room, close)
            };
            let Some(exchanging) = in_flight.as_mut().as_pin_mut() else {
                return Outcome::Closed;
            };
            let reusable;
            Exchanged { stream, reusable } = exchanging.await;
            recycle::give_room(in_flight);
            if !reusable || close || late || conn.shared.drain.is_draining() {
                let _ = stream.shutdown().await;
                return Outcome::Closed;
            }
            if buf.is_empty() {
                // Nothing pipelined behind the request: the connection idles without a buffer.
                let idle = std::mem::take(&mut buf);
                if idle.capacity() <= KEEP_READ_BUFFER {
                    recycle::give_buffer(idle);
                }
            }
        }
    }
}

/// What an exchange gives back to its connection.
struct Exchanged {
    stream: TcpStream,
    /// Whether the connection can carry another exchange: the response was written whole and
    /// does not close the connection.
    reusable: bool,
}

/// One exchange on `stream`: `request` handled and its response written. The request's future
/// (3.2 KiB) and the response's writing live in the room this runs in, which the connection
/// holds only while the request is in flight; the buffer the response's head (and a small
/// body) is written from comes from the thread's free list once the response is there, and
/// goes back when it is written. (Not an `async fn`, which would keep its arguments, the
/// request among them, beside its state.)
#[allow(clippy::manual_async_fn)]
fn exchange(
    request: Request<ClientBody>,
    conn: Arc<Conn>,
    mut stream: TcpStream,
) -> impl Future<Output = Exchanged> + Send + 'static {
    async move {
        let method = request.method().clone();
        let Reply {
            status,
            fields,
            mut body,
        } = handle(request, conn).await;
        let mut out = recycle::write_buffer();
        let written = respond::head(
            &mut out,
            status,
            &fields,
            &method,
            &body.size_hint(),
            body.is_end_stream(),
        );
        drop(fields);
        let complete = write_body(&mut stream, &mut out, &mut body, written.framing).await;
        recycle::give_write_buffer(out, KEEP_WRITE_BUFFER);
        Exchanged {
            stream,
            reusable: complete && !written.close,
        }
    }
}

pin_project_lite::pin_project! {
    /// What a connection waiting for its next head waits on besides its socket, pinned
    /// together.
    struct Idle<'a> {
        // The head's time (which also closes an idle keep-alive connection).
        #[pin]
        timeout: Sleep,
        // Draining has started.
        #[pin]
        drained: Drained<'a>,
        // Draining was seen (or the connection was accepted during it): not waited on again.
        draining_seen: bool,
    }
}

/// What ended a wait for more of the next head.
enum Woken {
    /// The socket was read: `Ok(0)` at its end.
    Read(io::Result<usize>),
    /// The head's time is up.
    TimedOut,
    /// Draining started (reported once).
    Draining,
}

/// Waits for more of the next head ([`poll_read_more`]), the head's time, or draining —
/// the socket first. Written out rather than a `select!`, whose futures, flags and poller
/// widen every idle connection's task by ~40 bytes.
fn poll_next_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    total: Option<NonZeroUsize>,
    idle: Pin<&mut Idle<'_>>,
    cx: &mut Context<'_>,
) -> Poll<Woken> {
    if let Poll::Ready(read) = poll_read_more(stream, buf, total, cx) {
        return Poll::Ready(Woken::Read(read));
    }
    let idle = idle.project();
    if idle.timeout.poll(cx).is_ready() {
        return Poll::Ready(Woken::TimedOut);
    }
    if !*idle.draining_seen && idle.drained.poll(cx).is_ready() {
        *idle.draining_seen = true;
        return Poll::Ready(Woken::Draining);
    }
    Poll::Pending
}

/// Reads more of the next request into `buf`: room for the rest of it when its length is
/// known (`total`), else for a head of usual size. An empty `buf` gets room (from the thread's
/// free buffers) only once the socket turns readable, so that an idle connection holds none.
/// `Ok(0)` at end of stream.
///
/// A poll function, not an `async fn`: the idle connection's task keeps the future waiting on
/// it, and a closure over its arguments is a third of the size of an `async fn`'s state.
fn poll_read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    total: Option<NonZeroUsize>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        // The reader's own waker slot (`readable()` would queue a waiter under a lock).
        std::task::ready!(stream.poll_read_ready(cx))?;
        *buf = recycle::buffer();
    }
    match total {
        Some(total) => buf.reserve(total.get().saturating_sub(buf.len())),
        // The room freed by requests already taken off the buffer is reclaimed once nothing
        // holds them (no allocation then).
        None if buf.capacity() - buf.len() < READ_SIZE => buf.reserve(READ_SIZE),
        None => {}
    }
    // Through `AsyncRead`, which, unlike `try_read`, notes a short read as the socket drained
    // (no EAGAIN read before the next wait).
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Writes the head in `out` and then the body as `framing` delimits it; false when the
/// connection cannot carry another exchange (the body failed, or did not match its length, or
/// the client went away).
async fn write_body(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    body: &mut ResponseBody,
    framing: Framing,
) -> bool {
    let mut remaining = match framing {
        Framing::Empty => return stream.write_all(out).await.is_ok(),
        Framing::Length(n) => n,
        Framing::Chunked => u64::MAX,
    };
    loop {
        // What is ready goes out together; before waiting on the upstream, what is buffered
        // is written (a streamed body reaches the client as it comes).
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    if stream.write_all(out).await.is_err() {
                        return false;
                    }
                    out.clear();
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return false,
            // Trailers are dropped: this client did not announce `TE: trailers`.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        let len = data.len() as u64;
        if framing == Framing::Chunked {
            chunk_start(out, data.len());
        } else if len > remaining {
            return false;
        } else {
            remaining -= len;
        }
        if put(stream, out, data).await.is_err() {
            return false;
        }
        if framing == Framing::Chunked {
            chunk_end(out);
        }
    }
    match framing {
        Framing::Chunked => last_chunk(out, None),
        // The body ended short of its length: the client would wait for the rest.
        _ if remaining != 0 => return false,
        _ => {}
    }
    stream.write_all(out).await.is_ok()
}

/// Appends `data` to what is buffered, or writes both when it is large.
async fn put(stream: &mut TcpStream, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE {
        out.extend_from_slice(&data);
        return Ok(());
    }
    if !out.is_empty() {
        stream.write_all(out).await?;
        out.clear();
    }
    stream.write_all(&data).await
}

/// A connection with bytes already read off it: reads return those first.
#[derive(Debug)]
pub struct Rewound {
    read: Bytes,
    stream: TcpStream,
}

impl Rewound {
    /// `stream`, whose next bytes are `read`.
    pub fn new(read: Bytes, stream: TcpStream) -> Self {
        Self { read, stream }
    }
}

impl AsyncRead for Rewound {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

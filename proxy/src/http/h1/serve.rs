//! The downstream HTTP/1 server: every request of a connection, from its first byte to its
//! close, is read, handled and answered here, in the connection's task, with one buffer each
//! way — plain requests and small bodies read whole with their head, streamed and chunked
//! bodies read as the upstream takes them (see [`super::inbound`]), `Expect: 100-continue`,
//! upgrades, HTTP/1.0, and every refusal through [`crate::http::error::ProxyError`]'s one
//! answer. Only a connection that opens with HTTP/2's preface leaves, for hyper's HTTP/2
//! server ([`Outcome::Http2`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::downstream::Downstream;
use super::encode::{chunk_end, chunk_start, last_chunk};
use super::inbound::{Inbound, RequestBody, SharedWriter};
use super::recycle;
use super::request::{self, BodyFraming, Head, Parsed};
use super::respond::{self, Framing, Peer};
use crate::http::body::{ClientBody, ResponseBody};
use crate::http::error::ProxyError;
use crate::http::h2_preface::{self, preface, Preface};
use crate::http::headers::wants_upgrade;
use crate::http::pipeline::{handle, Conn};
use crate::http::response::Reply;
use crate::http::tunnel;
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

/// The connection's limits on reading requests, in milliseconds and counts of 32 bits: every
/// idle connection keeps a copy. Larger values saturate (49 days, 4 GiB).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    header_read_timeout_ms: u32,
    max_head: u32,
    max_headers: u32,
    body_read_timeout_ms: u32,
}

impl Limits {
    /// `header_read_timeout`: time allowed for a request head to arrive, counted from when the
    /// previous response was written (the slowloris guard, which also closes idle keep-alive
    /// connections). `max_head`: longest head read, a longer one is answered 431.
    /// `max_headers`: most header fields a head may carry, more is answered 431.
    /// `body_read_timeout`: time a request body may go without a byte. Durations are rounded
    /// up to the millisecond.
    pub fn new(
        header_read_timeout: Duration,
        max_head: usize,
        max_headers: usize,
        body_read_timeout: Duration,
    ) -> Self {
        Self {
            header_read_timeout_ms: millis(header_read_timeout),
            max_head: u32::try_from(max_head).unwrap_or(u32::MAX),
            max_headers: u32::try_from(max_headers).unwrap_or(u32::MAX),
            body_read_timeout_ms: millis(body_read_timeout),
        }
    }

    fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms.into())
    }

    fn max_head(&self) -> usize {
        self.max_head as usize
    }

    fn max_headers(&self) -> usize {
        self.max_headers as usize
    }

    fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms.into())
    }
}

/// `duration` in whole milliseconds, rounded up, saturating.
fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

/// How the server left the connection.
#[derive(Debug)]
pub enum Outcome {
    /// The connection is over.
    Closed,
    /// The connection opened with HTTP/2's preface: hyper's HTTP/2 server takes it.
    Http2(Handoff),
}

/// A connection handed to the HTTP/2 server, with what the HTTP/1 server held of it.
#[derive(Debug)]
pub struct Handoff {
    /// Bytes read off `stream` and not served: the preface and what followed it.
    pub read: BytesMut,
    /// The connection.
    pub stream: Downstream,
    /// Its state as requests see it.
    pub conn: Arc<Conn>,
    /// Accepted while draining.
    pub late: bool,
}

/// Serves the requests on `stream` until the connection ends. `late`: accepted while
/// draining, so one request is served and the connection closed.
///
/// This future is most of an idle connection's task, so it keeps only what the wait for the
/// next head needs: an exchange (the request handled, its response written) runs in a room
/// from the thread's free list, which holds the socket and the write buffer meanwhile. (A
/// function returning an `async` block: an `async fn` keeps its arguments twice.)
#[allow(clippy::manual_async_fn)]
pub fn serve(
    mut stream: Downstream,
    conn: Arc<Conn>,
    limits: Limits,
    late: bool,
) -> impl Future<Output = Outcome> + Send + 'static {
    async move {
        let idle = Idle {
            timeout: tokio::time::sleep(limits.header_read_timeout()),
            drained: conn.shared.drain.drained(),
            draining_seen: late,
        };
        let mut idle = std::pin::pin!(idle);
        let mut buf = BytesMut::new();
        let mut first = true;
        loop {
            // The next head: the timeout counts from here, and an idle connection closes on
            // drain.
            idle.as_mut()
                .project()
                .timeout
                .reset(tokio::time::Instant::now() + limits.header_read_timeout());
            // A block ends the head's storage before the await that follows it: the
            // connection's task keeps room only for what each await needs.
            let (mut in_flight, keep_alive) = {
                // The length of a request whose small body is still arriving; once the head's
                // time is up, such a body streams instead.
                let (mut awaiting, mut stream_late_body) = (0, false);
                let head = loop {
                    // Between requests the buffer is usually empty: nothing to parse yet.
                    if !buf.is_empty() {
                        awaiting = 0;
                        // The parse's outcome ends with this block, before the await below:
                        // a value a head was moved out of stays in the task's state across
                        // an await in its scope, and would widen every connection's task by
                        // the size of a head.
                        let refused = {
                            let parsed = match first.then(|| preface(&buf)) {
                                Some(Preface::Http2) => {
                                    return Outcome::Http2(Handoff {
                                        read: buf,
                                        stream,
                                        // (The wait on drain borrows `conn`.)
                                        conn: conn.clone(),
                                        late,
                                    });
                                }
                                Some(Preface::Broken) => None,
                                Some(Preface::Partial) => Some(Parsed::Partial),
                                Some(Preface::None) | None => Some(request::parse(
                                    &mut buf,
                                    limits.max_headers(),
                                    !stream_late_body,
                                )),
                            };
                            match parsed {
                                Some(Parsed::Head(head)) => break head,
                                Some(Parsed::BodyToCome { total }) => {
                                    awaiting = total;
                                    None
                                }
                                Some(Parsed::Refused(refusal)) => Some(Refusal::Request(refusal)),
                                Some(Parsed::Partial) if buf.len() >= limits.max_head() => {
                                    Some(Refusal::Request(ProxyError::HeadersTooLarge(
                                        "request head too long",
                                    )))
                                }
                                Some(Parsed::Partial) => None,
                                None => Some(Refusal::BrokenPreface),
                            }
                        };
                        // The refusal moves whole into its answer (boxed, as every rare path
                        // below: this future is most of an idle connection's memory, and an
                        // await's state sizes it); a value matched apart would stay beside it.
                        let answer =
                            refused.map(|refusal| Box::pin(turn_away(&mut stream, refusal)));
                        if let Some(answer) = answer {
                            answer.await;
                            return Outcome::Closed;
                        }
                    }
                    // A copy: a closure borrowing `awaiting` would keep it in every state.
                    let want = awaiting;
                    let woken = std::future::poll_fn(|cx| {
                        poll_next_head(&mut stream, &mut buf, want, idle.as_mut(), cx)
                    });
                    match woken.await {
                        Woken::TimedOut if awaiting > 0 => stream_late_body = true,
                        Woken::Read(Ok(0) | Err(_)) | Woken::TimedOut => return Outcome::Closed,
                        Woken::Read(Ok(_)) => {}
                        Woken::Draining if buf.is_empty() => return Outcome::Closed,
                        Woken::Draining => {}
                    }
                };
                first = false;
                let keep_alive = head.keep_alive && !late;
                let (request, socket) = request_of(head, &mut buf, stream, &limits);
                let mut room = recycle::room();
                room.set(Some(exchange(request, conn.clone(), socket, keep_alive)));
                (room, keep_alive)
            };
            let Some(exchanging) = in_flight.as_mut().as_pin_mut() else {
                return Outcome::Closed;
            };
            // A block, for the reason the parse's is one: what the exchange gave back ends
            // before the awaits below.
            let (reusable, upgraded) = {
                let Exchanged {
                    socket,
                    mut reusable,
                    upgraded,
                } = exchanging.await;
                recycle::give_room(in_flight);
                stream = match socket {
                    Socket::Own(stream) => stream,
                    Socket::Shared(inbound) => match Inbound::reclaim(inbound) {
                        Some((stream, leftover)) => {
                            buf = leftover.read;
                            reusable &= leftover.complete;
                            stream
                        }
                        // The body is still held somewhere: where it ends is unknown.
                        None => return Outcome::Closed,
                    },
                };
                (reusable, upgraded)
            };
            if let Some(upstream) = upgraded {
                let early = std::mem::take(&mut buf);
                match stream {
                    Downstream::Plain(stream) => {
                        Box::pin(tunnel::join(stream, early, *upstream, &conn.listener)).await;
                    }
                    tls => Box::pin(tunnel::join(tls, early, *upstream, &conn.listener)).await,
                }
                return Outcome::Closed;
            }
            if !reusable || !keep_alive || conn.shared.drain.is_draining() {
                let _ = Box::pin(stream.shutdown()).await;
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

/// The request a head starts, its body read whole when it is small and already here, or
/// streamed off the connection (which the exchange then shares with the body).
fn request_of(
    head: Head,
    buf: &mut BytesMut,
    stream: Downstream,
    limits: &Limits,
) -> (Request<ClientBody>, Socket) {
    let Head {
        mut parts,
        framing,
        expect_continue,
        ..
    } = head;
    if expect_continue {
        // The body answers `100 Continue` itself when it is first read, as Envoy does: the
        // upstream is not asked again.
        parts.headers.remove(http::header::EXPECT);
    }
    let whole = match framing {
        BodyFraming::None => Some(Bytes::new()),
        BodyFraming::Length(n)
            if n <= request::MAX_WHOLE_BODY && buf.len() as u64 >= n && !expect_continue =>
        {
            // (`n` fits: it is at most the buffer's length.)
            Some(buf.split_to(n as usize).freeze())
        }
        _ => None,
    };
    if let Some(bytes) = whole {
        return (
            Request::from_parts(parts, ClientBody::Whole(bytes)),
            Socket::Own(stream),
        );
    }
    let inbound = Inbound::new(stream);
    let body = RequestBody::new(
        inbound.clone(),
        std::mem::take(buf),
        framing,
        expect_continue,
        limits.body_read_timeout(),
    );
    (
        Request::from_parts(parts, ClientBody::Http1(body)),
        Socket::Shared(inbound),
    )
}

/// The client connection as an exchange holds it.
#[derive(Debug)]
enum Socket {
    /// Alone (the request was read whole).
    Own(Downstream),
    /// Shared with the request's streamed body.
    Shared(Arc<Inbound>),
}

impl Socket {
    fn stream(&self) -> &Downstream {
        match self {
            Self::Own(stream) => stream,
            Self::Shared(inbound) => inbound.stream(),
        }
    }
}

/// What an exchange gives back to its connection.
struct Exchanged {
    socket: Socket,
    /// Whether the connection can carry another exchange: the response was written whole and
    /// does not close the connection.
    reusable: bool,
    /// After a 101 to a request that asked to upgrade: the upstream's connection and what it
    /// sent behind its 101, to join to the client's (boxed: rare, and kept across an await of
    /// the connection's task).
    upgraded: Option<Box<(crate::tls::upstream_stream::UpstreamStream, BytesMut)>>,
}

/// One exchange on `socket`: `request` handled and its response written. The request's
/// future and the response's writing live in the room this runs in, which the connection
/// holds only while the request is in flight; the buffer the response's head (and a small
/// body) is written from comes from the thread's free list once the response is there, and
/// goes back when it is written. (Not an `async fn`, which would keep its arguments, the
/// request among them, beside its state.)
#[allow(clippy::manual_async_fn)]
fn exchange(
    request: Request<ClientBody>,
    conn: Arc<Conn>,
    socket: Socket,
    keep_alive: bool,
) -> impl Future<Output = Exchanged> + Send + 'static {
    async move {
        let method = request.method().clone();
        let http10 = request.version() == Version::HTTP_10;
        let upgrade = !http10 && wants_upgrade(request.headers());
        let Reply {
            status,
            fields,
            mut body,
        } = handle(request, conn.clone()).await;
        let mut out = recycle::write_buffer();
        let peer = Peer {
            http10,
            closing: !keep_alive || conn.shared.drain.is_draining(),
        };
        let written = respond::head(
            &mut out,
            status,
            &fields,
            &method,
            &body.size_hint(),
            body.is_end_stream(),
            peer,
        );
        drop(fields);
        let mut writer = SharedWriter(socket.stream());
        let upgraded = (upgrade && status == StatusCode::SWITCHING_PROTOCOLS)
            .then(|| body.take_upgraded())
            .flatten();
        let complete = if upgraded.is_some() {
            send(&mut writer, &out).await.is_ok()
        } else {
            write_body(&mut writer, &mut out, &mut body, written.framing).await
        };
        recycle::give_write_buffer(out, KEEP_WRITE_BUFFER);
        // Before the connection is reclaimed: the response body may hold the request's.
        drop(body);
        Exchanged {
            socket,
            reusable: complete && !written.close,
            upgraded: upgraded.filter(|_| complete).map(Box::new),
        }
    }
}

/// Why a connection is turned away before a request is handled.
enum Refusal {
    /// The request's head is refused.
    Request(ProxyError),
    /// The connection began HTTP/2's preface and broke it.
    BrokenPreface,
}

/// Answers `refusal` and closes the connection.
async fn turn_away(stream: &mut Downstream, refusal: Refusal) {
    match refusal {
        Refusal::Request(refusal) => refuse(stream, refusal).await,
        Refusal::BrokenPreface => {
            let _ = send(&mut SharedWriter(stream), h2_preface::PROTOCOL_ERROR).await;
        }
    }
}

/// Answers a request the server refuses before handling it, and shuts the connection.
async fn refuse(stream: &mut Downstream, refusal: ProxyError) {
    tracing::debug!(error = %refusal, "request refused");
    let Reply {
        status,
        fields,
        mut body,
    } = refusal.into_response();
    let mut out = Vec::with_capacity(256);
    let peer = Peer {
        http10: false,
        closing: true,
    };
    let written = respond::head(
        &mut out,
        status,
        &fields,
        &Method::GET,
        &body.size_hint(),
        body.is_end_stream(),
        peer,
    );
    let mut writer = SharedWriter(stream);
    write_body(&mut writer, &mut out, &mut body, written.framing).await;
    let _ = stream.shutdown().await;
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
    stream: &mut Downstream,
    buf: &mut BytesMut,
    want: usize,
    idle: Pin<&mut Idle<'_>>,
    cx: &mut Context<'_>,
) -> Poll<Woken> {
    if let Poll::Ready(read) = poll_read_more(stream, buf, want, cx) {
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

/// Reads more of the next request into `buf`: room for `want` bytes in all when it is more
/// than a head of usual size. An empty `buf` gets room (from the thread's free buffers) only
/// once the socket turns readable, so that an idle connection holds none. `Ok(0)` at end of
/// stream.
///
/// A poll function, not an `async fn`: the idle connection's task keeps the future waiting on
/// it, and a closure over its arguments is a third of the size of an `async fn`'s state.
fn poll_read_more(
    stream: &mut Downstream,
    buf: &mut BytesMut,
    want: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        // The reader's own waker slot (`readable()` would queue a waiter under a lock).
        std::task::ready!(stream.poll_read_ready(cx))?;
        *buf = recycle::buffer();
    }
    // The room freed by requests already taken off the buffer is reclaimed once nothing
    // holds them (no allocation then).
    if buf.capacity() - buf.len() < READ_SIZE {
        buf.reserve(READ_SIZE);
    }
    if want > buf.capacity() {
        buf.reserve(want - buf.len());
    }
    // Through `AsyncRead`, which, unlike `try_read`, notes a short read as the socket drained
    // (no EAGAIN read before the next wait).
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Writes the head in `out` and then the body as `framing` delimits it; false when the
/// connection cannot carry another exchange (the body failed, or did not match its length, or
/// the client went away).
async fn write_body(
    stream: &mut SharedWriter<'_>,
    out: &mut Vec<u8>,
    body: &mut ResponseBody,
    framing: Framing,
) -> bool {
    let mut remaining = match framing {
        Framing::Empty => return send(stream, out).await.is_ok(),
        Framing::Length(n) => n,
        Framing::Chunked | Framing::UntilClose => u64::MAX,
    };
    loop {
        // What is ready goes out together; before waiting on the upstream, what is buffered
        // is written (a streamed body reaches the client as it comes).
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !out.is_empty() {
                    if send(stream, out).await.is_err() {
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
        // The close that follows ends the body.
        Framing::UntilClose => {}
        // The body ended short of its length: the client would wait for the rest.
        _ if remaining != 0 => return false,
        _ => {}
    }
    send(stream, out).await.is_ok()
}

/// Writes `bytes` and sends them (TLS holds back what it is given until flushed; plaintext
/// has nothing to flush).
async fn send(stream: &mut SharedWriter<'_>, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Appends `data` to what is buffered, or writes both when it is large.
async fn put(stream: &mut SharedWriter<'_>, out: &mut Vec<u8>, data: Bytes) -> io::Result<()> {
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
pub struct Rewound<S> {
    read: Bytes,
    stream: S,
}

impl<S> Rewound<S> {
    /// `stream`, whose next bytes are `read`.
    pub fn new(read: Bytes, stream: S) -> Self {
        Self { read, stream }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
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

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_durations_up_and_saturate() {
        let limits = Limits::new(
            Duration::from_micros(1500),
            usize::MAX,
            100,
            Duration::from_secs(u64::MAX),
        );
        assert_eq!(limits.header_read_timeout(), Duration::from_millis(2));
        assert_eq!(limits.max_head(), u32::MAX as usize);
        assert_eq!(limits.max_headers(), 100);
        assert_eq!(
            limits.body_read_timeout(),
            Duration::from_millis(u32::MAX.into())
        );
    }
}

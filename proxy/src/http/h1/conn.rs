//! One keep-alive connection to an upstream and one exchange on it: write the request, read
//! the response head. The body is read later, by [`super::Body`], from the same connection.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use http::request::Parts;

use super::decode::{self, Framing as ResponseFraming, Head, MAX_HEAD_BYTES};
use super::encode;
use super::write::{RequestWriter, WriteFailure};
use super::Error;
use crate::http::body::UpstreamBody;
use crate::http::headers::wants_upgrade;
use crate::service::breaker::Slot;
use crate::tls::upstream_stream::UpstreamStream;

/// Bytes read from the socket at a time while a head is incomplete.
const READ_CHUNK: usize = 8 * 1024;
/// Reads go into the buffer's spare room until less than this is left.
const MIN_ROOM: usize = 2 * 1024;
/// A buffer grown past this by a large message is not kept while the connection idles.
const KEEP_BUFFER: usize = 16 * 1024;

/// An open HTTP/1.1 connection to an upstream, idle or lent to one exchange.
#[derive(Debug)]
pub struct Connection {
    pub(super) stream: UpstreamStream,
    /// Bytes received and not consumed yet.
    pub(super) input: BytesMut,
    /// The last request's output buffer, kept for its capacity.
    pub(super) output: Vec<u8>,
    /// Pool sweeps that have found it idle since it was last given back.
    idle_sweeps: u32,
    /// Counts against the service's `maxConnections` while the connection is open.
    _slot: Option<Slot>,
}

impl Connection {
    /// Wraps a connected stream; `slot` is held until the connection closes. Boxed: it moves
    /// between the pool and each exchange, and a pointer moves cheaper than the connection.
    pub fn new(stream: UpstreamStream, slot: Option<Slot>) -> Box<Self> {
        Box::new(Self {
            stream,
            input: BytesMut::new(),
            output: Vec::new(),
            idle_sweeps: 0,
            _slot: slot,
        })
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything unasked (see [`UpstreamStream::is_reusable`]).
    pub fn is_reusable(&mut self) -> bool {
        self.input.is_empty() && self.stream.is_reusable()
    }

    /// Counts one more pool sweep that found the connection idle; returns how many have.
    /// Counting sweeps rather than reading the clock when it goes idle keeps its age off the
    /// request path.
    pub fn swept_idle(&mut self) -> u32 {
        self.idle_sweeps = self.idle_sweeps.saturating_add(1);
        self.idle_sweeps
    }

    /// Readies the connection for the idle pool: buffers a large message grew are let go, and
    /// its idle time counts from now.
    pub fn idle(&mut self) {
        self.idle_sweeps = 0;
        if self.input.capacity() > KEEP_BUFFER {
            self.input = BytesMut::new();
        }
        if self.output.capacity() > KEEP_BUFFER {
            self.output = Vec::new();
        }
    }

    /// The socket and the bytes already read past a 101 response, for a tunnel.
    pub fn into_upgraded(self) -> (UpstreamStream, BytesMut) {
        (self.stream, self.input)
    }

    /// Reads more into `input`, into `want` bytes of room when less than [`MIN_ROOM`] is
    /// left; `Ok(0)` at end of stream.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<usize>> {
        // The room left after a response is shared with that response's head and body, so
        // growing it means a new buffer: read into what is left while it is enough.
        if self.input.capacity() - self.input.len() < MIN_ROOM {
            self.input.reserve(want);
        }
        // Through `AsyncRead`: a read that leaves room unfilled tells the reactor the socket
        // is drained, so the checkout of the next exchange needs no probe. (`try_read_buf`
        // keeps the readiness until a read fails with `WouldBlock`: one wasted syscall per
        // exchange.)
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.input)
    }

    /// Sends a request and reads the final response head (interim 1xx responses are
    /// dropped; a 101 is final when the request asked to upgrade).
    ///
    /// HTTP/1 is full duplex: an upstream may answer before it has read the whole body (an
    /// echo, an early 413). Then the head is returned with the writer that still has body to
    /// send, for the response body to drive as it is read.
    /// `extra`: field lines written after the head's own (see [`encode::head`]).
    pub async fn send(
        &mut self,
        head: &Parts,
        extra: &[u8],
        body: UpstreamBody,
    ) -> Result<(Head, Option<Box<RequestWriter>>), Error> {
        let framing = encode::framing(head, &body);
        let mut output = std::mem::take(&mut self.output);
        output.clear();
        encode::head(&mut output, head, extra, framing);
        let mut writer = Some(RequestWriter::new(output, body, framing));
        let mut received = !self.input.is_empty();
        let mut write_failed = false;
        let mut answer = poll_fn(|cx| {
            if let Some(w) = writer.as_mut() {
                match w.poll_write(cx, &mut self.stream) {
                    Poll::Ready(Ok(())) => {
                        if let Some(done) = writer.take() {
                            self.output = done.into_buffer();
                        }
                    }
                    Poll::Ready(Err(WriteFailure::Client(e))) => return Poll::Ready(Err(e)),
                    // The upstream stopped reading; it may still have answered.
                    Poll::Ready(Err(WriteFailure::Socket(_))) => {
                        writer = None;
                        write_failed = true;
                    }
                    Poll::Pending => {}
                }
            }
            self.poll_head(cx, head, &mut received)
        })
        .await?;
        if write_failed {
            answer.keep_alive = false;
        }
        // Boxed: rarely there, and the result passes through several frames.
        Ok((answer, writer.map(Box::new)))
    }

    /// Reads until the final response head to `request` is complete.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        request: &Parts,
        received: &mut bool,
    ) -> Poll<Result<Head, Error>> {
        loop {
            if !self.input.is_empty() {
                if let Some(head) = decode::head(&mut self.input, &request.method)? {
                    match head.framing {
                        // Asked only of a 101: the request's fields are not looked at again.
                        ResponseFraming::Switched if !wants_upgrade(&request.headers) => {
                            return Poll::Ready(Err(Error::Malformed(
                                "101 to a request that did not upgrade",
                            )))
                        }
                        ResponseFraming::Switched => return Poll::Ready(Ok(head)),
                        _ if head.status.is_informational() => continue,
                        _ => return Poll::Ready(Ok(head)),
                    }
                }
                if self.input.len() >= MAX_HEAD_BYTES {
                    return Poll::Ready(Err(Error::HeadTooLarge));
                }
            }
            let read = ready!(self.poll_fill(cx, READ_CHUNK));
            match read {
                Ok(0) if *received => return Poll::Ready(Err(Error::Truncated)),
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(_) => *received = true,
                Err(e) if !*received && is_reset(&e) => return Poll::Ready(Err(Error::Closed)),
                Err(e) => return Poll::Ready(Err(Error::Io(e))),
            }
        }
    }
}

/// Errors that mean the peer closed or reset the connection.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http::Request;
    use std::task::Waker;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn pair() -> (Box<Connection>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Connection::new(UpstreamStream::Plain(client), None), server)
    }

    /// Polls `reusable` until it turns false (the reactor learns of the peer asynchronously).
    async fn turns_unusable(conn: &mut Connection) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while conn.is_reusable() {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_reused() {
        let (mut conn, server) = pair().await;
        assert!(conn.is_reusable());
        drop(server);
        assert!(turns_unusable(&mut conn).await);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_spoke_on_is_not_reused() {
        let (mut conn, mut server) = pair().await;
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(turns_unusable(&mut conn).await);
    }

    #[tokio::test]
    async fn an_exchange_writes_the_request_and_reads_past_interim_answers() {
        let (mut conn, mut server) = pair().await;
        let upstream = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.ends_with(b"\r\n\r\nabc") {
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0, "request cut short: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
            server
                .write_all(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                )
                .await
                .unwrap();
            // Kept open: a close would make the connection readable again.
            (String::from_utf8(seen).unwrap(), server)
        });
        let head = Request::post("/p?q=1")
            .header("host", "svc")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let body = UpstreamBody::Full(Some(Bytes::from_static(b"abc")));
        let (answer, unsent) = conn.send(&head, b"", body).await.unwrap();
        assert!(unsent.is_none(), "the whole request went out");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.framing, ResponseFraming::Length(2));
        assert_eq!(&conn.input[..], b"ok", "the body stays for the body reader");
        // The answer came in a read that left room: the reactor knows the socket is drained,
        // so checking the connection out again costs no syscall.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(
            conn.stream.tcp().poll_read_ready(&mut cx).is_pending(),
            "readiness left set: the next checkout would probe the socket"
        );
        assert_eq!(
            upstream.await.unwrap().0,
            "POST /p?q=1 HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\n\r\nabc"
        );
    }

    #[tokio::test]
    async fn a_101_is_final_only_for_a_request_that_asked_to_upgrade() {
        for (asked, final_101) in [(true, true), (false, false)] {
            let (mut conn, mut server) = pair().await;
            server
                .write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
                )
                .await
                .unwrap();
            let mut req = Request::get("/");
            if asked {
                req = req.header("connection", "upgrade").header("upgrade", "x");
            }
            let head = req.body(()).unwrap().into_parts().0;
            let sent = conn.send(&head, b"", UpstreamBody::Full(None)).await;
            if final_101 {
                assert!(
                    matches!(&sent, Ok((answer, _)) if answer.status == 101),
                    "{sent:?}"
                );
            } else {
                assert!(matches!(sent, Err(Error::Malformed(_))), "{sent:?}");
            }
        }
    }

    #[tokio::test]
    async fn an_upstream_that_closes_without_answering_is_told_apart() {
        let (mut conn, server) = pair().await;
        drop(server);
        let head = Request::get("/").body(()).unwrap().into_parts().0;
        let sent = conn.send(&head, b"", UpstreamBody::Full(None)).await;
        assert!(matches!(sent, Err(Error::Closed)), "{sent:?}");
    }
}

//! The client's connection as the HTTP/1 server holds it: plaintext TCP, or TLS. The server
//! shares the connection between the response it writes and the request body streamed off it
//! (see [`super::inbound`]); plaintext shares the socket itself (reads and writes through
//! `&TcpStream`), TLS through a mutex around the session — taken only inside one poll, never
//! across an await, and uncontended: both sides are polled by the connection's task.
//!
//! An enum rather than a trait object or a generic server: the plaintext path stays what it
//! was, one branch more per read or write.
//!
//! A limit of sharing TLS: when the body is read by another task than the server's (an HTTP/2
//! upstream's connection task), and rustls must write while reading (a key update), that read
//! takes the socket's write wakeup from the server's task; the server's write then resumes on
//! its task's next wakeup (the response's next frame) rather than at once.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A downstream connection.
#[derive(Debug)]
pub enum Downstream {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (boxed: a session is large, and most connections are plaintext).
    Tls(Box<Mutex<TlsStream<TcpStream>>>),
}

impl Downstream {
    /// A TLS connection.
    pub fn tls(stream: Box<TlsStream<TcpStream>>) -> Self {
        Self::Tls(Box::new(Mutex::new(*stream)))
    }

    fn lock(tls: &Mutex<TlsStream<TcpStream>>) -> MutexGuard<'_, TlsStream<TcpStream>> {
        // A panic mid-poll leaves the session as rustls left it: the next read or write fails
        // if it is broken.
        tls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_mut(tls: &mut Mutex<TlsStream<TcpStream>>) -> &mut TlsStream<TcpStream> {
        tls.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a read would find something: bytes on the socket, or (TLS) decrypted
    /// bytes already held. Lets an idle connection wait without a read buffer.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(stream) => stream.poll_read_ready(cx),
            Self::Tls(tls) => {
                let (tcp, session) = Self::get_mut(tls).get_ref();
                // `wants_read` is false while decrypted bytes wait to be read.
                if session.wants_read() {
                    ready!(tcp.poll_read_ready(cx))?;
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Reads into `buf` through a shared reference (the request body's side), with room for
    /// `room` bytes made once there is something to read: `Ok(0)` at the end of the stream.
    pub fn poll_read_shared(
        &self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        room: usize,
    ) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(stream) => loop {
                ready!(stream.poll_read_ready(cx))?;
                buf.reserve(room);
                match stream.try_read_buf(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return Poll::Ready(read),
                }
            },
            Self::Tls(tls) => {
                let mut stream = Self::lock(tls);
                buf.reserve(room);
                tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf)
            }
        }
    }

    /// Writes `buf` through a shared reference (the response's side).
    pub fn poll_write_shared(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self {
            Self::Plain(stream) => loop {
                ready!(stream.poll_write_ready(cx))?;
                match stream.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    written => return Poll::Ready(written),
                }
            },
            Self::Tls(tls) => Pin::new(&mut *Self::lock(tls)).poll_write(cx, buf),
        }
    }

    /// Sends what TLS holds back through a shared reference (nothing to do in plaintext).
    pub fn poll_flush_shared(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Plain(_) => Poll::Ready(Ok(())),
            Self::Tls(tls) => Pin::new(&mut *Self::lock(tls)).poll_flush(cx),
        }
    }
}

impl AsyncRead for Downstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(tls) => Pin::new(Self::get_mut(tls)).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Downstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(tls) => Pin::new(Self::get_mut(tls)).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Self::Tls(tls) => Pin::new(Self::get_mut(tls)).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(_) => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(tls) => Pin::new(Self::get_mut(tls)).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(tls) => Pin::new(Self::get_mut(tls)).poll_shutdown(cx),
        }
    }
}

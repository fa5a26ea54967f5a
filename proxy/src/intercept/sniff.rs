//! Telling HTTP from everything else by a connection's first bytes, without consuming them.
//!
//! An intercepted `http` listener receives every TCP connection of the pod: HTTP goes through
//! the route table, anything else (TLS, database protocols...) is passed through untouched.

use std::time::Duration;

use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a silent client is waited for before its connection is treated as opaque TCP.
/// Server-first protocols (MySQL, SMTP, ...) pay this once per connection: exclude their ports
/// (`strait.dev/exclude-outbound-ports`) to avoid it.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(250);

/// Longest method token recognised (`PROPPATCH`, `MKCALENDAR`... fit).
const MAX_METHOD: usize = 16;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// An HTTP/1 request line or the HTTP/2 connection preface (which starts `PRI * `).
    Http,
    /// Anything else.
    Opaque,
}

/// Classifies the first bytes: `None` while they are still a prefix of an HTTP request line.
///
/// HTTP/1 request lines start with a method token of upper-case letters followed by a space;
/// the HTTP/2 preface starts `PRI `. TLS starts with `0x16`, most binary protocols with a
/// non-letter, and server-first protocols send nothing at all.
pub fn classify(prefix: &[u8]) -> Option<Sniffed> {
    for (i, &byte) in prefix.iter().enumerate() {
        match byte {
            b'A'..=b'Z' | b'-' | b'_' if i < MAX_METHOD => {}
            b' ' if i > 0 => return Some(Sniffed::Http),
            _ => return Some(Sniffed::Opaque),
        }
    }
    if prefix.len() > MAX_METHOD {
        return Some(Sniffed::Opaque);
    }
    None
}

/// Peeks at `stream` until [`classify`] decides or [`SNIFF_TIMEOUT`] passes (then: opaque).
pub async fn sniff(stream: &TcpStream) -> Sniffed {
    let deadline = Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; MAX_METHOD + 2];
    loop {
        // `poll_peek` waits in the socket's own read waker slot (`peek()` would queue a waiter
        // under a lock, and add ~200 bytes to every intercepted connection's task).
        let peeked = std::future::poll_fn(|cx| stream.poll_peek(cx, &mut ReadBuf::new(&mut buf)));
        let n = match tokio::time::timeout_at(deadline, peeked).await {
            Ok(Ok(n)) if n > 0 => n,
            // Closed, failed or silent: nothing to route by.
            _ => return Sniffed::Opaque,
        };
        if let Some(verdict) = classify(buf.get(..n).unwrap_or_default()) {
            return verdict;
        }
        if Instant::now() >= deadline {
            return Sniffed::Opaque;
        }
        // A request line split across segments: peek returns at once while data is queued,
        // so wait a little for the rest instead of spinning.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_h2_preface_are_http() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"PROPFIND / HTTP/1.1",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"OPTIONS * HTTP/1.1",
        ] {
            assert_eq!(classify(start), Some(Sniffed::Http), "{start:?}");
        }
    }

    #[test]
    fn tls_binary_and_lowercase_are_opaque() {
        for start in [
            &[0x16u8, 0x03, 0x01, 0x02][..],
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
            b"get / HTTP/1.1",
            b" GET",
            b"HELLOTHEREWORLDXYZ foo",
            b"SSH-2.0-OpenSSH",
        ] {
            assert_eq!(classify(start), Some(Sniffed::Opaque), "{start:?}");
        }
    }

    #[test]
    fn a_short_uppercase_prefix_needs_more_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"DELETE"), None);
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let _client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        assert_eq!(sniff(&server).await, Sniffed::Opaque);
    }

    #[tokio::test]
    async fn a_request_line_in_two_segments_is_http() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        client.write_all(b"GE").await.expect("write");
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"T / HTTP/1.1\r\n").await.expect("write");
            client
        });
        assert_eq!(sniff(&server).await, Sniffed::Http);
        drop(later.await);
    }
}

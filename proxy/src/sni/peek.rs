//! Waiting for a connection's ClientHello without taking a byte off the socket: what the
//! client sent stays queued for the upstream, which receives it untouched.

use std::future::poll_fn;
use std::time::Duration;

use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::client_hello::{parse, Hello, MAX_PEEK};

/// First peek buffer: most ClientHellos fit; larger ones grow it up to [`MAX_PEEK`].
const FIRST_PEEK: usize = 2048;
/// Longest pause between two looks at a ClientHello that is still arriving.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// What a connection opened with.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// Not a TLS record (or nothing within the first byte's time): another protocol.
    NotTls,
    /// A whole ClientHello, asking for this server name (if any; as sent).
    Hello(Option<Box<str>>),
    /// A TLS opening that is malformed, too large, cut short or too slow; the connection is
    /// closed.
    Refused(&'static str),
}

/// Peeks at `stream`: the first byte must arrive within `first_byte_within` (else
/// [`Peeked::NotTls`], as the interception sniffer treats silent clients), the whole
/// ClientHello within `hello_within` of the call.
pub async fn client_hello(
    stream: &TcpStream,
    first_byte_within: Duration,
    hello_within: Duration,
) -> Peeked {
    let deadline = Instant::now() + hello_within;
    let mut first = [0u8; 1];
    let peeked = poll_fn(|cx| stream.poll_peek(cx, &mut ReadBuf::new(&mut first)));
    match tokio::time::timeout(first_byte_within, peeked).await {
        Ok(Ok(1)) if matches!(parse(&first), Hello::NeedMore) => {}
        // Another protocol, closed, failed or silent: not a ClientHello to route by.
        _ => return Peeked::NotTls,
    }
    let mut buf = vec![0u8; FIRST_PEEK];
    let mut pause = Duration::from_millis(1);
    loop {
        let peeked = poll_fn(|cx| stream.poll_peek(cx, &mut ReadBuf::new(&mut buf)));
        let n = match tokio::time::timeout_at(deadline, peeked).await {
            Ok(Ok(0)) => return Peeked::Refused("closed before its ClientHello was complete"),
            Ok(Ok(n)) => n,
            Ok(Err(_)) => return Peeked::Refused("read failed"),
            Err(_) => return Peeked::Refused("ClientHello not complete in time"),
        };
        match parse(buf.get(..n).unwrap_or_default()) {
            Hello::Complete { server_name } => return Peeked::Hello(server_name.map(Into::into)),
            Hello::NotTls => return Peeked::NotTls,
            Hello::TooLarge => return Peeked::Refused("ClientHello too large"),
            Hello::Invalid(why) => return Peeked::Refused(why),
            Hello::NeedMore if n == buf.len() => {
                if buf.len() >= MAX_PEEK {
                    return Peeked::Refused("ClientHello too large");
                }
                buf.resize((buf.len() * 4).min(MAX_PEEK), 0);
                continue;
            }
            Hello::NeedMore => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Peeked::Refused("ClientHello not complete in time");
        }
        // A peek returns at once while bytes are queued, so the rest of a ClientHello split
        // across segments is waited for with a pause, growing for a client that dawdles.
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.expect("connect"), server.expect("accept").0)
    }

    fn hello() -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("split.example").expect("name");
        let mut client =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        client.write_tls(&mut out).expect("write");
        out
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_hello_in_two_segments_is_read_whole_and_left_on_the_socket() {
        let (mut client, mut server) = pair().await;
        client.set_nodelay(true).expect("nodelay");
        let bytes = hello();
        let (head, tail) = bytes.split_at(20);
        client.write_all(head).await.expect("write");
        let tail = tail.to_vec();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(&tail).await.expect("write");
            client
        });
        let peeked = client_hello(&server, SECOND, 5 * SECOND).await;
        assert_eq!(peeked, Peeked::Hello(Some("split.example".into())));
        let _client = later.await.expect("writer");
        let mut all = vec![0u8; bytes.len()];
        server.read_exact(&mut all).await.expect("read");
        assert_eq!(all, bytes, "the bytes are still there for the upstream");
    }

    #[tokio::test]
    async fn a_hello_that_stops_halfway_is_refused_at_the_deadline() {
        let (mut client, server) = pair().await;
        client.write_all(&hello()[..20]).await.expect("write");
        let peeked = client_hello(&server, SECOND, Duration::from_millis(200)).await;
        assert_eq!(peeked, Peeked::Refused("ClientHello not complete in time"));
    }

    #[tokio::test]
    async fn silent_and_other_protocols_are_not_tls() {
        let (_client, server) = pair().await;
        let peeked = client_hello(&server, Duration::from_millis(50), SECOND).await;
        assert_eq!(peeked, Peeked::NotTls);
        let (mut client, server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        assert_eq!(client_hello(&server, SECOND, SECOND).await, Peeked::NotTls);
    }

    #[tokio::test]
    async fn garbage_after_a_handshake_byte_is_refused() {
        let (mut client, server) = pair().await;
        client
            .write_all(&[22, 3, 1, 0, 4, 2, 0, 0, 0])
            .await
            .expect("write");
        let peeked = client_hello(&server, SECOND, SECOND).await;
        assert!(matches!(peeked, Peeked::Refused(_)), "{peeked:?}");
    }
}

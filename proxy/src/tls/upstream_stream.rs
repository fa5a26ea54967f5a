//! An upstream connection, plaintext or TLS: what Strait's HTTP/1 client, hyper's HTTP/2
//! client and upgraded tunnels read and write. A match per call; the plaintext arm calls the
//! socket as before.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to an upstream.
#[derive(Debug)]
pub enum UpstreamStream {
    /// Plaintext TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the session state is large, the plaintext arm small).
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked. Plaintext: a syscall only when the reactor saw the socket turn
    /// readable since its last read. TLS: a readable socket is read through the session, which
    /// takes in what TLS sends by itself (session tickets, key updates); a close_notify, an
    /// error or application data means the connection is not reusable.
    pub fn is_reusable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self {
            Self::Plain(stream) => match stream.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            Self::Tls(tls) => {
                if tls.get_ref().0.poll_read_ready(&mut cx).is_pending() {
                    return true;
                }
                let mut probe = [0u8; 1];
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(&mut **tls)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending()
            }
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for UpstreamStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, RootCertStore, ServerConfig};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::tls::verify_server::{AcceptedIdentities, MeshServerVerifier};

    const PEER: &str = "spiffe://td/ns/a/sa/b";

    /// A TLS 1.3 connection (client side as the pool holds it) and its server side, once the
    /// server has sent everything the handshake makes it send (session tickets included).
    async fn pair() -> (UpstreamStream, tokio_rustls::server::TlsStream<TcpStream>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::new()).unwrap();
        leaf.subject_alt_names = vec![SanType::URI(PEER.try_into().unwrap())];
        let issuer = rcgen::Issuer::from_params(&root_params, &root_key);
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();

        let provider = crate::tls::provider();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(root.pem().as_bytes()).unwrap())
            .unwrap();
        let verifier = MeshServerVerifier::new(
            Arc::new(roots),
            AcceptedIdentities::new(&[PEER.into()]),
            provider.signature_verification_algorithms,
        );
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let tcp = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let name = ServerName::IpAddress(address.ip().into());
        let (client, server) = tokio::join!(
            TlsConnector::from(Arc::new(client)).connect(name, tcp),
            TlsAcceptor::from(Arc::new(server)).accept(accepted)
        );
        (
            UpstreamStream::Tls(Box::new(client.unwrap())),
            server.unwrap(),
        )
    }

    /// Whether `conn` turns unusable as what the server sent arrives (records may come in
    /// several reads; each check that finds it usable waits for more).
    async fn turns_unusable(conn: &mut UpstreamStream) -> bool {
        let waiting = async {
            while conn.is_reusable() {
                conn.tcp().readable().await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn an_idle_tls_connection_that_only_received_session_tickets_is_reused() {
        let (mut conn, _server) = pair().await;
        // The tickets the server sent after the handshake are waiting on the socket.
        conn.tcp().readable().await.unwrap();
        assert!(conn.is_reusable(), "tickets are TLS's own business");
        assert!(conn.is_reusable());
    }

    #[tokio::test]
    async fn an_idle_tls_connection_the_upstream_closed_or_spoke_on_is_not_reused() {
        // Tickets first, taken in while idle; then what the server does.
        let (mut closed, mut server) = pair().await;
        closed.tcp().readable().await.unwrap();
        assert!(closed.is_reusable());
        server.shutdown().await.unwrap();
        assert!(turns_unusable(&mut closed).await, "close_notify");

        let (mut spoken, mut server) = pair().await;
        spoken.tcp().readable().await.unwrap();
        assert!(spoken.is_reusable());
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.flush().await.unwrap();
        assert!(turns_unusable(&mut spoken).await, "unasked data");
    }
}

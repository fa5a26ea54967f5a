//! A TLS upstream of the tests' own (tokio-rustls): serves HTTP/1.1 and h2 by ALPN, or echoes
//! bytes; optionally requires a client certificate of a given trust bundle. It records what a
//! mesh peer would see: connections accepted, full and resumed handshakes, the client's SPIFFE
//! ID and certificate, requests served.
//!
//! HTTP answers: 200 with a JSON body `{"peer", "alpn", "version"}`; the path `/close` also
//! asks for the connection to close after the answer (so the next request reconnects).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::{certificates, Leaf};

/// What the upstream does once the handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// HTTP/1.1 or h2, as ALPN chose.
    Http,
    /// Copies bytes back (opaque TCP).
    Echo,
}

#[derive(Debug, Default)]
struct Seen {
    accepts: AtomicUsize,
    full: AtomicUsize,
    resumed: AtomicUsize,
    failed: AtomicUsize,
    requests: AtomicUsize,
    peers: Mutex<Vec<String>>,
    client_certs: Mutex<HashSet<Vec<u8>>>,
}

/// A TLS server on 127.0.0.1.
pub struct TlsUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    /// Serves with `leaf`; with `client_roots` (PEM), a client certificate chaining to them
    /// is required.
    pub async fn start(leaf: &Leaf, client_roots: Option<&str>, serve: Serve) -> Self {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_at(leaf, client_roots, serve, any_port)
            .await
            .expect("bind")
    }

    /// As [`TlsUpstream::start`], listening on `address` (in a test network namespace, say).
    pub async fn start_at(
        leaf: &Leaf,
        client_roots: Option<&str>,
        serve: Serve,
        address: SocketAddr,
    ) -> std::io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_roots {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(pem) {
                    roots.add(cert).expect("root");
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                certificates(&leaf.chain),
                PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).expect("key"),
            )
            .expect("server certificate");
        if serve == Serve::Http {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        }
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let socket = TcpListener::bind(address).await?;
        let addr = socket.local_addr()?;
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = socket.accept().await {
                let (acceptor, seen) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    seen.accepts.fetch_add(1, Ordering::SeqCst);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        seen.failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    };
                    let conn = tls.get_ref().1;
                    match conn.handshake_kind() {
                        Some(HandshakeKind::Resumed) => seen.resumed.fetch_add(1, Ordering::SeqCst),
                        _ => seen.full.fetch_add(1, Ordering::SeqCst),
                    };
                    let alpn = conn
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    let client = conn.peer_certificates().and_then(|c| c.first()).cloned();
                    let peer = client.as_ref().map(spiffe_id).unwrap_or_default();
                    if let Some(cert) = &client {
                        seen.client_certs.lock().unwrap().insert(cert.to_vec());
                    }
                    seen.peers.lock().unwrap().push(peer.clone());
                    match serve {
                        Serve::Echo => {
                            let (mut r, mut w) = tokio::io::split(tls);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
                        }
                        Serve::Http => {
                            let svc = service_fn(move |req| {
                                answer(req, peer.clone(), alpn.clone(), seen.clone())
                            });
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, seen, task })
    }

    /// TCP connections accepted.
    pub fn accepts(&self) -> usize {
        self.seen.accepts.load(Ordering::SeqCst)
    }

    /// Handshakes that ran in full.
    pub fn full_handshakes(&self) -> usize {
        self.seen.full.load(Ordering::SeqCst)
    }

    /// Handshakes that resumed an earlier session.
    pub fn resumed_handshakes(&self) -> usize {
        self.seen.resumed.load(Ordering::SeqCst)
    }

    /// Handshakes that failed.
    pub fn failed_handshakes(&self) -> usize {
        self.seen.failed.load(Ordering::SeqCst)
    }

    /// HTTP requests served.
    pub fn requests(&self) -> usize {
        self.seen.requests.load(Ordering::SeqCst)
    }

    /// The client's SPIFFE ID on each completed handshake ("" without a client certificate).
    pub fn peers(&self) -> Vec<String> {
        self.seen.peers.lock().unwrap().clone()
    }

    /// Distinct client certificates seen.
    pub fn client_certificates(&self) -> usize {
        self.seen.client_certs.lock().unwrap().len()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `spiffe://` URI SAN of a certificate ("" when none), found by its bytes (the tests do
/// not parse X.509: a URI SAN is stored as its ASCII text).
fn spiffe_id(cert: &CertificateDer<'_>) -> String {
    let der: &[u8] = cert;
    let Some(at) = der.windows(9).position(|w| w == b"spiffe://") else {
        return String::new();
    };
    // The URI is the context-specific [6] element: its length is the byte before it.
    let len = at
        .checked_sub(1)
        .and_then(|i| der.get(i))
        .map_or(0, |&b| usize::from(b));
    der.get(at..at + len)
        .map(|uri| String::from_utf8_lossy(uri).into_owned())
        .unwrap_or_default()
}

async fn answer(
    req: Request<Incoming>,
    peer: String,
    alpn: Option<String>,
    seen: Arc<Seen>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let close = req.uri().path() == "/close";
    let version = format!("{:?}", req.version());
    let _ = req.into_body().collect().await?;
    let body = serde_json::json!({"peer": peer, "alpn": alpn, "version": version});
    let mut resp = Response::builder().header("content-type", "application/json");
    if close {
        resp = resp.header("connection", "close");
    }
    Ok(resp
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response"))
}

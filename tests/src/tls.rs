//! TLS clients for the control's HTTPS API, as a proxy or straitctl would be: the server is
//! verified against a PEM bundle, a client certificate is presented when given, HTTP/1.1 or h2
//! by ALPN. Plus key pairs and CSRs for test identities.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

/// A CSR for one URI SAN (`spiffe://...`), and its key (PEM), made here as a proxy would.
pub fn csr(uri: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().expect("uri"))];
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (csr, key.serialize_pem())
}

/// Every certificate of a PEM text.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// A client identity: certificate chain and key, PEM.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Leaf first.
    pub chain_pem: String,
    /// PKCS#8 key.
    pub key_pem: String,
}

/// An answer of the control.
#[derive(Debug)]
pub struct TlsAnswer {
    /// Status code.
    pub status: u16,
    /// JSON body (`null` when empty, a string when not JSON).
    pub json: serde_json::Value,
    /// The protocol ALPN chose.
    pub alpn: Option<Vec<u8>>,
}

/// A TLS client of the control.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    h2: bool,
}

impl TlsClient {
    /// Trusts `bundle_pem`; presents `identity` if given; offers h2 (else http/1.1) by ALPN.
    pub fn new(bundle_pem: &str, identity: Option<&ClientIdentity>, h2: bool) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(bundle_pem) {
            roots.add(cert).expect("root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(id) => builder
                .with_client_auth_cert(
                    certificates(&id.chain_pem),
                    PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).expect("key"),
                )
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = if h2 {
            vec![b"h2".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Self {
            connector: TlsConnector::from(Arc::new(config)),
            h2,
        }
    }

    /// A new TLS connection to `address`, verified as its IP, for a test that writes its own
    /// bytes.
    pub async fn connect(
        &self,
        address: SocketAddr,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        self.connector
            .connect(ServerName::IpAddress(address.ip().into()), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))
    }

    /// One request on a new connection to `address` (verified as its IP): bearer token and
    /// JSON body optional. Err: the connection or handshake failed.
    pub async fn call(
        &self,
        address: SocketAddr,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<TlsAnswer, String> {
        let work = async {
            let tls = self.connect(address).await?;
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            let mut req = Request::builder().method(method);
            req = if self.h2 {
                req.uri(format!("https://{address}{path}"))
            } else {
                req.uri(path).header("host", address.to_string())
            };
            if let Some(token) = bearer {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            let bytes = match body {
                Some(b) => {
                    req = req.header("content-type", "application/json");
                    Bytes::from(serde_json::to_vec(&b).map_err(|e| e.to_string())?)
                }
                None => Bytes::new(),
            };
            let req = req.body(Full::new(bytes)).map_err(|e| e.to_string())?;
            let io = TokioIo::new(tls);
            let resp = if self.h2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender.send_request(req).await
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender.send_request(req).await
            }
            .map_err(|e| format!("request: {e}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let json = if body.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&body).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                })
            };
            Ok(TlsAnswer { status, json, alpn })
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

/// A certificate authority of the tests' own, as cert-manager or SPIRE would be: one root,
/// leaves for SPIFFE IDs (or DNS names) signed by it.
pub struct TestCa {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    /// The root, PEM: the trust bundle.
    pub bundle: String,
}

/// A leaf: its chain (leaf, PEM) and key (PEM).
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate, PEM.
    pub chain: String,
    /// Its private key, PEM.
    pub key: String,
}

impl Leaf {
    /// A TLS server presenting this leaf to any client (no client certificate asked), ALPN
    /// `http/1.1`: an API server's, as a stand-in needs.
    pub fn http1_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let key = PrivateKeyDer::from_pem_slice(self.key.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certificates(&self.chain), key)
            .expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

impl TestCa {
    /// A new root.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("root key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test root"));
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let bundle = params.self_signed(&key).expect("root").pem();
        Self {
            key,
            params,
            bundle,
        }
    }

    fn sign(&self, sans: Vec<rcgen::SanType>, valid_for: Duration) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = sans;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::seconds(valid_for.as_secs() as i64);
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("leaf");
        Leaf {
            chain: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A leaf for `spiffe_id`, valid for a day.
    pub fn workload(&self, spiffe_id: &str) -> Leaf {
        self.workload_for(spiffe_id, Duration::from_secs(86_400))
    }

    /// A leaf for `spiffe_id`, valid for `valid_for`.
    pub fn workload_for(&self, spiffe_id: &str, valid_for: Duration) -> Leaf {
        let uri = rcgen::SanType::URI(spiffe_id.try_into().expect("spiffe id"));
        self.sign(vec![uri], valid_for)
    }

    /// A server leaf for a DNS name or IP address (non-mesh TLS: origination, termination).
    pub fn server(&self, name: &str) -> Leaf {
        self.server_for(&[name])
    }

    /// A server leaf for several DNS names or IP addresses.
    pub fn server_for(&self, names: &[&str]) -> Leaf {
        let sans = names
            .iter()
            .map(|name| match name.parse::<std::net::IpAddr>() {
                Ok(ip) => rcgen::SanType::IpAddress(ip),
                Err(_) => rcgen::SanType::DnsName((*name).try_into().expect("dns name")),
            })
            .collect();
        self.sign(sans, Duration::from_secs(86_400))
    }
}

/// One HTTP/1.1 `GET /` over TLS to `address`, the server verified as `server_name` against
/// `roots_pem`: a DNS name is sent as SNI, an IP address sends none (as rustls does). ALPN
/// offers http/1.1. Returns the whole answer as text (`Connection: close`). Err: the
/// connection, the handshake (a certificate not for `server_name`, say) or the read failed.
pub async fn https_get_as(
    address: SocketAddr,
    server_name: &str,
    roots_pem: &str,
) -> Result<String, String> {
    https_get_in_records_of(address, server_name, roots_pem, None).await
}

/// [`https_get_as`] with TLS records of at most `record_size` bytes (header included; rustls
/// allows 37 and more), so that the ClientHello spans several records.
pub async fn https_get_in_records_of(
    address: SocketAddr,
    server_name: &str,
    roots_pem: &str,
    record_size: Option<usize>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(roots_pem) {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.max_fragment_size = record_size;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let request = format!("GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        // A server that closes without close_notify still gave its whole answer.
        let _ = tls.read_to_end(&mut answer).await;
        if answer.is_empty() {
            return Err("no answer".to_owned());
        }
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

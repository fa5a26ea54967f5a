//! TLS on a listener's side: the server configuration each handshake uses, and accepting a
//! connection under it.
//!
//! - `mutual`: the proxy's identity as server certificate, a client certificate of the same
//!   trust domain required ([`super::verify_client`]). The configuration is built once per
//!   identity in force and rebuilt when the identity store holds a new one (a renewal, a
//!   rotated bundle): new handshakes take it, established connections keep theirs.
//! - `permissive`: as `mutual` for a connection whose first byte opens a TLS handshake,
//!   plaintext otherwise.
//! - `simple`: termination with the user's certificate, no client certificate; its files are
//!   looked at again (size, modification time, inode) at most once a second, by a handshake,
//!   and re-read when they changed — a pair that does not match is logged and the certificate in
//!   force stays.
//!
//! Every configuration offers ALPN `h2` and `http/1.1` (a client offering neither gets
//! HTTP/1.1), and resumes sessions with stateless tickets shared across rebuilt
//! configurations, so a client reconnecting after a renewal still resumes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ProducesTickets;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;
use strait_config::snapshot::ListenerTls;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::verify_client::{self, MeshClientVerifier};
use crate::identity::{Identity, IdentityStore};

/// The first byte of a TLS record carrying a handshake message (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Why a listener's TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate or key file cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The files or the identity do not make a TLS configuration.
    #[error("{0}")]
    Invalid(String),
}

/// Why a connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The identity does not make a server configuration.
    #[error("identity: {0}")]
    Setup(#[from] TlsSetupError),
    /// The handshake failed (no client certificate, an unknown CA, another trust domain...),
    /// or the connection did before it.
    #[error("handshake: {0}")]
    Handshake(#[source] std::io::Error),
}

/// A connection a TLS listener accepted.
#[derive(Debug)]
pub enum Accepted {
    /// Plaintext (a permissive listener's non-TLS client).
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls {
        /// The connection.
        stream: Box<TlsStream<TcpStream>>,
        /// The client's SPIFFE ID (mTLS only).
        peer: Option<Arc<str>>,
        /// What ALPN chose.
        alpn: Alpn,
    },
}

/// The application protocol a TLS client and the listener agreed on by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    H2,
    /// `http/1.1`.
    Http1,
    /// The client offered neither (an opaque TCP client, or an HTTP/1 client without ALPN).
    None,
}

/// A listener's TLS server.
#[derive(Debug)]
pub enum TlsServer {
    /// mTLS with the proxy's identity; `permissive`: plaintext clients served too.
    Mesh {
        /// The configurations, per identity.
        configs: MeshConfigs,
        /// Plaintext clients served too.
        permissive: bool,
    },
    /// Termination with the user's certificate.
    Simple(SimpleCert),
}

impl TlsServer {
    /// The TLS server for `tls` (`None`: plaintext). A `simple` listener's files are read now.
    pub fn new(
        tls: &ListenerTls,
        identity: &Arc<IdentityStore>,
    ) -> Result<Option<Self>, TlsSetupError> {
        let mesh = |permissive| {
            Ok(Some(Self::Mesh {
                configs: MeshConfigs::new(identity.clone())?,
                permissive,
            }))
        };
        match tls {
            ListenerTls::Disabled => Ok(None),
            ListenerTls::Mutual => mesh(false),
            ListenerTls::Permissive => mesh(true),
            ListenerTls::Simple { cert, key } => {
                Ok(Some(Self::Simple(SimpleCert::new(cert, key)?)))
            }
        }
    }

    /// Accepts `stream`: the handshake, or, on a permissive listener, plaintext when the
    /// client does not open with one. The caller bounds the time it takes.
    pub async fn accept(&self, stream: TcpStream) -> Result<Accepted, AcceptError> {
        let (acceptor, mesh) = match self {
            Self::Simple(simple) => (TlsAcceptor::from(simple.current()), false),
            Self::Mesh {
                configs,
                permissive,
            } => {
                if *permissive && !opens_tls(&stream).await.map_err(AcceptError::Handshake)? {
                    return Ok(Accepted::Plain(stream));
                }
                (TlsAcceptor::from(configs.current().await?), true)
            }
        };
        let stream = acceptor
            .accept(stream)
            .await
            .map_err(AcceptError::Handshake)?;
        let session = stream.get_ref().1;
        let alpn = match session.alpn_protocol() {
            Some(b"h2") => Alpn::H2,
            Some(_) => Alpn::Http1,
            None => Alpn::None,
        };
        let peer = if mesh {
            session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(verify_client::spiffe_id)
                .map(Arc::from)
        } else {
            None
        };
        Ok(Accepted::Tls {
            stream: Box::new(stream),
            peer,
            alpn,
        })
    }
}

/// Whether the client's first byte opens a TLS handshake (waits for it; not consumed).
async fn opens_tls(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0] == TLS_HANDSHAKE)
}

/// How often a `simple` listener's files are looked at, at most.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// What a file looks like: size, modification time, inode.
type Stamp = Option<(u64, SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?, meta.ino()))
}

/// A `simple` listener's configuration, re-read when its files change.
#[derive(Debug)]
pub struct SimpleCert {
    cert: PathBuf,
    key: PathBuf,
    config: ArcSwap<ServerConfig>,
    /// When the files were last looked at, and how they looked.
    looked: Mutex<(Instant, [Stamp; 2])>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl SimpleCert {
    /// Reads `cert` and `key` (PEM).
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsSetupError> {
        let stamps = [stamp(cert), stamp(key)];
        let ticketer = ticketer()?;
        let config = simple_config(cert, key, ticketer.clone())?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: ArcSwap::new(config),
            looked: Mutex::new((Instant::now(), stamps)),
            ticketer,
        })
    }

    /// The configuration in force, after re-reading the files if they changed.
    pub fn current(&self) -> Arc<ServerConfig> {
        // A handshake that finds another looking does not wait for it.
        if let Ok(mut looked) = self.looked.try_lock() {
            if looked.0.elapsed() >= LOOK_EVERY {
                looked.0 = Instant::now();
                let now = [stamp(&self.cert), stamp(&self.key)];
                if now != looked.1 {
                    match simple_config(&self.cert, &self.key, self.ticketer.clone()) {
                        Ok(config) => {
                            self.config.store(config);
                            looked.1 = now;
                            tracing::info!(cert = %self.cert.display(), "listener certificate re-read");
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "listener certificate files changed but do not make a certificate; keeping the one in force"
                        ),
                    }
                }
            }
        }
        self.config.load_full()
    }
}

/// The mesh server configuration of the identity in force, built once per identity.
#[derive(Debug)]
pub struct MeshConfigs {
    store: Arc<IdentityStore>,
    built: ArcSwapOption<Built>,
    /// Shared by every configuration built: tickets issued before a renewal still resume.
    ticketer: Arc<dyn ProducesTickets>,
}

#[derive(Debug)]
struct Built {
    identity: Arc<Identity>,
    config: Arc<ServerConfig>,
}

impl MeshConfigs {
    /// Configurations for the identities `store` holds.
    pub fn new(store: Arc<IdentityStore>) -> Result<Self, TlsSetupError> {
        Ok(Self {
            store,
            built: ArcSwapOption::empty(),
            ticketer: ticketer()?,
        })
    }

    /// The configuration for the identity in force (built now if the identity is new); before
    /// the first identity, waits for it.
    pub async fn current(&self) -> Result<Arc<ServerConfig>, AcceptError> {
        let identity = match self.store.current() {
            Some(identity) => identity,
            None => self.store.wait().await,
        };
        if let Some(built) = &*self.built.load() {
            if Arc::ptr_eq(&built.identity, &identity) {
                return Ok(built.config.clone());
            }
        }
        let config = mesh_config(&identity, self.ticketer.clone())?;
        // Two handshakes racing over a renewal may both build: either result is right.
        self.built.store(Some(Arc::new(Built {
            identity,
            config: config.clone(),
        })));
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ticketer() -> Result<Arc<dyn ProducesTickets>, TlsSetupError> {
    rustls::crypto::ring::Ticketer::new().map_err(|e| TlsSetupError::Invalid(e.to_string()))
}

fn invalid(e: impl std::fmt::Display) -> TlsSetupError {
    TlsSetupError::Invalid(e.to_string())
}

/// mTLS: the identity's chain as server certificate; clients verified against its bundle and
/// its trust domain.
fn mesh_config(
    identity: &Identity,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let trust_domain = verify_client::trust_domain(&identity.spiffe_id)
        .ok_or_else(|| invalid(format!("`{}` is not a SPIFFE ID", identity.spiffe_id)))?;
    let verifier = MeshClientVerifier::new(identity.roots.clone(), trust_domain, provider())
        .map_err(invalid)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified.clone())));
    finish(&mut config, ticketer);
    Ok(Arc::new(config))
}

/// Termination with the user's certificate and key (PEM files).
fn simple_config(
    cert: &Path,
    key: &Path,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsSetupError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(invalid(format!("{}: no CERTIFICATE block", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        invalid(format!(
            "{} is not the key of {} ({e})",
            key.display(),
            cert.display()
        ))
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    finish(&mut config, ticketer);
    Ok(Arc::new(config))
}

/// ALPN and session resumption, common to every listener configuration.
fn finish(config: &mut ServerConfig, ticketer: Arc<dyn ProducesTickets>) {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = ticketer;
}

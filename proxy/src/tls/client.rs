//! TLS from the proxy to a service's endpoints (`Service.spec.tls`): rustls client
//! configurations built when a config is applied, never per request, and kept across reloads
//! while the service's TLS settings stay the same, so their session caches let a reconnect
//! resume instead of running a full handshake.
//!
//! - `mesh`: one configuration per identity. The identity in force is compared (a pointer)
//!   at each new connection; when it has changed (a renewal, a rotated bundle) a configuration
//!   for it is built, presenting its certificate and verifying peers against its bundle with
//!   [`MeshServerVerifier`]. A configuration per identity rather than one whose certificate is
//!   looked up at each handshake: a resumed TLS 1.3 session keeps the client certificate of
//!   the handshake that began it, and its tickets beget tickets, so sessions of the old identity
//!   would be resumed for ever. Connections open on the old identity carry on.
//! - `simple`: no client certificate; the server is verified against `caFile` for `sni`
//!   (default: the endpoint's host name, or its IP address) by rustls' WebPKI verifier.
//!
//! A failed handshake is [`ProxyError::TlsFailure`] (502 `tls-failure`).

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use strait_config::snapshot::ServiceTls;
use strait_config::spec::ServiceProtocol;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::upstream_stream::UpstreamStream;
use super::verify_server::{AcceptedIdentities, MeshServerVerifier};
use crate::http::error::ProxyError;
use crate::identity::{Identity, IdentityStore};
use crate::service::endpoint::{Endpoint, Target};

/// Sessions remembered per configuration for resumption.
const SESSIONS: usize = 256;

/// Why a service's TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// `caFile` cannot be read.
    #[error("caFile {path}: {source}")]
    CaFile {
        /// Which.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `caFile` holds no usable certificate.
    #[error("caFile {0}: no PEM certificate in it")]
    NoRoots(String),
    /// `sni` is not a server name.
    #[error("sni {0}: not a DNS name or IP address")]
    Sni(String),
    /// The proxy has no identity (`mesh`).
    #[error("tls.mode mesh needs the proxy's identity (spec.identity) and none is in force")]
    NoIdentity,
    /// rustls refused the configuration.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

/// How a service's endpoints are spoken to over TLS.
pub struct UpstreamTls {
    kind: Kind,
    /// The name verified and sent as SNI; `None`: the endpoint's IP address.
    sni: Option<ServerName<'static>>,
}

enum Kind {
    /// `mesh`: a configuration for the identity in force, replaced when it changes.
    Mesh {
        store: Arc<IdentityStore>,
        accepted: AcceptedIdentities,
        protocol: ServiceProtocol,
        current: ArcSwapOption<MeshConnector>,
    },
    /// `simple`: one configuration, or why there is none (logged when built; then every
    /// connection fails with `tls-failure`).
    Simple(Result<TlsConnector, Arc<str>>),
}

/// A mesh configuration and the identity it was built for.
struct MeshConnector {
    identity: Arc<Identity>,
    connector: TlsConnector,
}

impl UpstreamTls {
    /// The client side of `tls` for a service speaking `protocol` (which picks the ALPN
    /// offered).
    pub fn new(
        service: &str,
        tls: &ServiceTls,
        protocol: ServiceProtocol,
        identity: &Arc<IdentityStore>,
    ) -> Self {
        match tls {
            ServiceTls::Mesh { identities } => Self {
                kind: Kind::Mesh {
                    store: identity.clone(),
                    accepted: AcceptedIdentities::new(identities),
                    protocol,
                    current: ArcSwapOption::empty(),
                },
                sni: None,
            },
            ServiceTls::Simple { sni, ca_file } => {
                let sni = sni.as_ref().map(|name| {
                    ServerName::try_from(name.to_string())
                        .map_err(|_| TlsConfigError::Sni(name.to_string()))
                });
                let built = match &sni {
                    Some(Err(e)) => Err(e.to_string().into()),
                    _ => simple_config(ca_file, protocol)
                        .map(|config| TlsConnector::from(Arc::new(config)))
                        .map_err(|e| Arc::from(e.to_string())),
                };
                if let Err(e) = &built {
                    tracing::error!(service, error = %e, "service tls cannot be used; its requests fail with tls-failure");
                }
                Self {
                    kind: Kind::Simple(built),
                    sni: sni.and_then(Result::ok),
                }
            }
        }
    }

    /// Runs the handshake on `tcp` (connected to `address`) within `timeout`.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<UpstreamStream, ProxyError> {
        let fail = |why: String| {
            tracing::warn!(service = %endpoint.service, endpoint = %endpoint.label, error = %why, "upstream tls handshake failed");
            ProxyError::TlsFailure(std::io::Error::other(why))
        };
        let connector = self.connector().map_err(fail)?;
        // `sni`, else the endpoint's host name, else the address connected to.
        let name = match (&self.sni, &endpoint.target) {
            (Some(sni), _) => sni.clone(),
            (None, Target::Host(resolution)) => ServerName::try_from(resolution.host().to_string())
                .map_err(|e| fail(format!("server name {}: {e}", resolution.host())))?,
            (None, Target::Fixed(address)) => ServerName::IpAddress(address.ip().into()),
        };
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => Ok(UpstreamStream::Tls(Box::new(tls))),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(_) => Err(fail("handshake timed out".into())),
        }
    }

    /// The configuration for a new connection.
    fn connector(&self) -> Result<TlsConnector, String> {
        match &self.kind {
            Kind::Simple(built) => built.clone().map_err(|e| e.to_string()),
            Kind::Mesh {
                store,
                accepted,
                protocol,
                current,
            } => {
                let identity = store
                    .current()
                    .ok_or_else(|| TlsConfigError::NoIdentity.to_string())?;
                if let Some(built) = &*current.load() {
                    if Arc::ptr_eq(&built.identity, &identity) {
                        return Ok(built.connector.clone());
                    }
                }
                let config = mesh_config(&identity, accepted.clone(), *protocol)
                    .map_err(|e| e.to_string())?;
                let connector = TlsConnector::from(Arc::new(config));
                current.store(Some(Arc::new(MeshConnector {
                    identity,
                    connector: connector.clone(),
                })));
                Ok(connector)
            }
        }
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.kind {
            Kind::Mesh { .. } => "mesh",
            Kind::Simple(_) => "simple",
        };
        f.debug_struct("UpstreamTls")
            .field("mode", &mode)
            .field("sni", &self.sni)
            .finish()
    }
}

/// A mesh configuration: presents `identity`, verifies peers against its bundle.
fn mesh_config(
    identity: &Identity,
    accepted: AcceptedIdentities,
    protocol: ServiceProtocol,
) -> Result<ClientConfig, TlsConfigError> {
    let provider = super::provider();
    let verifier = MeshServerVerifier::new(
        identity.roots.clone(),
        accepted,
        provider.signature_verification_algorithms,
    );
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(Certificate(identity.certified.clone())));
    Ok(finish(config, protocol))
}

/// A `simple` configuration: no client certificate, the server verified against `ca_file`.
pub(crate) fn simple_config(
    ca_file: &std::path::Path,
    protocol: ServiceProtocol,
) -> Result<ClientConfig, TlsConfigError> {
    let config = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(read_roots(ca_file)?)
        .with_no_client_auth();
    Ok(finish(config, protocol))
}

/// ALPN for the service's protocol, and a session cache.
fn finish(mut config: ClientConfig, protocol: ServiceProtocol) -> ClientConfig {
    config.alpn_protocols = match protocol {
        ServiceProtocol::Http1 => vec![b"http/1.1".to_vec()],
        ServiceProtocol::Http2 | ServiceProtocol::Grpc => vec![b"h2".to_vec()],
        ServiceProtocol::Tcp => Vec::new(),
    };
    config.resumption = Resumption::in_memory_sessions(SESSIONS);
    config
}

/// The roots in a PEM file.
fn read_roots(path: &std::path::Path) -> Result<RootCertStore, TlsConfigError> {
    let pem = read_pem(path)?;
    roots_of(&pem, path)
}

/// A PEM file's bytes.
pub(crate) fn read_pem(path: &std::path::Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::CaFile {
        path: path.display().to_string(),
        source,
    })
}

/// The roots in `pem`, read from `path`.
pub(crate) fn roots_of(
    pem: &[u8],
    path: &std::path::Path,
) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsConfigError::NoRoots(path.display().to_string()));
    }
    Ok(roots)
}

/// Presents one identity's certificate.
#[derive(Debug)]
struct Certificate(Arc<CertifiedKey>);

impl ResolvesClientCert for Certificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

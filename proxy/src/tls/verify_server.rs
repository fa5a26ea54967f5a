//! Verifying a mesh peer (`tls.mode: mesh`): its certificate must chain to the trust bundle
//! of the proxy's identity and carry one of the service's accepted SPIFFE IDs. Host names play no part:
//! a mesh peer is who its certificate says, wherever it listens.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

use rustls::RootCertStore;

/// Peer identities a service accepts: exact SPIFFE IDs, or prefixes (written with a trailing
/// `*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptedIdentities {
    exact: Vec<Arc<str>>,
    prefixes: Vec<Arc<str>>,
}

impl AcceptedIdentities {
    /// From the validated patterns of `tls.identities`.
    pub fn new(patterns: &[Arc<str>]) -> Self {
        let mut accepted = Self::default();
        for p in patterns {
            match p.strip_suffix('*') {
                Some(prefix) => accepted.prefixes.push(prefix.into()),
                None => accepted.exact.push(p.clone()),
            }
        }
        accepted
    }

    /// Whether `spiffe_id` is one of them.
    pub fn accepts(&self, spiffe_id: &str) -> bool {
        self.exact.iter().any(|id| **id == *spiffe_id)
            || self.prefixes.iter().any(|p| spiffe_id.starts_with(&**p))
    }
}

/// The SPIFFE IDs (`spiffe://` URI SANs) of a DER certificate.
pub fn spiffe_ids(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some((*uri).to_owned())
            }
            _ => None,
        })
        .collect()
}

/// Verifies a mesh server against a trust bundle and the accepted identities.
#[derive(Debug)]
pub struct MeshServerVerifier {
    roots: Arc<RootCertStore>,
    accepted: AcceptedIdentities,
    algorithms: WebPkiSupportedAlgorithms,
}

impl MeshServerVerifier {
    /// A verifier of peers chaining to `roots` (the identity's trust bundle).
    pub fn new(
        roots: Arc<RootCertStore>,
        accepted: AcceptedIdentities,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            roots,
            accepted,
            algorithms,
        }
    }
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let ids = spiffe_ids(end_entity);
        if ids.iter().any(|id| self.accepted.accepts(id)) {
            return Ok(ServerCertVerified::assertion());
        }
        tracing::warn!(peer = ?ids, "mesh peer's identity is not one the service accepts (tls.identities)");
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_match_exactly_or_by_a_trailing_star_prefix() {
        let accepted = AcceptedIdentities::new(&[
            "spiffe://td/ns/a/sa/ratings".into(),
            "spiffe://td/ns/b/*".into(),
        ]);
        assert!(accepted.accepts("spiffe://td/ns/a/sa/ratings"));
        assert!(!accepted.accepts("spiffe://td/ns/a/sa/ratings2"), "exact");
        assert!(!accepted.accepts("spiffe://td/ns/a/sa/rating"));
        assert!(accepted.accepts("spiffe://td/ns/b/sa/anything"));
        assert!(!accepted.accepts("spiffe://td/ns/bb/sa/x"));
        assert!(!accepted.accepts("spiffe://other/ns/b/sa/x"));
    }
}

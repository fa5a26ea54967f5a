//! Client certificates on a mutual listener: the chain must lead to the identity's trust
//! bundle (webpki's checks), and the leaf must carry exactly one SPIFFE ID, of the proxy's own
//! trust domain. Anything else fails the handshake.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Verifies mesh clients: chained to `roots`, with a `spiffe://<trust domain>/...` URI SAN.
#[derive(Debug)]
pub struct MeshClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    /// `spiffe://<trust domain>/`: what a peer's SPIFFE ID must start with.
    prefix: String,
}

impl MeshClientVerifier {
    /// Clients of `trust_domain` whose chains lead to `roots`.
    pub fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self {
            chain,
            prefix: format!("spiffe://{trust_domain}/"),
        })
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        match spiffe_id(end_entity) {
            Some(id) if id.starts_with(&self.prefix) => Ok(verified),
            Some(id) => Err(rustls::Error::General(format!(
                "client identity {id} is not of this trust domain ({})",
                self.prefix
            ))),
            None => Err(rustls::Error::General(
                "client certificate carries no single spiffe:// URI SAN".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The one `spiffe://` URI SAN of a certificate; `None` when it has none, several, or does
/// not parse.
pub fn spiffe_id(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    match (uris.next(), uris.next()) {
        (Some(one), None) if one.starts_with("spiffe://") => Some(one.to_owned()),
        _ => None,
    }
}

/// The trust domain of a SPIFFE ID (`spiffe://<td>/...`).
pub fn trust_domain(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    (!td.is_empty()).then_some(td)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trust_domain_is_the_ids_authority() {
        assert_eq!(
            trust_domain("spiffe://cluster.local/ns/a/sa/b"),
            Some("cluster.local")
        );
        assert_eq!(trust_domain("spiffe:///ns"), None);
        assert_eq!(trust_domain("https://x/"), None);
    }

    fn leaf(uri: &str) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_leafs_single_spiffe_id_is_read() {
        let der = leaf("spiffe://td/ns/default/sa/a");
        assert_eq!(
            spiffe_id(&der).as_deref(),
            Some("spiffe://td/ns/default/sa/a")
        );
        assert_eq!(spiffe_id(&leaf("https://not-spiffe/x")), None);
    }
}

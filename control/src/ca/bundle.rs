//! The trust bundle: the mesh's root certificates, one or several (several while a root is
//! rotated), and its hash, which join tokens carry.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use serde::Serialize;

/// The mesh's roots, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

/// What `straitctl identity status` shows of one root.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RootInfo {
    /// Subject, as text.
    pub subject: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
}

/// The bundle cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The PEM text does not parse.
    #[error("trust bundle: {0}")]
    Pem(String),
    /// No certificate in it.
    #[error("trust bundle: no certificate")]
    Empty,
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl TrustBundle {
    /// A bundle of these DER roots (at least one).
    pub fn new(roots: Vec<CertificateDer<'static>>) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::Empty);
        }
        Ok(Self { roots })
    }

    /// Parses every `CERTIFICATE` block of a PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BundleError::Pem(e.to_string()))?;
        Self::new(roots)
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as one PEM text.
    pub fn pem(&self) -> String {
        self.roots.iter().map(|r| pem_certificate(r)).collect()
    }

    /// The bundle's hash, as join tokens carry it: SHA-256 over the concatenated DER of the
    /// roots in bundle order, lowercase hex.
    pub fn sha256(&self) -> String {
        let mut all = Vec::new();
        for root in &self.roots {
            all.extend_from_slice(root);
        }
        sha256_hex(&all)
    }

    /// A rustls root store of the bundle.
    pub fn root_store(&self) -> Arc<RootCertStore> {
        let mut store = RootCertStore::empty();
        let (_added, _ignored) = store.add_parsable_certificates(self.roots.iter().cloned());
        Arc::new(store)
    }

    /// Subject, expiry and fingerprint of each root.
    pub fn describe(&self) -> Vec<RootInfo> {
        self.roots
            .iter()
            .map(|der| {
                let (subject, not_after) = match x509_parser::parse_x509_certificate(der) {
                    Ok((_, cert)) => (
                        cert.subject().to_string(),
                        rfc3339(cert.validity().not_after.to_datetime()),
                    ),
                    Err(_) => ("<unparsable>".into(), String::new()),
                };
                RootInfo {
                    subject,
                    not_after,
                    sha256: sha256_hex(der),
                }
            })
            .collect()
    }
}

/// A date as RFC 3339 (UTC).
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One DER certificate as a PEM block.
pub fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

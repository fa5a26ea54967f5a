//! Reading an identity out of PEM: the chain, its key (checked to match), the trust bundle,
//! and the SPIFFE ID, serial and validity of the leaf.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use super::Identity;

/// Why PEM texts do not make an identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The chain holds no certificate (or does not parse).
    #[error("certificate chain: {0}")]
    Chain(String),
    /// The key does not parse, is of an unsupported type, or is not the leaf's.
    #[error("private key: {0}")]
    Key(String),
    /// The trust bundle holds no usable root.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// The leaf carries no single `spiffe://` URI SAN.
    #[error("leaf certificate: {0}")]
    Leaf(String),
}

pub(super) fn parse(chain: &[u8], key: &[u8], bundle: &[u8]) -> Result<Identity, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Chain(e.to_string()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| IdentityError::Chain("no CERTIFICATE block".into()))?
        .clone();
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| IdentityError::Key(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| IdentityError::Key(format!("not the leaf certificate's key ({e})")))?;
    let bundle = CertificateDer::pem_slice_iter(bundle)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Bundle(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(bundle.iter().cloned());
    if added == 0 {
        return Err(IdentityError::Bundle("no usable root certificate".into()));
    }
    let leaf = Leaf::read(&leaf)?;
    Ok(Identity {
        spiffe_id: leaf.spiffe_id.into(),
        certified: Arc::new(certified),
        roots: Arc::new(roots),
        bundle,
        serial: leaf.serial,
        not_after: leaf.not_after,
        not_before: leaf.not_before,
    })
}

/// What the proxy reads from its own leaf certificate.
struct Leaf {
    spiffe_id: String,
    serial: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Leaf {
    fn read(der: &CertificateDer<'_>) -> Result<Self, IdentityError> {
        let bad = |m: String| IdentityError::Leaf(m);
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(e.to_string()))?;
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .map_err(|e| bad(e.to_string()))?
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::URI(uri) => Some(uri.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let spiffe_id = match uris.as_slice() {
            [one] if one.starts_with("spiffe://") => one.clone(),
            _ => {
                return Err(bad(format!(
                    "expected exactly one spiffe:// URI SAN, found {uris:?}"
                )))
            }
        };
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = u64::try_from(t.timestamp()).unwrap_or(0);
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
        };
        Ok(Self {
            spiffe_id,
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A root, and a leaf for `spiffe_id` signed by it: (chain PEM, key PEM, bundle PEM).
    pub(crate) fn issue(spiffe_id: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(Vec::new()).unwrap();
        leaf.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
        let issuer = rcgen::Issuer::from_params(&root_params, &root_key);
        let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
        (leaf.pem(), leaf_key.serialize_pem(), root.pem())
    }

    #[test]
    fn an_identity_is_read_with_its_spiffe_id_serial_and_validity() {
        let (chain, key, bundle) = issue("spiffe://td/ns/default/sa/reviews");
        let id = parse(chain.as_bytes(), key.as_bytes(), bundle.as_bytes()).unwrap();
        assert_eq!(&*id.spiffe_id, "spiffe://td/ns/default/sa/reviews");
        assert!(!id.serial.is_empty());
        assert!(id.not_after > id.not_before);
        assert!(id.renew_at() > id.not_before && id.renew_at() < id.not_after);
        assert_eq!(id.roots.len(), 1);
    }

    #[test]
    fn a_key_that_is_not_the_leafs_is_refused() {
        let (chain, _, bundle) = issue("spiffe://td/ns/default/sa/a");
        let (_, other_key, _) = issue("spiffe://td/ns/default/sa/a");
        let err = parse(chain.as_bytes(), other_key.as_bytes(), bundle.as_bytes()).unwrap_err();
        assert!(matches!(err, IdentityError::Key(_)), "{err}");
    }

    #[test]
    fn no_roots_or_no_spiffe_id_is_refused() {
        let (chain, key, _) = issue("spiffe://td/ns/default/sa/a");
        assert!(matches!(
            parse(chain.as_bytes(), key.as_bytes(), b"").unwrap_err(),
            IdentityError::Bundle(_)
        ));
        let (chain, key, bundle) = issue("https://not-spiffe/x");
        assert!(matches!(
            parse(chain.as_bytes(), key.as_bytes(), bundle.as_bytes()).unwrap_err(),
            IdentityError::Leaf(_)
        ));
    }
}

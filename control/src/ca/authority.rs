//! Issuance, pure: [`Authority`] checks CSRs and signs leaf certificates for SPIFFE IDs and
//! the control's own serving certificate, with an issuer that must chain to the bundle.
//! No I/O; the caller passes the time.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::OffsetDateTime;

use super::bundle::{pem_certificate, TrustBundle};
use super::spiffe::SpiffeId;
use super::state::CaState;
/// Leaves start this long before issuance, for peers whose clocks lag.
pub(super) const BACKDATE: Duration = Duration::from_secs(60);

/// Why the CA cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR does not parse or its signature is wrong (400).
    #[error("bad CSR: {0}")]
    BadCsr(String),
    /// The CSR asks for another identity than the caller may have (403).
    #[error("the CSR asks for {requested}; this caller may only get {allowed}")]
    WrongIdentity {
        /// What the CSR asked for.
        requested: String,
        /// What the caller may have.
        allowed: String,
    },
    /// Key or certificate material does not parse or sign.
    #[error("{0}")]
    Material(String),
    /// The issuer does not chain to the bundle.
    #[error("the issuer does not chain to the trust bundle: {0}")]
    Chain(String),
    /// A rotation step that cannot apply now (409).
    #[error("{0}")]
    Rotation(String),
}

pub(super) fn material(e: impl std::fmt::Display) -> CaError {
    CaError::Material(e.to_string())
}

/// A random positive 127-bit serial from the system CSPRNG.
pub(super) fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Material("no randomness for the serial".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

/// A certificate issued for a CSR.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM: the leaf, then the issuer chain.
    pub chain_pem: String,
    /// Expiry.
    pub not_after: OffsetDateTime,
    /// Serial, hex.
    pub serial: String,
}

/// The control's own serving certificate, with its key.
#[derive(Debug)]
pub struct Serving {
    /// The leaf, then the issuer chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its key.
    pub key: PrivateKeyDer<'static>,
    /// Expiry.
    pub not_after: OffsetDateTime,
}

/// A CA ready to issue: a bundle, an issuer (key and chain) and the leaf lifetime.
pub struct Authority {
    trust_domain: String,
    bundle: TrustBundle,
    issuer: Issuer<'static, KeyPair>,
    /// The issuer's certificate and intermediates, DER.
    chain: Vec<CertificateDer<'static>>,
    issuer_not_after: OffsetDateTime,
    issuer_subject: String,
    ttl: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("issuer", &self.issuer_subject)
            .finish_non_exhaustive()
    }
}

/// Verifies that `leaf` chains to `roots` through `intermediates` (as a client certificate,
/// which is how peers of the mesh check each other).
pub fn verify_chain(
    roots: &[CertificateDer<'static>],
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<(), String> {
    let bundle = TrustBundle::new(roots.to_vec()).map_err(|e| e.to_string())?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(bundle.root_store(), provider)
            .build()
            .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

impl Authority {
    /// An authority issuing with `issuer_chain_pem` (issuer first) and `issuer_key_pem`, trusted
    /// through `bundle`. Refused when the issuer is not a CA or does not chain to the bundle.
    pub fn new(
        trust_domain: &str,
        bundle: TrustBundle,
        issuer_chain_pem: &str,
        issuer_key_pem: &str,
        ttl: Duration,
    ) -> Result<Self, CaError> {
        let chain = CertificateDer::pem_slice_iter(issuer_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(material)?;
        let Some(issuer_der) = chain.first() else {
            return Err(CaError::Material("no issuer certificate".into()));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(issuer_der).map_err(material)?;
        if !parsed.is_ca() {
            return Err(CaError::Material(
                "the issuer certificate is not a CA (basicConstraints CA:TRUE)".into(),
            ));
        }
        let issuer_not_after = parsed.validity().not_after.to_datetime();
        let issuer_subject = parsed.subject().to_string();
        let key = KeyPair::from_pem(issuer_key_pem).map_err(material)?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::Material(
                "the issuer key does not belong to the issuer certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(issuer_der, key).map_err(material)?;
        // Self-signed roots in the issuer file are not sent in chains.
        let chain: Vec<CertificateDer<'static>> = chain
            .into_iter()
            .filter(|c| !bundle.roots().contains(c))
            .collect();
        let authority = Self {
            trust_domain: trust_domain.to_owned(),
            bundle,
            issuer,
            chain,
            issuer_not_after,
            issuer_subject,
            ttl,
        };
        authority.self_check()?;
        Ok(authority)
    }

    /// An authority over a stored [`CaState`].
    pub fn from_state(state: &CaState, ttl: Duration) -> Result<Self, CaError> {
        Self::new(
            &state.trust_domain,
            state.bundle()?,
            &state.issuer.chain_pem,
            &state.issuer.key_pem,
            ttl,
        )
    }

    /// Issues a throwaway leaf and verifies it against the bundle.
    fn self_check(&self) -> Result<(), CaError> {
        let id =
            SpiffeId::new(&self.trust_domain, "strait-system", "self-check").map_err(material)?;
        let key = KeyPair::generate().map_err(material)?;
        let params = self.leaf_params(&id, OffsetDateTime::now_utc(), self.ttl)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(material)?;
        verify_chain(self.bundle.roots(), cert.der(), &self.chain).map_err(CaError::Chain)
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The bundle.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Lifetime of leaves.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The issuer's subject and expiry.
    pub fn issuer(&self) -> (&str, OffsetDateTime) {
        (&self.issuer_subject, self.issuer_not_after)
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.to_string().as_str().try_into().map_err(material)?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = (now + ttl).min(self.issuer_not_after);
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn chain_pem(&self, leaf: &[u8]) -> String {
        let mut pem = pem_certificate(leaf);
        for c in &self.chain {
            pem.push_str(&pem_certificate(c));
        }
        pem
    }

    /// Issues a leaf for a PEM CSR that asks for exactly `allowed` (one URI SAN, nothing
    /// else); the key stays with the requester, only its public half is certified.
    pub fn issue(
        &self,
        csr_pem: &str,
        allowed: &SpiffeId,
        now: OffsetDateTime,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let requested = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri.as_str().to_owned(),
            [] => return Err(CaError::BadCsr("no SAN: want one URI SAN".into())),
            _ => {
                return Err(CaError::BadCsr(
                    "want exactly one SAN, the URI spiffe://<td>/ns/<ns>/sa/<sa>".into(),
                ))
            }
        };
        if requested != allowed.to_string() {
            return Err(CaError::WrongIdentity {
                requested: requested.chars().take(300).collect(),
                allowed: allowed.to_string(),
            });
        }
        let params = self.leaf_params(allowed, now, self.ttl)?;
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| hex(&s.to_bytes()))
            .unwrap_or_default();
        let not_after = params.not_after;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(material)?;
        Ok(Issued {
            chain_pem: self.chain_pem(cert.der()),
            not_after,
            serial,
        })
    }

    /// A serving certificate for the control itself: `id` plus DNS and IP SANs, with a key
    /// generated here (it never leaves the process).
    pub fn serving(
        &self,
        id: &SpiffeId,
        dns: &[String],
        ips: &[IpAddr],
        now: OffsetDateTime,
    ) -> Result<Serving, CaError> {
        let key = KeyPair::generate().map_err(material)?;
        let mut params = self.leaf_params(id, now, self.ttl)?;
        for name in dns {
            params.subject_alt_names.push(SanType::DnsName(
                name.as_str().try_into().map_err(material)?,
            ));
        }
        params
            .subject_alt_names
            .extend(ips.iter().copied().map(SanType::IpAddress));
        let not_after = params.not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(material)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        let key = PrivateKeyDer::try_from(key.serialize_der()).map_err(material)?;
        Ok(Serving {
            chain,
            key,
            not_after,
        })
    }
}

/// Bytes as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::state::CaState;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("example.org", "default", sa).unwrap()
    }

    fn csr(uris: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (pem, key)
    }

    fn leaf_der(issued: &Issued) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn authority(state: &CaState) -> Authority {
        Authority::from_state(state, Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn issues_exactly_the_allowed_identity_and_the_chain_verifies() {
        let now = OffsetDateTime::now_utc();
        let state = CaState::generate("example.org", now).unwrap();
        let ca = authority(&state);
        let (pem, _) = csr(&["spiffe://example.org/ns/default/sa/reviews"]);
        let issued = ca.issue(&pem, &id("reviews"), now).unwrap();
        let chain = leaf_der(&issued);
        assert_eq!(chain.len(), 2, "leaf and issuer");
        assert_eq!(
            SpiffeId::from_certificate(&chain[0]).unwrap(),
            id("reviews")
        );
        verify_chain(ca.bundle().roots(), &chain[0], &chain[1..]).unwrap();
        assert!(issued.not_after <= now + Duration::from_secs(3600));
        assert_eq!(issued.serial.len(), 32);
    }

    #[test]
    fn refuses_other_identities_and_extra_sans() {
        let now = OffsetDateTime::now_utc();
        let ca = authority(&CaState::generate("example.org", now).unwrap());
        let (other, _) = csr(&["spiffe://example.org/ns/default/sa/ratings"]);
        assert!(matches!(
            ca.issue(&other, &id("reviews"), now),
            Err(CaError::WrongIdentity { .. })
        ));
        let (two, _) = csr(&[
            "spiffe://example.org/ns/default/sa/reviews",
            "spiffe://example.org/ns/default/sa/ratings",
        ]);
        assert!(matches!(
            ca.issue(&two, &id("reviews"), now),
            Err(CaError::BadCsr(_))
        ));
        assert!(matches!(
            ca.issue("not a csr", &id("reviews"), now),
            Err(CaError::BadCsr(_))
        ));
    }

    #[test]
    fn rotation_keeps_old_leaves_verifying_until_the_old_root_leaves() {
        let now = OffsetDateTime::now_utc();
        let mut state = CaState::generate("example.org", now).unwrap();
        let (pem, _) = csr(&["spiffe://example.org/ns/default/sa/reviews"]);
        let old = leaf_der(&authority(&state).issue(&pem, &id("reviews"), now).unwrap());

        assert!(
            state.remove_old_roots().unwrap() == 0,
            "one root: nothing to remove"
        );
        state.add_root(now).unwrap();
        assert!(state.add_root(now).is_err(), "one rotation at a time");
        assert!(
            state.remove_old_roots().is_err(),
            "the issuer is still the old root's"
        );
        state.switch_issuer(now).unwrap();
        let ca = authority(&state);
        assert_eq!(ca.bundle().roots().len(), 2);
        let new = leaf_der(&ca.issue(&pem, &id("reviews"), now).unwrap());
        verify_chain(ca.bundle().roots(), &old[0], &old[1..]).unwrap();
        verify_chain(ca.bundle().roots(), &new[0], &new[1..]).unwrap();

        assert_eq!(state.remove_old_roots().unwrap(), 1);
        let ca = authority(&state);
        assert!(verify_chain(ca.bundle().roots(), &old[0], &old[1..]).is_err());
        verify_chain(ca.bundle().roots(), &new[0], &new[1..]).unwrap();
    }

    #[test]
    fn refuses_an_issuer_outside_the_bundle_or_with_a_foreign_key() {
        let now = OffsetDateTime::now_utc();
        let a = CaState::generate("example.org", now).unwrap();
        let b = CaState::generate("example.org", now).unwrap();
        let ttl = Duration::from_secs(60);
        assert!(matches!(
            Authority::new(
                "example.org",
                b.bundle().unwrap(),
                &a.issuer.chain_pem,
                &a.issuer.key_pem,
                ttl
            ),
            Err(CaError::Chain(_))
        ));
        assert!(Authority::new(
            "example.org",
            a.bundle().unwrap(),
            &a.issuer.chain_pem,
            &b.issuer.key_pem,
            ttl
        )
        .is_err());
    }
}

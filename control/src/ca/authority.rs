//! The CA's pure core: the roots and issuer it holds ([`CaState`], what the store keeps), the
//! rotation steps over them, and issuance ([`Authority`]): CSR checks, leaf certificates for
//! SPIFFE IDs, the control's own serving certificate. No I/O; the caller passes the time.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::bundle::{pem_certificate, TrustBundle};
use super::spiffe::SpiffeId;

/// How long a root the control creates is valid.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issuer the control creates is valid (`rotate switch-issuer` makes a new one).
const ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Leaves start this long before issuance, for peers whose clocks lag.
const BACKDATE: Duration = Duration::from_secs(60);

/// A root of the bundle, with its key when the control created it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootRecord {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 key.
    pub key_pem: String,
}

/// The issuer (intermediate) leaves are signed with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRecord {
    /// PEM certificate of the issuer, followed by any intermediates up to (not including) a root.
    pub chain_pem: String,
    /// PEM PKCS#8 key.
    pub key_pem: String,
}

/// What the store keeps of a CA the control created: every root of the bundle and the issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaState {
    /// The trust domain it was created for.
    pub trust_domain: String,
    /// The bundle's roots, oldest first.
    pub roots: Vec<RootRecord>,
    /// The current issuer, signed by one of `roots`.
    pub issuer: IssuerRecord,
}

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

fn material(e: impl std::fmt::Display) -> CaError {
    CaError::Material(e.to_string())
}

/// A random positive 127-bit serial from the system CSPRNG.
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Material("no randomness for the serial".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte to strip
    Ok(SerialNumber::from_slice(&bytes))
}

fn ca_params(
    common_name: String,
    now: OffsetDateTime,
    validity: Duration,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Strait");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn new_root(trust_domain: &str, now: OffsetDateTime) -> Result<RootRecord, CaError> {
    let key = KeyPair::generate().map_err(material)?;
    let params = ca_params(
        format!("Strait root CA {trust_domain} {}", now.unix_timestamp()),
        now,
        ROOT_VALIDITY,
        None,
    )?;
    let cert = params.self_signed(&key).map_err(material)?;
    Ok(RootRecord {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn new_issuer(
    trust_domain: &str,
    root: &RootRecord,
    now: OffsetDateTime,
) -> Result<IssuerRecord, CaError> {
    let root_key = KeyPair::from_pem(&root.key_pem).map_err(material)?;
    let root_issuer = Issuer::from_ca_cert_pem(&root.cert_pem, root_key).map_err(material)?;
    let key = KeyPair::generate().map_err(material)?;
    let params = ca_params(
        format!("Strait issuer {trust_domain} {}", now.unix_timestamp()),
        now,
        ISSUER_VALIDITY,
        Some(0),
    )?;
    let cert = params.signed_by(&key, &root_issuer).map_err(material)?;
    Ok(IssuerRecord {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn first_der(pem: &str) -> Result<CertificateDer<'static>, CaError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| CaError::Material("no certificate".into()))?
        .map_err(material)
}

/// Whether `cert` carries a valid signature by `signer`'s key.
fn signed_by(cert: &[u8], signer: &[u8]) -> bool {
    match (
        x509_parser::parse_x509_certificate(cert),
        x509_parser::parse_x509_certificate(signer),
    ) {
        (Ok((_, cert)), Ok((_, signer))) => {
            cert.verify_signature(Some(signer.public_key())).is_ok()
        }
        _ => false,
    }
}

impl CaState {
    /// A new root and an issuer signed by it.
    pub fn generate(trust_domain: &str, now: OffsetDateTime) -> Result<Self, CaError> {
        let root = new_root(trust_domain, now)?;
        let issuer = new_issuer(trust_domain, &root, now)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            roots: vec![root],
            issuer,
        })
    }

    /// The bundle of every root.
    pub fn bundle(&self) -> Result<TrustBundle, CaError> {
        let pem: String = self.roots.iter().map(|r| r.cert_pem.as_str()).collect();
        TrustBundle::from_pem(&pem).map_err(material)
    }

    /// Rotation step 1: a new root joins the bundle; the issuer stays (leaves issued from now
    /// on still chain to the old root). Refused while a newer root is not yet issuing.
    pub fn add_root(&mut self, now: OffsetDateTime) -> Result<(), CaError> {
        if self.roots.len() > 1 {
            return Err(CaError::Rotation(
                "a rotation is under way: switch-issuer, then remove-old-roots first".into(),
            ));
        }
        self.roots.push(new_root(&self.trust_domain, now)?);
        Ok(())
    }

    /// Rotation step 2 (also how an issuer is renewed): a new issuer signed by the newest
    /// root. Leaves of the old issuer keep verifying while their root is in the bundle.
    pub fn switch_issuer(&mut self, now: OffsetDateTime) -> Result<(), CaError> {
        let newest = self
            .roots
            .last()
            .ok_or_else(|| CaError::Rotation("no root".into()))?;
        self.issuer = new_issuer(&self.trust_domain, newest, now)?;
        Ok(())
    }

    /// Rotation step 3: every root but the newest leaves the bundle. Refused unless the issuer
    /// is signed by the newest root (so nothing issued from now on would stop verifying).
    pub fn remove_old_roots(&mut self) -> Result<usize, CaError> {
        let Some(newest) = self.roots.last() else {
            return Err(CaError::Rotation("no root".into()));
        };
        let newest_der = first_der(&newest.cert_pem)?;
        let issuer_der = first_der(&self.issuer.chain_pem)?;
        if !signed_by(&issuer_der, &newest_der) {
            return Err(CaError::Rotation(
                "the issuer is not signed by the newest root yet: run switch-issuer first".into(),
            ));
        }
        let removed = self.roots.len() - 1;
        self.roots.drain(..removed);
        Ok(removed)
    }
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

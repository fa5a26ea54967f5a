//! What the store keeps of a CA the control made — its roots and issuer — and the rotation
//! steps over them. Pure: the caller passes the time and stores the result.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::authority::{material, random_serial, CaError, BACKDATE};
use super::bundle::TrustBundle;

/// How long a root the control creates is valid.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issuer the control creates is valid (`rotate switch-issuer` makes a new one).
const ISSUER_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

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

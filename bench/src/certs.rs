//! The mesh scenario's certificates, made here with rcgen as a mesh CA would issue them: one
//! root, and a leaf for each side with its SPIFFE ID (the URI SAN Strait checks) and a DNS
//! name (what nginx, which does not read URI SANs, verifies). ECDSA P-256, rcgen's default,
//! as Strait's own CA issues.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The calling side's identity (the outbound hop's).
pub const CLIENT_ID: &str = "spiffe://bench.local/ns/bench/sa/client";
/// The called side's identity (the inbound hop's).
pub const SERVER_ID: &str = "spiffe://bench.local/ns/bench/sa/server";
/// The DNS name in the server's certificate, which nginx verifies.
pub const SERVER_NAME: &str = "server.bench.local";

/// One side's files: certificate (PEM, leaf) and key (PEM, PKCS#8).
#[derive(Debug, Clone)]
pub struct Side {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files made: the root (trust bundle) and both sides.
#[derive(Debug, Clone)]
pub struct MeshCerts {
    pub bundle: PathBuf,
    pub client: Side,
    pub server: Side,
}

impl MeshCerts {
    /// Makes a root and both leaves, written to `dir`.
    pub fn make(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let root_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut root = rcgen::CertificateParams::default();
        root.distinguished_name = rcgen::DistinguishedName::new();
        root.distinguished_name
            .push(rcgen::DnType::CommonName, "strait-bench mesh root");
        root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        root.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let root_pem = root
            .self_signed(&root_key)
            .map_err(|e| e.to_string())?
            .pem();
        let issuer = rcgen::Issuer::from_params(&root, &root_key);
        let write = |name: &str, text: &str| -> Result<PathBuf, String> {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        };
        let leaf = |name: &str, spiffe: &str, dns: &str| -> Result<Side, String> {
            let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.subject_alt_names = vec![
                rcgen::SanType::URI(spiffe.try_into().map_err(|_| "spiffe id")?),
                rcgen::SanType::DnsName(dns.try_into().map_err(|_| "dns name")?),
            ];
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
            Ok(Side {
                cert: write(&format!("{name}.crt"), &cert.pem())?,
                key: write(&format!("{name}.key"), &key.serialize_pem())?,
            })
        };
        Ok(Self {
            client: leaf("client", CLIENT_ID, "client.bench.local")?,
            server: leaf("server", SERVER_ID, SERVER_NAME)?,
            bundle: write("bundle.pem", &root_pem)?,
        })
    }

    /// A TLS client of the inbound hop, as the outbound hop is: the client certificate
    /// presented, the server verified against the root for [`SERVER_NAME`], HTTP/1.1 by
    /// ALPN; `resume`: sessions remembered, so that a reconnect resumes.
    pub fn client_config(&self, resume: bool) -> Result<Arc<rustls::ClientConfig>, String> {
        let read =
            |path: &Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&read(&self.bundle)?) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let chain = CertificateDer::pem_slice_iter(&read(&self.client.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(&self.client.key)?).map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if resume {
            rustls::client::Resumption::in_memory_sessions(256)
        } else {
            rustls::client::Resumption::disabled()
        };
        Ok(Arc::new(config))
    }
}

//! The proxy's workload identity: its SPIFFE ID, certificate chain and key, and the trust
//! bundle peers are verified against — one value, swapped whole when the certificate is
//! renewed or the bundle rotates ([`IdentityStore`]), read by each TLS handshake (never per
//! request), so a renewal never drops a connection: new handshakes use the new certificate,
//! established connections keep theirs.
//!
//! Where it comes from: files ([`files`], for cert-manager or SPIRE users), or the control's
//! CA (the proxy generates the key; a CSR goes to the control).

pub mod control;
pub mod files;
mod pem;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

pub use pem::IdentityError;

/// The SHA-256 fingerprint of a certificate, lowercase hex.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A certified workload identity.
#[derive(Debug)]
pub struct Identity {
    /// The SPIFFE ID in the leaf certificate's URI SAN.
    pub spiffe_id: Arc<str>,
    /// The chain (leaf first) and its signing key, as TLS presents them.
    pub certified: Arc<CertifiedKey>,
    /// The roots peers are verified against.
    pub roots: Arc<RootCertStore>,
    /// The trust bundle's certificates, in order (for `/identity`).
    pub bundle: Vec<CertificateDer<'static>>,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// When the leaf became valid.
    pub not_before: SystemTime,
}

impl Identity {
    /// The identity in PEM texts: the chain (leaf first), its private key, the trust bundle.
    pub fn from_pem(chain: &[u8], key: &[u8], bundle: &[u8]) -> Result<Self, IdentityError> {
        pem::parse(chain, key, bundle)
    }

    /// When the certificate should be renewed: at 70% of its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime.mul_f64(0.7)
    }
}

/// The identity in force, swapped whole (one writer: the identity's source).
#[derive(Debug, Default)]
pub struct IdentityStore {
    current: ArcSwapOption<Identity>,
    /// Woken at each install (the control channel waits for the first one).
    installed: tokio::sync::Notify,
}

impl IdentityStore {
    /// The identity in force, once there is one.
    pub fn current(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }

    /// Puts `identity` in force for every handshake from now on.
    pub fn install(&self, identity: Identity) {
        metrics::gauge!(crate::metrics::IDENTITY_EXPIRY).set(
            identity
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        tracing::info!(
            spiffe_id = %identity.spiffe_id,
            serial = %identity.serial,
            not_after = %httpdate::fmt_http_date(identity.not_after),
            "identity installed"
        );
        self.current.store(Some(Arc::new(identity)));
        self.installed.notify_waiters();
    }

    /// The identity in force, waiting for the first one if there is none yet.
    pub async fn wait(&self) -> Arc<Identity> {
        loop {
            let installed = self.installed.notified();
            tokio::pin!(installed);
            installed.as_mut().enable();
            if let Some(identity) = self.current() {
                return identity;
            }
            installed.await;
        }
    }
}

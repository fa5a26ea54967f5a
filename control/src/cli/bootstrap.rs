//! First contact with a control knowing only a join token, as a proxy makes it: fetch the
//! trust bundle over a TLS connection that is not yet verified, accept it only if its SHA-256
//! is the one the token carries, then verify the control against it from there on.

use std::sync::Arc;

use http::Method;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::client::{connector, roots_connector, Client};
use crate::ca::bundle::TrustBundle;
use crate::ca::join::JoinToken;

/// Accepts any server certificate (the handshake's signatures are still checked): used only
/// to fetch the bundle, whose content is then checked against the token's hash.
#[derive(Debug)]
struct UntilTheBundleIsChecked(Arc<CryptoProvider>);

impl ServerCertVerifier for UntilTheBundleIsChecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The control's trust bundle (PEM), checked against `token`'s hash, and a client of `server`
/// that verifies the control with it.
pub async fn bundle_by_token(server: &str, token: &str) -> Result<(String, Client), String> {
    let token = JoinToken::parse(token).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UntilTheBundleIsChecked(provider)))
        .with_no_client_auth();
    let unverified = Client::over_tls(server, None, connector(config))?;
    let answer = unverified
        .call(Method::GET, "/v1/identity/bundle", None)
        .await
        .map_err(|e| e.to_string())?;
    let pem = answer["trustBundle"].as_str().unwrap_or_default();
    let bundle = TrustBundle::from_pem(pem).map_err(|e| e.to_string())?;
    if bundle.sha256() != token.bundle_sha256() {
        return Err(format!(
            "the control's trust bundle has SHA-256 {}, the join token expects {}: not the control the token is for",
            bundle.sha256(),
            token.bundle_sha256()
        ));
    }
    let verified = Client::over_tls(server, None, roots_connector(pem)?)?;
    Ok((bundle.pem(), verified))
}

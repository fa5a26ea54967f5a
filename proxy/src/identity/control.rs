//! An identity issued by the control's CA, and the TLS the proxy speaks to the control.
//!
//! The proxy makes its key here (ECDSA P-256; it never leaves the process) and sends a CSR for
//! its one SPIFFE ID to `POST /v1/identity/certificates`. The first time it proves who it is
//! with the credential in `control.tokenFile`: a join token (`strait-join.…`) or, in a pod, the
//! projected ServiceAccount token the control checks through TokenReview. Afterwards it renews
//! with its current certificate as the TLS client certificate, at 70% of the lifetime left
//! when the certificate arrived, retrying with jittered backoff on the next of the control's
//! replicas; the certificate in force stays until a new one is installed.
//!
//! The control is verified on first contact against `identity.trustBundleFile` when given,
//! else against the bundle the control serves, accepted only when its SHA-256 is the join
//! token's; from then on against the bundle of the identity in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{Identity, IdentityError, IdentityStore};

/// Join tokens start with this; any other credential is a ServiceAccount token (a JWT).
const JOIN_PREFIX: &str = "strait-join.";
/// Largest answer read from the control's identity API.
const MAX_ANSWER: usize = 256 * 1024;
/// How long a call to the control may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// First and largest retry delays after a failed issuance (each jittered).
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(30));
/// Share of the lifetime left at arrival after which a certificate is renewed.
const RENEW_AT: f64 = 0.7;

/// Why a certificate could not be had (this time).
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The control cannot be reached.
    #[error("connect to the control: {0}")]
    Connect(std::io::Error),
    /// TLS setup or HTTP failed.
    #[error("{0}")]
    Transport(String),
    /// The control answered with an error.
    #[error("the control refused ({status}): {message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
    /// The control's answer is not what the API promises.
    #[error("bad answer from the control: {0}")]
    Answer(String),
    /// The control's trust bundle is not the one the join token names.
    #[error("the control's trust bundle has SHA-256 {served}, the join token expects {expected}: not the control the token is for")]
    WrongBundle {
        /// Hash of the bundle served.
        served: String,
        /// Hash in the token.
        expected: String,
    },
    /// The credential or the bundle file cannot be used.
    #[error("{0}")]
    Credential(String),
    /// The issued certificate does not make an identity with the proxy's key.
    #[error("issued certificate: {0}")]
    Identity(#[from] IdentityError),
}

fn transport(e: impl std::fmt::Display) -> EnrolError {
    EnrolError::Transport(e.to_string())
}

/// Presents the identity in force, read at each handshake (a renewal drops no connection).
#[derive(Debug)]
struct CurrentCertificate(Arc<IdentityStore>);

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|id| id.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

/// Accepts any server certificate (the handshake's signatures are still checked): used only
/// to fetch the trust bundle, whose hash is then checked against the join token's.
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
        let algorithms = &self.0.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS to an `https://` control: verified against the bundle of the identity in force (or,
/// before there is one, the roots first contact established), presenting the proxy's
/// certificate once it has one.
#[derive(Debug)]
pub struct ControlTls {
    store: Arc<IdentityStore>,
    /// Roots the control is verified against until an identity is installed.
    anchors: ArcSwapOption<RootCertStore>,
}

/// The `host:port` to dial and the name to verify for a control URL.
fn endpoint(url: &Uri) -> Result<(String, ServerName<'static>), String> {
    let authority = url.authority().ok_or("the control URL has no host")?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name =
        ServerName::try_from(host.to_owned()).map_err(|e| format!("control host {host}: {e}"))?;
    let dial = format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(443)
    );
    Ok((dial, server_name))
}

/// TLS with `config` to the replica at `url`, offering `alpn` (a host name with several
/// addresses is dialled address by address).
async fn handshake(
    url: &Uri,
    mut config: ClientConfig,
    alpn: &'static [u8],
) -> Result<TlsStream<TcpStream>, EnrolError> {
    let (authority, server_name) = endpoint(url).map_err(EnrolError::Transport)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(&authority)
        .await
        .map_err(EnrolError::Connect)?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| EnrolError::Transport(format!("TLS with the control: {e}")))
}

impl ControlTls {
    /// TLS to the control's replicas (`https://HOST:PORT` each), with the identity of `store`.
    pub fn new(urls: &[Uri], store: Arc<IdentityStore>) -> Result<Self, String> {
        for url in urls {
            endpoint(url)?;
        }
        Ok(Self {
            store,
            anchors: ArcSwapOption::empty(),
        })
    }

    /// The proxy's identity store.
    pub fn store(&self) -> &Arc<IdentityStore> {
        &self.store
    }

    /// A verified TLS connection to the control replica at `url` (one of `--control URL,URL`)
    /// offering `alpn`.
    pub async fn connect_to(
        &self,
        url: &Uri,
        alpn: &'static [u8],
    ) -> Result<TlsStream<TcpStream>, EnrolError> {
        let config = self.client_config()?;
        handshake(url, config, alpn).await
    }

    /// The client configuration for the control: its roots, the proxy's certificate.
    fn client_config(&self) -> Result<ClientConfig, EnrolError> {
        let roots = match (self.store.current(), self.anchors.load_full()) {
            (Some(identity), _) => identity.roots.clone(),
            (None, Some(anchors)) => anchors,
            (None, None) => {
                return Err(EnrolError::Credential(
                    "the control's trust bundle is not known yet".into(),
                ))
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(transport)?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(CurrentCertificate(self.store.clone())));
        Ok(config)
    }

    /// First contact: the roots to verify the control against, from `bundle_file` or from
    /// the bundle the replica at `url` serves when its hash is the join token's.
    async fn first_contact(
        &self,
        url: &Uri,
        credential: &str,
        bundle_file: Option<&PathBuf>,
    ) -> Result<(), EnrolError> {
        if self.anchors.load().is_some() {
            return Ok(());
        }
        let pem = match bundle_file {
            Some(file) => std::fs::read(file).map_err(|e| {
                EnrolError::Credential(format!("identity.trustBundleFile {}: {e}", file.display()))
            })?,
            None => self.bundle_by_token(url, credential).await?,
        };
        let mut roots = RootCertStore::empty();
        let ders = parse_roots(&pem)?;
        roots.add_parsable_certificates(ders);
        self.anchors.store(Some(Arc::new(roots)));
        Ok(())
    }

    async fn bundle_by_token(&self, url: &Uri, credential: &str) -> Result<Vec<u8>, EnrolError> {
        let expected = credential
            .strip_prefix(JOIN_PREFIX)
            .and_then(|rest| rest.rsplit('.').next())
            .filter(|hash| hash.len() == 64)
            .ok_or_else(|| {
                EnrolError::Credential(
                    "control.tokenFile holds no join token (strait-join.…) to verify the control with: give identity.trustBundleFile".into(),
                )
            })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(transport)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UntilTheBundleIsChecked(provider)))
            .with_no_client_auth();
        let stream = handshake(url, config, b"http/1.1").await?;
        let answer = call(
            stream,
            Method::GET,
            "/v1/identity/bundle",
            None,
            Bytes::new(),
        )
        .await?;
        let pem = answer["trustBundle"]
            .as_str()
            .ok_or_else(|| EnrolError::Answer("no trustBundle".into()))?;
        let mut all = Vec::new();
        for der in parse_roots(pem.as_bytes())? {
            all.extend_from_slice(&der);
        }
        let served = hex(ring::digest::digest(&ring::digest::SHA256, &all).as_ref());
        if !served.eq_ignore_ascii_case(expected) {
            return Err(EnrolError::WrongBundle {
                served,
                expected: expected.to_owned(),
            });
        }
        Ok(pem.as_bytes().to_vec())
    }
}

fn parse_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, EnrolError> {
    use rustls::pki_types::pem::PemObject;
    let roots = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| EnrolError::Credential(format!("trust bundle: {e}")))?;
    if roots.is_empty() {
        return Err(EnrolError::Credential(
            "trust bundle: no CERTIFICATE block".into(),
        ));
    }
    Ok(roots)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// One HTTP/1.1 call on `stream`; the JSON answer of a 2xx, else [`EnrolError::Refused`].
async fn call(
    stream: TlsStream<TcpStream>,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Bytes,
) -> Result<serde_json::Value, EnrolError> {
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(transport)?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "strait-control")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body)).map_err(transport)?;
        let response = sender.send_request(request).await.map_err(transport)?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(transport)?
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if !status.is_success() {
            let message = json["error"].as_str().map_or_else(
                || String::from_utf8_lossy(&bytes).into_owned(),
                str::to_owned,
            );
            return Err(EnrolError::Refused { status, message });
        }
        Ok(json)
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| EnrolError::Transport("the control did not answer in time".into()))?
}

/// What the proxy asks the control for, and how it proves who it is the first time.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// `spiffe://TD/ns/NS/sa/SA`.
    pub spiffe_id: String,
    /// The control's replicas (`--control URL,URL`): any live one issues and renews.
    pub urls: Vec<Uri>,
    /// The file holding the join token or the projected ServiceAccount token (read at each
    /// first request: the kubelet rotates the latter).
    pub token_file: Option<PathBuf>,
    /// Roots to verify the control and peers against instead of the control's bundle.
    pub trust_bundle_file: Option<PathBuf>,
}

impl Enrolment {
    fn credential(&self) -> Result<String, EnrolError> {
        let file = self.token_file.as_ref().ok_or_else(|| {
            EnrolError::Credential(
                "no control.tokenFile: a join token or a ServiceAccount token is needed for the first certificate".into(),
            )
        })?;
        let text = std::fs::read_to_string(file).map_err(|e| {
            EnrolError::Credential(format!("control.tokenFile {}: {e}", file.display()))
        })?;
        Ok(text.trim().to_owned())
    }
}

/// The proxy's key: generated once, kept in memory only.
struct ProxyKey(rcgen::KeyPair);

impl ProxyKey {
    fn generate() -> Result<Self, EnrolError> {
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map(Self)
            .map_err(|e| EnrolError::Credential(format!("cannot generate a key: {e}")))
    }

    fn csr(&self, spiffe_id: &str) -> Result<String, EnrolError> {
        let bad = |e: rcgen::Error| EnrolError::Credential(format!("CSR for {spiffe_id}: {e}"));
        let mut params = rcgen::CertificateParams::new(Vec::new()).map_err(bad)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![rcgen::SanType::URI(spiffe_id.try_into().map_err(bad)?)];
        params
            .serialize_request(&self.0)
            .map_err(bad)?
            .pem()
            .map_err(bad)
    }
}

/// Asks the replica at `url` for a certificate: with the credential while there is no
/// identity, then with the identity in force.
async fn issue(
    tls: &ControlTls,
    url: &Uri,
    enrolment: &Enrolment,
    key: &ProxyKey,
) -> Result<Identity, EnrolError> {
    let credential = match tls.store.current() {
        Some(_) => None,
        None => {
            let credential = enrolment.credential()?;
            tls.first_contact(url, &credential, enrolment.trust_bundle_file.as_ref())
                .await?;
            Some(credential)
        }
    };
    let csr = key.csr(&enrolment.spiffe_id)?;
    let body = Bytes::from(serde_json::json!({ "csr": csr }).to_string());
    let stream = tls.connect_to(url, b"http/1.1").await?;
    let answer = call(
        stream,
        Method::POST,
        "/v1/identity/certificates",
        credential.as_deref(),
        body,
    )
    .await?;
    let chain = answer["certificateChain"]
        .as_str()
        .ok_or_else(|| EnrolError::Answer("no certificateChain".into()))?;
    let bundle = match &enrolment.trust_bundle_file {
        Some(file) => std::fs::read(file).map_err(|e| {
            EnrolError::Credential(format!("identity.trustBundleFile {}: {e}", file.display()))
        })?,
        None => answer["trustBundle"]
            .as_str()
            .ok_or_else(|| EnrolError::Answer("no trustBundle".into()))?
            .as_bytes()
            .to_vec(),
    };
    let identity = Identity::from_pem(chain.as_bytes(), key.0.serialize_pem().as_bytes(), &bundle)?;
    if *identity.spiffe_id != enrolment.spiffe_id {
        return Err(EnrolError::Answer(format!(
            "certificate for {}, asked for {}",
            identity.spiffe_id, enrolment.spiffe_id
        )));
    }
    Ok(identity)
}

/// When a certificate that arrived at `received` is renewed: at 70% of the lifetime left
/// then (the CA backdates `notBefore` for clock skew, so the full lifetime would renew early).
fn renewal_time(identity: &Identity, received: SystemTime) -> SystemTime {
    let left = identity
        .not_after
        .duration_since(received)
        .unwrap_or_default();
    received + left.mul_f64(RENEW_AT)
}

/// The next retry delay after `delay`, kept under a tenth of what is left of `identity`.
fn next_delay(delay: Duration, identity: Option<&Identity>) -> Duration {
    let cap = identity
        .and_then(|id| id.not_after.duration_since(SystemTime::now()).ok())
        .map_or(RETRY.1, |left| (left / 10).clamp(RETRY.0, RETRY.1));
    (delay * 2).min(cap)
}

/// Gets the proxy's first certificate and renews it for the life of the process, from the
/// replica that last answered; after a failure the next attempt goes to the next replica (as
/// the push stream does), after a jittered, doubling delay.
pub async fn run(tls: Arc<ControlTls>, enrolment: Enrolment) {
    let key = match ProxyKey::generate() {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(error = %e, "no identity: the proxy stays unready");
            return;
        }
    };
    tracing::info!(spiffe_id = %enrolment.spiffe_id, "asking the control for a certificate");
    let mut delay = RETRY.0;
    let mut replica = 0;
    loop {
        let Some(url) = enrolment.urls.get(replica % enrolment.urls.len().max(1)) else {
            tracing::error!("no control URL to ask for a certificate; the proxy stays unready");
            return;
        };
        match issue(&tls, url, &enrolment, &key).await {
            Ok(identity) => {
                let renew = renewal_time(&identity, SystemTime::now());
                tls.store.install(identity);
                delay = RETRY.0;
                let wait = renew.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let current = tls.store.current();
                match &current {
                    Some(id) => {
                        tracing::warn!(control = %url, error = %e, serial = %id.serial, "certificate renewal failed; the current certificate stays in force")
                    }
                    None => {
                        tracing::error!(control = %url, spiffe_id = %enrolment.spiffe_id, error = %e, "no certificate from the control; /ready stays 503")
                    }
                }
                // A dead replica is not asked first again.
                replica += 1;
                let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
                tokio::time::sleep(jittered).await;
                delay = next_delay(delay, current.as_deref());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_names_exactly_the_spiffe_id() {
        let key = ProxyKey::generate().unwrap();
        let pem = key.csr("spiffe://td/ns/default/sa/reviews").unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn renewal_is_at_seventy_percent_of_the_lifetime_left_on_arrival() {
        let (chain, key, bundle) = super::super::pem::tests::issue("spiffe://td/ns/a/sa/b");
        let id = Identity::from_pem(chain.as_bytes(), key.as_bytes(), bundle.as_bytes()).unwrap();
        let received = id.not_before + Duration::from_secs(60);
        let left = id.not_after.duration_since(received).unwrap();
        assert_eq!(
            renewal_time(&id, received),
            received + left.mul_f64(RENEW_AT)
        );
    }

    #[test]
    fn retries_back_off_but_stay_under_a_tenth_of_the_lifetime_left() {
        assert_eq!(next_delay(RETRY.0, None), RETRY.0 * 2);
        assert_eq!(next_delay(RETRY.1, None), RETRY.1);
    }
}

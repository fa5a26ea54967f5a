//! The webhook's HTTPS listener: rustls (ring provider, chosen explicitly), HTTP/1.1 and
//! HTTP/2 by ALPN, `POST /inject` and `POST /inject/namespace-enabled`, `GET /healthz`.
//!
//! No bearer token: managed API servers (EKS, GKE, AKS) cannot be told to send one, so a
//! webhook that required it would refuse every pod of an opted-in namespace. The API server
//! authenticates the webhook instead (its certificate chains to the `caBundle` of the
//! MutatingWebhookConfiguration), as Istio's and Linkerd's injectors do. That is safe: the
//! webhook only turns the pod it is sent into a patch for that pod; it reads the CA's trust
//! bundle (public) and trust domain, and writes no policy, token or certificate of the mesh.
//! With `--webhook-client-ca`, a client certificate is optional but, when presented, must
//! chain to that CA (else the handshake fails): an API server configured with one is
//! checked, the others still work.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::pod::Scope;
use super::settings::Settings;
use super::webhook::{review, Verdict};
use crate::ca::Ca;

/// Largest AdmissionReview accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// How to run the webhook listener.
#[derive(Debug, Clone)]
pub struct WebhookOptions {
    /// HTTPS address.
    pub listen: SocketAddr,
    /// PEM certificate chain (the Service's DNS name must be in it).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA that a presented client certificate must chain to (a certificate stays optional).
    pub client_ca: Option<PathBuf>,
    /// What injected pods get.
    pub settings: Settings,
}

/// The webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A PEM file cannot be read.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client CA cannot verify anything.
    #[error("--webhook-client-ca: {0}")]
    ClientCa(String),
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> WebhookError {
    WebhookError::Pem {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Builds the TLS configuration with the ring provider (the only one in the workspace).
pub fn tls_config(options: &WebhookOptions) -> Result<Arc<ServerConfig>, WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&options.cert)
        .map_err(|e| pem_error(&options.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&options.cert, e))?;
    if certs.is_empty() {
        return Err(pem_error(&options.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&options.key).map_err(|e| pem_error(&options.key, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match &options.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))? {
                roots
                    .add(cert.map_err(|e| pem_error(path, e))?)
                    .map_err(|e| pem_error(path, e))?;
            }
            // Optional: managed API servers present no certificate; one that is presented
            // must verify.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| WebhookError::ClientCa(e.to_string()))?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(certs, key)?,
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the webhook listener (so a bad address fails the start, not a background task).
pub async fn bind(
    options: &WebhookOptions,
) -> Result<(TcpListener, Arc<ServerConfig>), WebhookError> {
    let config = tls_config(options)?;
    let listener =
        TcpListener::bind(options.listen)
            .await
            .map_err(|source| WebhookError::Bind {
                address: options.listen,
                source,
            })?;
    Ok((listener, config))
}

/// Serves the webhook until the task is dropped. Injected proxies get `ca`'s trust domain and
/// its trust bundle as it is when each pod is created.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    settings: Settings,
    ca: Arc<Ca>,
) {
    let acceptor = TlsAcceptor::from(config);
    let settings = Arc::new(CaSettings { settings, ca });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, settings) = (acceptor.clone(), settings.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(client = %peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| {
                let settings = settings.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req, &settings).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(client = %peer, error = %e, "webhook connection ended with error");
            }
        });
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).unwrap_or_default(),
    )));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The webhook's settings, completed from the CA at each review (the bundle may rotate).
struct CaSettings {
    settings: Settings,
    ca: Arc<Ca>,
}

impl CaSettings {
    fn current(&self) -> Settings {
        let authority = self.ca.authority();
        Settings {
            trust_domain: authority.trust_domain().to_owned(),
            trust_bundle: authority.bundle().pem(),
            ..self.settings.clone()
        }
    }
}

async fn answer(req: Request<Incoming>, settings: &CaSettings) -> Response<Full<Bytes>> {
    let scope = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => {
            return json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (&Method::POST, "/inject") => Scope::Pod,
        (&Method::POST, "/inject/namespace-enabled") => Scope::Everything,
        _ => {
            return json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "POST /inject or /inject/namespace-enabled"}),
            )
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": format!("cannot read the body: {e}")}),
            )
        }
    };
    match review(&body, scope, &settings.current()) {
        Ok((answer, verdict)) => {
            let uid = answer
                .pointer("/response/uid")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            match &verdict {
                Verdict::Injected => tracing::info!(uid, "webhook: pod injected"),
                Verdict::Unchanged(why) => tracing::debug!(uid, why, "webhook: pod unchanged"),
                Verdict::Denied(why) => tracing::warn!(uid, why, "webhook: pod denied"),
            }
            json_response(StatusCode::OK, &answer)
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": e.to_string()}),
        ),
    }
}

//! Kubernetes ServiceAccount tokens as a proxy's first credential: a pod's projected token
//! (audience `strait`) is sent to the API server's TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`); an authenticated
//! `system:serviceaccount:NS:SA` may have a certificate for `spiffe://TD/ns/NS/sa/SA` and
//! nothing else.
//!
//! The API server is found as every in-cluster client finds it: `KUBERNETES_SERVICE_HOST`
//! and `KUBERNETES_SERVICE_PORT`, the control's own token and the cluster CA in
//! `/var/run/secrets/kubernetes.io/serviceaccount/` (`STRAIT_KUBE_SERVICEACCOUNT_DIR`
//! overrides the directory). Outside a cluster there is no reviewer, and only join tokens
//! are accepted.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The audience proxies' projected tokens are minted for.
pub const AUDIENCE: &str = "strait";
/// Where a pod's ServiceAccount credentials are mounted.
const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long a review may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest review answer read.
const MAX_ANSWER: usize = 256 * 1024;

/// Why a ServiceAccount token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not in a cluster: no API server to ask.
    #[error("not a join token (strait-join.…), and the control runs outside Kubernetes (no TokenReview)")]
    NoCluster,
    /// The API server says the token is not valid.
    #[error("the Kubernetes API did not authenticate the token{0}")]
    NotAuthenticated(String),
    /// The token is valid but not a ServiceAccount's, or not for this audience.
    #[error("{0}")]
    NotAServiceAccount(String),
    /// The API server cannot be asked.
    #[error("TokenReview: {0}")]
    Unavailable(String),
}

/// The API server's TokenReview, as the control's ServiceAccount calls it.
#[derive(Debug)]
pub struct TokenReviewer {
    address: String,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    token_file: PathBuf,
}

static REVIEWER: OnceLock<Option<TokenReviewer>> = OnceLock::new();

impl TokenReviewer {
    /// The in-cluster reviewer, made on first use (`None` outside a cluster).
    pub fn in_cluster() -> Option<&'static Self> {
        REVIEWER
            .get_or_init(|| match Self::from_env() {
                Ok(reviewer) => reviewer,
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up TokenReview; ServiceAccount tokens are refused");
                    None
                }
            })
            .as_ref()
    }

    fn from_env() -> Result<Option<Self>, String> {
        let (Ok(host), Ok(port)) = (
            std::env::var("KUBERNETES_SERVICE_HOST"),
            std::env::var("KUBERNETES_SERVICE_PORT"),
        ) else {
            return Ok(None);
        };
        let dir = std::env::var_os("STRAIT_KUBE_SERVICEACCOUNT_DIR")
            .map_or_else(|| PathBuf::from(SERVICEACCOUNT_DIR), PathBuf::from);
        let ca_file = dir.join("ca.crt");
        let ca = std::fs::read(&ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca) {
            let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca_file.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = ServerName::try_from(host.clone())
            .map_err(|e| format!("KUBERNETES_SERVICE_HOST {host}: {e}"))?;
        let address = match host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host}]:{port}"),
            Err(_) => format!("{host}:{port}"),
        };
        tracing::info!(api = %address, "ServiceAccount tokens are checked with TokenReview");
        Ok(Some(Self {
            address,
            server_name,
            tls: Arc::new(tls),
            token_file: dir.join("token"),
        }))
    }

    /// The namespace and ServiceAccount `token` authenticates, as the API server says.
    pub async fn review(&self, token: &str) -> Result<(String, String), ReviewError> {
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, self.ask(token))
            .await
            .map_err(|_| {
                ReviewError::Unavailable("the API server did not answer in time".into())
            })??;
        service_account_of(&answer)
    }

    async fn ask(&self, token: &str) -> Result<Value, ReviewError> {
        let unavailable = |e: &dyn std::fmt::Display| ReviewError::Unavailable(e.to_string());
        let own = std::fs::read_to_string(&self.token_file)
            .map_err(|e| unavailable(&format!("{}: {e}", self.token_file.display())))?;
        let body = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [AUDIENCE]},
        });
        let tcp = TcpStream::connect(&self.address)
            .await
            .map_err(|e| unavailable(&e))?;
        let tls = TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| unavailable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tls))
                .await
                .map_err(|e| unavailable(&e))?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/apis/authentication.k8s.io/v1/tokenreviews")
            .header(header::HOST, self.address.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {}", own.trim()))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| unavailable(&e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unavailable(&e))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| unavailable(&e))?
            .to_bytes();
        if !status.is_success() {
            return Err(ReviewError::Unavailable(format!(
                "the API server answered {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| unavailable(&e))
    }
}

/// The `(namespace, service account)` a TokenReview answer authenticates for [`AUDIENCE`].
pub fn service_account_of(review: &Value) -> Result<(String, String), ReviewError> {
    let status = &review["status"];
    if status["authenticated"] != true {
        let why = status["error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(ReviewError::NotAuthenticated(why));
    }
    if let Some(audiences) = status["audiences"].as_array() {
        if !audiences.iter().any(|a| a == AUDIENCE) {
            return Err(ReviewError::NotAServiceAccount(format!(
                "the token is not for audience `{AUDIENCE}`"
            )));
        }
    }
    let username = status["user"]["username"].as_str().unwrap_or_default();
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains(':') => {
            Ok((ns.to_owned(), sa.to_owned()))
        }
        _ => Err(ReviewError::NotAServiceAccount(format!(
            "`{}` is not a ServiceAccount (system:serviceaccount:NS:SA)",
            username.chars().take(200).collect::<String>()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(authenticated: bool, username: &str, audiences: &[&str]) -> Value {
        json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "status": {
                "authenticated": authenticated,
                "user": {"username": username, "uid": "u", "groups": ["system:serviceaccounts"]},
                "audiences": audiences,
            }
        })
    }

    #[test]
    fn an_authenticated_service_account_is_its_namespace_and_name() {
        let r = review(true, "system:serviceaccount:default:reviews", &["strait"]);
        assert_eq!(
            service_account_of(&r).unwrap(),
            ("default".to_owned(), "reviews".to_owned())
        );
    }

    #[test]
    fn unauthenticated_other_users_and_other_audiences_are_refused() {
        let no = json!({"status": {"authenticated": false, "error": "token expired"}});
        assert!(matches!(
            service_account_of(&no),
            Err(ReviewError::NotAuthenticated(e)) if e.contains("expired")
        ));
        for user in [
            "alice",
            "system:serviceaccount:default",
            "system:serviceaccount::x",
        ] {
            let r = review(true, user, &["strait"]);
            assert!(
                matches!(
                    service_account_of(&r),
                    Err(ReviewError::NotAServiceAccount(_))
                ),
                "{user}"
            );
        }
        let r = review(true, "system:serviceaccount:default:reviews", &["api"]);
        assert!(service_account_of(&r).is_err());
    }
}

//! A small JSON client of the control API (bearer token, HTTP/1.1; `https://` verified
//! against a CA file, e.g. the control's `DATA_DIR/trust-bundle.pem`).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// A connection to one control.
#[derive(Debug, Clone)]
pub struct Client {
    server: String,
    token: Option<String>,
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Plain(Box<Hyper<HttpConnector, Full<Bytes>>>),
    /// One TLS connection per call (straitctl makes a handful).
    Tls {
        connector: TlsConnector,
        /// `host:port` to connect to.
        address: String,
        name: ServerName<'static>,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(_) => f.write_str("Plain"),
            Self::Tls { address, .. } => write!(f, "Tls({address})"),
        }
    }
}

/// A TLS client configuration trusting the PEM certificates in `roots_pem`.
pub(crate) fn roots_connector(roots_pem: &str) -> Result<TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(connector(config))
}

/// The connector of a client configuration (HTTP/1.1 by ALPN).
pub(crate) fn connector(mut config: rustls::ClientConfig) -> TlsConnector {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The control could not be reached.
    #[error("cannot reach the control at {server}: {message}")]
    Unreachable {
        /// Its URL.
        server: String,
        /// Why.
        message: String,
    },
    /// The control answered with an error.
    #[error("{status}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// `error` of the answer.
        message: String,
        /// `errors` of the answer (validation errors, one per line).
        details: Vec<String>,
    },
}

impl Client {
    /// A client of `server` (e.g. `http://127.0.0.1:15010`), sending `token` if given.
    pub fn new(server: &str, token: Option<String>) -> Self {
        Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            transport: Transport::Plain(Box::new(
                Hyper::builder(TokioExecutor::new()).build_http(),
            )),
        }
    }

    /// A client of an `http://` or `https://` server; `https://` needs `ca_file` (the PEM
    /// roots that signed the control's certificate).
    pub fn connect(
        server: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        if !server.starts_with("https://") {
            return Ok(Self::new(server, token));
        }
        let ca_file = ca_file.ok_or_else(|| {
            format!("{server}: https needs --ca-file (the control's trust bundle, DATA_DIR/trust-bundle.pem)")
        })?;
        let roots =
            std::fs::read_to_string(ca_file).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        let connector =
            roots_connector(&roots).map_err(|e| format!("{}: {e}", ca_file.display()))?;
        Self::over_tls(server, token, connector)
    }

    /// A client of `https://HOST:PORT` through `connector`.
    pub(crate) fn over_tls(
        server: &str,
        token: Option<String>,
        connector: TlsConnector,
    ) -> Result<Self, String> {
        let rest = server
            .strip_prefix("https://")
            .ok_or_else(|| format!("{server}: want https://HOST:PORT"))?;
        let address = rest.split('/').next().unwrap_or_default().to_owned();
        let host = match address.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => return Err(format!("{server}: want https://HOST:PORT")),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{server}: {e}"))?;
        Ok(Self {
            server: server.trim_end_matches('/').to_owned(),
            token,
            transport: Transport::Tls {
                connector,
                address,
                name,
            },
        })
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Result<http::Response<Incoming>, String> {
        match &self.transport {
            Transport::Plain(http) => http.request(req).await.map_err(|e| e.to_string()),
            Transport::Tls {
                connector,
                address,
                name,
            } => {
                let tcp = tokio::net::TcpStream::connect(address.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tls))
                        .await
                        .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                sender.send_request(req).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Calls `method path` with an optional JSON body; returns the JSON answer (`null` when
    /// empty) or the API's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let unreachable = |message: String| CallError::Unreachable {
            server: self.server.clone(),
            message,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.server, path));
        if let Transport::Tls { address, .. } = &self.transport {
            req = req.uri(path).header(header::HOST, address.as_str());
        }
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(&b).unwrap_or_default())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = self.send(req).await.map_err(unreachable)?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let json: serde_json::Value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(
                |_| serde_json::json!({"error": String::from_utf8_lossy(&body).trim().to_owned()}),
            )
        };
        if status.is_success() {
            return Ok(json);
        }
        Err(CallError::Api {
            status,
            message: json["error"].as_str().unwrap_or("error").to_owned(),
            details: json["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

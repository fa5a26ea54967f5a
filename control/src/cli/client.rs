//! A small JSON client of the control API (bearer token, HTTP/1.1).

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::rt::TokioExecutor;

/// A connection to one control.
#[derive(Debug, Clone)]
pub struct Client {
    server: String,
    token: Option<String>,
    http: Hyper<HttpConnector, Full<Bytes>>,
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
            http: Hyper::builder(TokioExecutor::new()).build_http(),
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
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
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

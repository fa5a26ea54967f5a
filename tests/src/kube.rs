//! A stand-in for the Kubernetes API server's TokenReview: HTTPS on loopback with a test CA,
//! answering `POST /apis/authentication.k8s.io/v1/tokenreviews` as the API documentation
//! shows (`status.authenticated`, `status.user.username`, `status.audiences`), for the
//! tokens it was told about. It also writes the ServiceAccount directory a pod would have
//! (`token`, `ca.crt`) and gives the environment the control reads in a cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::process::TempDir;
use crate::tls::TestCa;

/// The stand-in API server.
pub struct TokenReviewServer {
    /// Where it listens.
    pub address: SocketAddr,
    dir: TempDir,
    /// Known tokens → the username they authenticate (`system:serviceaccount:NS:SA`).
    tokens: Arc<Mutex<HashMap<String, String>>>,
    /// Reviews asked for, as received (the control's bearer and the request body).
    pub reviews: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The control's own ServiceAccount token, which the stand-in requires as bearer.
const CONTROL_TOKEN: &str = "control-sa-token";

impl TokenReviewServer {
    /// Starts the stand-in on a free loopback port.
    pub async fn start() -> Self {
        let ca = TestCa::new("kubernetes");
        let leaf = ca.server("127.0.0.1");
        let dir = TempDir::new("kube-sa");
        std::fs::write(dir.path().join("ca.crt"), &ca.bundle).expect("write ca.crt");
        std::fs::write(dir.path().join("token"), CONTROL_TOKEN).expect("write token");
        let acceptor = leaf.http1_acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let reviews: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let (known, seen) = (tokens.clone(), reviews.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, known, seen) = (acceptor.clone(), known.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let (known, seen) = (known.clone(), seen.clone());
                        async move { Ok::<_, hyper::Error>(answer(request, &known, &seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            address,
            dir,
            tokens,
            reviews,
            task,
        }
    }

    /// Makes `token` authenticate as ServiceAccount `namespace/service_account`.
    pub fn add_service_account(&self, token: &str, namespace: &str, service_account: &str) {
        self.tokens.lock().expect("tokens").insert(
            token.to_owned(),
            format!("system:serviceaccount:{namespace}:{service_account}"),
        );
    }

    /// The environment of a control running in the stand-in's "cluster".
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.address.ip().to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.address.port().to_string(),
            ),
            (
                "STRAIT_KUBE_SERVICEACCOUNT_DIR".into(),
                self.service_account_dir().to_string_lossy().into_owned(),
            ),
        ]
    }

    /// The directory with the control's `token` and the cluster's `ca.crt`.
    pub fn service_account_dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for TokenReviewServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: Request<Incoming>,
    known: &Mutex<HashMap<String, String>>,
    seen: &Mutex<Vec<(String, Value)>>,
) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("response")
    };
    if request.method() != http::Method::POST
        || request.uri().path() != "/apis/authentication.k8s.io/v1/tokenreviews"
    {
        return respond(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "code": 404}),
        );
    }
    let bearer = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    seen.lock()
        .expect("reviews")
        .push((bearer.clone(), body.clone()));
    if bearer != CONTROL_TOKEN {
        return respond(
            StatusCode::UNAUTHORIZED,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized", "code": 401}),
        );
    }
    let token = body["spec"]["token"].as_str().unwrap_or_default();
    let audiences = body["spec"]["audiences"].clone();
    let user = known.lock().expect("tokens").get(token).cloned();
    let status = match user {
        Some(username) => json!({
            "authenticated": true,
            "user": {
                "username": username,
                "uid": "4b3c3f0e-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "audiences": audiences,
        }),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    respond(
        StatusCode::CREATED,
        json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": body["spec"],
            "status": status,
        }),
    )
}

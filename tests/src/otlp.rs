//! A local OpenTelemetry collector stand-in: receives OTLP traces over gRPC (the
//! `opentelemetry-proto` TraceService on tonic) or HTTP/protobuf (`POST /v1/traces`), in
//! plaintext or over TLS, and keeps every span, decoded with the proto definitions (the
//! contract), for the tests to look at.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::tls::Leaf;

/// One span as the collector got it; ids in lowercase hex as in `traceparent`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// `server` or `client` (or the proto's number for another kind).
    pub kind: String,
    /// Attributes, values as text.
    pub attributes: HashMap<String, String>,
    /// Events: name and attributes.
    pub events: Vec<(String, HashMap<String, String>)>,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Whether the span's status is an error.
    pub error: bool,
}

impl ReceivedSpan {
    /// An attribute's value as text (`""` when absent).
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Hold every export unanswered.
    stalled: AtomicBool,
}

impl Shared {
    async fn take(&self, request: ExportTraceServiceRequest) {
        if self.stalled.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let mut spans = self.spans.lock().unwrap_or_else(|e| e.into_inner());
        spans.extend(decode(request));
    }
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// It speaks TLS.
    tls: bool,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    /// OTLP/gRPC on a free port.
    pub async fn grpc() -> Self {
        Self::grpc_with(None).await
    }

    /// OTLP/gRPC over TLS on a free port, presenting `leaf`.
    pub async fn grpc_tls(leaf: &Leaf) -> Self {
        Self::grpc_with(Some(leaf)).await
    }

    async fn grpc_with(leaf: Option<&Leaf>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind otlp");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let service = TraceServiceServer::new(Grpc(shared.clone()));
        let mut server = tonic::transport::Server::builder();
        if let Some(leaf) = leaf {
            let identity = tonic::transport::Identity::from_pem(&leaf.chain, &leaf.key);
            server = server
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("tls config");
        }
        let task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ = server
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            addr,
            tls: leaf.is_some(),
            shared,
            task,
        }
    }

    /// OTLP/HTTP (protobuf) on a free port: `POST /v1/traces`.
    pub async fn http() -> Self {
        Self::http_with(None).await
    }

    /// OTLP/HTTP (protobuf) over TLS on a free port, presenting `leaf`.
    pub async fn http_tls(leaf: &Leaf) -> Self {
        Self::http_with(Some(leaf)).await
    }

    async fn http_with(leaf: Option<&Leaf>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind otlp");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let acceptor = leaf.map(Leaf::http1_acceptor);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (state, acceptor) = (state.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| http_export(req, state.clone()));
                    let http = auto::Builder::new(TokioExecutor::new());
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        Self {
            addr,
            tls: leaf.is_some(),
            shared,
            task,
        }
    }

    /// The URL to give as `tracing.otlp.endpoint`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Forgets the spans received so far.
    pub fn clear(&self) {
        self.shared
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// While on, exports are received but never answered (a collector that hangs).
    pub fn stall(&self, on: bool) {
        self.shared.stalled.store(on, Ordering::Relaxed);
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Grpc(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.into_inner()).await;
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let status = |code: StatusCode| {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = code;
        Ok(resp)
    };
    if req.uri().path() != "/v1/traces" || req.method() != http::Method::POST {
        return status(StatusCode::NOT_FOUND);
    }
    let body = req.into_body().collect().await?.to_bytes();
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return status(StatusCode::BAD_REQUEST);
    };
    shared.take(request).await;
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut resp = Response::new(Full::new(Bytes::from(answer)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(resp)
}

fn decode(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: match span.kind {
                        2 => "server".to_owned(),
                        3 => "client".to_owned(),
                        other => other.to_string(),
                    },
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .iter()
                        .map(|e| (e.name.clone(), attributes(&e.attributes)))
                        .collect(),
                    service_name: service_name.clone(),
                    // STATUS_CODE_ERROR is 2.
                    error: span.status.is_some_and(|s| s.code == 2),
                });
            }
        }
    }
    out
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

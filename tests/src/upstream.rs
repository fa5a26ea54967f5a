//! Real upstream servers on 127.0.0.1 that the proxy forwards to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A scripted HTTP server (HTTP/1.1 and h2c on one port). Every answer carries
/// `x-upstream: NAME`. Paths: `/status/N`, `/delay/MS`, `/echo` (streams the body back),
/// `/trailers` (body + `grpc-status`/`grpc-message` trailers), `/ws` (WebSocket echo); any
/// other path answers 200 with a JSON echo of the request (method, path, query, version,
/// headers, body length).
pub struct Upstream {
    /// Name it answers with.
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    mode: Arc<Mode>,
    task: JoinHandle<()>,
}

/// Behaviour switched on command: a forced status for every request, a delay before answering,
/// connections reset instead of answered, and the `/healthz` verdict.
#[derive(Debug, Default)]
struct Mode {
    status: AtomicU16,
    delay_ms: AtomicU64,
    reset: AtomicBool,
    unhealthy: AtomicBool,
    health_checks: AtomicUsize,
}

impl Upstream {
    /// Starts on a free port.
    pub async fn start(name: &str) -> Self {
        Self::http1_at(name, ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind upstream")
    }

    /// Starts on `addr`.
    pub async fn http1_at(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpListener::bind(addr).await?;
        let addr = socket.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mode::default());
        let (n, h, m) = (Arc::<str>::from(name), hits.clone(), mode.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                let (n, h, m) = (n.clone(), h.clone(), m.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, n.clone(), h.clone(), m.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            name: name.to_owned(),
            addr,
            hits,
            mode,
            task,
        })
    }

    /// From now on, answer every request with `status` (None: behave normally).
    pub fn fail_with(&self, status: Option<u16>) {
        self.mode
            .status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// From now on, wait this long before answering.
    pub fn delay(&self, delay: Duration) {
        self.mode
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// From now on, drop every connection on its next request instead of answering.
    pub fn reset_connections(&self, reset: bool) {
        self.mode.reset.store(reset, Ordering::SeqCst);
    }

    /// From now on, `/healthz` answers 200 (`true`) or 503 (`false`). Health checks are not
    /// counted in [`hits`](Self::hits).
    pub fn set_healthy(&self, healthy: bool) {
        self.mode.unhealthy.store(!healthy, Ordering::SeqCst);
    }

    /// `/healthz` requests served so far.
    pub fn health_checks(&self) -> usize {
        self.mode.health_checks.load(Ordering::SeqCst)
    }

    /// Requests served so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `ip:port`, for configs.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn answer(
    mut req: Request<Incoming>,
    name: Arc<str>,
    hits: Arc<AtomicUsize>,
    mode: Arc<Mode>,
) -> Result<Response<Body>, std::io::Error> {
    if req.uri().path() == "/healthz" {
        mode.health_checks.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full("health\n"));
        if mode.unhealthy.load(Ordering::SeqCst) {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        return Ok(r);
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if mode.reset.load(Ordering::SeqCst) {
        // hyper closes the connection without an answer when the service fails.
        return Err(std::io::Error::other("reset on command"));
    }
    let delay = mode.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let forced = mode.status.load(Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let mut resp = if let Some(status) = StatusCode::from_u16(forced).ok().filter(|_| forced > 0) {
        let mut r = Response::new(full(format!("forced {forced}\n")));
        *r.status_mut() = status;
        r
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(format!("status {code}\n")));
        *r.status_mut() = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        r
    } else if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full("delayed\n"))
    } else if path == "/echo" {
        Response::new(req.into_body().map_err(Into::into).boxed())
    } else if path == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let frames = futures_util::stream::iter(vec![
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(
                b"payload",
            ))),
            Ok(Frame::trailers(trailers)),
        ]);
        Response::new(BodyExt::boxed(StreamBody::new(frames)))
    } else if path == "/ws" {
        websocket(&mut req)
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = req
            .headers()
            .keys()
            .map(|k| {
                let values: Vec<serde_json::Value> = req
                    .headers()
                    .get_all(k)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into())
                    .collect();
                (k.as_str().to_owned(), values.into())
            })
            .collect();
        let (method, version, query, authority) = (
            req.method().to_string(),
            format!("{:?}", req.version()),
            req.uri().query().unwrap_or("").to_owned(),
            req.uri().authority().map(|a| a.to_string()),
        );
        let body_len = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes().len())
            .unwrap_or(usize::MAX);
        let json = serde_json::json!({
            "upstream": &*name, "method": method, "path": path, "query": query, "version": version,
            "authority": authority, "headers": headers, "bodyLength": body_len,
        });
        let mut r = Response::new(full(json.to_string()));
        r.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        r
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-upstream", v);
    }
    Ok(resp)
}

fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let mut r = Response::new(full("not a websocket request\n"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("connection", HeaderValue::from_static("upgrade"));
    h.insert("upgrade", HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// A raw TCP server that records exactly the bytes it receives, answering
/// `200 ok` (and closing) once it has seen a complete HTTP/1.1 request.
pub struct CaptureUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    captured: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl CaptureUpstream {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let socket = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind capture");
        let addr = socket.local_addr().expect("addr");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = socket.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let slot = {
                        let mut all = sink.lock().expect("capture");
                        all.push(Vec::new());
                        all.len() - 1
                    };
                    let mut buf = [0u8; 8192];
                    loop {
                        let n = match tokio::time::timeout(
                            Duration::from_secs(5),
                            stream.read(&mut buf),
                        )
                        .await
                        {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => break,
                        };
                        let complete = {
                            let mut all = sink.lock().expect("capture");
                            all[slot].extend_from_slice(&buf[..n]);
                            request_complete(&all[slot])
                        };
                        if complete {
                            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
                            break;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            captured,
            task,
        }
    }

    /// Raw bytes received, one entry per connection.
    pub fn captured(&self) -> Vec<String> {
        self.captured
            .lock()
            .expect("capture")
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

impl Drop for CaptureUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw TCP server that answers each request on a keep-alive connection with the bytes
/// scripted for its path (a 404 for other paths): responses exactly as an upstream would
/// write them, field spelling and connection fields included.
pub struct ScriptedUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Starts on a free port; `answers` pairs a request path with the whole response.
    pub async fn start(answers: &[(&'static str, &'static str)]) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted");
        let addr = socket.local_addr().expect("addr");
        let answers: Arc<Vec<(&'static str, &'static str)>> = Arc::new(answers.to_vec());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = socket.accept().await {
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    let mut buf = [0u8; 8192];
                    loop {
                        let read =
                            tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                                .await;
                        let n = match read {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                        received.extend_from_slice(&buf[..n]);
                        if !request_complete(&received) {
                            continue;
                        }
                        let request = String::from_utf8_lossy(&received).into_owned();
                        received.clear();
                        let path = request.split(' ').nth(1).unwrap_or("");
                        let answer = answers.iter().find(|(p, _)| *p == path).map_or(
                            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                            |(_, a)| a,
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }

    /// Its address, as a config endpoint.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `raw` holds a whole request: headers plus a Content-Length body or a final chunk.
pub fn request_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let head = text[..head_end].to_ascii_lowercase();
    let body = &text[head_end + 4..];
    if head.contains("transfer-encoding: chunked") {
        // The last chunk, then the trailer section's blank line.
        return body.ends_with("\r\n\r\n")
            && (body.starts_with("0\r\n") || body.contains("\r\n0\r\n"));
    }
    let length = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    body.len() >= length
}

/// A TCP echo server (echoes until the client half-closes, then closes its side).
pub struct TcpEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpEcho {
    /// Starts on a free port.
    pub async fn start() -> Self {
        Self::start_at(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind echo")
    }

    /// Starts on `addr`.
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = TcpListener::bind(addr).await?;
        let addr = socket.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.into_split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.shutdown().await;
                    }
                });
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

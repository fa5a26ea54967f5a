//! Clients a test uses to talk to the proxy: HTTP/1.1, h2c prior knowledge, and raw bytes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A pooled HTTP client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client with keep-alive.
pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A response, fully read.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Trailers, if any.
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as JSON (the upstream's echo).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Sends `req` and reads the whole answer (10 s limit).
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Answer, String> {
    let fut = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e:?}"))?;
        read_answer(resp).await
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Sends `req` exactly as built on a new connection to `addr` and reads the whole answer (10 s
/// limit): HTTP/1.1 with the target as given (absolute-form when the URI has an authority)
/// and no Host added, or, for an HTTP/2 request, h2c prior knowledge with the URI's authority
/// as `:authority` (and any Host header sent as well).
pub async fn send_to(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Answer, String> {
    let fut = async {
        let io = TokioIo::new(
            TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?,
        );
        let failed = |e: hyper::Error| format!("request failed: {e:?}");
        let resp = if req.version() == Version::HTTP_2 {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(failed)?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(failed)?
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(failed)?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(failed)?
        };
        read_answer(resp).await
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Reads a response whole.
async fn read_answer(resp: Response<Incoming>) -> Result<Answer, String> {
    let (parts, body) = resp.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("body failed: {e}"))?;
    let trailers = collected.trailers().cloned();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

/// GET `url` with `host` as Host and extra headers.
pub async fn get(
    client: &HttpClient,
    url: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, String> {
    let mut req = Request::get(url).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        client,
        req.body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?,
    )
    .await
}

/// Writes raw bytes and reads until the server closes or 3 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends one HTTP/1.1 request for `host` to `addr` with the target exactly as written (no
/// normalisation on the client's side); returns the status and `x-strait-reason` (empty when
/// absent).
pub async fn exact_target(
    addr: SocketAddr,
    host: &str,
    method: &str,
    target: &str,
) -> (u16, String) {
    let request =
        format!("{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    let answer = raw(addr, request.as_bytes()).await;
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let reason = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-strait-reason: "))
        .unwrap_or_default()
        .trim()
        .to_owned();
    (status, reason)
}

/// Writes raw bytes, then closes the connection without reading.
pub async fn raw_and_hang_up(addr: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

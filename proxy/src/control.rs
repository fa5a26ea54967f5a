//! The proxy's side of config push: one long-lived HTTP/2 stream to the control, a config
//! version per line, an ACK or NACK for each.
//!
//! An `http://` control is spoken to in h2c with the bearer token; an `https://` one over TLS
//! (h2 by ALPN), once the proxy has its identity, authenticating with its certificate.
//!
//! When the control goes away the proxy keeps serving its last good config and reconnects
//! with jittered exponential backoff, to the next of the control's replicas when it was given
//! several (`--control URL,URL`; a host name with several addresses is tried address by
//! address); on reconnect the control sends the current version, so the proxy resyncs without
//! anyone noticing.
//!
//! The first line of a stream holds every document the proxy receives, each later one only
//! those added or changed and the names of those removed; the proxy applies the whole set it
//! holds, so a reload sees a complete config either way.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Longest line (one config version) accepted from the control.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// First and largest reconnect delays (each jittered).
const BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(10));

/// Mesh events waiting to be published (bounded: beyond this, new events are dropped).
const EVENT_QUEUE: usize = 1024;

static EVENTS: OnceLock<mpsc::Sender<MeshEvent>> = OnceLock::new();

/// The live view's report waiting for the session (one: a newer one waits for the next tick).
static REPORTS: OnceLock<mpsc::Sender<serde_json::Value>> = OnceLock::new();

/// Something that happened in this proxy that the mesh should hear about.
#[derive(Debug)]
pub struct MeshEvent {
    topic: &'static str,
    priority: &'static str,
    data: serde_json::Value,
}

/// Publishes a mesh event (`mesh.circuit.opened`, `mesh.endpoint.ejected`...) on the control's
/// event bus when the proxy is attached to one. Never blocks the caller: events wait in a
/// bounded queue while the control is away, and are dropped when it is full.
pub fn publish(
    topic: &'static str,
    priority: &'static str,
    data: impl FnOnce() -> serde_json::Value,
) {
    if let Some(events) = EVENTS.get() {
        let _ = events.try_send(MeshEvent {
            topic,
            priority,
            data: data(),
        });
    }
}

/// Hands the control a live-view report (see [`crate::report`]) when the proxy is attached
/// to one and no report is waiting already; `build` runs only then.
pub fn report(build: impl FnOnce() -> serde_json::Value) {
    if let Some(Ok(slot)) = REPORTS.get().map(mpsc::Sender::try_reserve) {
        slot.send(build());
    }
}

/// Where and who: the control's URLs, this node's name, the token, the listeners to report.
#[derive(Debug, Clone)]
pub struct ControlTarget {
    /// `http://host:port` or `https://host:port` of each replica of the control (at least
    /// one), tried in turn.
    pub urls: Vec<Uri>,
    /// Node name.
    pub node: String,
    /// Bearer token (`http://` controls only: over TLS the proxy's certificate speaks).
    pub token: Option<String>,
    /// Where the token was read from (an identity's credential is read again when needed).
    pub token_file: Option<std::path::PathBuf>,
    /// TLS to an `https://` control.
    pub tls: Option<std::sync::Arc<crate::identity::control::ControlTls>>,
    /// Listener names of the bootstrap config (the control attaches routes to them).
    pub listeners: Vec<String>,
}

/// Parses `http://HOST:PORT[,http://HOST:PORT...]` (one URL per control replica).
pub fn parse_urls(text: &str) -> Result<Vec<Uri>, String> {
    text.split(',')
        .map(|one| {
            let one = one.trim();
            let url: Uri = one.parse().map_err(|e| format!("{one}: not a URL: {e}"))?;
            if !matches!(url.scheme_str(), Some("http" | "https")) || url.authority().is_none() {
                return Err(format!(
                    "{one}: expected http://HOST:PORT or https://HOST:PORT"
                ));
            }
            Ok(url)
        })
        .collect()
}

/// One version from the control, and where to send the verdict.
#[derive(Debug)]
pub struct ControlUpdate {
    /// The control's version number.
    pub version: u64,
    /// The documents, as YAML text (JSON documents separated by `---`).
    pub text: String,
    /// Ok(()) to ACK, Err(message) to NACK.
    pub verdict: oneshot::Sender<Result<(), String>>,
}

/// One line of the push stream: the full set (no `base`), or what changed since the line
/// before (`base`): added or changed resources, and the names of removed ones.
#[derive(Debug, Deserialize)]
struct PushLine {
    version: u64,
    #[serde(default)]
    base: Option<u64>,
    #[serde(default)]
    resources: Vec<PushedResource>,
    #[serde(default)]
    removed: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PushedResource {
    /// `Kind/namespace/name`.
    name: String,
    document: serde_json::Value,
}

/// What the control sent on this stream so far (applied or not: a delta builds on what was
/// received, so the version after a NACKed one repairs it), keyed and ordered by name.
#[derive(Debug, Default)]
struct Received {
    version: Option<u64>,
    documents: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Received {
    /// Takes one line in; a delta must follow the version received last.
    fn take(&mut self, line: PushLine) -> Result<(), SessionError> {
        match line.base {
            None => self.documents.clear(),
            Some(base) if Some(base) == self.version => {}
            Some(base) => {
                return Err(SessionError::Message(format!(
                    "a change to version {base}, but the last received is {:?}",
                    self.version
                )))
            }
        }
        for name in &line.removed {
            self.documents.remove(name);
        }
        for resource in line.resources {
            self.documents.insert(resource.name, resource.document);
        }
        self.version = Some(line.version);
        Ok(())
    }

    /// The documents as one config text (JSON documents separated by `---`).
    fn text(&self) -> String {
        self.documents
            .values()
            .map(serde_json::Value::to_string)
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

/// Why a session with the control ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::identity::control::EnrolError),
    #[error("http/2: {0}")]
    Http(#[from] hyper::Error),
    #[error("control answered {0}")]
    Status(StatusCode),
    #[error("bad message from control: {0}")]
    Message(String),
    #[error("stream ended")]
    Ended,
    #[error("the proxy is shutting down")]
    Closed,
}

/// Keeps a session with the control open for as long as `updates` has a receiver.
pub async fn run(target: ControlTarget, updates: mpsc::Sender<ControlUpdate>) {
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let _ = EVENTS.set(events_tx);
    let (reports_tx, mut reports) = mpsc::channel(1);
    let _ = REPORTS.set(reports_tx);
    let mut delay = BACKOFF.0;
    let mut next = 0;
    loop {
        let Some(url) = target.urls.get(next % target.urls.len().max(1)) else {
            return;
        };
        // The next attempt goes to the next replica: a dead one is not retried first.
        next += 1;
        let started = tokio::time::Instant::now();
        match session(&target, url, &updates, &mut events, &mut reports).await {
            Err(SessionError::Closed) => return,
            Err(e) => {
                tracing::warn!(control = %url, error = %e, "control connection lost; serving the last good config");
            }
            Ok(()) => {}
        }
        if started.elapsed() > Duration::from_secs(10) {
            delay = BACKOFF.0;
        }
        let jittered = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
        tokio::time::sleep(jittered).await;
        delay = (delay * 2).min(BACKOFF.1);
    }
}

async fn session(
    target: &ControlTarget,
    url: &Uri,
    updates: &mpsc::Sender<ControlUpdate>,
    events: &mut mpsc::Receiver<MeshEvent>,
    reports: &mut mpsc::Receiver<serde_json::Value>,
) -> Result<(), SessionError> {
    let mut sender = match &target.tls {
        Some(tls) => {
            // The push stream authenticates with the proxy's certificate: wait for the first.
            let identity = tls.store().wait().await;
            tracing::debug!(spiffe_id = %identity.spiffe_id, "connecting to the control over mTLS");
            open(tls.connect_to(url, b"h2").await?).await?
        }
        None => {
            let authority = url
                .authority()
                .map(|a| a.as_str().to_owned())
                .ok_or_else(|| SessionError::Message("control URL has no host".into()))?;
            let stream = TcpStream::connect(&authority)
                .await
                .map_err(SessionError::Connect)?;
            let _ = stream.set_nodelay(true);
            open(stream).await?
        }
    };
    let path = format!(
        "/v1/push/stream?node={}&listeners={}",
        encode(&target.node),
        encode(&target.listeners.join(","))
    );
    let response = sender
        .send_request(request(target, url, Method::GET, &path, Bytes::new())?)
        .await?;
    if response.status() != StatusCode::OK {
        return Err(SessionError::Status(response.status()));
    }
    tracing::info!(control = %url, node = %target.node, "connected to control");
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    let mut received = Received::default();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            Some(event) = events.recv() => {
                send_event(&mut sender, target, url, event).await?;
                continue;
            }
            Some(report) = reports.recv() => {
                send_report(&mut sender, target, url, report).await?;
                continue;
            }
        };
        let Some(frame) = frame else {
            return Err(SessionError::Ended);
        };
        if let Ok(data) = frame?.into_data() {
            buffer.extend_from_slice(&data);
        }
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line = buffer.split_to(end + 1);
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // keep-alive
            }
            let line: PushLine =
                serde_json::from_slice(line).map_err(|e| SessionError::Message(e.to_string()))?;
            let version = line.version;
            tracing::info!(
                version,
                full = line.base.is_none(),
                changed = line.resources.len(),
                removed = line.removed.len(),
                "config received from the control"
            );
            received.take(line)?;
            let verdict = apply(version, received.text(), updates).await?;
            acknowledge(&mut sender, target, url, version, verdict).await?;
            if updates.is_closed() {
                // The proxy stopped taking versions (it could not start): the answer was the
                // last thing to say.
                return Err(SessionError::Closed);
            }
        }
        if buffer.len() > MAX_LINE {
            return Err(SessionError::Message("config line too long".into()));
        }
    }
}

/// An HTTP/2 connection to the control on `io` (TCP, or TLS with h2 negotiated).
async fn open<I>(io: I) -> Result<http2::SendRequest<Full<Bytes>>, SessionError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake::<_, Full<Bytes>>(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn apply(
    version: u64,
    text: String,
    updates: &mpsc::Sender<ControlUpdate>,
) -> Result<Result<(), String>, SessionError> {
    let (tx, rx) = oneshot::channel();
    updates
        .send(ControlUpdate {
            version,
            text,
            verdict: tx,
        })
        .await
        .map_err(|_| SessionError::Closed)?;
    rx.await.map_err(|_| SessionError::Closed)
}

async fn acknowledge(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    target: &ControlTarget,
    url: &Uri,
    version: u64,
    verdict: Result<(), String>,
) -> Result<(), SessionError> {
    let body = serde_json::json!({
        "node": target.node,
        "version": version,
        "accepted": verdict.is_ok(),
        "error": verdict.err(),
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    sender.ready().await?;
    let resp = sender
        .send_request(request(target, url, Method::POST, "/v1/push/ack", bytes)?)
        .await?;
    if !resp.status().is_success() {
        tracing::warn!(status = resp.status().as_u16(), "control refused the ACK");
    }
    let _ = resp.into_body().collect().await;
    Ok(())
}

async fn send_event(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    target: &ControlTarget,
    url: &Uri,
    event: MeshEvent,
) -> Result<(), SessionError> {
    let body = serde_json::json!({
        "priority": event.priority,
        "source": format!("proxy/{}", target.node),
        "metadata": {"node": target.node},
        "data": event.data,
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    sender.ready().await?;
    let path = format!("/v1/events/{}", event.topic);
    let resp = sender
        .send_request(request(target, url, Method::POST, &path, bytes)?)
        .await?;
    if !resp.status().is_success() {
        tracing::debug!(
            topic = event.topic,
            status = resp.status().as_u16(),
            "control refused a mesh event"
        );
    }
    let _ = resp.into_body().collect().await;
    Ok(())
}

/// Posts a live-view report; a refusal (an older control without the live view) is logged
/// at debug and the session goes on.
async fn send_report(
    sender: &mut http2::SendRequest<Full<Bytes>>,
    target: &ControlTarget,
    url: &Uri,
    mut report: serde_json::Value,
) -> Result<(), SessionError> {
    report["node"] = serde_json::Value::from(target.node.as_str());
    let bytes = Bytes::from(serde_json::to_vec(&report).unwrap_or_default());
    sender.ready().await?;
    let resp = sender
        .send_request(request(
            target,
            url,
            Method::POST,
            "/v1/push/report",
            bytes,
        )?)
        .await?;
    if !resp.status().is_success() {
        tracing::debug!(
            status = resp.status().as_u16(),
            "control refused a live-view report"
        );
    }
    let _ = resp.into_body().collect().await;
    Ok(())
}

fn request(
    target: &ControlTarget,
    url: &Uri,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, SessionError> {
    let uri = format!(
        "{}://{}{path}",
        url.scheme_str().unwrap_or("http"),
        url.authority().map_or("", |a| a.as_str())
    );
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let (Some(token), None) = (&target.token, &target.tls) {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    req.body(Full::new(body))
        .map_err(|e| SessionError::Message(e.to_string()))
}

/// Percent-encodes a query value (node names and listener lists are plain already; this
/// keeps a stray `&` or space from breaking the query).
fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_is_one_url_or_a_list_of_replicas() {
        assert_eq!(parse_urls("http://127.0.0.1:1").unwrap().len(), 1);
        let replicas = parse_urls("http://a:1, http://b:2,http://c:3").unwrap();
        assert_eq!(replicas[1].authority().unwrap().as_str(), "b:2");
        assert!(
            parse_urls("https://a:1,https://b:1").is_ok(),
            "TLS controls"
        );
        for bad in ["", "a:1", "ftp://a:1", "http://a:1,", "http://a:1,nope"] {
            assert!(parse_urls(bad).is_err(), "{bad}");
        }
    }

    fn line(text: &str) -> PushLine {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_delta_changes_and_removes_what_was_received_and_must_follow_it() {
        let mut received = Received::default();
        received
            .take(line(r#"{"version":3,"resources":[{"name":"S/d/a","document":{"a":1}},{"name":"S/d/b","document":{"b":1}}]}"#))
            .unwrap();
        assert_eq!(received.text(), "{\"a\":1}\n---\n{\"b\":1}");
        received
            .take(line(r#"{"version":5,"base":3,"resources":[{"name":"S/d/b","document":{"b":2}}],"removed":["S/d/a"]}"#))
            .unwrap();
        assert_eq!(received.text(), "{\"b\":2}");
        assert!(
            received
                .take(line(r#"{"version":7,"base":6,"resources":[]}"#))
                .is_err(),
            "a delta to a version this stream never received"
        );
        received
            .take(line(
                r#"{"version":8,"resources":[{"name":"S/d/c","document":{"c":1}}]}"#,
            ))
            .unwrap();
        assert_eq!(received.text(), "{\"c\":1}", "a full line replaces all");
    }
}

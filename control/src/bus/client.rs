//! A small HTTP/1.1 client for `straitctl events`: plain `http://`, an optional bearer token,
//! one kept-alive connection per [`Client`] (reopened when the server closed it).

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A control server and how to talk to it.
pub(crate) struct Client {
    /// `host:port`.
    authority: String,
    /// Prefix of every path (from the server URL), without a trailing `/`.
    base_path: String,
    token: Option<String>,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    /// `server` is `http://HOST:PORT[/PREFIX]` or `HOST:PORT`.
    pub fn new(server: &str, token: Option<&str>) -> anyhow::Result<Self> {
        let rest = match server.split_once("://") {
            None => server,
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                bail!("`{server}`: scheme `{scheme}` is not supported; use http://HOST:PORT")
            }
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() {
            bail!("`{server}` has no host; use http://HOST:PORT");
        }
        let authority = if authority.contains(':') && !authority.ends_with(']') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            base_path: path.trim_end_matches('/').to_owned(),
            token: token.map(str::to_owned),
            connection: None,
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("connecting to {}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {}", self.authority))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "control connection ended");
            }
        });
        Ok(sender)
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base_path))
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body))
            }
            None => Full::new(Bytes::new()),
        };
        request.body(body).context("building the request")
    }

    /// Sends a request on the kept connection (opening one if needed) and reads the whole
    /// answer.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let request = self.build(method, path, body)?;
        let mut sender = match self.connection.take() {
            Some(mut sender) => match sender.ready().await {
                Ok(()) => sender,
                Err(_) => self.connect().await?,
            },
            None => self.connect().await?,
        };
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("requesting {path}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the answer to {path}"))?
            .to_bytes();
        self.connection = Some(sender);
        Ok((status, body))
    }

    /// Opens a streaming GET on a connection of its own; the answer's body is left to read.
    pub async fn stream(&self, path: &str) -> anyhow::Result<Response<Incoming>> {
        let request = self.build(Method::GET, path, None)?;
        let mut sender = self.connect().await?;
        sender
            .send_request(request)
            .await
            .with_context(|| format!("requesting {path}"))
    }
}

/// Percent-encodes a query component (everything but RFC 3986 unreserved characters).
pub(crate) fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits Server-Sent Events out of a byte stream.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buffer: Vec<u8>,
}

/// One SSE message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SseMessage {
    pub id: Option<String>,
    pub data: String,
}

impl SseParser {
    /// Feeds bytes; returns the messages they complete (comments and data-less ones skipped).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseMessage> {
        self.buffer.extend_from_slice(bytes);
        let mut messages = Vec::new();
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end.0).collect();
            self.buffer.drain(..end.1 - end.0);
            let text = String::from_utf8_lossy(&block);
            let mut id = None;
            let mut data: Option<String> = None;
            for line in text.lines() {
                let (field, value) = match line.split_once(':') {
                    Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                    None => (line, ""),
                };
                match field {
                    "id" => id = Some(value.to_owned()),
                    "data" => match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(value);
                        }
                        None => data = Some(value.to_owned()),
                    },
                    _ => {}
                }
            }
            if let Some(data) = data {
                messages.push(SseMessage { id, data });
            }
        }
        messages
    }
}

/// (start, end) of the first blank-line separator (`\n\n` or `\r\n\r\n`).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// Reads the next chunk of a streaming body (`None` at its end).
pub(crate) async fn next_chunk(body: &mut Incoming) -> anyhow::Result<Option<Bytes>> {
    loop {
        match body.frame().await {
            None => return Ok(None),
            Some(frame) => {
                if let Ok(data) = frame.context("reading the event stream")?.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let c = Client::new("http://127.0.0.1:9000/", None).expect("url");
        assert_eq!(
            (c.authority.as_str(), c.base_path.as_str()),
            ("127.0.0.1:9000", "")
        );
        let c = Client::new("localhost/control", None).expect("url");
        assert_eq!(
            (c.authority.as_str(), c.base_path.as_str()),
            ("localhost:80", "/control")
        );
        assert!(Client::new("https://x:1", None).is_err());
    }

    #[test]
    fn sse_messages_split_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.push(b": subscribed\n\nid: 1\nda").is_empty());
        let got = p.push(b"ta: {\"a\":1}\n\n: keep-alive\n\ndata: x\r\n\r\n");
        assert_eq!(
            got,
            [
                SseMessage {
                    id: Some("1".into()),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    id: None,
                    data: "x".into()
                },
            ]
        );
        assert_eq!(encode_component("mesh.>"), "mesh.%3E");
    }
}

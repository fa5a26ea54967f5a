//! An upstream that records every request it receives, parsed strictly and independently of
//! the proxy (`httparse` for the head, its own framing and chunked decoding), for the
//! request-smuggling and parser-differential tests.
//!
//! Whatever the strict parser cannot take — bare LF or CR, obs-fold, `Content-Length` next to
//! `Transfer-Encoding`, repeated or listed lengths, a coding other than `chunked` alone, a
//! malformed chunk — is noted as an anomaly and the connection is closed: a proxy must never
//! forward such bytes, since another server could frame them differently than it did.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Most header fields (or trailer fields) in one request.
const MAX_FIELDS: usize = 128;
/// Longest chunk-size line taken.
const MAX_CHUNK_LINE: usize = 1024;

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Request target, as sent.
    pub target: String,
    /// Header fields in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, decoded when chunked.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Trailer fields (chunked bodies only), names lower-cased.
    pub trailers: Vec<(String, String)>,
}

impl Recorded {
    /// Every value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<Recorded>,
    anomalies: Vec<String>,
    cut_short: Vec<String>,
}

/// A raw TCP upstream that records each request (see the module docs) and answers it
/// `200` with the request's target as the body, keeping the connection open.
pub struct RecordingUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: JoinHandle<()>,
}

impl RecordingUpstream {
    /// Starts on a free port.
    pub async fn start() -> Self {
        let socket = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recording upstream");
        let addr = socket.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let sink = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = socket.accept().await {
                tokio::spawn(record(stream, sink.clone()));
            }
        });
        Self { addr, log, task }
    }

    /// Its address, as a config endpoint.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").requests.clone()
    }

    /// What the strict parser refused so far (empty when the proxy forwarded only clean
    /// HTTP/1.1).
    pub fn anomalies(&self) -> Vec<String> {
        self.log.lock().expect("log").anomalies.clone()
    }

    /// Requests whose connection ended before they were complete (a proxy that finds a
    /// streamed body malformed aborts its upstream request this way), as received.
    pub fn cut_short(&self) -> Vec<String> {
        self.log.lock().expect("log").cut_short.clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads, records and answers requests on one connection until it ends or breaks the rules.
async fn record(mut stream: TcpStream, log: Arc<Mutex<Log>>) {
    let mut buf = Vec::new();
    let mut scratch = [0u8; 8192];
    loop {
        match parse(&buf) {
            Ok(Some((request, used))) => {
                buf.drain(..used);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                    request.target.len(),
                    request.target
                );
                log.lock().expect("log").requests.push(request);
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => {}
            Err(anomaly) => {
                log.lock()
                    .expect("log")
                    .anomalies
                    .push(format!("{anomaly}: {:?}", String::from_utf8_lossy(&buf)));
                return;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut scratch));
        match read.await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&scratch[..n]),
            _ => {
                if !buf.is_empty() {
                    let received = String::from_utf8_lossy(&buf).into_owned();
                    log.lock().expect("log").cut_short.push(received);
                }
                return;
            }
        }
    }
}

/// One whole request off the front of `buf` and its length; `None` when it is not all there.
fn parse(buf: &[u8]) -> Result<Option<(Recorded, usize)>, String> {
    let Some(head_len) = find(buf, b"\r\n\r\n").map(|at| at + 4) else {
        check_line_endings(buf)?;
        return Ok(None);
    };
    let head = &buf[..head_len];
    check_line_endings(head)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head_len => {}
        Ok(_) => return Err("head not parsed to its blank line".into()),
        Err(e) => return Err(format!("head: {e}")),
    }
    if parsed.version != Some(1) {
        return Err("not HTTP/1.1".into());
    }
    let method = parsed.method.unwrap_or_default().to_owned();
    let target = parsed.path.unwrap_or_default().to_owned();
    let headers = fields(parsed.headers)?;
    let mut request = Recorded {
        method,
        target,
        headers,
        body: Vec::new(),
        chunked: false,
        trailers: Vec::new(),
    };
    let lengths = request.header("content-length");
    let codings = request.header("transfer-encoding");
    let rest = &buf[head_len..];
    let used = match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => 0,
        (_, [_, ..]) if !lengths.is_empty() => {
            return Err("both Content-Length and Transfer-Encoding".into())
        }
        ([], [coding]) if coding.eq_ignore_ascii_case("chunked") => {
            let Some((body, trailers, used)) = chunked(rest)? else {
                return Ok(None);
            };
            request.body = body;
            request.trailers = trailers;
            request.chunked = true;
            used
        }
        ([], _) => return Err(format!("Transfer-Encoding other than chunked: {codings:?}")),
        ([length], []) => {
            let n = digits(length.as_bytes()).ok_or(format!("Content-Length {length:?}"))?;
            if rest.len() < n {
                return Ok(None);
            }
            request.body = rest[..n].to_vec();
            n
        }
        _ => return Err(format!("several Content-Length: {lengths:?}")),
    };
    Ok(Some((request, head_len + used)))
}

/// A decoded chunked body: data, trailer fields, bytes it took.
type Chunked = (Vec<u8>, Vec<(String, String)>, usize);

/// The chunked body at the front of `buf`; `None` when it is not all there.
fn chunked(buf: &[u8]) -> Result<Option<Chunked>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_len) = find(&buf[at..], b"\r\n") else {
            if buf.len() - at > MAX_CHUNK_LINE {
                return Err("chunk-size line too long".into());
            }
            return Ok(None);
        };
        let line = &buf[at..at + line_len];
        let size = chunk_size(line)?;
        at += line_len + 2;
        if size == 0 {
            // Trailer fields, then the blank line.
            if buf[at..].starts_with(b"\r\n") {
                return Ok(Some((body, Vec::new(), at + 2)));
            }
            let Some(end) = find(&buf[at..], b"\r\n\r\n").map(|e| at + e + 4) else {
                return Ok(None);
            };
            let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let trailers = match httparse::parse_headers(&buf[at..end], &mut slots) {
                Ok(httparse::Status::Complete((_, parsed))) => fields(parsed)?,
                _ => return Err("trailer section".into()),
            };
            return Ok(Some((body, trailers, end)));
        }
        let Some(data_end) = at.checked_add(size).filter(|&e| e <= buf.len()) else {
            return Ok(None);
        };
        if buf.len() < data_end + 2 {
            return Ok(None);
        }
        if &buf[data_end..data_end + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        body.extend_from_slice(&buf[at..data_end]);
        at = data_end + 2;
    }
}

/// A chunk-size line: hex digits, then optionally `;name[=value]` extensions (no whitespace).
fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let bad = || format!("chunk-size line {:?}", String::from_utf8_lossy(line));
    let (size, extensions) = match line.iter().position(|&b| b == b';') {
        Some(at) => (&line[..at], Some(&line[at + 1..])),
        None => (line, None),
    };
    if size.is_empty() || size.len() > 8 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    if let Some(extensions) = extensions {
        for extension in extensions.split(|&b| b == b';') {
            let name = extension.split(|&b| b == b'=').next().unwrap_or_default();
            if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
                return Err(bad());
            }
        }
    }
    let text = std::str::from_utf8(size).map_err(|_| bad())?;
    usize::from_str_radix(text, 16).map_err(|_| bad())
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Every LF is preceded by CR, and every CR followed by LF.
fn check_line_endings(head: &[u8]) -> Result<(), String> {
    for (i, &b) in head.iter().enumerate() {
        let previous = i.checked_sub(1).and_then(|p| head.get(p));
        if b == b'\n' && previous != Some(&b'\r') {
            return Err("bare LF".into());
        }
        if b == b'\r' && head.get(i + 1).is_some_and(|&n| n != b'\n') {
            return Err("bare CR".into());
        }
    }
    Ok(())
}

fn fields(parsed: &[httparse::Header<'_>]) -> Result<Vec<(String, String)>, String> {
    parsed
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| format!("field {} is not UTF-8", h.name))?;
            Ok((h.name.to_ascii_lowercase(), value.to_owned()))
        })
        .collect()
}

fn digits(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 18 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &[u8]) -> Result<Option<(Recorded, usize)>, String> {
        parse(text)
    }

    #[test]
    fn plain_length_and_chunked_requests_are_recorded() {
        let wire = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b";
        let (request, used) = one(wire).unwrap().unwrap();
        assert_eq!(
            (request.method.as_str(), request.target.as_str()),
            ("POST", "/a")
        );
        assert_eq!(request.body, b"hello");
        assert_eq!(&wire[used..], b"GET /b");
        let wire = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n";
        let (request, used) = one(wire).unwrap().unwrap();
        assert_eq!(request.body, b"hello!");
        assert!(request.chunked);
        assert_eq!(request.trailers, [("x-t".to_owned(), "1".to_owned())]);
        assert_eq!(used, wire.len());
    }

    #[test]
    fn incomplete_requests_wait() {
        assert_eq!(one(b"GET / HTTP/1.1\r\nHost: h\r\n").unwrap(), None);
        assert_eq!(
            one(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel").unwrap(),
            None
        );
        assert_eq!(
            one(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").unwrap(),
            None
        );
    }

    #[test]
    fn ambiguous_framing_is_an_anomaly() {
        for wire in [
            &b"GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\rX: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nab\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\na \r\n0123456789\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(one(wire).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }
}

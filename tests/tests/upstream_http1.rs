//! How the proxy talks HTTP/1.1 to an upstream over its pooled keep-alive connections, pinned
//! byte for byte: every upstream here is a raw TCP server in this file that writes handwritten
//! response bytes, so each test controls the exact framing the proxy has to read.
//!
//! Covered: response framing (chunked with extensions and trailers, close-delimited,
//! Content-Length, bodiless HEAD/204/304, interim 1xx), connection reuse and when it must not
//! happen (`Connection: close`, close-delimited bodies, an idle pooled connection the upstream
//! closed), broken upstream answers (malformed or oversized heads, conflicting lengths, no
//! answer, truncated bodies, an early answer to a large upload), and what reaches the upstream
//! (request line, headers, request bodies with and without a known length).
//!
//! WebSocket/Upgrade through an HTTP/1 upstream is covered by `protocols.rs`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use strait_tests::client::{get, http1, raw, send, Answer, HttpClient};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{cluster, clusters};
use strait_tests::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Every test finishes within this, or fails.
const LIMIT: Duration = Duration::from_secs(10);

/// Runs a test body within [`LIMIT`].
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, test)
        .await
        .expect("test did not finish within 10 s")
}

// ---------------------------------------------------------------------------------------------
// A raw upstream
// ---------------------------------------------------------------------------------------------

/// A request as the upstream read it off the wire.
#[derive(Debug, Clone)]
struct Seen {
    /// The request line, e.g. `GET /path?q=1 HTTP/1.1`.
    line: String,
    /// Header fields in order, names lowercased, values as sent.
    headers: Vec<(String, String)>,
    /// The body, de-chunked when it came chunked.
    body: Vec<u8>,
}

impl Seen {
    /// The first value of header `name` (lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or("")
    }

    /// The request target's path, without the query.
    fn path(&self) -> &str {
        let target = self.line.split(' ').nth(1).unwrap_or("");
        target.split('?').next().unwrap_or("")
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    }
}

/// One accepted upstream connection and what has been read from it but not consumed yet.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Wire {
    /// Reads more bytes into the buffer; false at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Takes bytes up to and including the first `delimiter`.
    async fn take_through(&mut self, delimiter: &[u8]) -> io::Result<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buf, delimiter) {
                return Ok(self.buf.drain(..at + delimiter.len()).collect());
            }
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Takes exactly `n` bytes.
    async fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads a request head (no body). `None`: the peer closed between requests.
    async fn read_head(&mut self) -> io::Result<Option<Seen>> {
        while find(&self.buf, b"\r\n\r\n").is_none() {
            if !self.fill().await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
        let head = self.take_through(b"\r\n\r\n").await?;
        let text = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or("").to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Some(Seen {
            line,
            headers,
            body: Vec::new(),
        }))
    }

    /// Reads a whole request (its body de-chunked) and records it in the upstream's log.
    async fn read_request(&mut self) -> io::Result<Option<Seen>> {
        let Some(mut seen) = self.read_head().await? else {
            return Ok(None);
        };
        self.read_body(&mut seen).await?;
        Ok(Some(seen))
    }

    /// Reads the body `seen`'s head announces and records the request in the upstream's log.
    async fn read_body(&mut self, seen: &mut Seen) -> io::Result<()> {
        seen.body = if seen.is_chunked() {
            self.read_chunked().await?
        } else {
            let length = match seen.header("content-length") {
                Some(v) => v
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad content-length {v:?}")))?,
                None => 0,
            };
            self.take(length).await?
        };
        self.log.lock().expect("log").push(seen.clone());
        Ok(())
    }

    /// Decodes a chunked body: size lines (extensions ignored), data, then trailers.
    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.take_through(b"\r\n").await?;
            let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| io::Error::other(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailer fields, up to an empty line.
                while self.take_through(b"\r\n").await? != b"\r\n" {}
                return Ok(body);
            }
            body.extend(self.take(size).await?);
            if self.take(2).await? != b"\r\n" {
                return Err(io::Error::other("chunk data not followed by CRLF"));
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a scripted upstream does after reading a request.
enum Reply {
    /// Write these bytes and wait for the next request on the same connection.
    Open(Vec<u8>),
    /// Write these bytes, then close the connection.
    Close(Vec<u8>),
    /// Close the connection without answering.
    Silent,
}

/// A keep-alive `200` with a Content-Length body.
fn ok(body: &str) -> Reply {
    Reply::Open(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A raw TCP upstream: a handler runs per accepted connection; connections and the requests
/// read through [`Wire::read_request`] are counted.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    /// Starts on a free port; `handler` gets each connection.
    async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Wire) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (count, sink) = (accepted.clone(), log.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let wire = Wire {
                    stream,
                    buf: Vec::new(),
                    log: sink.clone(),
                };
                // Errors are the scenario (the proxy hung up on a broken answer): ignored.
                tokio::spawn(handler(wire));
            }
        });
        Self {
            addr,
            accepted,
            log,
            task,
        }
    }

    /// An upstream that answers every request on a connection with `reply(request)`.
    async fn answering(reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let reply = Arc::new(reply);
        Self::start(move |mut wire| {
            let reply = reply.clone();
            async move {
                while let Some(request) = wire.read_request().await? {
                    match reply(&request) {
                        Reply::Open(bytes) => wire.send(&bytes).await?,
                        Reply::Close(bytes) => return wire.send(&bytes).await,
                        Reply::Silent => return Ok(()),
                    }
                }
                Ok(())
            }
        })
        .await
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Requests read so far.
    fn requests(&self) -> Vec<Seen> {
        self.log.lock().expect("log").clone()
    }

    /// The request read for `path` (panics if there is none).
    fn request(&self, path: &str) -> Seen {
        let all = self.requests();
        all.iter()
            .find(|r| r.path() == path)
            .cloned()
            .unwrap_or_else(|| panic!("the upstream saw no request for {path}: {all:?}"))
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A proxy whose only route sends everything to `up` (an `http1` service).
fn proxy_to(up: &RawUpstream) -> Proxy {
    Proxy::start(
        &(proxy("")
            + &service("raw", "http1", &[(up.addr.to_string(), 1)], "")
            + &http_route("r", "  rules:\n    - {backendRefs: [{name: raw}]}")),
    )
}

/// GET `path` through the proxy's `web` listener.
async fn get_path(client: &HttpClient, proxy: &Proxy, path: &str) -> Answer {
    get(
        client,
        &format!("{}{path}", proxy.url("web")),
        "svc.local",
        &[],
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Asserts a `200` whose body is `body`.
fn assert_ok(answer: &Answer, body: &str, what: &str) {
    assert_eq!(answer.status, 200, "{what}: {answer:?}");
    assert_eq!(
        String::from_utf8_lossy(&answer.body),
        body,
        "{what}: body differs"
    );
}

/// FNV-1a, to compare large bodies by value.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Response framing and connection reuse
// ---------------------------------------------------------------------------------------------

/// Chunks of "hello chunked world", one with a bare extension and one with a quoted one.
const CHUNKS: &str =
    "5;ext=1\r\nhello\r\n1\r\n \r\nA;name=\"quoted value\"\r\nchunked wo\r\n3\r\nrld\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_with_extensions_and_trailers_are_decoded() {
    bounded(async {
        let up = RawUpstream::answering(|req| {
            let last = match req.path() {
                "/trailers" => "0\r\nx-checksum: 1234\r\nx-trailer-two: yes\r\n\r\n",
                _ => "0\r\n\r\n",
            };
            Reply::Open(
                format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKS}{last}")
                    .into_bytes(),
            )
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        for i in 0..2 {
            let a = get_path(&client, &proxy, "/chunked").await;
            assert_ok(&a, "hello chunked world", &format!("chunked {i}"));
        }
        assert_eq!(
            up.accepted(),
            1,
            "a chunked body read to its last chunk leaves the connection reusable"
        );
        for i in 0..2 {
            let a = get_path(&client, &proxy, "/trailers").await;
            assert_ok(&a, "hello chunked world", &format!("with trailers {i}"));
        }
        assert_eq!(
            up.accepted(),
            1,
            "trailers end the body: the connection goes back to the pool with them"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_is_read_to_the_end_and_never_reused() {
    bounded(async {
        let body: String = (0..64 * 1024)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let expected = body.clone();
        let up = RawUpstream::answering(move |_| {
            // No Content-Length, no Transfer-Encoding: the body ends when the upstream closes.
            Reply::Close(
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}").into_bytes(),
            )
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        let a = get_path(&client, &proxy, "/first").await;
        assert_ok(&a, &expected, "close-delimited body");
        let a = get_path(&client, &proxy, "/second").await;
        assert_ok(
            &a,
            &expected,
            "the request after a close-delimited response",
        );
        assert_eq!(
            up.accepted(),
            2,
            "a close-delimited response ends its connection: the second request opened a new one"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_reuse_one_keep_alive_connection() {
    bounded(async {
        let up = RawUpstream::answering(|req| ok(&format!("reply to {}", req.path()))).await;
        let proxy = proxy_to(&up);
        let client = http1();
        for i in 0..20 {
            let a = get_path(&client, &proxy, &format!("/n/{i}")).await;
            assert_ok(&a, &format!("reply to /n/{i}"), &format!("request {i}"));
        }
        assert_eq!(up.requests().len(), 20);
        assert_eq!(up.accepted(), 1, "one upstream connection for 20 requests");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_head_204_and_304_responses_leave_the_connection_reusable() {
    bounded(async {
        let up = RawUpstream::answering(|req| match req.path() {
            // A HEAD answer announces the length a GET would have, and sends no body.
            "/head" => Reply::Open(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec()),
            "/204" => Reply::Open(b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()),
            "/304" => Reply::Open(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec()),
            _ => ok("after"),
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();

        let head = Request::head(format!("{}/head", proxy.url("web")))
            .header("host", "svc.local")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let a = send(&client, head).await.expect("HEAD");
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-length"), "100", "HEAD keeps its length");
        assert!(a.body.is_empty(), "HEAD has no body: {:?}", a.body);
        assert_eq!(up.request("/head").method(), "HEAD");
        assert_ok(
            &get_path(&client, &proxy, "/").await,
            "after",
            "GET after HEAD",
        );

        let a = get_path(&client, &proxy, "/204").await;
        assert_eq!(a.status, 204);
        assert!(a.body.is_empty());
        assert_ok(
            &get_path(&client, &proxy, "/").await,
            "after",
            "GET after 204",
        );

        let a = get_path(&client, &proxy, "/304").await;
        assert_eq!(a.status, 304);
        assert_eq!(a.header("etag"), "\"v1\"");
        assert!(a.body.is_empty());
        assert_ok(
            &get_path(&client, &proxy, "/").await,
            "after",
            "GET after 304",
        );

        assert_eq!(up.requests().len(), 6);
        assert_eq!(
            up.accepted(),
            1,
            "no body was expected after HEAD/204/304: the connection stayed in the pool"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_responses_are_not_reused() {
    bounded(async {
        let up = RawUpstream::answering(|req| {
            let body = format!("bye from {}", req.path());
            Reply::Close(
                format!(
                    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes(),
            )
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        for i in 0..5 {
            let a = get_path(&client, &proxy, &format!("/c/{i}")).await;
            assert_ok(&a, &format!("bye from /c/{i}"), &format!("request {i}"));
        }
        assert_eq!(
            up.accepted(),
            5,
            "a new connection after every `Connection: close`"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_100_continue_is_skipped_for_the_final_response() {
    bounded(async {
        let up = RawUpstream::answering(|req| match req.path() {
            "/continue" => Reply::Open(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal"
                    .to_vec(),
            ),
            _ => ok("next"),
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        let a = get_path(&client, &proxy, "/continue").await;
        assert_ok(&a, "final", "the final response after 100 Continue");
        assert_ok(
            &get_path(&client, &proxy, "/").await,
            "next",
            "the next request",
        );
        assert_eq!(up.accepted(), 1);
    })
    .await;
}

/// Idle connections pooled to the first endpoint of `service`, as `/clusters` reports them.
async fn idle_connections(proxy: &Proxy, service: &str) -> u64 {
    cluster(&clusters(proxy.admin()).await, service)["endpoints"][0]["idleConnections"]
        .as_u64()
        .expect("idleConnections")
}

/// Answers `req` with a keep-alive 200 whose body is `served PATH`.
async fn answer_served(wire: &mut Wire, req: &Seen) -> io::Result<()> {
    answer(wire, &format!("served {}", req.path())).await
}

/// Answers with a keep-alive 200 whose body is `body`.
async fn answer(wire: &mut Wire, body: &str) -> io::Result<()> {
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    wire.send((head + body).as_bytes()).await
}

/// Like a server with keep-alive timeout `idle`: one answer per connection, which it keeps open
/// (no `Connection: close`), then closes once `idle` has passed.
async fn keep_alive_timeout(idle: Duration) -> RawUpstream {
    RawUpstream::start(move |mut wire| async move {
        if let Some(req) = wire.read_request().await? {
            answer_served(&mut wire, &req).await?;
            tokio::time::sleep(idle).await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pooled_connection_closed_by_the_upstream_is_not_used() {
    bounded(async {
        let up = keep_alive_timeout(Duration::from_millis(100)).await;
        let proxy = proxy_to(&up);
        let client = http1();
        assert_ok(
            &get_path(&client, &proxy, "/one").await,
            "served /one",
            "first",
        );
        // The scenario is about time: the upstream's idle timeout passes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let a = get_path(&client, &proxy, "/two").await;
        assert_eq!(
            a.status,
            200,
            "sent on a connection the upstream had closed? {:?} {}",
            a.header("x-strait-reason"),
            String::from_utf8_lossy(&a.body)
        );
        assert_ok(&a, "served /two", "second");
        assert_eq!(up.accepted(), 2, "the closed connection was replaced");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pooled_connection_closed_by_the_upstream_leaves_the_pool_without_a_request() {
    bounded(async {
        let up = keep_alive_timeout(Duration::from_millis(200)).await;
        let proxy = proxy_to(&up);
        assert_ok(
            &get_path(&http1(), &proxy, "/one").await,
            "served /one",
            "first",
        );
        assert_eq!(
            idle_connections(&proxy, "raw").await,
            1,
            "kept for the next request"
        );
        // Within the proxy's sweep interval (2 s), not at the next request.
        strait_tests::eventually(
            "the dead connection leaves the pool",
            Duration::from_secs(5),
            || async { (idle_connections(&proxy, "raw").await == 0).then_some(()) },
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_to_the_keep_alive_race_is_resent_only_when_idempotent() {
    bounded(async {
        // Each connection answers its first request, then reads the next one and closes
        // without answering: what a proxy sees when the upstream's keep-alive timeout fires
        // just as a request goes out on the pooled connection.
        let up = RawUpstream::start(|mut wire| async move {
            if let Some(req) = wire.read_request().await? {
                answer_served(&mut wire, &req).await?;
            }
            let _ = wire.read_request().await?;
            Ok(())
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        assert_ok(
            &get_path(&client, &proxy, "/one").await,
            "served /one",
            "first",
        );
        let again = get_path(&client, &proxy, "/two").await;
        assert_ok(
            &again,
            "served /two",
            "a GET lost on the pooled connection is sent again",
        );
        assert_eq!(up.accepted(), 2, "sent again on a fresh connection");
        let post = Request::post(format!("{}/three", proxy.url("web")))
            .header("host", "svc.local")
            .body(Full::new(Bytes::from_static(b"once")))
            .unwrap();
        let answer = send(&client, post).await.unwrap();
        assert_eq!(answer.status, 502, "a POST is never delivered twice");
        assert_eq!(answer.header("x-strait-reason"), "upstream-reset");
        let posts = up
            .requests()
            .iter()
            .filter(|r| r.path() == "/three")
            .count();
        assert_eq!(posts, 1, "the POST reached the upstream once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_one_request_at_a_time_reuses_the_last_connection_and_the_rest_age_out() {
    bounded(async {
        // A keep-alive server with a 600 ms idle timeout that names the connection answering
        // (in accept order); `/burst` answers are held back so that a burst overlaps.
        const BURST: usize = 6;
        let ids = Arc::new(AtomicUsize::new(0));
        let up = RawUpstream::start(move |mut wire| {
            let id = ids.fetch_add(1, Ordering::SeqCst);
            async move {
                let idle = Duration::from_millis(600);
                loop {
                    // Idle too long: closed (by dropping the connection).
                    let Ok(next) = tokio::time::timeout(idle, wire.read_request()).await else {
                        return Ok(());
                    };
                    let Some(req) = next? else {
                        return Ok(());
                    };
                    if req.path().starts_with("/burst") {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    answer(&mut wire, &format!("conn {id}")).await?;
                }
            }
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        let burst: Vec<_> = (0..BURST)
            .map(|i| {
                let (client, url) = (client.clone(), format!("{}/burst/{i}", proxy.url("web")));
                tokio::spawn(async move { get(&client, &url, "svc.local", &[]).await })
            })
            .collect();
        for answer in burst {
            let answer = answer.await.expect("task").expect("burst request");
            assert_eq!(answer.status, 200);
        }
        assert_eq!(
            up.accepted(),
            BURST,
            "the burst needed a connection per request"
        );

        // One request every 50 ms for 3 s: the sweep (every 2 s) runs while it goes on.
        let mut answered_by = Vec::new();
        for i in 0..60 {
            let a = get_path(&client, &proxy, &format!("/one/{i}")).await;
            assert_eq!(a.status, 200, "request {i}");
            answered_by.push(String::from_utf8_lossy(&a.body).into_owned());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A request that gives its connection back while a sweep has the pool's connections
        // out puts it under them: the trickle may move once to another connection, never
        // cycle through them.
        let switches = answered_by.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(
            switches <= 1,
            "one request at a time goes out on the connection used last, not in turn on every \
             connection the burst opened (which keeps each of them alive and near the upstream's \
             idle timeout): {answered_by:?}"
        );
        assert_eq!(
            up.accepted(),
            BURST,
            "no connection was opened for the trickle"
        );
        assert_eq!(
            idle_connections(&proxy, "raw").await,
            1,
            "the connections the trickle left alone timed out at the upstream and left the pool"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_left_unused_past_the_idle_timeout_are_closed_by_the_proxy() {
    bounded(async {
        // An upstream that never times out a connection (as Go's http.Server by default) and
        // notes when the proxy closes one, by the path of the request it had served.
        let closed = Arc::new(Mutex::new(Vec::<(String, std::time::Instant)>::new()));
        let seen = closed.clone();
        let up = RawUpstream::start(move |mut wire| {
            let seen = seen.clone();
            async move {
                let mut last = String::new();
                while let Some(req) = wire.read_request().await? {
                    last = req.path().to_owned();
                    answer_served(&mut wire, &req).await?;
                }
                seen.lock()
                    .expect("closed")
                    .push((last, std::time::Instant::now()));
                Ok(())
            }
        })
        .await;
        let addr = [(up.addr.to_string(), 1)];
        let proxy = Proxy::start(
            &(proxy("")
                + &service(
                    "brief",
                    "http1",
                    &addr,
                    "  connectionPool: {idleTimeout: 1s}",
                )
                + &service("kept", "http1", &addr, "")
                + &http_route(
                    "r",
                    "  rules:
    - {matches: [{path: {type: PathPrefix, value: /brief}}], backendRefs: [{name: brief}]}
    - {backendRefs: [{name: kept}]}",
                )),
        );
        let client = http1();
        assert_ok(
            &get_path(&client, &proxy, "/brief").await,
            "served /brief",
            "brief",
        );
        let idle_since = std::time::Instant::now();
        assert_ok(
            &get_path(&client, &proxy, "/kept").await,
            "served /kept",
            "kept",
        );
        assert_eq!(up.accepted(), 2, "a connection per service");

        // The sweep runs every 2 s: closed between 1 s (the timeout) and 4 s after.
        strait_tests::eventually(
            "the upstream sees brief's connection closed",
            Duration::from_secs(6),
            || async { (!closed.lock().expect("closed").is_empty()).then_some(()) },
        )
        .await;
        let gone = closed.lock().expect("closed").clone();
        assert_eq!(gone.len(), 1, "only brief's connection: {gone:?}");
        assert_eq!(gone[0].0, "/brief");
        let after = gone[0].1.duration_since(idle_since);
        assert!(
            after >= Duration::from_secs(1),
            "closed {after:?} after it went idle, before its idle timeout"
        );
        assert_eq!(
            idle_connections(&proxy, "brief").await,
            0,
            "brief's pool is empty"
        );
        assert_eq!(
            idle_connections(&proxy, "kept").await,
            1,
            "the default timeout (60 s) keeps kept's connection"
        );
        // A request after the close opens a new connection and is served.
        assert_ok(
            &get_path(&client, &proxy, "/brief/again").await,
            "served /brief/again",
            "again",
        );
        assert_eq!(up.accepted(), 3);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Broken upstream answers
// ---------------------------------------------------------------------------------------------

/// A response head of more than 1 MiB: one huge header.
fn huge_head() -> Vec<u8> {
    let mut bytes = b"HTTP/1.1 200 OK\r\nX-Huge: ".to_vec();
    bytes.resize(bytes.len() + 1536 * 1024, b'h');
    bytes.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_upstream_answers_are_502_and_the_proxy_keeps_serving() {
    bounded(async {
        let up = RawUpstream::answering(|req| match req.path() {
            "/bad-status" => Reply::Close(b"HTTP/1.1 abc\r\n\r\n".to_vec()),
            "/garbage" => Reply::Close(b"\x00\x01\x02\xffnot http at all\r\n\r\n".to_vec()),
            "/two-lengths" => Reply::Close(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            ),
            "/huge-head" => Reply::Close(huge_head()),
            "/silent" => Reply::Silent,
            _ => ok("fine"),
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        // (path, the reason required; None: any reason, as long as there is one)
        let cases = [
            ("/bad-status", Some("upstream-reset")),
            ("/garbage", Some("upstream-reset")),
            ("/silent", Some("upstream-reset")),
            ("/two-lengths", None),
            ("/huge-head", None),
        ];
        for (path, reason) in cases {
            let a = get_path(&client, &proxy, path).await;
            assert_eq!(a.status, 502, "{path}: {a:?}");
            let got = a.header("x-strait-reason");
            match reason {
                Some(want) => assert_eq!(got, want, "{path}"),
                None => assert!(!got.is_empty(), "{path}: the proxy says why"),
            }
            up.request(path); // the upstream did get the request
            assert_ok(&get_path(&client, &proxy, "/ok").await, "fine", path);
            let ready = get(
                &client,
                &format!("http://{}/ready", proxy.admin()),
                "admin",
                &[],
            )
            .await
            .expect("admin /ready");
            assert_eq!(ready.status, 200, "{path}: /ready");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_is_not_passed_on_as_complete() {
    bounded(async {
        let up = RawUpstream::answering(|req| match req.path() {
            // 1000 bytes promised, 10 sent, then the upstream closes.
            "/truncated" => {
                Reply::Close(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789".to_vec())
            }
            _ => ok("fine"),
        })
        .await;
        let proxy = proxy_to(&up);
        let client = http1();
        let url = format!("{}/truncated", proxy.url("web"));
        match get(&client, &url, "svc.local", &[]).await {
            // What the current proxy does: the 200 head with `content-length: 1000` is passed
            // on, then the client's body read fails (the proxy cannot finish the message).
            Err(_) => {}
            Ok(a) => assert!(
                a.status != 200 || a.body.len() != 1000,
                "a truncated upstream body arrived as a complete 1000-byte body: {a:?}"
            ),
        }
        assert_ok(
            &get_path(&http1(), &proxy, "/ok").await,
            "fine",
            "after truncation",
        );
    })
    .await;
}

/// The upstream's early refusal of an upload: it reads only the head, answers 413.
const TOO_LARGE: &[u8] =
    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large";

/// An upstream that refuses `POST /upload` after reading its head; `linger`: it then
/// half-closes and discards the rest of the upload (as nginx's lingering close does) instead
/// of closing at once with the body unread. Any other request gets a `200`.
async fn refusing_uploads(linger: bool) -> RawUpstream {
    RawUpstream::start(move |mut wire| async move {
        let Some(mut head) = wire.read_head().await? else {
            return Ok(());
        };
        if head.path() != "/upload" {
            wire.read_body(&mut head).await?;
            return wire.send(&ok_close("fine")).await;
        }
        wire.send(TOO_LARGE).await?;
        if linger {
            wire.stream.shutdown().await?;
            let mut rest = tokio::io::sink();
            tokio::io::copy(&mut wire.stream, &mut rest).await?;
        }
        Ok(())
    })
    .await
}

/// A `200` with `Connection: close`.
fn ok_close(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// POSTs a `len`-byte body on a raw connection while reading the answer (as curl does), so an
/// answer that comes before the upload is done is seen even if the rest of the upload is
/// refused. Returns the response head as text ("" if nothing came).
async fn upload(addr: SocketAddr, path: &str, len: usize) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = format!("POST {path} HTTP/1.1\r\nHost: svc.local\r\nContent-Length: {len}\r\n\r\n");
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'u'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            writer.write_all(&chunk[..n]).await?;
            left -= n;
        }
        // Kept open until the answer is read: a half-close could end the exchange early.
        io::Result::Ok(writer)
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while find(&got, b"\r\n\r\n").is_none() {
        match reader.read(&mut buf).await {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    sending.abort();
    let end = find(&got, b"\r\n\r\n").unwrap_or(got.len());
    String::from_utf8_lossy(&got[..end]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_to_a_large_upload_reaches_the_client() {
    bounded(async {
        let up = refusing_uploads(true).await;
        let proxy = proxy_to(&up);
        let head = upload(proxy.listener("web"), "/upload", 8 * 1024 * 1024).await;
        assert!(
            head.starts_with("HTTP/1.1 413"),
            "the upstream's early answer is the client's: {head:?}"
        );
        let a = get_path(&http1(), &proxy, "/ok").await;
        assert_ok(&a, "fine", "after the early answer");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_then_an_abrupt_close_is_answered_and_the_proxy_stays_up() {
    bounded(async {
        // The upstream closes with most of the 8 MiB unread, so its kernel resets the
        // connection, racing the 413 it wrote. Observed with the current (hyper-based) client
        // over 60 runs: 413 in 38, 502 `upstream-reset` in 22 (the reset reached the proxy
        // before it read the 413); an answer every time. With a lingering close (the test
        // above) it was 413 in 60 of 60.
        let up = refusing_uploads(false).await;
        let proxy = proxy_to(&up);
        let head = upload(proxy.listener("web"), "/upload", 8 * 1024 * 1024).await;
        assert!(
            head.starts_with("HTTP/1.1 413") || head.starts_with("HTTP/1.1 502"),
            "an answer to the upload, the 413 or a 502: {head:?}"
        );
        if head.starts_with("HTTP/1.1 502") {
            assert!(
                head.to_ascii_lowercase()
                    .contains("x-strait-reason: upstream-reset"),
                "{head}"
            );
        }
        let a = get_path(&http1(), &proxy, "/ok").await;
        assert_ok(&a, "fine", "after the reset");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// What reaches the upstream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream_intact() {
    bounded(async {
        let up = RawUpstream::answering(|req| ok(&format!("got {}", req.body.len()))).await;
        let proxy = proxy_to(&up);
        let client = http1();
        let post = |path: &str, body: Vec<u8>| {
            Request::post(format!("{}{path}", proxy.url("web")))
                .header("host", "svc.local")
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };

        // (a) A small body with a Content-Length keeps it.
        let a = send(&client, post("/small", b"abc".to_vec())).await.unwrap();
        assert_ok(&a, "got 3", "small body");
        let seen = up.request("/small");
        assert_eq!(seen.header("content-length"), Some("3"), "{seen:?}");
        assert!(!seen.is_chunked(), "not both framings: {seen:?}");
        assert_eq!(seen.body, b"abc");

        // (b) A chunked body of unknown length arrives whole, however it is framed upstream.
        let chunked = b"POST /chunked HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
            5\r\nhello\r\n8;ext=1\r\n chunked\r\n6\r\n world\r\n0\r\n\r\n";
        let answer = raw(proxy.listener("web"), chunked).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = up.request("/chunked");
        assert_eq!(String::from_utf8_lossy(&seen.body), "hello chunked world");
        assert!(
            !(seen.is_chunked() && seen.header("content-length").is_some()),
            "never both Content-Length and chunked: {seen:?}"
        );

        // (c) 4 MiB with a Content-Length, byte for byte.
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let a = send(&client, post("/big", big.clone())).await.unwrap();
        assert_ok(&a, &format!("got {}", big.len()), "4 MiB body");
        let seen = up.request("/big");
        assert_eq!(seen.header("content-length"), Some("4194304"), "{:?}", seen.headers);
        assert_eq!(seen.body.len(), big.len());
        assert_eq!(checksum(&seen.body), checksum(&big), "4 MiB body differs");

        // (d) A GET without a body carries no framing headers.
        assert_ok(&get_path(&client, &proxy, "/nobody").await, "got 0", "GET");
        let seen = up.request("/nobody");
        assert_eq!(seen.header("content-length"), None, "{seen:?}");
        assert_eq!(seen.header("transfer-encoding"), None, "{seen:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_and_headers_on_the_wire() {
    bounded(async {
        let up = RawUpstream::answering(|_| ok("seen")).await;
        let proxy = proxy_to(&up);
        let a = get(
            &http1(),
            &format!("{}/path?q=1", proxy.url("web")),
            "svc.local",
            &[("x-custom", "abc"), ("x-request-id", "42")],
        )
        .await
        .unwrap();
        assert_ok(&a, "seen", "GET /path?q=1");
        let seen = up.request("/path");
        assert_eq!(
            seen.line, "GET /path?q=1 HTTP/1.1",
            "origin-form request line"
        );
        assert_eq!(seen.header("host"), Some("svc.local"), "{seen:?}");
        assert_eq!(seen.header("x-custom"), Some("abc"), "{seen:?}");
        assert_eq!(seen.header("x-request-id"), Some("42"), "{seen:?}");
        let xff = seen.header("x-forwarded-for").unwrap_or("");
        assert!(xff.contains("127.0.0.1"), "x-forwarded-for: {seen:?}");
    })
    .await;
}

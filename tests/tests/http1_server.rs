//! The downstream HTTP/1 server as a hostile or unusual client meets it: stalled bodies,
//! smuggling shapes, codings, trailers, CONNECT, `Expect`, HTTP/1.0, and how a closing
//! connection is announced. Each case goes through the real proxy to a real upstream that
//! records the bytes it receives.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use strait_tests::client::{raw, send_to};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{eventually, CaptureUpstream, Proxy, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn capture_setup(extra: &str) -> (Proxy, CaptureUpstream) {
    let cap = CaptureUpstream::start().await;
    let yaml = proxy(extra)
        + &service("cap", "http1", &[(cap.addr.to_string(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: cap}]}");
    (Proxy::start(&yaml), cap)
}

/// Reads what the server sends until it closes or `within` passes.
async fn read_until_close(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_are_answered_408_and_do_not_hold_the_listener() {
    // The issue's repro, scaled: as many stalled POSTs as the listener takes connections.
    let (proxy, cap) = capture_setup("  limits: {maxConnections: 3, bodyReadTimeout: 1s}").await;
    let addr = proxy.listener("web");
    let mut stalled = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head =
            format!("POST /stall-{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123");
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    let started = Instant::now();
    for s in &mut stalled {
        let answer = read_until_close(s, Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("x-strait-reason: body-timeout"), "{answer}");
    }
    assert!(started.elapsed() < Duration::from_secs(9));
    // The upstream saw each request start and its connection end, never complete.
    let seen = cap.captured();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen
        .iter()
        .all(|r| !strait_tests::upstream::request_complete(r.as_bytes())));
    // The listener serves again.
    let ok = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_request_body_is_answered_408() {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use http_body::Frame;
    let up = Upstream::start("up").await;
    let yaml = proxy("  limits: {bodyReadTimeout: 1s}")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy.listener("web")).await.unwrap());
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let frames = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
        Bytes::from_static(b"first bytes"),
    ))])
    .chain(futures_util::stream::pending());
    let req = http::Request::post("http://h/upload")
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("answered within the timeout")
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert_eq!(resp.headers()["x-strait-reason"], "body-timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_in_the_head_is_refused_and_nothing_is_smuggled() {
    let (proxy, cap) = capture_setup("").await;
    // A front end that keeps the bare LF inside `Dummy` sees one request whose body is the
    // second; a back end that ends the field there sees two.
    let smuggled = b"POST / HTTP/1.1\r\nHost: h\r\nDummy: x\nContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\n";
    let answer = raw(proxy.listener("web"), smuggled).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    let bare_cr = b"GET / HTTP/1.1\r\nHost: h\rX-A: 1\r\n\r\n";
    let answer = raw(proxy.listener("web"), bare_cr).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(cap.captured().is_empty(), "{:?}", cap.captured());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_size_lines_are_read_strictly() {
    let (proxy, cap) = capture_setup("").await;
    for line in ["2;", "2 ", "2\t", "-2", "0x2", "2;=x"] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{line}\r\nhi\r\n0\r\n\r\n"
        );
        let answer = raw(proxy.listener("web"), req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{line:?}: {answer}");
    }
    assert!(cap
        .captured()
        .iter()
        .all(|r| !strait_tests::upstream::request_complete(r.as_bytes())));
    let fine = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2;name=\"v\"\r\nhi\r\n0\r\n\r\n";
    let answer = raw(proxy.listener("web"), fine.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_chunked_alone_are_not_implemented() {
    let (proxy, cap) = capture_setup("").await;
    for coding in ["gzip, chunked", "gzip", "chunked, chunked"] {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {coding}\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        );
        let answer = raw(proxy.listener("web"), req.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 501"), "{coding}: {answer}");
    }
    assert!(cap.captured().is_empty(), "{:?}", cap.captured());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_lose_framing_and_routing_fields() {
    let (proxy, cap) = capture_setup("").await;
    let req = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 5\r\nHost: evil\r\nTransfer-Encoding: chunked\r\nX-Checksum: abc\r\n\r\n";
    let answer = raw(proxy.listener("web"), req).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = cap.captured();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let body = seen[0]
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_ascii_lowercase();
    assert!(body.contains("x-checksum: abc"), "{body:?}");
    for gone in ["content-length", "host", "transfer-encoding"] {
        assert!(
            !body.contains(gone),
            "{gone} forwarded in trailers: {body:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_answered_405() {
    let (proxy, cap) = capture_setup("").await;
    let answer = raw(
        proxy.listener("web"),
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nallow: "),
        "{answer}"
    );
    assert!(cap.captured().is_empty(), "{:?}", cap.captured());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_closes_after_the_response_says_so() {
    let up = Upstream::start("up").await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    let answer = raw(
        proxy.listener("web"),
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    // HTTP/1.0 without keep-alive closes too, and is told so; with keep-alive it stays.
    let answer = raw(proxy.listener("web"), b"GET / HTTP/1.0\r\nHost: h\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    let mut s = TcpStream::connect(proxy.listener("web")).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut s).await;
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("connection: keep-alive"),
            "{answer}"
        );
    }
}

/// Reads one response with a Content-Length body.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_the_interim_answer_before_the_body_is_sent() {
    let (proxy, cap) = capture_setup("").await;
    let mut s = TcpStream::connect(proxy.listener("web")).await.unwrap();
    s.write_all(
        b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("100 Continue in time")
        .unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let answer = read_until_close(&mut s, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = cap.captured();
    assert!(seen[0].ends_with("\r\n\r\nhello"), "{seen:?}");
    assert!(
        !seen[0].to_ascii_lowercase().contains("expect:"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_behind_a_streamed_body_are_each_answered_once() {
    let up = Upstream::start("up").await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    let big = "x".repeat(40_000);
    let mut wire = format!("POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
    wire.push_str(&format!(
        "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    ));
    wire.push_str("GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let answer = raw(proxy.listener("web"), wire.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    eventually("three hits", Duration::from_secs(5), || async {
        (up.hits() == 3).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_http2_preface_gets_goaway_protocol_error() {
    let (proxy, _cap) = capture_setup("").await;
    let mut s = TcpStream::connect(proxy.listener("web")).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    // A SETTINGS frame, then GOAWAY (type 7) whose error code is PROTOCOL_ERROR (1).
    let goaway = got
        .windows(4)
        .position(|w| w == [0, 0, 8, 7])
        .map(|at| &got[at..]);
    let Some(frame) = goaway else {
        panic!("no GOAWAY in {got:?}");
    };
    assert!(frame.len() >= 17, "{got:?}");
    assert_eq!(&frame[13..17], &[0, 0, 0, 1], "{got:?}");
    let _: Option<SocketAddr> = None;
    let _ = send_to;
}

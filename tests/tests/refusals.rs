//! Answers the proxy makes itself, and HTTP/1 framing it must not pass on.

use std::time::Duration;

use strait_tests::client::{get, http1, raw, raw_and_hang_up};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{eventually, CaptureUpstream, Proxy, Upstream};

fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_no_endpoints_timeout_and_oversize_headers() {
    let slow = Upstream::start("slow").await;
    let yaml = proxy("  limits: {maxHeaderBytes: 4096, maxHeaders: 20}")
        + &service("down", "http1", &[(closed_port(), 1)], "")
        + &service("empty", "http1", &[], "")
        + &service("slow", "http1", &[(slow.address(), 1)], "")
        + &http_route(
            "r",
            "  rules:
    - {matches: [{path: {value: /down}}], backendRefs: [{name: down}]}
    - {matches: [{path: {value: /empty}}], backendRefs: [{name: empty}]}
    - {matches: [{path: {value: /delay}}], backendRefs: [{name: slow}], timeouts: {request: 300ms}}
    - {backendRefs: [{name: slow}]}",
        );
    let proxy = Proxy::start(&yaml);
    let base = proxy.url("web");
    let c = http1();
    let cases = [
        ("/down", 502, "connect-failure"),
        ("/empty", 503, "no-healthy-endpoints"),
        ("/delay/2000", 504, "timeout"),
    ];
    for (path, status, reason) in cases {
        let started = std::time::Instant::now();
        let a = get(&c, &format!("{base}{path}"), "h", &[]).await.unwrap();
        assert_eq!(a.status, status, "{path}");
        assert_eq!(a.header("x-strait-reason"), reason, "{path}");
        if reason == "timeout" {
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "timeout answered after {:?}",
                started.elapsed()
            );
        }
    }
    let big = "x".repeat(5000);
    let a = get(&c, &format!("{base}/ok"), "h", &[("x-big", &big)])
        .await
        .unwrap();
    assert_eq!(a.status, 431);
    assert_eq!(a.header("x-strait-reason"), "header-too-large");
    let many: Vec<(String, String)> = (0..25)
        .map(|i| (format!("x-h{i}"), "v".to_owned()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let a = get(&http1(), &format!("{base}/ok"), "h", &refs)
        .await
        .unwrap();
    assert_eq!(a.status, 431, "too many headers");
    let a = get(&http1(), &format!("{base}/ok"), "h", &[])
        .await
        .unwrap();
    assert_eq!(a.status, 200, "the proxy still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_duplicate_host_is_400() {
    let up = Upstream::start("up").await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    let addr = proxy.listener("web");
    let missing = raw(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 400"), "{missing}");
    assert!(
        missing.contains("x-strait-reason: bad-request"),
        "{missing}"
    );
    let twice = raw(addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(twice.starts_with("HTTP/1.1 400"), "{twice}");
    let ok = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert_eq!(up.hits(), 1, "refused requests never reach the upstream");
}

async fn capture_setup() -> (Proxy, CaptureUpstream) {
    let cap = CaptureUpstream::start().await;
    let yaml = proxy("")
        + &service("cap", "http1", &[(cap.addr.to_string(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: cap}]}");
    (Proxy::start(&yaml), cap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_refused() {
    let (proxy, cap) = capture_setup().await;
    // RFC 9112 §6.1 lets a server refuse both framings at once: two parsers could read them
    // differently, so the proxy forwards neither.
    let req = b"POST /smuggle HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer = raw(proxy.listener("web"), req).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(cap.captured().is_empty(), "{:?}", cap.captured());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_malformed_bodies_are_not_forwarded_as_complete() {
    let (proxy, cap) = capture_setup().await;
    let addr = proxy.listener("web");
    // Content-Length promises more than the client sends before it hangs up. A large body
    // streams, so the upstream sees the request start; a small one is read whole before it is
    // forwarded, so the upstream never sees it.
    raw_and_hang_up(
        addr,
        b"POST /short-large HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123456789",
    )
    .await;
    raw_and_hang_up(
        addr,
        b"POST /short-small HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    // A chunk whose size line is not hex.
    let bad = raw(addr, b"POST /bad HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n").await;
    assert!(
        !bad.starts_with("HTTP/1.1 200"),
        "a malformed chunk must not produce a normal answer: {bad}"
    );
    // The upstream saw the large and the malformed one start, and neither complete.
    let seen = eventually(
        "both requests reach the upstream and end",
        Duration::from_secs(10),
        || {
            let seen = cap.captured();
            async move { (seen.len() >= 2).then_some(seen) }
        },
    )
    .await;
    for raw_request in &seen {
        assert!(
            !strait_tests::upstream::request_complete(raw_request.as_bytes()),
            "forwarded as complete: {raw_request:?}"
        );
        assert!(
            !raw_request.starts_with("POST /short-small "),
            "a truncated small body was forwarded: {raw_request:?}"
        );
    }
    // And the proxy is still serving.
    let ok = raw(
        addr,
        b"POST /fine HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    let up = Upstream::start("up").await;
    let yaml = proxy("  limits: {maxConnections: 2}")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    let addr = proxy.listener("web");
    let a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Give the acceptor time to take both permits before the third arrives.
    let text = eventually("two connections open", Duration::from_secs(5), || async {
        let t = strait_tests::metrics::scrape(proxy.admin()).await;
        (strait_tests::metrics::value(&t, "strait_connections_active", &[("listener", "web")])
            == Some(2.0))
        .then_some(t)
    })
    .await;
    drop(text);
    let third = raw(addr, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(
        third, "",
        "the third connection is closed without an answer"
    );
    let t = strait_tests::metrics::scrape(proxy.admin()).await;
    assert_eq!(
        strait_tests::metrics::value(
            &t,
            "strait_connections_rejected_total",
            &[("listener", "web")]
        ),
        Some(1.0)
    );
    // A connection that ends gives its place back: the gauge falls and a new one is served.
    drop(a);
    eventually("one connection open", Duration::from_secs(5), || async {
        let t = strait_tests::metrics::scrape(proxy.admin()).await;
        (strait_tests::metrics::value(&t, "strait_connections_active", &[("listener", "web")])
            == Some(1.0))
        .then_some(())
    })
    .await;
    let fourth = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        fourth.starts_with("HTTP/1.1 200"),
        "a connection after one closed is served: {fourth:?}"
    );
}

/// Reads one HTTP/1 response from `stream` (a `content-length` body); returns its head.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head
}

/// Reads until the proxy closes the connection; returns what came and when it closed.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> (String, std::time::Instant) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    (
        String::from_utf8_lossy(&got).into_owned(),
        std::time::Instant::now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_and_idle_keep_alive_are_closed_but_a_steady_client_is_served() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    let up = Upstream::start("up").await;
    let yaml = proxy("  limits: {headerReadTimeout: 2s}")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    let addr = proxy.listener("web");
    let request = b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n";

    // Half a head, then nothing: the connection is closed once the timeout has passed.
    let slowloris = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ")
            .await
            .unwrap();
        let (answer, closed) = until_closed(&mut s).await;
        (answer, closed - started)
    };
    // One request, then silence: the idle keep-alive connection is closed after the timeout.
    let idle = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let head = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let answered = std::time::Instant::now();
        let (_, closed) = until_closed(&mut s).await;
        closed - answered
    };
    // A request the upstream takes 1.5 s to answer, then 1 s of keep-alive silence, then the
    // next request: the wait for its head began when the first was answered, so it is
    // within the timeout and served (though more than 2 s have passed since the first head).
    let steady = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut statuses = Vec::new();
        s.write_all(b"GET /delay/1500 HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        statuses.push(read_response(&mut s).await);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        s.write_all(request).await.unwrap();
        statuses.push(read_response(&mut s).await);
        statuses
    };
    let ((answer, slow_closed), idle_closed, statuses) = tokio::join!(slowloris, idle, steady);

    assert_eq!(answer, "", "closed without an answer");
    assert!(
        slow_closed >= Duration::from_millis(1900) && slow_closed < Duration::from_secs(6),
        "slow head closed after {slow_closed:?}"
    );
    assert!(
        idle_closed >= Duration::from_millis(1900) && idle_closed < Duration::from_secs(6),
        "idle connection closed after {idle_closed:?}"
    );
    for status in &statuses {
        assert!(status.starts_with("HTTP/1.1 200"), "{statuses:?}");
    }
}

//! HTTP/1.1 from clients: plain requests (small bodies of announced length included) are served
//! by the proxy's fast path, and a connection moves to hyper's server at the first request the
//! fast path leaves (a chunked body, here), with nothing lost or reordered on the way.

use strait_tests::client::raw;
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{CaptureUpstream, Proxy, ScriptedUpstream, Upstream};

/// An upstream, and a proxy routing to it with `route` (lines before the route's rules).
async fn proxied(route: &str) -> (Upstream, Proxy) {
    proxied_with("", route).await
}

/// [`proxied`], with `settings` added to the proxy's spec.
async fn proxied_with(settings: &str, route: &str) -> (Upstream, Proxy) {
    let up = Upstream::start("up").await;
    let yaml = proxy(settings)
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route(
            "r",
            &format!("{route}  rules:\n    - {{backendRefs: [{{name: up}}]}}"),
        );
    (up, Proxy::start(&yaml))
}

/// One response off the front of `rest`: (head, body). `head_request`: no body follows.
fn next_response(rest: &mut &[u8], head_request: bool) -> (String, Vec<u8>) {
    let end = rest
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(rest)))
        + 4;
    let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
    *rest = &rest[end..];
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
            .map(str::to_owned)
    };
    let mut body = Vec::new();
    if head_request {
        return (head, body);
    }
    if let Some(length) = field("content-length") {
        let n: usize = length.parse().unwrap();
        body.extend_from_slice(&rest[..n]);
        *rest = &rest[n..];
    } else if field("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            *rest = &rest[line_end + 2..];
            if size == 0 {
                assert!(rest.starts_with(b"\r\n"), "no trailers expected");
                *rest = &rest[2..];
                break;
            }
            body.extend_from_slice(&rest[..size]);
            *rest = &rest[size + 2..];
        }
    }
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_across_the_move_to_hyper() {
    let (_up, proxy) = proxied("").await;
    let addr = proxy.listener("web");

    // All in one write: the fast path serves the first four (a JSON answer, a HEAD, a
    // streamed body, a POST with its body), hyper the chunked POST and the GET after it,
    // which closes.
    let answer = raw(
        addr,
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
          HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /trailers HTTP/1.1\r\nHost: h\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
          POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nworld!\r\n0\r\n\r\n\
          GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut rest = answer.as_bytes();

    let (head, body) = next_response(&mut rest, false);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/a");
    assert_eq!(json["method"], "GET");
    assert_eq!(json["headers"]["x-forwarded-for"][0], "127.0.0.1");

    let (head, body) = next_response(&mut rest, true);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-length: "), "{head}");
    assert!(body.is_empty());

    let (head, body) = next_response(&mut rest, false);
    assert!(
        head.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{head}"
    );
    assert_eq!(body, b"payload");

    let (head, body) = next_response(&mut rest, false);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(body, b"hello");

    let (head, body) = next_response(&mut rest, false);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert_eq!(body, b"world!");

    let (head, body) = next_response(&mut rest, false);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/c");
    assert!(
        rest.is_empty(),
        "after the close: {:?}",
        String::from_utf8_lossy(rest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_answers_on_the_fast_path_are_framed_and_keep_the_connection() {
    let (_up, proxy) = proxied("  hostnames: [known]\n").await;
    let addr = proxy.listener("web");

    // No route for the first: the proxy's own 404, then the next request on the same
    // connection is proxied.
    let answer = raw(
        addr,
        b"GET /x HTTP/1.1\r\nHost: unknown\r\n\r\n\
          GET /y HTTP/1.1\r\nHost: known\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut rest = answer.as_bytes();
    let (head, body) = next_response(&mut rest, false);
    assert!(head.starts_with("http/1.1 404 not found\r\n"), "{head}");
    assert!(head.contains("\r\ncontent-length: "), "{head}");
    assert!(!body.is_empty());
    let (head, body) = next_response(&mut rest, false);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["path"], "/y");
    assert!(rest.is_empty());
}

/// The head of a response exactly as the client received it, and its body.
fn split_response(rest: &mut &[u8]) -> (String, Vec<u8>) {
    let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&rest[..end]).into_owned();
    let (_, body) = next_response(rest, false);
    (head, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fields_pass_as_sent_and_hop_by_hop_ones_never_do() {
    let up = ScriptedUpstream::start(&[
        (
            "/plain",
            "HTTP/1.1 200 OK\r\nServer: scripted\r\nX-Mixed-Case:  Kept As Sent\r\n\
             Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 5\r\n\r\nplain",
        ),
        (
            "/hop",
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
             Proxy-Connection: keep-alive\r\nTrailer: x-sum\r\nX-App: 2\r\n\
             Content-Length: 3\r\n\r\nhop",
        ),
        (
            "/policy",
            "HTTP/1.1 201 Created\r\nX-Remove-Me: 1\r\nX-App: 3\r\n\
             Transfer-Encoding: chunked\r\n\r\n6\r\npolicy\r\n0\r\n\r\n",
        ),
    ])
    .await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route(
            "r",
            "  rules:
    - matches: [{path: {type: PathPrefix, value: /policy}}]
      backendRefs: [{name: up}]
      responseHeaders: {add: {x-served-by: strait}, remove: [x-remove-me]}
    - {backendRefs: [{name: up}]}",
        );
    let proxy = Proxy::start(&yaml);

    // One connection, all on the fast path; the upstream connection is reused throughout.
    let answer = raw(
        proxy.listener("web"),
        b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /hop HTTP/1.1\r\nHost: h\r\n\r\n\
          GET /policy HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut rest = answer.as_bytes();

    // Copied as the upstream spelled them; its connection fields stay on its hop.
    let (head, body) = split_response(&mut rest);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("\r\nServer: scripted\r\n"), "{head}");
    assert!(
        head.contains("\r\nX-Mixed-Case:  Kept As Sent\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nContent-Length: 5\r\n"), "{head}");
    let lower = head.to_lowercase();
    assert!(!lower.contains("keep-alive"), "{head}");
    assert!(!lower.contains("\r\nconnection:"), "{head}");
    assert_eq!(lower.matches("\r\ndate: ").count(), 1, "{head}");
    assert_eq!(body, b"plain");

    // Hop-by-hop fields, and those Connection names, are stripped.
    let (head, body) = split_response(&mut rest);
    let lower = head.to_lowercase();
    for gone in [
        "x-secret",
        "proxy-connection",
        "trailer:",
        "\r\nconnection:",
    ] {
        assert!(!lower.contains(gone), "{gone} in {head}");
    }
    assert!(lower.contains("\r\nx-app: 2\r\n"), "{head}");
    assert_eq!(body, b"hop");

    // A response header policy applies; the body is re-framed for this client.
    let (head, body) = split_response(&mut rest);
    let lower = head.to_lowercase();
    assert!(lower.starts_with("http/1.1 201 created\r\n"), "{head}");
    assert!(lower.contains("\r\nx-served-by: strait\r\n"), "{head}");
    assert!(lower.contains("\r\nx-app: 3\r\n"), "{head}");
    assert!(!lower.contains("x-remove-me"), "{head}");
    assert_eq!(body, b"policy");
    assert!(rest.is_empty());
}

/// Reads one response with a Content-Length body off `stream`: (lowercased head, body).
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end + 4]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no content-length in {head}"));
            if got.len() >= end + 4 + length {
                assert_eq!(got.len(), end + 4 + length, "bytes past the response");
                return (head, got[end + 4..].to_vec());
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_interleaved_each_get_their_own_answers() {
    // Between requests a connection gives its head buffer and its request's room back to the
    // proxy's free lists and takes them again when its next request arrives: other
    // connections' requests, and heads that arrive in pieces, must never show through.
    use tokio::io::AsyncWriteExt;
    let (_up, proxy) = proxied("").await;
    let addr = proxy.listener("web");
    let mut conns = Vec::new();
    for _ in 0..12 {
        conns.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    for round in 0..4 {
        // Odd connections send the first half of their head now, the rest after every even
        // connection has had a whole exchange.
        let head = |c: usize| {
            format!(
                "GET /c{c}/r{round}?pad={} HTTP/1.1\r\nHost: h\r\nX-Conn: {c}\r\n\r\n",
                "p".repeat(c * 40)
            )
        };
        for (c, stream) in conns.iter_mut().enumerate().filter(|(c, _)| c % 2 == 1) {
            let head = head(c);
            stream
                .write_all(&head.as_bytes()[..head.len() / 2])
                .await
                .expect("write");
        }
        for (c, stream) in conns.iter_mut().enumerate().filter(|(c, _)| c % 2 == 0) {
            stream.write_all(head(c).as_bytes()).await.expect("write");
            let (status, body) = read_response(stream).await;
            assert!(status.starts_with("http/1.1 200 "), "{status}");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["path"], format!("/c{c}/r{round}"));
            assert_eq!(json["headers"]["x-conn"][0], c.to_string());
        }
        for (c, stream) in conns.iter_mut().enumerate().filter(|(c, _)| c % 2 == 1) {
            let head = head(c);
            stream
                .write_all(&head.as_bytes()[head.len() / 2..])
                .await
                .expect("write");
            let (status, body) = read_response(stream).await;
            assert!(status.starts_with("http/1.1 200 "), "{status}");
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["path"], format!("/c{c}/r{round}"));
            assert_eq!(json["query"], format!("pad={}", "p".repeat(c * 40)));
            assert_eq!(json["headers"]["x-conn"][0], c.to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_reach_the_upstream_once_whichever_way_they_are_added() {
    // A request without forwarding fields of its own, on a route that edits no headers, has
    // them written by the upstream encoder; one that carries some, or whose route edits
    // headers, has them merged into its header map. The upstream sees the same either way.
    let cap = CaptureUpstream::start().await;
    let yaml = proxy("")
        + &service("cap", "http1", &[(cap.addr.to_string(), 1)], "")
        + &http_route(
            "r",
            "  rules:\n    - {backendRefs: [{name: cap}]}\n    - matches: [{path: {type: PathPrefix, value: /edited}}]\n      backendRefs: [{name: cap}]\n      requestHeaders: {remove: [x-forwarded-proto, host], set: {x-edited: \"yes\"}}",
        );
    let proxy = Proxy::start(&yaml);
    let addr = proxy.listener("web");
    let field_lines = |raw: &str| -> Vec<String> {
        raw.split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .lines()
            .skip(1)
            .map(str::to_ascii_lowercase)
            .collect()
    };
    let count = |lines: &[String], name: &str| {
        lines
            .iter()
            .filter(|l| l.starts_with(&format!("{name}:")))
            .count()
    };

    raw(
        addr,
        b"GET /plain HTTP/1.1\r\nHost: h\r\nX-One: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    raw(addr, b"GET /carried HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.9.8.7\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n").await;
    raw(
        addr,
        b"GET /edited HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    raw(
        addr,
        b"GET http://h/absolute?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let seen = cap.captured();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let by_path = |path: &str| {
        let raw = seen
            .iter()
            .find(|r| r.starts_with(&format!("GET {path} HTTP/1.1\r\n")))
            .unwrap_or_else(|| panic!("{path} not seen: {seen:?}"));
        field_lines(raw)
    };

    let plain = by_path("/plain");
    assert_eq!(
        plain,
        [
            "host: h",
            "x-one: 1",
            "x-forwarded-for: 127.0.0.1",
            "forwarded: for=127.0.0.1;proto=http",
            "x-forwarded-proto: http",
        ],
        "{plain:?}"
    );

    let carried = by_path("/carried");
    assert!(
        carried.contains(&"x-forwarded-for: 10.9.8.7, 127.0.0.1".to_owned()),
        "{carried:?}"
    );
    assert!(
        carried.contains(&"x-forwarded-proto: https".to_owned()),
        "{carried:?}"
    );
    assert!(
        carried.contains(&"forwarded: for=127.0.0.1;proto=http".to_owned()),
        "{carried:?}"
    );
    for name in ["x-forwarded-for", "forwarded", "x-forwarded-proto"] {
        assert_eq!(count(&carried, name), 1, "{name} once: {carried:?}");
    }

    let edited = by_path("/edited");
    assert!(edited.contains(&"x-edited: yes".to_owned()), "{edited:?}");
    assert!(
        edited.contains(&"x-forwarded-for: 127.0.0.1".to_owned()),
        "{edited:?}"
    );
    assert_eq!(
        count(&edited, "x-forwarded-proto"),
        0,
        "the route removes it: {edited:?}"
    );
    assert_eq!(
        edited
            .iter()
            .filter(|l| l.starts_with("host:"))
            .collect::<Vec<_>>(),
        ["host: h"],
        "a Host the route removes is put back from the authority: {edited:?}"
    );

    // An absolute-form target goes upstream in origin form.
    let absolute = by_path("/absolute?x=1");
    assert_eq!(count(&absolute, "host"), 1, "{absolute:?}");
    assert_eq!(count(&absolute, "x-forwarded-for"), 1, "{absolute:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_arriving_in_pieces_reach_the_upstream_whole_on_a_kept_connection() {
    // The fast path reads a small body of announced length whole before it forwards the
    // request; one still arriving when the head's time is up goes on through hyper's server
    // (which waits for bodies), so a slow client is served rather than cut off.
    use tokio::io::AsyncWriteExt;
    let (_up, proxy) = proxied_with("  limits: {headerReadTimeout: 1s}", "").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.listener("web"))
        .await
        .expect("connect");
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(150));

    // Head, then the body in two writes, then a GET on the same connection.
    let body = "b".repeat(6000);
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    for piece in [&head[..], &body[..2500], &body[2500..]] {
        stream.write_all(piece.as_bytes()).await.expect("write");
        pause().await;
    }
    let (status, echoed) = read_response(&mut stream).await;
    assert!(status.starts_with("http/1.1 200 "), "{status}");
    assert_eq!(echoed, body.as_bytes());
    stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .expect("write");
    let (status, json) = read_response(&mut stream).await;
    assert!(status.starts_with("http/1.1 200 "), "{status}");
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(json["path"], "/after");

    // A body whose second half comes after the head's second is up.
    stream
        .write_all(b"PUT /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nslow ")
        .await
        .expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    stream.write_all(b"body!").await.expect("write");
    let (status, echoed) = read_response(&mut stream).await;
    assert!(status.starts_with("http/1.1 200 "), "{status}");
    assert_eq!(echoed, b"slow body!");
}

//! Request smuggling and parser differentials, end to end: exact bytes from a raw client,
//! through the proxy, to an upstream that parses what it receives strictly and on its own
//! ([`RecordingUpstream`]). Every case checks that the upstream sees no more requests than the
//! client sent, that each body it sees is framed as the proxy should have read it, that the
//! proxy never forwards anything the strict parser refuses, and that requests the proxy must
//! refuse get the expected status.

use std::net::SocketAddr;
use std::time::Duration;

use strait_tests::config::{http_route, proxy, service};
use strait_tests::h2_wire;
use strait_tests::recording::Recorded;
use strait_tests::{Proxy, RecordingUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a client waits for the proxy to answer and close.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A recording upstream, and a proxy routing every request to it (`settings` added to the
/// proxy's spec).
async fn setup_with(settings: &str) -> (Proxy, RecordingUpstream) {
    let up = RecordingUpstream::start().await;
    let yaml = proxy(settings)
        + &service("rec", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: rec}]}");
    (Proxy::start(&yaml), up)
}

/// One response the client read.
#[derive(Debug)]
struct Response {
    status: u16,
    /// The head, lower-cased.
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

/// The request every case's bytes are followed by: answered (and the connection closed)
/// once the proxy has dealt with everything before it, unless it closed the connection first.
const SENTINEL: &[u8] = b"GET /sentinel HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";

/// Writes `bytes` then [`SENTINEL`] on one connection, and reads until the proxy closes it:
/// every answer it gave, in order.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<Response> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    // The proxy may have refused the request and closed already.
    let _ = stream.write_all(SENTINEL).await;
    read_until_closed(&mut stream).await
}

/// Reads until the proxy closes (or [`ANSWER_TIMEOUT`] passes): the responses it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<Response> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, stream.read_to_end(&mut raw)).await;
    let mut rest = &raw[..];
    let mut responses = Vec::new();
    while let Some(response) = next_response(&mut rest) {
        responses.push(response);
    }
    assert!(
        rest.is_empty(),
        "not a response: {:?}",
        String::from_utf8_lossy(rest)
    );
    responses
}

/// One response off the front of `rest` (bodies framed by `content-length`, chunks, or the
/// end of the connection).
fn next_response(rest: &mut &[u8]) -> Option<Response> {
    let end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&rest[..end]).to_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    *rest = &rest[end..];
    let mut response = Response {
        status,
        head,
        body: Vec::new(),
    };
    if let Some(length) = response.header("content-length") {
        let n = length.parse::<usize>().ok()?.min(rest.len());
        response.body = rest[..n].to_vec();
        *rest = &rest[n..];
    } else if response.header("transfer-encoding") == Some("chunked") {
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?, 16).ok()?;
            *rest = &rest[line_end + 2..];
            if size == 0 {
                let trailers_end = rest.windows(2).position(|w| w == b"\r\n")?;
                let blank = rest.windows(4).position(|w| w == b"\r\n\r\n");
                *rest = &rest[if trailers_end == 0 { 2 } else { blank? + 4 }..];
                break;
            }
            response.body.extend_from_slice(rest.get(..size)?);
            *rest = rest.get(size + 2..)?;
        }
    } else if status != 204 && status != 304 && !(100..200).contains(&status) {
        response.body = rest.to_vec();
        *rest = &[];
    }
    Some(response)
}

/// What the proxy must do with a request.
enum Expect {
    /// Forward it once, with this body; the client gets the upstream's 200.
    Forwarded(&'static [u8]),
    /// Answer it itself with one of these statuses; the upstream sees nothing.
    Refused(&'static [u16]),
    /// Either (RFC 9112 leaves the choice to the server).
    RefusedOrForwarded(&'static [u16], &'static [u8]),
}

/// Sends one request's bytes (and [`SENTINEL`]) through a fresh proxy and checks what both
/// ends saw; returns what the upstream recorded for the request.
async fn check(wire: &[u8], expect: Expect) -> Vec<Recorded> {
    let (proxy, up) = setup_with("").await;
    let mut answers = exchange(proxy.listener("web"), wire).await;
    let mut seen = up.requests();
    let sent = String::from_utf8_lossy(wire);
    assert_eq!(
        up.anomalies(),
        Vec::<String>::new(),
        "the proxy forwarded what a strict parser refuses, for {sent:?}"
    );
    // The sentinel, when it was served, comes last on both sides.
    if seen.last().is_some_and(|r| r.target == "/sentinel") {
        seen.pop();
        let last = answers.pop();
        assert!(
            last.as_ref().is_some_and(|a| a.body == b"/sentinel"),
            "the sentinel's answer comes last, for {sent:?}: {last:?}"
        );
    }
    assert!(
        seen.iter().all(|r| r.target != "/sentinel"),
        "requests forwarded after the sentinel, for {sent:?}: {seen:#?}"
    );
    assert!(
        seen.len() <= 1,
        "one request sent, {} forwarded: {seen:#?}",
        seen.len()
    );
    assert_eq!(
        answers.len(),
        1,
        "one request, one answer, for {sent:?}: {answers:#?}"
    );
    let answer = &answers[0];
    let forwarded = |body: &[u8]| {
        assert_eq!(answer.status, 200, "{sent:?}: {answer:?}");
        assert_eq!(seen.len(), 1, "{sent:?} forwarded once");
        assert_eq!(
            String::from_utf8_lossy(&seen[0].body),
            String::from_utf8_lossy(body),
            "the body the upstream framed, for {sent:?}"
        );
    };
    match expect {
        Expect::Forwarded(body) => forwarded(body),
        Expect::Refused(statuses) => {
            assert!(
                statuses.contains(&answer.status),
                "{sent:?} answered {} (expected one of {statuses:?}): {answer:?}",
                answer.status
            );
            assert!(seen.is_empty(), "{sent:?} refused yet forwarded: {seen:#?}");
        }
        Expect::RefusedOrForwarded(statuses, body) => {
            if seen.is_empty() {
                assert!(
                    statuses.contains(&answer.status),
                    "{sent:?} answered {}: {answer:?}",
                    answer.status
                );
            } else {
                forwarded(body);
            }
        }
    }
    seen
}

const CHUNKED_HELLO: &str = "5\r\nhello\r\n0\r\n\r\n";

fn post(fields: &str, body: &str) -> Vec<u8> {
    format!("POST /p HTTP/1.1\r\nHost: h\r\n{fields}\r\n{body}").into_bytes()
}

// --- Content-Length and Transfer-Encoding together ------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_then_chunked_is_refused_or_read_as_chunked() {
    let seen = check(
        &post(
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
            CHUNKED_HELLO,
        ),
        Expect::RefusedOrForwarded(&[400], b"hello"),
    )
    .await;
    assert!(seen.iter().all(|r| r.header("content-length").is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_then_content_length_is_refused_or_read_as_chunked() {
    let seen = check(
        &post(
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            CHUNKED_HELLO,
        ),
        Expect::RefusedOrForwarded(&[400], b"hello"),
    )
    .await;
    assert!(seen.iter().all(|r| r.header("content-length").is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_different_content_lengths_are_400() {
    check(
        &post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_equal_content_lengths_are_one_length_or_400() {
    check(
        &post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
        Expect::RefusedOrForwarded(&[400], b"hello"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_equal_content_lengths_is_one_length_or_400() {
    check(
        &post("Content-Length: 5, 5\r\n", "hello"),
        Expect::RefusedOrForwarded(&[400], b"hello"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_different_content_lengths_is_400() {
    check(
        &post("Content-Length: 5, 6\r\n", "hello!"),
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_negative_and_overflowing_content_lengths_are_400() {
    for length in ["+5", "-1", "0x5", "5 5", "99999999999999999999999"] {
        check(
            &post(&format!("Content-Length: {length}\r\n"), "hello"),
            Expect::Refused(&[400]),
        )
        .await;
    }
}

// --- Transfer-Encoding other than chunked alone ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_then_identity_is_refused() {
    // chunked not last: the length cannot be determined (RFC 9112 §6.3: 400); the contract
    // answers any coding but `chunked` alone with 501.
    check(
        &post("Transfer-Encoding: chunked, identity\r\n", CHUNKED_HELLO),
        Expect::Refused(&[400, 501]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_then_chunked_is_501() {
    check(
        &post("Transfer-Encoding: gzip, chunked\r\n", CHUNKED_HELLO),
        Expect::Refused(&[501]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_coding_is_501() {
    check(
        &post("Transfer-Encoding: xchunked\r\n", CHUNKED_HELLO),
        Expect::Refused(&[501]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_coding_next_to_a_length_is_refused() {
    check(
        &post(
            "Content-Length: 14\r\nTransfer-Encoding: xchunked\r\n",
            CHUNKED_HELLO,
        ),
        Expect::Refused(&[400, 501]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_twice_is_refused() {
    check(
        &post(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            CHUNKED_HELLO,
        ),
        Expect::Refused(&[400, 501]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_in_any_case_with_optional_whitespace_is_chunked() {
    for coding in ["Chunked", " chunked ", "\tchunked"] {
        let seen = check(
            &post(&format!("Transfer-Encoding:{coding}\r\n"), CHUNKED_HELLO),
            Expect::Forwarded(b"hello"),
        )
        .await;
        assert!(seen[0].chunked, "forwarded chunked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coding_after_a_vertical_tab_is_refused() {
    check(
        &post("Transfer-Encoding: \x0bchunked\r\n", CHUNKED_HELLO),
        Expect::Refused(&[400, 501]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folded_transfer_encoding_is_refused_or_unfolded() {
    check(
        &post("Transfer-Encoding:\r\n chunked\r\n", CHUNKED_HELLO),
        Expect::RefusedOrForwarded(&[400], b"hello"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_before_the_colon_is_400() {
    // RFC 9112 §5.1: a server MUST reject it; a lenient parser reads a different field name.
    for fields in [
        "Transfer-Encoding : chunked\r\n",
        "Content-Length : 5\r\n",
        "Transfer-Encoding\t: chunked\r\n",
    ] {
        check(&post(fields, CHUNKED_HELLO), Expect::Refused(&[400])).await;
    }
}

// --- Line endings and control characters in the head ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_in_the_head_is_400_not_a_second_request() {
    // A parser that takes bare LF sees a Content-Length and a body; one that does not sees a
    // field `Dummy` and then a second request, `GET /admin`.
    check(
        b"GET / HTTP/1.1\r\nHost: h\r\nDummy: x\nContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_line_endings_are_400() {
    check(b"GET / HTTP/1.1\nHost: h\n\n", Expect::Refused(&[400])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_cr_in_the_head_is_400() {
    check(
        b"GET / HTTP/1.1\r\nHost: h\r\nDummy: x\rContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_a_field_value_is_400() {
    check(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folded_field_is_refused_or_unfolded() {
    check(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
        Expect::RefusedOrForwarded(&[400], b""),
    )
    .await;
}

// --- Chunk-size lines -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_extension_without_a_name_is_400() {
    check(
        &post("Transfer-Encoding: chunked\r\n", "2;\r\nab\r\n0\r\n\r\n"),
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_after_a_chunk_size_is_400() {
    check(
        &post(
            "Transfer-Encoding: chunked\r\n",
            "a \r\n0123456789\r\n0\r\n\r\n",
        ),
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_overlong_and_nul_chunk_sizes_are_refused() {
    for body in [
        "-5\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffff0\r\nhello\r\n0\r\n\r\n",
        "5\x00\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
    ] {
        check(
            &post("Transfer-Encoding: chunked\r\n", body),
            Expect::Refused(&[400]),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_in_chunk_framing_is_400() {
    check(
        &post("Transfer-Encoding: chunked\r\n", "5\nhello\n0\n\n"),
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_data_longer_than_its_size_is_refused() {
    check(
        &post(
            "Transfer-Encoding: chunked\r\n",
            "3\r\nhello\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        Expect::Refused(&[400]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_extensions_with_names_are_read_past() {
    check(
        &post(
            "Transfer-Encoding: chunked\r\n",
            "5;name=value;flag\r\nhello\r\n0\r\n\r\n",
        ),
        Expect::Forwarded(b"hello"),
    )
    .await;
}

// --- Bodies framed as sent --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_looks_like_a_request_stays_a_body() {
    check(
        b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 23\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
        Expect::Forwarded(b"GET /admin HTTP/1.1\r\n\r\n"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_their_framing() {
    let body = "b".repeat(40_000);
    let leaked: &'static [u8] = Box::leak(body.clone().into_boxed_str()).as_bytes();
    check(
        &post(&format!("Content-Length: {}\r\n", body.len()), &body),
        Expect::Forwarded(leaked),
    )
    .await;
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    check(
        &post("Transfer-Encoding: chunked\r\n", &chunked),
        Expect::Forwarded(leaked),
    )
    .await;
}

// --- Routing fields -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_replaces_a_different_host() {
    let seen = check(
        b"GET http://svc.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n",
        Expect::Forwarded(b""),
    )
    .await;
    assert_eq!(seen[0].header("host"), ["svc.example"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_and_routing_fields_in_request_trailers_are_dropped() {
    let seen = check(
        &post(
            "Transfer-Encoding: chunked\r\nTrailer: x-ok\r\n",
            "5\r\nhello\r\n0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nHost: evil\r\nX-Ok: 1\r\n\r\n",
        ),
        Expect::Forwarded(b"hello"),
    )
    .await;
    let names: Vec<&str> = seen[0].trailers.iter().map(|(n, _)| n.as_str()).collect();
    for dropped in ["content-length", "transfer-encoding", "host"] {
        assert!(!names.contains(&dropped), "{dropped} forwarded: {names:?}");
    }
    assert_eq!(seen[0].header("host"), ["h"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_405() {
    check(
        b"CONNECT up.example:443 HTTP/1.1\r\nHost: up.example:443\r\n\r\n",
        Expect::Refused(&[405]),
    )
    .await;
}

// --- Connections ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_each_forwarded_once_and_answered_in_order() {
    let (proxy, up) = setup_with("").await;
    // The chunked one moves the connection from the fast path to hyper's server mid-way.
    let wire = format!(
        "GET /one HTTP/1.1\r\nHost: h\r\n\r\n\
         POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
         POST /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{CHUNKED_HELLO}\
         GET /four HTTP/1.1\r\nHost: h\r\n\r\n"
    );
    let answers = exchange(proxy.listener("web"), wire.as_bytes()).await;
    let bodies: Vec<String> = answers
        .iter()
        .map(|a| format!("{} {}", a.status, String::from_utf8_lossy(&a.body)))
        .collect();
    assert_eq!(
        bodies,
        [
            "200 /one",
            "200 /two",
            "200 /three",
            "200 /four",
            "200 /sentinel"
        ]
    );
    let seen: Vec<(String, Vec<u8>)> = up
        .requests()
        .into_iter()
        .map(|r| (r.target, r.body))
        .collect();
    assert_eq!(
        seen,
        [
            ("/one".to_owned(), b"".to_vec()),
            ("/two".to_owned(), b"hello".to_vec()),
            ("/three".to_owned(), b"hello".to_vec()),
            ("/four".to_owned(), b"".to_vec()),
            ("/sentinel".to_owned(), b"".to_vec()),
        ]
    );
    assert_eq!(up.anomalies(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_announced_and_the_connection_closed() {
    let (proxy, up) = setup_with("").await;
    let mut stream = TcpStream::connect(proxy.listener("web")).await.unwrap();
    // Not half-closed: the proxy closes because the client asked, then more bytes are ignored.
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let answers = read_until_closed(&mut stream).await;
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_eq!(answers[0].status, 200);
    assert_eq!(answers[0].header("connection"), Some("close"));
    assert_eq!(
        up.requests().len(),
        1,
        "the request after close is not served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_408() {
    let (proxy, up) = setup_with("  limits: {bodyReadTimeout: 1s}").await;
    let mut stream = TcpStream::connect(proxy.listener("web")).await.unwrap();
    stream
        .write_all(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    let answers = read_until_closed(&mut stream).await;
    assert_eq!(answers.len(), 1, "{answers:#?}");
    assert_eq!(answers[0].status, 408);
    assert!(up.requests().is_empty(), "no complete request upstream");
}

// --- HTTP/2 ---------------------------------------------------------------------------------------

/// Sends `bytes` to the proxy and asserts it answers with GOAWAY(PROTOCOL_ERROR) before closing.
async fn expect_goaway(bytes: &[u8]) {
    let (proxy, up) = setup_with("").await;
    let mut stream = TcpStream::connect(proxy.listener("web")).await.unwrap();
    h2_wire::expect_goaway(&mut stream, bytes).await;
    assert!(up.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_preface_followed_by_a_frame_other_than_settings_gets_goaway() {
    // PING on stream 0 where the client's SETTINGS must come first (RFC 9113 §3.4).
    expect_goaway(&[h2_wire::PREFACE, h2_wire::PING].concat()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_http2_preface_gets_goaway() {
    // RFC 9113 §3.4 makes an invalid preface a PROTOCOL_ERROR (the GOAWAY MAY be omitted);
    // the proxy sends it, so that an HTTP/2 client learns why it was closed.
    expect_goaway(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n").await;
}

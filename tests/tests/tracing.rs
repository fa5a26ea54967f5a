//! Tracing end to end: the trace context the upstream sees, and the spans a local OTLP
//! receiver (gRPC and HTTP/protobuf, plaintext and TLS, decoded with the `opentelemetry-proto`
//! types) gets for it.

use std::time::Duration;

use strait_tests::client::{get, h2c, http1, Answer};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{reload, scrape, value};
use strait_tests::otlp::{OtlpReceiver, ReceivedSpan};
use strait_tests::tls::TestCa;
use strait_tests::{eventually, Proxy, Upstream};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// Spec lines: a workload name and tracing to `receiver` over `protocol`.
fn tracing(workload: &str, receiver: &OtlpReceiver, protocol: &str, extra: &str) -> String {
    format!(
        "  workload: {workload}\n  tracing: {{otlp: {{endpoint: \"{}\", protocol: {protocol}}}{extra}}}",
        receiver.endpoint()
    )
}

/// A proxy with `spec` lines whose `web` listener sends everything to `endpoints`.
fn config(spec: &str, endpoints: &[String], rule: &str) -> String {
    let eps: Vec<(String, u32)> = endpoints.iter().map(|a| (a.clone(), 1)).collect();
    proxy(&format!("  accessLog: {{enabled: false}}\n{spec}"))
        + &service("up", "http1", &eps, "")
        + &http_route(
            "traced",
            &format!("  rules:\n    - backendRefs: [{{name: up}}]\n{rule}"),
        )
}

/// The `traceparent` the upstream saw, split: (trace id, parent span id, flags).
fn seen_traceparent(answer: &Answer) -> (String, String, String) {
    let json = answer.json();
    let value = json["headers"]["traceparent"][0]
        .as_str()
        .unwrap_or_else(|| panic!("the upstream got no traceparent: {json}"))
        .to_owned();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

fn seen_header(answer: &Answer, name: &str) -> String {
    answer.json()["headers"][name][0]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Waits for `count` spans of `trace` at `receiver`.
async fn spans_of(receiver: &OtlpReceiver, trace: &str, count: usize) -> Vec<ReceivedSpan> {
    eventually(
        &format!("{count} spans of trace {trace}"),
        Duration::from_secs(10),
        || async {
            let spans = receiver.trace(trace);
            (spans.len() >= count).then_some(spans)
        },
    )
    .await
}

fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pick: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "one {what} in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_sees_the_trace_its_spans_carry_over_grpc() {
    let receiver = OtlpReceiver::grpc().await;
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(
        &tracing("frontend", &receiver, "grpc", ", sampling: 0"),
        &[up.address()],
        "",
    ));
    let url = format!("{}/orders/7", proxy.url("web"));
    // HTTP/1 and HTTP/2 alike; the caller's sampled flag wins over `sampling: 0`.
    for client in [http1(), h2c()] {
        let traceparent = format!("00-{TRACE}-{PARENT}-01");
        let answer = get(
            &client,
            &url,
            "shop",
            &[("traceparent", &traceparent), ("tracestate", "v=1")],
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200);
        let (trace, parent, flags) = seen_traceparent(&answer);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
        assert_ne!(parent, PARENT, "the proxy's span is the upstream's parent");
        assert_eq!(seen_header(&answer, "tracestate"), "v=1");
        assert_eq!(
            seen_header(&answer, "x-request-id").len(),
            36,
            "a request id is made"
        );

        let spans = spans_of(&receiver, TRACE, 2).await;
        let server = one(&spans, "server span", |s| s.kind == "server");
        let client_span = one(&spans, "client span", |s| s.kind == "client");
        assert_eq!(
            server.parent_span_id, PARENT,
            "the caller's span is the server span's parent"
        );
        assert_eq!(client_span.parent_span_id, server.span_id);
        assert_eq!(
            client_span.span_id, parent,
            "the upstream's parent is the client span"
        );
        assert_eq!(server.name, "GET traced");
        assert_eq!(server.attr("http.request.method"), "GET");
        assert_eq!(server.attr("url.path"), "/orders/7");
        assert_eq!(server.attr("http.response.status_code"), "200");
        assert_eq!(server.attr("strait.route"), "traced");
        assert_eq!(server.attr("strait.service"), "up");
        assert_eq!(server.service_name, "frontend");
        assert_eq!(client_span.attr("strait.endpoint"), up.address());
        assert_eq!(client_span.attr("http.response.status_code"), "200");
        assert_eq!(
            server.attr("http.request.header.x-request-id"),
            seen_header(&answer, "x-request-id")
        );
        // The next round (HTTP/2) reuses the trace id: start from no spans.
        receiver.clear();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_link_across_two_proxies_over_http() {
    let receiver = OtlpReceiver::http().await;
    let up = Upstream::start("up").await;
    // B, the callee's proxy: `sampling: 0` of its own, but it honours A's decision.
    let b = Proxy::start(&config(
        &tracing("backend", &receiver, "http", ", sampling: 0"),
        &[up.address()],
        "",
    ));
    let a = Proxy::start(&config(
        &tracing("frontend", &receiver, "http", ", sampling: 1"),
        &[b.listener("web").to_string()],
        "",
    ));
    let answer = get(
        &http1(),
        &format!("{}/", a.url("web")),
        "shop",
        &[("x-request-id", "req-42")],
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        seen_header(&answer, "x-request-id"),
        "req-42",
        "kept across both hops"
    );
    let (trace, upstream_parent, flags) = seen_traceparent(&answer);
    assert_eq!(flags, "01");
    let spans = spans_of(&receiver, &trace, 4).await;
    let a_server = one(&spans, "A's server span", |s| {
        s.kind == "server" && s.service_name == "frontend"
    });
    let a_client = one(&spans, "A's client span", |s| {
        s.kind == "client" && s.service_name == "frontend"
    });
    let b_server = one(&spans, "B's server span", |s| {
        s.kind == "server" && s.service_name == "backend"
    });
    let b_client = one(&spans, "B's client span", |s| {
        s.kind == "client" && s.service_name == "backend"
    });
    assert_eq!(a_server.parent_span_id, "", "A started the trace");
    assert_eq!(a_client.parent_span_id, a_server.span_id);
    assert_eq!(
        b_server.parent_span_id, a_client.span_id,
        "B continues A's client span"
    );
    assert_eq!(b_client.parent_span_id, b_server.span_id);
    assert_eq!(b_client.span_id, upstream_parent);
    assert_eq!(b_server.attr("http.request.header.x-request-id"), "req-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_try_is_a_client_span_and_a_retry_says_why() {
    let receiver = OtlpReceiver::grpc().await;
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(Some(503));
    let proxy = Proxy::start(&config(
        &tracing("frontend", &receiver, "grpc", ", sampling: 1"),
        &[bad.address(), good.address()],
        "      retries: {attempts: 2, retryOn: [gateway-error], backoff: {base: 1ms, max: 5ms}}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let answer = eventually(
        "a request retried once",
        Duration::from_secs(10),
        || async {
            let a = get(&client, &url, "h", &[]).await.ok()?;
            (a.header("x-strait-attempts") == "2").then_some(a)
        },
    )
    .await;
    let (trace, upstream_parent, _) = seen_traceparent(&answer);
    let spans = spans_of(&receiver, &trace, 3).await;
    let server = one(&spans, "server span", |s| s.kind == "server");
    let first = one(&spans, "first try", |s| {
        s.kind == "client" && s.attr("http.request.resend_count").is_empty()
    });
    let second = one(&spans, "retry", |s| {
        s.kind == "client" && s.attr("http.request.resend_count") == "1"
    });
    for try_span in [first, second] {
        assert_eq!(try_span.parent_span_id, server.span_id);
    }
    assert_eq!(first.attr("strait.endpoint"), bad.address());
    assert_eq!(first.attr("http.response.status_code"), "503");
    assert!(first.error);
    assert_eq!(first.events.len(), 1, "{first:?}");
    assert_eq!(first.events[0].0, "retry");
    assert_eq!(first.events[0].1["strait.retry.reason"], "status 503");
    assert_eq!(second.attr("strait.endpoint"), good.address());
    assert_eq!(
        second.span_id, upstream_parent,
        "the answering try's span is the upstream's parent"
    );
    assert!(second.events.is_empty() && !second.error);
    assert!(!server.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_continues_its_trace_and_malformed_context_starts_a_new_one() {
    let receiver = OtlpReceiver::grpc().await;
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(
        &tracing("frontend", &receiver, "grpc", ", sampling: 0"),
        &[up.address()],
        "",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));

    // One `b3` header, sampled.
    let b3 = format!("{TRACE}-{PARENT}-1");
    let answer = get(&client, &url, "h", &[("b3", &b3)]).await.unwrap();
    let (trace, parent, flags) = seen_traceparent(&answer);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_eq!(seen_header(&answer, "b3"), format!("{TRACE}-{parent}-1"));
    let spans = spans_of(&receiver, TRACE, 2).await;
    let server = one(&spans, "server span", |s| s.kind == "server");
    assert_eq!(server.parent_span_id, PARENT);

    // `X-B3-*` with a 64-bit trace id.
    let answer = get(
        &client,
        &url,
        "h",
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", PARENT),
            ("x-b3-sampled", "1"),
        ],
    )
    .await
    .unwrap();
    let long = "0000000000000000a3ce929d0e0e4736";
    let (trace, parent, _) = seen_traceparent(&answer);
    assert_eq!(trace, long);
    assert_eq!(seen_header(&answer, "x-b3-traceid"), long);
    assert_eq!(seen_header(&answer, "x-b3-spanid"), parent);
    assert_eq!(seen_header(&answer, "x-b3-sampled"), "1");
    spans_of(&receiver, long, 2).await;

    // Malformed: answered as usual, a new (unsampled) trace, the bad headers not forwarded.
    let answer = get(
        &client,
        &url,
        "h",
        &[
            ("traceparent", "00-zz-00f067aa0ba902b7-01"),
            ("tracestate", "v=1"),
            ("b3", "nonsense"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200);
    let (trace, _, flags) = seen_traceparent(&answer);
    assert_eq!((trace.len(), flags.as_str()), (32, "00"));
    assert_ne!(trace, TRACE);
    assert_eq!(seen_header(&answer, "tracestate"), "");
    assert_eq!(seen_header(&answer, "b3"), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_sends_no_spans_and_a_reload_changes_sampling_and_collector() {
    let (first, second) = (OtlpReceiver::http().await, OtlpReceiver::grpc().await);
    let up = Upstream::start("up").await;
    let at = |receiver: &OtlpReceiver, protocol: &str, sampling: &str| {
        config(
            &tracing(
                "frontend",
                receiver,
                protocol,
                &format!(", sampling: {sampling}"),
            ),
            &[up.address()],
            "",
        )
    };
    let proxy = Proxy::start(&at(&first, "http", "0"));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let mut unsampled = Vec::new();
    for _ in 0..20 {
        let answer = get(&client, &url, "h", &[]).await.unwrap();
        let (trace, _, flags) = seen_traceparent(&answer);
        assert_eq!(flags, "00", "a new trace, not sampled");
        unsampled.push(trace);
    }
    // A sampled caller after them: once its spans are in, anything before would be too.
    let traceparent = format!("00-{TRACE}-{PARENT}-01");
    get(&client, &url, "h", &[("traceparent", &traceparent)])
        .await
        .unwrap();
    spans_of(&first, TRACE, 2).await;
    let traces: Vec<String> = first.spans().into_iter().map(|s| s.trace_id).collect();
    assert!(
        traces.iter().all(|t| t == TRACE),
        "no span of an unsampled request: {traces:?}"
    );

    // Sampling 1 and another collector (over gRPC), without a restart.
    reload(&proxy, &at(&second, "grpc", "1")).await;
    let answer = get(&client, &url, "h", &[]).await.unwrap();
    let (trace, _, flags) = seen_traceparent(&answer);
    assert_eq!(flags, "01");
    spans_of(&second, &trace, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_spans_and_counts_them() {
    let receiver = OtlpReceiver::http().await;
    receiver.stall(true);
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(
        &tracing("frontend", &receiver, "http", ", sampling: 1, queueSize: 2"),
        &[up.address()],
        "",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    for _ in 0..20 {
        let answer = get(&client, &url, "h", &[]).await.unwrap();
        assert_eq!(
            answer.status, 200,
            "a stuck collector never holds requests up"
        );
    }
    let dropped = eventually("spans dropped", Duration::from_secs(10), || async {
        let text = scrape(proxy.admin()).await;
        value(
            &text,
            "strait_tracing_spans_dropped_total",
            &[("reason", "queue_full")],
        )
        .filter(|&n| n > 0.0)
    })
    .await;
    // 40 spans made; the queue (2) and the batch being sent (2) hold the rest.
    assert!(dropped >= 30.0, "{dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_https_collector_verified_against_the_ca_file_only() {
    let (ca, stranger) = (TestCa::new("collector"), TestCa::new("stranger"));
    let up = Upstream::start("up").await;
    let leaf = ca.server("127.0.0.1");
    let receivers = [
        ("grpc", OtlpReceiver::grpc_tls(&leaf).await),
        ("http", OtlpReceiver::http_tls(&leaf).await),
    ];
    for (protocol, receiver) in &receivers {
        assert!(receiver.endpoint().starts_with("https://"));
        for (roots, trusted) in [(&ca.bundle, true), (&stranger.bundle, false)] {
            let spec = format!(
                "  workload: frontend\n  tracing: {{otlp: {{endpoint: \"{}\", protocol: {protocol}, caFile: roots.pem}}, sampling: 1}}",
                receiver.endpoint()
            );
            let proxy = Proxy::start_with_files(
                &config(&spec, &[up.address()], ""),
                &[("roots.pem", roots)],
            );
            let trace = if trusted {
                TRACE
            } else {
                "0af7651916cd43dd8448eb211c80319c"
            };
            let traceparent = format!("00-{trace}-{PARENT}-01");
            let url = format!("{}/", proxy.url("web"));
            let answer = get(&http1(), &url, "h", &[("traceparent", &traceparent)])
                .await
                .unwrap();
            assert_eq!(answer.status, 200);
            if trusted {
                let spans = spans_of(receiver, trace, 2).await;
                assert!(
                    spans.iter().all(|s| s.service_name == "frontend"),
                    "{spans:?}"
                );
            } else {
                let what = format!("{protocol}: export to an untrusted collector fails");
                eventually(&what, Duration::from_secs(15), || async {
                    let text = scrape(proxy.admin()).await;
                    value(
                        &text,
                        "strait_tracing_spans_dropped_total",
                        &[("reason", "export_failed")],
                    )
                    .filter(|&n| n > 0.0)
                })
                .await;
                assert!(
                    receiver.trace(trace).is_empty(),
                    "{protocol}: spans sent anyway"
                );
            }
        }
    }
}

//! Retries: conditions, a different endpoint per try, per-try and request timeouts, bodies kept
//! for replay, and the retry budget that stops a retry storm.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use strait_tests::client::{get, http1, send};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{scrape, value};
use strait_tests::{Proxy, Upstream};

/// One service `up` over `endpoints`, one catch-all route with `policy` lines under the rule.
fn config(endpoints: &[String], policy: &str) -> String {
    let eps: Vec<(String, u32)> = endpoints.iter().map(|a| (a.clone(), 1)).collect();
    proxy("  accessLog: {enabled: false}")
        + &service("up", "http1", &eps, "")
        + &http_route(
            "retrying",
            &format!("  rules:\n    - backendRefs: [{{name: up}}]\n{policy}"),
        )
}

fn retries_metric(text: &str) -> f64 {
    value(text, "strait_upstream_retries_total", &[("service", "up")]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_try_is_retried_on_another_endpoint() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(Some(503));
    let proxy = Proxy::start(&config(
        &[bad.address(), good.address()],
        "      retries: {attempts: 2, retryOn: [gateway-error], backoff: {base: 1ms, max: 5ms}}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let mut attempts = 0;
    for _ in 0..20 {
        let a = get(&client, &url, "h", &[]).await.unwrap();
        assert_eq!(a.status, 200, "the retry reaches the healthy endpoint");
        assert_eq!(a.header("x-upstream"), "good");
        let tries: usize = a.header("x-strait-attempts").parse().unwrap();
        assert!((1..=2).contains(&tries), "one retry is enough: {tries}");
        attempts += tries;
    }
    assert_eq!(good.hits(), 20);
    assert_eq!(
        bad.hits() + good.hits(),
        attempts,
        "x-strait-attempts counts tries"
    );
    assert!(
        bad.hits() >= 5,
        "round robin sent first tries to the failing endpoint too"
    );
    assert_eq!(
        retries_metric(&scrape(proxy.admin()).await),
        bad.hits() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_try_to_an_http2_service_carries_the_whole_request() {
    // HTTP/2 upstreams take a request of their own per try: a copy of the head while another
    // try may follow, the head itself on the last.
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(Some(503));
    let eps = [(bad.address(), 1), (good.address(), 1)];
    let proxy = Proxy::start(
        &(proxy("  accessLog: {enabled: false}")
            + &service("up", "http2", &eps, "")
            + &http_route(
                "retrying",
                "  rules:\n    - backendRefs: [{name: up}]\n      retries: {attempts: 2, retryOn: [gateway-error], backoff: {base: 1ms, max: 5ms}}",
            )),
    );
    let client = http1();
    let url = format!("{}/some/path?q=1", proxy.url("web"));
    for _ in 0..10 {
        let a = get(&client, &url, "h", &[("x-custom", "v")]).await.unwrap();
        assert_eq!(a.status, 200);
        let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(json["upstream"], "good");
        assert_eq!(json["version"], "HTTP/2.0");
        assert_eq!(json["path"], "/some/path");
        assert_eq!(json["query"], "q=1");
        assert_eq!(json["headers"]["x-custom"][0], "v");
        assert_eq!(json["headers"]["x-forwarded-for"][0], "127.0.0.1");
    }
    assert!(
        bad.hits() >= 3,
        "first tries went to the failing endpoint too"
    );
    assert_eq!(good.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_not_listed_are_not_retried_and_attempts_are_bounded() {
    let up = Upstream::start("up").await;
    up.fail_with(Some(500));
    let proxy = Proxy::start(&config(
        &[up.address()],
        "      retries: {attempts: 3, retryOn: [gateway-error, \"409\"], backoff: {base: 1ms, max: 2ms}}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let a = get(&client, &url, "h", &[]).await.unwrap();
    assert_eq!(a.status, 500, "500 is not a gateway error");
    assert_eq!(up.hits(), 1);

    up.fail_with(Some(409));
    let a = get(&client, &url, "h", &[]).await.unwrap();
    assert_eq!(a.status, 409, "the last try's answer is the caller's");
    assert_eq!(a.header("x-strait-attempts"), "4");
    assert_eq!(up.hits(), 1 + 4, "1 + attempts tries, no more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried() {
    let good = Upstream::start("good").await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    let proxy = Proxy::start(&config(
        &[dead, good.address()],
        "      retries: {attempts: 1, retryOn: [connect-failure], backoff: {base: 1ms, max: 2ms}}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    for _ in 0..10 {
        let a = get(&client, &url, "h", &[]).await.unwrap();
        assert_eq!(a.status, 200);
    }
    assert_eq!(good.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_try_timeout_is_retried_elsewhere() {
    let (slow, fast) = (Upstream::start("slow").await, Upstream::start("fast").await);
    slow.delay(Duration::from_secs(3));
    let proxy = Proxy::start(&config(
        &[slow.address(), fast.address()],
        "      timeouts: {request: 5s, perTry: 200ms}\n      retries: {attempts: 1, retryOn: [5xx], backoff: {base: 1ms, max: 2ms}}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    for _ in 0..6 {
        let started = Instant::now();
        let a = get(&client, &url, "h", &[]).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-upstream"), "fast");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "one per-try timeout, not the slow answer: {:?}",
            started.elapsed()
        );
    }
    assert!(slow.hits() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_bounds_all_tries() {
    let up = Upstream::start("up").await;
    up.delay(Duration::from_secs(5));
    let proxy = Proxy::start(&config(
        &[up.address()],
        "      timeouts: {request: 1s, perTry: 300ms}\n      retries: {attempts: 10, retryOn: [5xx], backoff: {base: 1ms, max: 2ms}}",
    ));
    let client = http1();
    let started = Instant::now();
    let a = get(&client, &format!("{}/", proxy.url("web")), "h", &[])
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    assert_eq!(a.header("x-strait-reason"), "timeout");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2000),
        "the whole exchange is bounded by the request timeout: {took:?}"
    );
    let hits = up.hits();
    assert!((3..=4).contains(&hits), "about 1s / 300ms tries: {hits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_replayed_and_large_ones_are_not_retried() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(Some(503));
    let proxy = Proxy::start(&config(
        &[bad.address(), good.address()],
        "      retries: {attempts: 1, retryOn: [\"503\"], maxBodyBytes: 1024, backoff: {base: 1ms, max: 2ms}}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let post = |len: usize| {
        Request::post(&url)
            .header("host", "h")
            .body(Full::new(Bytes::from(vec![b'x'; len])))
            .unwrap()
    };
    for _ in 0..6 {
        let a = send(&client, post(1000)).await.unwrap();
        assert_eq!(a.status, 200, "a 1000-byte body is kept and sent again");
        assert_eq!(a.json()["bodyLength"], 1000, "the replayed body is whole");
    }
    let mut failed = 0;
    for _ in 0..6 {
        let a = send(&client, post(2000)).await.unwrap();
        if a.status == 503 {
            failed += 1;
            assert_eq!(
                a.header("x-upstream"),
                "bad",
                "the upstream's answer, not retried"
            );
        }
    }
    assert_eq!(
        failed, 3,
        "round robin: every other large request hit the failing endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_prevents_a_retry_storm() {
    let up = Upstream::start("up").await;
    up.fail_with(Some(503));
    let proxy = Proxy::start(&config(
        &[up.address()],
        "      retries: {attempts: 3, retryOn: [5xx], backoff: {base: 1ms, max: 2ms}, budget: {percent: 20, minRetriesPerSecond: 1}}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let requests = 200;
    for _ in 0..requests {
        let a = get(&client, &url, "h", &[]).await.unwrap();
        assert_eq!(a.status, 503);
    }
    let retries = up.hits() - requests;
    // Without a budget this would be 3 retries per request (600). The budget allows 20% of the
    // requests seen in the last 10 s (or 1/s over the window, whichever is more).
    assert!(
        retries <= requests / 5,
        "retries {retries} exceed 20% of {requests} requests"
    );
    assert!(
        retries >= requests / 5 - 5,
        "the budget is used, not disabled: {retries}"
    );
    assert_eq!(retries_metric(&scrape(proxy.admin()).await), retries as f64);
}

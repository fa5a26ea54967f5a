//! Circuit breaker: the full cycle closed → open → half-open → closed (and half-open → open),
//! fail-fast without touching the upstream, the concurrency limits answering 503 overflow, and
//! breaker state across reloads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_tests::client::{get, http1, HttpClient};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{cluster, clusters, reload, scrape, value};
use strait_tests::{Proxy, Upstream};

fn config(up: &Upstream, breaker: &str, comment: &str) -> String {
    proxy("  accessLog: {enabled: false}")
        + &service(
            "up",
            "http1",
            &[(up.address(), 1)],
            &format!("  circuitBreaker: {breaker}\n{comment}"),
        )
        + &http_route("r", "  rules:\n    - backendRefs: [{name: up}]")
}

const CYCLE: &str = "{failureThreshold: 3, openTimeout: 1s, successThreshold: 2}";

async fn state(proxy: &Proxy) -> (f64, String) {
    let metric = value(
        &scrape(proxy.admin()).await,
        "strait_circuit_state",
        &[("service", "up")],
    )
    .expect("strait_circuit_state exported");
    let c = clusters(proxy.admin()).await;
    let shown = cluster(&c, "up")["circuit"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (metric, shown)
}

async fn status(client: &HttpClient, url: &str) -> (u16, String) {
    let a = get(client, url, "h", &[]).await.unwrap();
    (a.status.as_u16(), a.header("x-strait-reason").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cycle_closed_open_half_open_closed() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up, CYCLE, ""));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    assert_eq!(state(&proxy).await, (0.0, "closed".into()));

    // Closed: failures reach the caller as the upstream's answers.
    up.fail_with(Some(500));
    for _ in 0..3 {
        assert_eq!(status(&client, &url).await, (500, String::new()));
    }
    assert_eq!(up.hits(), 3);

    // Open: fail fast, the upstream is not touched.
    let started = Instant::now();
    for _ in 0..10 {
        assert_eq!(status(&client, &url).await, (503, "circuit-open".into()));
    }
    assert!(started.elapsed() < Duration::from_millis(500), "fail fast");
    assert_eq!(up.hits(), 3, "an open breaker does not touch the upstream");
    assert_eq!(state(&proxy).await, (1.0, "open".into()));

    // After openTimeout: half-open; a failed probe opens it again at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&client, &url).await, (500, String::new()), "probe");
    assert_eq!(up.hits(), 4);
    assert_eq!(status(&client, &url).await, (503, "circuit-open".into()));
    assert_eq!(state(&proxy).await, (1.0, "open".into()));

    // The upstream recovers: two successful probes close it.
    up.fail_with(None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status(&client, &url).await, (200, String::new()));
    assert_eq!(state(&proxy).await, (2.0, "half-open".into()));
    assert_eq!(status(&client, &url).await, (200, String::new()));
    assert_eq!(state(&proxy).await, (0.0, "closed".into()));
    for _ in 0..5 {
        assert_eq!(status(&client, &url).await.0, 200);
    }
    assert_eq!(up.hits(), 4 + 2 + 5);
    for message in ["circuit opened", "circuit half-open", "circuit closed"] {
        assert!(proxy.count_messages(message) >= 1, "logged: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_count_as_failures() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up, CYCLE, ""));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    up.reset_connections(true);
    for _ in 0..3 {
        assert_eq!(status(&client, &url).await, (502, "upstream-reset".into()));
    }
    assert_eq!(status(&client, &url).await, (503, "circuit-open".into()));
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_reload_and_resets_when_the_policy_changes() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(&up, CYCLE, ""));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    up.fail_with(Some(503));
    for _ in 0..3 {
        status(&client, &url).await;
    }
    assert_eq!(status(&client, &url).await.1, "circuit-open");

    // An unrelated change keeps the breaker open.
    reload(&proxy, &config(&up, CYCLE, "  # unrelated edit")).await;
    assert_eq!(status(&client, &url).await.1, "circuit-open");
    assert_eq!(up.hits(), 3);

    // A new policy starts closed.
    reload(
        &proxy,
        &config(
            &up,
            "{failureThreshold: 4, openTimeout: 1s, successThreshold: 2}",
            "",
        ),
    )
    .await;
    assert_eq!(status(&client, &url).await, (503, String::new()));
    assert_eq!(
        up.hits(),
        4,
        "closed again: the request reached the upstream"
    );
}

async fn concurrent(client: &Arc<HttpClient>, url: &str, n: usize) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move { status(&client, &url).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_answers_overflow_beyond_the_limit() {
    let up = Upstream::start("up").await;
    up.delay(Duration::from_millis(400));
    let proxy = Proxy::start(&config(&up, "{maxRequests: 2}", ""));
    let client = Arc::new(http1());
    let url = format!("{}/", proxy.url("web"));
    let answers = concurrent(&client, &url, 6).await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let overflow = answers
        .iter()
        .filter(|a| *a == &(503, "overflow".to_owned()))
        .count();
    assert_eq!((ok, overflow), (2, 4), "{answers:?}");
    assert_eq!(up.hits(), 2);
    // Slots are freed when requests finish.
    assert_eq!(
        concurrent(&client, &url, 2)
            .await
            .iter()
            .filter(|a| a.0 == 200)
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_answers_overflow_when_no_connection_is_free() {
    let up = Upstream::start("up").await;
    up.delay(Duration::from_millis(400));
    let proxy = Proxy::start(&config(&up, "{maxConnections: 1}", ""));
    let client = Arc::new(http1());
    let url = format!("{}/", proxy.url("web"));
    let answers = concurrent(&client, &url, 4).await;
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let overflow = answers
        .iter()
        .filter(|a| *a == &(503, "overflow".to_owned()))
        .count();
    assert_eq!((ok, overflow), (1, 3), "{answers:?}");
    // The one connection is pooled and reused: sequential requests all pass.
    for _ in 0..5 {
        assert_eq!(status(&client, &url).await.0, 200);
    }
    let c = clusters(proxy.admin()).await;
    assert_eq!(cluster(&c, "up")["circuit"]["connections"], 1);
}

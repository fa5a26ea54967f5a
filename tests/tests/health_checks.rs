//! Active health checks: an endpoint failing its checks leaves the rotation within
//! interval × unhealthyThreshold + 1 s and returns within interval × healthyThreshold + 1 s;
//! with every endpoint out, callers get 503 no-healthy-endpoints.

use std::time::{Duration, Instant};

use strait_tests::client::{get, http1, HttpClient};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{cluster, clusters, scrape, value};
use strait_tests::{eventually, Proxy, Upstream};

fn config(endpoints: &[String], check: &str) -> String {
    let eps: Vec<(String, u32)> = endpoints.iter().map(|a| (a.clone(), 1)).collect();
    proxy("  accessLog: {enabled: false}")
        + &service("up", "http1", &eps, &format!("  healthCheck: {check}"))
        + &http_route("r", "  rules:\n    - backendRefs: [{name: up}]")
}

const HTTP_CHECK: &str = "{http: {path: /healthz}, interval: 200ms, timeout: 100ms, unhealthyThreshold: 2, healthyThreshold: 2}";
/// interval × unhealthyThreshold (or healthyThreshold) + 1 s.
const BOUND: Duration = Duration::from_millis(200 * 2 + 1000);

async fn healthy(proxy: &Proxy, address: &str) -> bool {
    // Two reads (/clusters, /metrics) may straddle a flip: read again until they agree.
    let mut last = None;
    for _ in 0..10 {
        let c = clusters(proxy.admin()).await;
        let endpoint = cluster(&c, "up")["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == address)
            .cloned()
            .unwrap();
        let metric = value(
            &scrape(proxy.admin()).await,
            "strait_endpoint_healthy",
            &[("service", "up"), ("endpoint", address)],
        )
        .unwrap();
        let shown = endpoint["healthy"].as_bool().unwrap();
        if shown == (metric == 1.0) {
            return shown;
        }
        last = Some((shown, metric));
    }
    panic!("/clusters and strait_endpoint_healthy keep disagreeing: {last:?}");
}

async fn served_by(client: &HttpClient, url: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let a = get(client, url, "h", &[]).await.unwrap();
        out.push(if a.status == 200 {
            a.header("x-upstream").to_owned()
        } else {
            format!("{} {}", a.status.as_u16(), a.header("x-strait-reason"))
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_endpoint_leaves_and_returns_within_the_bound() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&[a.address(), b.address()], HTTP_CHECK));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    eventually("checks running", Duration::from_secs(3), || async {
        (a.health_checks() >= 2 && b.health_checks() >= 2).then_some(())
    })
    .await;
    assert!(healthy(&proxy, &a.address()).await);

    a.set_healthy(false);
    let flipped = Instant::now();
    eventually("a out of rotation", BOUND, || async {
        (!healthy(&proxy, &a.address()).await).then_some(())
    })
    .await;
    let took = flipped.elapsed();
    assert!(took <= BOUND, "removed after {took:?}");
    let hits = a.hits();
    assert!(served_by(&client, &url, 10).await.iter().all(|s| s == "b"));
    assert_eq!(a.hits(), hits, "no traffic to an unhealthy endpoint");
    assert!(proxy.count_messages("endpoint unhealthy") >= 1);

    a.set_healthy(true);
    let flipped = Instant::now();
    eventually("a back in rotation", BOUND, || async {
        healthy(&proxy, &a.address()).await.then_some(())
    })
    .await;
    assert!(flipped.elapsed() <= BOUND);
    let served = served_by(&client, &url, 10).await;
    assert_eq!(served.iter().filter(|s| *s == "a").count(), 5, "{served:?}");
    assert!(proxy.count_messages("endpoint healthy") >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_unhealthy_answers_503_no_healthy_endpoints() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&[a.address(), b.address()], HTTP_CHECK));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    a.set_healthy(false);
    b.set_healthy(false);
    eventually("both out", BOUND * 2, || async {
        (!healthy(&proxy, &a.address()).await && !healthy(&proxy, &b.address()).await).then_some(())
    })
    .await;
    assert_eq!(
        served_by(&client, &url, 3).await,
        vec!["503 no-healthy-endpoints"; 3]
    );
    assert_eq!(a.hits() + b.hits(), 0);
    b.set_healthy(true);
    eventually("b back", BOUND * 2, || async {
        healthy(&proxy, &b.address()).await.then_some(())
    })
    .await;
    assert_eq!(served_by(&client, &url, 3).await, vec!["b"; 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_notices_an_endpoint_that_stops_listening() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let b_address = b.address();
    let proxy = Proxy::start(&config(
        &[a.address(), b_address.clone()],
        "{tcp: {}, interval: 200ms, timeout: 100ms, unhealthyThreshold: 1, healthyThreshold: 1}",
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    drop(b);
    let stopped = Instant::now();
    eventually("b out", Duration::from_millis(200 + 1000), || async {
        (!healthy(&proxy, &b_address).await).then_some(())
    })
    .await;
    assert!(stopped.elapsed() <= Duration::from_millis(1200));
    assert_eq!(served_by(&client, &url, 6).await, vec!["a"; 6]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_survives_a_reload_and_resets_when_the_check_changes() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let slow_return = "{http: {path: /healthz}, interval: 200ms, timeout: 100ms, unhealthyThreshold: 1, healthyThreshold: 50}";
    let proxy = Proxy::start(&config(&[a.address(), b.address()], slow_return));
    a.set_healthy(false);
    eventually("a out", BOUND, || async {
        (!healthy(&proxy, &a.address()).await).then_some(())
    })
    .await;
    a.set_healthy(true);
    // healthyThreshold 50 × 200 ms: a stays out for 10 s, across an unrelated reload.
    strait_tests::metrics::reload(
        &proxy,
        &(config(&[a.address(), b.address()], slow_return) + "# edit\n"),
    )
    .await;
    assert!(!healthy(&proxy, &a.address()).await, "state kept");
    // A changed check starts from a clean slate: back in rotation at once.
    strait_tests::metrics::reload(&proxy, &config(&[a.address(), b.address()], HTTP_CHECK)).await;
    assert!(healthy(&proxy, &a.address()).await);
}

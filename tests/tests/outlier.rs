//! Outlier detection: consecutive 5xx or connect failures eject an endpoint for
//! baseEjectionTime × ejections, never more than maxEjectionPercent of the service.

use std::time::{Duration, Instant};

use strait_tests::client::{get, http1, HttpClient};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{cluster, clusters, reload, scrape, value};
use strait_tests::{eventually, Proxy, Upstream};

fn config(endpoints: &[String], outlier: &str) -> String {
    let eps: Vec<(String, u32)> = endpoints.iter().map(|a| (a.clone(), 1)).collect();
    proxy("  accessLog: {enabled: false}")
        + &service(
            "up",
            "http1",
            &eps,
            &format!("  outlierDetection: {outlier}"),
        )
        + &http_route("r", "  rules:\n    - backendRefs: [{name: up}]")
}

const POLICY: &str =
    "{consecutiveErrors: 3, interval: 10s, baseEjectionTime: 1s, maxEjectionPercent: 50}";

async fn send(client: &HttpClient, url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(client, url, "h", &[]).await.unwrap().status.as_u16());
    }
    out
}

async fn endpoint_state(proxy: &Proxy, address: &str) -> (bool, f64) {
    let c = clusters(proxy.admin()).await;
    let ejected = cluster(&c, "up")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address)
        .unwrap()["ejected"]
        .as_bool()
        .unwrap();
    let healthy = value(
        &scrape(proxy.admin()).await,
        "strait_endpoint_healthy",
        &[("service", "up"), ("endpoint", address)],
    )
    .unwrap();
    (ejected, healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_then_returns_for_longer_each_time() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(Some(500));
    let proxy = Proxy::start(&config(&[bad.address(), good.address()], POLICY));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));

    send(&client, &url, 30).await;
    assert_eq!(bad.hits(), 3, "ejected after 3 consecutive errors");
    assert_eq!(good.hits(), 27);
    assert_eq!(endpoint_state(&proxy, &bad.address()).await, (true, 0.0));
    assert!(proxy.count_messages("endpoint ejected") >= 1);

    // Back after baseEjectionTime × 1.
    let ejected_at = Instant::now();
    eventually("first ejection ends", Duration::from_secs(3), || async {
        (!endpoint_state(&proxy, &bad.address()).await.0).then_some(())
    })
    .await;
    let first = ejected_at.elapsed();
    assert!(first < Duration::from_millis(1500), "{first:?}");
    assert_eq!(endpoint_state(&proxy, &bad.address()).await, (false, 1.0));

    // Still failing: ejected again, now for 2 × baseEjectionTime.
    send(&client, &url, 10).await;
    assert_eq!(bad.hits(), 6);
    let second_at = Instant::now();
    assert!(endpoint_state(&proxy, &bad.address()).await.0);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        endpoint_state(&proxy, &bad.address()).await.0,
        "the second ejection lasts 2 s"
    );
    eventually("second ejection ends", Duration::from_secs(3), || async {
        (!endpoint_state(&proxy, &bad.address()).await.0).then_some(())
    })
    .await;
    assert!(second_at.elapsed() >= Duration::from_millis(1900));
    let c = clusters(proxy.admin()).await;
    assert_eq!(cluster(&c, "up")["endpoints"][0]["ejections"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_eject_and_at_most_max_percent_are_ejected() {
    let good = Upstream::start("good").await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (bad1, bad2) = (Upstream::start("bad1").await, Upstream::start("bad2").await);
    bad1.fail_with(Some(503));
    bad2.fail_with(Some(503));
    let proxy = Proxy::start(&config(
        &[dead.clone(), bad1.address(), bad2.address(), good.address()],
        POLICY,
    ));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let answers = send(&client, &url, 40).await;
    let c = clusters(proxy.admin()).await;
    let ejected: Vec<&str> = cluster(&c, "up")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["ejected"] == true)
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    assert_eq!(ejected.len(), 2, "50% of 4 endpoints: {ejected:?}");
    assert!(
        !ejected.contains(&good.address().as_str()),
        "a healthy endpoint is never ejected"
    );
    // The failing endpoint left in rotation keeps failing: callers still see its errors.
    assert!(answers.iter().rev().take(10).any(|&s| s != 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_returns_ejected_endpoints() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.fail_with(Some(500));
    let slow =
        "{consecutiveErrors: 3, interval: 10s, baseEjectionTime: 60s, maxEjectionPercent: 50}";
    let proxy = Proxy::start(&config(&[bad.address(), good.address()], slow));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    send(&client, &url, 10).await;
    assert!(endpoint_state(&proxy, &bad.address()).await.0);
    // Unchanged policy: still ejected after a reload.
    reload(
        &proxy,
        &(config(&[bad.address(), good.address()], slow) + "# edit\n"),
    )
    .await;
    assert!(endpoint_state(&proxy, &bad.address()).await.0);
    // Changed policy: back in rotation at once.
    reload(&proxy, &config(&[bad.address(), good.address()], POLICY)).await;
    assert_eq!(endpoint_state(&proxy, &bad.address()).await, (false, 1.0));
}

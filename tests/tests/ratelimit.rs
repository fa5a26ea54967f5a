//! Rate limits: token-bucket accuracy, 429 with retry-after, per-key buckets, state across
//! reloads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_tests::client::{get, http1, HttpClient};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{admin_get, scrape, value};
use strait_tests::{eventually, Proxy, Upstream};

fn config(up: &Upstream, limit: &str, extra_comment: &str) -> String {
    proxy("  accessLog: {enabled: false}")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("limited", &format!("  rules:\n    - backendRefs: [{{name: up}}]\n      rateLimit: {limit}\n{extra_comment}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_is_burst_plus_rate_times_time_within_5_percent() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(
        &up,
        "{requestsPerSecond: 20, burst: 10, key: route}",
        "",
    ));
    let url = format!("{}/", proxy.url("web"));
    let client = Arc::new(http1());
    // 4x the rate (80/s) for 10 s, on a fixed schedule (requests do not wait for each other).
    let mut tick = tokio::time::interval(Duration::from_micros(12_500));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..800 {
        tick.tick().await;
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(
            async move { get(&client, &url, "h", &[]).await },
        ));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (mut accepted, mut limited) = (0usize, 0usize);
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        match a.status.as_u16() {
            200 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(a.header("x-strait-reason"), "rate-limited");
                let retry: u64 = a
                    .header("retry-after")
                    .parse()
                    .expect("retry-after in seconds");
                assert_eq!(retry, 1, "at 20/s the wait is under a second, rounded up");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let expected = 10.0 + 20.0 * elapsed;
    assert!(
        (accepted as f64 - expected).abs() <= expected * 0.05,
        "accepted {accepted}, expected {expected:.0} ± 5% over {elapsed:.2}s"
    );
    assert_eq!(
        up.hits(),
        accepted,
        "only accepted requests reach the upstream"
    );
    let text = scrape(proxy.admin()).await;
    assert_eq!(
        value(
            &text,
            "strait_ratelimit_rejected_total",
            &[("route", "limited")]
        ),
        Some(limited as f64)
    );
}

async fn statuses(client: &HttpClient, url: &str, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            get(client, url, "h", headers)
                .await
                .unwrap()
                .status
                .as_u16(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_has_its_own_bucket() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&config(
        &up,
        "{requestsPerSecond: 0.1, burst: 2, key: \"header:x-api-key\"}",
        "",
    ));
    let url = format!("{}/", proxy.url("web"));
    let c = http1();
    assert_eq!(
        statuses(&c, &url, &[("x-api-key", "alice")], 3).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&c, &url, &[("x-api-key", "bob")], 3).await,
        [200, 200, 429]
    );

    proxy.write_config(&config(
        &up,
        "{requestsPerSecond: 0.1, burst: 2, key: client-ip}",
        "",
    ));
    proxy.signal("HUP");
    eventually("reload", Duration::from_secs(10), || async {
        let (_, body) = admin_get(proxy.admin(), "/config").await;
        body.contains("client-ip").then_some(())
    })
    .await;
    let mut from_two = hyper_util::client::legacy::connect::HttpConnector::new();
    from_two.set_local_address(Some("127.0.0.2".parse().unwrap()));
    let c2: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(from_two);
    assert_eq!(
        statuses(&c, &url, &[], 3).await,
        [200, 200, 429],
        "127.0.0.1"
    );
    assert_eq!(
        statuses(&c2, &url, &[], 3).await,
        [200, 200, 429],
        "127.0.0.2 has its own bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_survive_reloads_until_the_policy_changes() {
    let up = Upstream::start("up").await;
    let limit = "{requestsPerSecond: 0.1, burst: 2}";
    let proxy = Proxy::start(&config(&up, limit, ""));
    let url = format!("{}/", proxy.url("web"));
    let c = http1();
    assert_eq!(statuses(&c, &url, &[], 3).await, [200, 200, 429]);
    let reload = |yaml: String, version: u64| {
        proxy.write_config(&yaml);
        proxy.signal("HUP");
        let admin = proxy.admin();
        async move {
            eventually("reload", Duration::from_secs(10), || async {
                let (_, body) = admin_get(admin, "/config").await;
                let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                (v["version"] == version).then_some(())
            })
            .await
        }
    };
    // Same policy, other change: the empty bucket stays empty.
    reload(config(&up, limit, "  # unrelated edit"), 2).await;
    assert_eq!(statuses(&c, &url, &[], 1).await, [429]);
    // A changed policy starts from a full bucket.
    reload(config(&up, "{requestsPerSecond: 0.1, burst: 3}", ""), 3).await;
    assert_eq!(statuses(&c, &url, &[], 4).await, [200, 200, 200, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_aborts_and_delays() {
    let up = Upstream::start("up").await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route(
            "chaos",
            "  rules:
    - matches: [{path: {value: /abort}}]
      backendRefs: [{name: up}]
      fault: {abort: {status: 418, percent: 100}}
    - matches: [{path: {value: /delay}}]
      backendRefs: [{name: up}]
      fault: {delay: {fixed: 300ms, percent: 100}}
    - matches: [{path: {value: /half}}]
      backendRefs: [{name: up}]
      fault: {abort: {status: 503, percent: 50}}",
        );
    let proxy = Proxy::start(&yaml);
    let base = proxy.url("web");
    let c = http1();
    let a = get(&c, &format!("{base}/abort"), "h", &[]).await.unwrap();
    assert_eq!(
        (a.status.as_u16(), a.header("x-strait-reason")),
        (418, "fault-injected")
    );
    assert_eq!(up.hits(), 0, "aborted requests never reach the upstream");
    let started = Instant::now();
    assert_eq!(
        get(&c, &format!("{base}/delay"), "h", &[])
            .await
            .unwrap()
            .status,
        200
    );
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "delayed by {:?}",
        started.elapsed()
    );
    let aborted = statuses(&c, &format!("{base}/half"), &[], 400)
        .await
        .iter()
        .filter(|&&s| s == 503)
        .count();
    assert!(
        (140..=260).contains(&aborted),
        "50% abort gave {aborted}/400"
    );
}

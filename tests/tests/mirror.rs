//! Mirroring: a percent of requests copied to another service, fire and forget; the copy's
//! answer is discarded and its failure or slowness never affects the caller.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use strait_tests::client::{get, http1, send};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{eventually, CaptureUpstream, Proxy, Upstream};

fn config(primary: &Upstream, shadow: &str, percent: u32) -> String {
    proxy("  accessLog: {enabled: false}")
        + &service("primary", "http1", &[(primary.address(), 1)], "")
        + &service("shadow", "http1", &[(shadow.to_owned(), 1)], "")
        + &http_route(
            "r",
            &format!("  rules:\n    - backendRefs: [{{name: primary}}]\n      mirror: {{backendRef: {{name: shadow}}, percent: {percent}}}"),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_copied_with_its_body_to_the_shadow() {
    let primary = Upstream::start("primary").await;
    let shadow = CaptureUpstream::start().await;
    let proxy = Proxy::start(&config(&primary, &shadow.addr.to_string(), 100));
    let client = http1();
    let url = format!("{}/orders?id=7", proxy.url("web"));
    for _ in 0..5 {
        let req = Request::post(&url)
            .header("host", "shop.local:8080")
            .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
            .unwrap();
        let a = send(&client, req).await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-upstream"), "primary");
    }
    let copies = eventually("5 copies", Duration::from_secs(5), || async {
        let c: Vec<String> = shadow
            .captured()
            .into_iter()
            .filter(|r| r.ends_with("{\"qty\":1}"))
            .collect();
        (c.len() >= 5).then_some(c)
    })
    .await;
    assert_eq!(primary.hits(), 5);
    let copy = &copies[0];
    assert!(copy.starts_with("POST /orders?id=7 HTTP/1.1\r\n"), "{copy}");
    assert!(
        copy.to_ascii_lowercase()
            .contains("host: shop.local-shadow\r\n"),
        "the copy's authority is marked: {copy}"
    );
    assert!(
        copy.to_ascii_lowercase().contains("content-length: 9\r\n"),
        "body copied whole: {copy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_slow_shadow_never_affects_the_caller() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    shadow.delay(Duration::from_secs(3));
    shadow.fail_with(Some(500));
    let proxy = Proxy::start(&config(&primary, &shadow.address(), 100));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    let started = Instant::now();
    for _ in 0..10 {
        let a = get(&client, &url, "h", &[]).await.unwrap();
        assert_eq!(a.status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the caller never waits for the shadow: {:?}",
        started.elapsed()
    );
    eventually("copies sent", Duration::from_secs(5), || async {
        (shadow.hits() == 10).then_some(())
    })
    .await;

    // A shadow that is down entirely changes nothing either.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    strait_tests::metrics::reload(&proxy, &config(&primary, &dead, 100)).await;
    for _ in 0..10 {
        assert_eq!(get(&client, &url, "h", &[]).await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_percent_is_copied() {
    let primary = Upstream::start("primary").await;
    let shadow = Upstream::start("shadow").await;
    let proxy = Proxy::start(&config(&primary, &shadow.address(), 25));
    let client = http1();
    let url = format!("{}/", proxy.url("web"));
    for _ in 0..400 {
        get(&client, &url, "h", &[]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let copies = shadow.hits();
    // 25% of 400 = 100; binomial sd ≈ 8.7, so ±35 is a 4-sigma bound.
    assert!((65..=135).contains(&copies), "{copies} copies of 400");
    assert_eq!(primary.hits(), 400);
}

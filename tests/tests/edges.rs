//! Edges in the metrics: requests and their durations carry their source (`client_id`), the
//! proxy's workload for clients without a certificate, so Prometheus can draw
//! source → destination with rate, errors and duration per edge.

use strait_tests::client::{get, http1};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{scrape, value};
use strait_tests::{Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_durations_carry_the_workload_as_their_source() {
    let up = Upstream::start("up").await;
    up.fail_with(Some(503));
    let proxy = Proxy::start(
        &(proxy("  accessLog: {enabled: false}\n  workload: frontend")
            + &service("checkout", "http1", &[(up.address(), 1)], "")
            + &http_route(
                "to-checkout",
                "  rules:\n    - backendRefs: [{name: checkout}]",
            )),
    );
    let client = http1();
    for _ in 0..3 {
        let answer = get(&client, &format!("{}/", proxy.url("web")), "h", &[])
            .await
            .unwrap();
        assert_eq!(answer.status, 503);
    }
    let text = scrape(proxy.admin()).await;
    let edge = [("client_id", "frontend"), ("service", "checkout")];
    let requests = value(
        &text,
        "strait_requests_total",
        &[edge[0], edge[1], ("code", "503")],
    );
    assert_eq!(requests, Some(3.0), "{text}");
    let durations = value(&text, "strait_request_duration_seconds_count", &edge);
    assert_eq!(durations, Some(3.0), "{text}");
    assert_eq!(
        value(&text, "strait_requests_total", &[("client_id", "")]),
        None,
        "nothing counted without a source: {text}"
    );
}

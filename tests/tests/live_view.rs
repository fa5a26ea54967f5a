//! The live view: two proxies attached to a control report their traffic; the control's
//! `/v1/live` (the JSON behind the page) shows each proxy's edge to the service with a rate
//! (one edge for two replicas of a workload), `straitctl top --once` prints it, and a real headless Chromium loads `/ui`, draws the graph
//! and sees a circuit breaker open without a reload (screenshots in
//! `target/test-artifacts/live-view/`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use strait_tests::client::{get, http1};
use strait_tests::config::BOOTSTRAP;
use strait_tests::webdriver::Browser;
use strait_tests::{eventually, Control, Proxy, Upstream};

/// Service `api` on `upstream` (with a breaker that stays open for a minute once tripped),
/// and route `r` to it on every proxy's `web`.
fn mesh(upstream: &Upstream) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  protocol: http1
  endpoints: [{{address: \"{}\"}}]
  circuitBreaker: {{failureThreshold: 3, openTimeout: 60s}}
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: web}}]
  rules: [{{backendRefs: [{{name: api}}]}}]
",
        upstream.address()
    )
}

/// A control with `api` applied and two proxies (`pod-a`, `pod-b`) serving it, each started
/// from `bootstrap`.
async fn mesh_of_two(upstream: &Upstream, bootstrap: &str) -> (Control, Proxy, Proxy) {
    let control = Control::start();
    let (status, body) = control.apply("mesh.yaml", &mesh(upstream)).await;
    assert_eq!(status, 200, "{body}");
    let start = |node: &str| control.attach(bootstrap, node);
    let (a, b) = (start("pod-a"), start("pod-b"));
    for proxy in [&a, &b] {
        eventually("the proxy serves api", Duration::from_secs(20), || async {
            (status_of(proxy).await == 200).then_some(())
        })
        .await;
    }
    (control, a, b)
}

async fn status_of(proxy: &Proxy) -> u16 {
    match get(
        &http1(),
        &format!("{}/", proxy.url("web")),
        "shop.local",
        &[],
    )
    .await
    {
        Ok(answer) => answer.status.as_u16(),
        Err(_) => 0,
    }
}

/// Sends requests through both proxies until the test ends.
fn keep_sending(proxies: [&Proxy; 2]) -> tokio::task::JoinHandle<()> {
    let urls: Vec<String> = proxies
        .iter()
        .map(|p| format!("{}/", p.url("web")))
        .collect();
    tokio::spawn(async move {
        let client = http1();
        loop {
            for url in &urls {
                let _ = get(&client, url, "shop.local", &[]).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// The edge `source → api` of the control's live view, once its rate is above zero.
async fn busy_edge(control: &Control, source: &str) -> Value {
    eventually(
        &format!("{source} → api has a rate"),
        Duration::from_secs(20),
        || async {
            let (status, view) = control.call(http::Method::GET, "/v1/live", None).await;
            assert_eq!(status, 200, "{view}");
            view["edges"]
                .as_array()?
                .iter()
                .find(|e| {
                    e["source"] == source
                        && e["destination"] == "api"
                        && e["rps"].as_f64() > Some(0.0)
                })
                .cloned()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_shows_each_proxys_edge_and_straitctl_top_prints_it() {
    let upstream = Upstream::start("api").await;
    let (control, a, b) = mesh_of_two(&upstream, BOOTSTRAP).await;
    let traffic = keep_sending([&a, &b]);
    for source in ["pod-a", "pod-b"] {
        let edge = busy_edge(&control, source).await;
        assert_eq!(edge["route"], "r");
        assert_eq!(edge["successRate"], 1.0, "{edge}");
        assert!(edge["p99Ms"].as_f64().is_some(), "{edge}");
    }
    let (_, view) = control.call(http::Method::GET, "/v1/live", None).await;
    let proxies = view["proxies"].as_array().expect("proxies");
    for node in ["pod-a", "pod-b"] {
        let p = proxies.iter().find(|p| p["node"] == node).expect(node);
        assert!(p["appliedVersion"].as_u64().is_some(), "{p}");
        assert_eq!(p["reportedVersion"], p["appliedVersion"], "{p}");
    }
    let api = view["services"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|s| s["name"] == "api" && s["node"] == "pod-a")
        })
        .expect("pod-a reports api");
    assert_eq!(api["circuit"]["state"], "closed");
    assert_eq!(api["endpoints"][0]["address"], json!(upstream.address()));
    assert!(
        view["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["topic"] == "mesh.config.applied")),
        "recent mesh events: {}",
        view["events"]
    );

    // The same table in a terminal.
    let control_ref = &control;
    let out = tokio::task::block_in_place(|| control_ref.straitctl(&["top", "--once"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for source in ["pod-a", "pod-b"] {
        let row = text
            .lines()
            .find(|l| l.starts_with(source))
            .unwrap_or_else(|| panic!("no {source} row: {text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[..3], [source, "api", "r"], "{text}");
        assert!(cells[3].parse::<f64>().is_ok_and(|r| r > 0.0), "{text}");
    }

    // The view is the operator's: no token, no view.
    let (status, _) = control
        .call_as(None, http::Method::GET, "/v1/live", None)
        .await;
    assert_eq!(status, 401);
    traffic.abort();
}

/// Where the browser test's screenshots go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_of_a_workload_make_one_edge() {
    let upstream = Upstream::start("api").await;
    let replica = BOOTSTRAP.replace("  admin:", "  workload: shop\n  admin:");
    let (control, a, b) = mesh_of_two(&upstream, &replica).await;
    let traffic = keep_sending([&a, &b]);
    let edge = eventually(
        "shop → api sums both replicas",
        Duration::from_secs(20),
        || async {
            let edge = busy_edge(&control, "shop").await;
            (edge["nodes"] == json!(["pod-a", "pod-b"])).then_some(edge)
        },
    )
    .await;
    assert_eq!(edge["route"], "r");
    let (_, view) = control.call(http::Method::GET, "/v1/live", None).await;
    let sources: Vec<&Value> = view["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| &e["source"])
        .collect();
    assert_eq!(sources, [&json!("shop")], "one edge, from the workload");
    traffic.abort();
}

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts/live-view")
}

/// Polls `check` (a script returning a value or null) in the page until it gives non-null.
async fn in_page(browser: &Browser, what: &str, check: &str) -> Value {
    eventually(what, Duration::from_secs(20), || async {
        let v = browser.run(check, json!([])).await;
        (!v.is_null()).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_draws_live_traffic_and_a_breaker_opening_without_a_reload() {
    let upstream = Upstream::start("api").await;
    let (control, a, b) = mesh_of_two(&upstream, BOOTSTRAP).await;
    let traffic = keep_sending([&a, &b]);
    let browser = Browser::start().await;
    browser.goto(&format!("{}/ui", control.url())).await;
    // The operator enters the token once.
    browser
        .run(
            "document.getElementById('token').value = arguments[0];
             document.getElementById('login').requestSubmit();
             window.loadedOnce = true;",
            json!([control.token()]),
        )
        .await;
    let drawn = in_page(
        &browser,
        "the graph shows both proxies, api and their edges with a rate",
        "const nodes = [...document.querySelectorAll('svg .node')].map(n => n.dataset.name);
         const edges = [...document.querySelectorAll('svg .edge[data-destination=api]')]
           .filter(e => Number(e.dataset.rps) > 0).map(e => e.dataset.source);
         return nodes.includes('pod-a') && nodes.includes('pod-b') && nodes.includes('api')
           && edges.length === 2 ? {nodes, edges} : null;",
    )
    .await;
    println!("drawn: {drawn}");
    browser
        .screenshot(&artifacts().join("1-live-traffic.png"))
        .await;
    assert!(
        in_page(&browser, "the breaker shows closed", "return document.querySelector('tr[data-service=api][data-circuit=closed]') ? true : null;").await == true
    );

    // The upstream fails: the breakers open, and the page shows it as it happens.
    upstream.fail_with(Some(500));
    in_page(
        &browser,
        "the page shows api's circuit open",
        "const open = document.querySelector('tr[data-service=api][data-circuit=open]');
         const node = document.querySelector('svg .node.circuit-open[data-name=api]');
         return open && node ? open.textContent : null;",
    )
    .await;
    in_page(
        &browser,
        "the page lists the mesh.circuit.opened event",
        "return document.querySelector('#events li[data-topic=\"mesh.circuit.opened\"]') ? true : null;",
    )
    .await;
    assert_eq!(
        browser
            .run("return window.loadedOnce === true;", json!([]))
            .await,
        true,
        "the same page, not a reload"
    );
    browser
        .screenshot(&artifacts().join("2-circuit-open.png"))
        .await;
    traffic.abort();
}

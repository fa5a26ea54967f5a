//! Push that scales: a proxy receives only what concerns it (the routes of its listeners and
//! the Services they reach), after the first full set only what changed, and a burst of applies
//! as one push. Run against both backends.

use std::time::Duration;

use http::Method;
use strait_tests::client::{get, http1};
use strait_tests::config::{host_route, http1_service};
use strait_tests::control::{Backend, Store};
use strait_tests::metrics::{config_version, scrape, value};
use strait_tests::{both_backends, eventually, Control, Proxy, Upstream};

both_backends!(
    a_proxy_gets_no_push_for_a_service_its_routes_do_not_reach,
    changes_and_removals_arrive_as_deltas_and_a_nacked_one_keeps_the_last_good_config,
    a_burst_of_20_applies_reaches_a_proxy_in_a_few_pushes,
);

/// A bootstrap ProxyConfig: admin and one HTTP listener named `listener`.
fn bootstrap(listener: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: bootstrap}}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {{name: {listener}, address: 127.0.0.1:0, protocol: http}}
"
    )
}

/// A route on listener `parent` for `host` to `backend`.
/// What listener `listener` answers for `host`: the upstream's name, or status and reason.
async fn served(proxy: &Proxy, listener: &str, host: &str) -> String {
    match get(&http1(), &format!("{}/", proxy.url(listener)), host, &[]).await {
        Ok(a) if a.status == 200 => a.header("x-upstream").to_owned(),
        Ok(a) => format!("{} {}", a.status.as_u16(), a.header("x-strait-reason")),
        Err(e) => e,
    }
}

async fn wait_served(proxy: &Proxy, listener: &str, host: &str, expected: &str) {
    eventually(
        &format!("{host} on {listener} served by {expected}"),
        Duration::from_secs(10),
        || async { (served(proxy, listener, host).await == expected).then_some(()) },
    )
    .await;
}

/// Config versions the proxy applied so far (its bootstrap included).
async fn reloads(proxy: &Proxy) -> f64 {
    let metrics = scrape(proxy.admin()).await;
    value(
        &metrics,
        "strait_config_reloads_total",
        &[("result", "applied")],
    )
    .unwrap_or(0.0)
}

async fn apply(control: &Control, yaml: &str) -> u64 {
    let (status, body) = control.apply("mesh.yaml", yaml).await;
    assert_eq!(status, 200, "{body}");
    body["applied"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|r| r["resourceVersion"].as_u64()).max())
        .expect("a resource version")
}

async fn wait_version(proxy: &Proxy, version: u64) {
    eventually(
        &format!("the proxy at version {version}"),
        Duration::from_secs(10),
        || async { (config_version(proxy.admin()).await >= version).then_some(()) },
    )
    .await;
}

/// The push lines the proxy logged: (full, changed, removed) each.
fn received(proxy: &Proxy) -> Vec<(bool, u64, u64)> {
    proxy
        .json_logs()
        .iter()
        .filter(|l| l["fields"]["message"] == "config received from the control")
        .map(|l| {
            let f = &l["fields"];
            (
                f["full"] == true,
                f["changed"].as_u64().unwrap_or(0),
                f["removed"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

async fn a_proxy_gets_no_push_for_a_service_its_routes_do_not_reach(backend: Backend) {
    let store = Store::start(backend);
    let (a, x, x2) = (
        Upstream::start("a").await,
        Upstream::start("x").await,
        Upstream::start("x2").await,
    );
    let control = store.control();
    apply(
        &control,
        &(http1_service("a", &a.address())
            + &http1_service("x", &x.address())
            + &host_route("web-route", "web", "shop", "a")
            + &host_route("api-route", "api", "shop", "x")),
    )
    .await;
    let web = control.attach(&bootstrap("web"), "web-1");
    let api = control.attach(&bootstrap("api"), "api-1");
    wait_served(&web, "web", "shop", "a").await;
    wait_served(&api, "api", "shop", "x").await;
    let web_version = config_version(web.admin()).await;
    let web_reloads = reloads(&web).await;

    // A change to Service x: pushed to the proxy whose route reaches it...
    let changed = apply(&control, &http1_service("x", &x2.address())).await;
    wait_version(&api, changed).await;
    wait_served(&api, "api", "shop", "x2").await;
    // ... not to the other: its next push is the next change that concerns it.
    let touched = apply(
        &control,
        &(http1_service("a", &a.address()) + &host_route("web-route", "web", "shop2", "a")),
    )
    .await;
    wait_version(&web, touched).await;
    wait_served(&web, "web", "shop2", "a").await;
    assert!(web_version < changed);
    assert_eq!(
        reloads(&web).await,
        web_reloads + 1.0,
        "one push for its route's change, none for Service x: {:?}",
        received(&web)
    );
}

async fn changes_and_removals_arrive_as_deltas_and_a_nacked_one_keeps_the_last_good_config(
    backend: Backend,
) {
    let store = Store::start(backend);
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = store.control();
    apply(
        &control,
        &(http1_service("a", &a.address())
            + &http1_service("b", &b.address())
            + &host_route("one", "web", "one", "a")
            + &host_route("two", "web", "two", "b")),
    )
    .await;
    let proxy = control.attach(&bootstrap("web"), "pod-1");
    wait_served(&proxy, "web", "one", "a").await;
    wait_served(&proxy, "web", "two", "b").await;
    let first = received(&proxy);
    assert_eq!(first.last(), Some(&(true, 4, 0)), "the full set first");

    // Route one moves to b: the route changes, Service a is no longer reached.
    let moved = apply(&control, &host_route("one", "web", "one", "b")).await;
    wait_version(&proxy, moved).await;
    wait_served(&proxy, "web", "one", "b").await;
    assert_eq!(received(&proxy).last(), Some(&(false, 1, 1)));

    // Route two deleted: a removal only.
    let (status, body) = control
        .call(Method::DELETE, "/v1/resources/HTTPRoute/default/two", None)
        .await;
    assert_eq!(status, 200, "{body}");
    wait_served(&proxy, "web", "two", "404 no-route").await;
    assert_eq!(received(&proxy).last(), Some(&(false, 0, 1)));

    // A ProxyConfig for this node whose listener cannot be bound: NACKed, the last good
    // config keeps serving.
    let taken = control.url().trim_start_matches("http://").to_owned();
    let node_config = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: pod-1}}
spec:
  admin: 127.0.0.1:0
  listeners: [{{name: web, address: \"{taken}\", protocol: http}}]
"
    );
    let bad = apply(&control, &node_config).await;
    let status = eventually("the NACK recorded", Duration::from_secs(10), || async {
        let (_, proxies) = control.call(Method::GET, "/v1/proxies", None).await;
        let p = proxies["items"]
            .as_array()?
            .iter()
            .find(|p| p["node"] == "pod-1")?
            .clone();
        (p["lastNack"][0] == bad).then_some(p)
    })
    .await;
    assert!(
        status["lastNack"][1]
            .as_str()
            .is_some_and(|e| e.contains(&taken)),
        "{status}"
    );
    assert_eq!(served(&proxy, "web", "one").await, "b", "last good config");

    // Removing it is the next delta, applied on top of what was received: ACKed.
    let (status, body) = control
        .call(
            Method::DELETE,
            "/v1/resources/ProxyConfig/default/pod-1",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let repaired = eventually("the repair ACKed", Duration::from_secs(10), || async {
        let (_, proxies) = control.call(Method::GET, "/v1/proxies", None).await;
        let p = proxies["items"]
            .as_array()?
            .iter()
            .find(|p| p["node"] == "pod-1")?
            .clone();
        (p["appliedVersion"].as_u64()? > bad).then_some(p)
    })
    .await;
    assert_eq!(repaired["appliedVersion"], repaired["sentVersion"]);
    assert_eq!(received(&proxy).last(), Some(&(false, 0, 1)));
    assert_eq!(served(&proxy, "web", "one").await, "b");
    assert_eq!(
        repaired["appliedVersion"],
        config_version(proxy.admin()).await,
        "straitctl proxies and /config agree"
    );
}

async fn a_burst_of_20_applies_reaches_a_proxy_in_a_few_pushes(backend: Backend) {
    let store = Store::start(backend);
    let upstreams = [Upstream::start("a").await, Upstream::start("b").await];
    let control = store.control();
    apply(
        &control,
        &(http1_service("api", &upstreams[0].address()) + &host_route("r", "web", "shop", "api")),
    )
    .await;
    let proxy = control.attach(&bootstrap("web"), "pod-1");
    wait_served(&proxy, "web", "shop", "a").await;
    let before = reloads(&proxy).await;
    let mut last = 0;
    for i in 0..20 {
        last = apply(
            &control,
            &http1_service("api", &upstreams[(i + 1) % 2].address()),
        )
        .await;
    }
    wait_version(&proxy, last).await;
    wait_served(&proxy, "web", "shop", "a").await;
    let pushes = reloads(&proxy).await - before;
    println!("20 applies reached the proxy in {pushes} pushes");
    assert!(
        (1.0..=5.0).contains(&pushes),
        "a burst is debounced: {pushes} pushes for 20 applies"
    );
}

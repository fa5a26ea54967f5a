//! Routing: match kinds, precedence, weighted splits, endpoint weights, affinity.

use std::collections::HashMap;

use strait_tests::client::{get, http1};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{Proxy, Upstream};

async fn upstreams(names: &[&str]) -> HashMap<String, Upstream> {
    let mut map = HashMap::new();
    for n in names {
        map.insert((*n).to_owned(), Upstream::start(n).await);
    }
    map
}

fn svc(u: &HashMap<String, Upstream>, name: &str) -> String {
    service(name, "http1", &[(u[name].address(), 1)], "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_match_kind_and_precedence() {
    let names = [
        "exact", "prefix", "longer", "regex", "method", "header", "hregex", "query", "hosted",
        "wild", "fallback",
    ];
    let u = upstreams(&names).await;
    let mut yaml = proxy("");
    for n in names {
        yaml.push_str(&svc(&u, n));
    }
    // File order is deliberately least specific first: precedence must not depend on it.
    yaml.push_str(&http_route(
        "main",
        "  rules:
    - {backendRefs: [{name: fallback}]}
    - {matches: [{path: {type: PathPrefix, value: /api}}], backendRefs: [{name: prefix}]}
    - {matches: [{path: {type: PathPrefix, value: /api/v1}}], backendRefs: [{name: longer}]}
    - {matches: [{path: {type: Exact, value: /api/v1/exact}}], backendRefs: [{name: exact}]}
    - {matches: [{path: {type: RegularExpression, value: \"/items/[0-9]+\"}}], backendRefs: [{name: regex}]}
    - {matches: [{path: {value: /m}, method: DELETE}], backendRefs: [{name: method}]}
    - {matches: [{path: {value: /h}, headers: [{name: x-team, value: blue}]}], backendRefs: [{name: header}]}
    - {matches: [{path: {value: /h}, headers: [{name: x-user, type: RegularExpression, value: \"u[0-9]+\"}]}], backendRefs: [{name: hregex}]}
    - {matches: [{path: {value: /q}, queryParams: [{name: debug, value: \"1\"}]}], backendRefs: [{name: query}]}",
    ));
    yaml.push_str(&http_route(
        "hosted",
        "  hostnames: [\"shop.example.com\"]\n  rules:\n    - {backendRefs: [{name: hosted}]}",
    ));
    yaml.push_str(&http_route("wild", "  hostnames: [\"*.example.org\"]\n  rules:\n    - {matches: [{path: {value: /api}}], backendRefs: [{name: wild}]}"));
    let proxy = Proxy::start(&yaml);
    let base = proxy.url("web");
    let c = http1();
    /// (method, host, path, headers, upstream expected)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", "any", "/api/v1/exact", &[], "exact"),
        ("GET", "any", "/api/v1/exact/x", &[], "longer"),
        ("GET", "any", "/api/v1", &[], "longer"),
        ("GET", "any", "/api/v10", &[], "prefix"),
        ("GET", "any", "/api", &[], "prefix"),
        ("GET", "any", "/apix", &[], "fallback"),
        ("GET", "any", "/items/42", &[], "regex"),
        ("GET", "any", "/items/42/more", &[], "fallback"),
        ("DELETE", "any", "/m", &[], "method"),
        ("GET", "any", "/m", &[], "fallback"),
        ("GET", "any", "/h", &[("x-team", "blue")], "header"),
        ("GET", "any", "/h", &[("x-team", "red")], "fallback"),
        ("GET", "any", "/h", &[("x-user", "u77")], "hregex"),
        ("GET", "any", "/q?x=2&debug=1", &[], "query"),
        ("GET", "any", "/q?debug=0", &[], "fallback"),
        ("GET", "Shop.Example.com:8080", "/anything", &[], "hosted"),
        ("GET", "a.example.org", "/api/x", &[], "wild"),
        ("GET", "a.example.org", "/other", &[], "fallback"),
    ];
    for (method, host, path, headers, want) in cases {
        let mut req = http::Request::builder()
            .method(*method)
            .uri(format!("{base}{path}"))
            .header("host", *host);
        for (k, v) in *headers {
            req = req.header(*k, *v);
        }
        let a = strait_tests::client::send(&c, req.body(Default::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{method} {host}{path}");
        assert_eq!(
            a.header("x-upstream"),
            *want,
            "{method} {host}{path} {headers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_with_reason() {
    let u = upstreams(&["a"]).await;
    let yaml = proxy("")
        + &svc(&u, "a")
        + &http_route(
            "r",
            "  hostnames: [only.example]\n  rules:\n    - {backendRefs: [{name: a}]}",
        );
    let proxy = Proxy::start(&yaml);
    let a = get(
        &http1(),
        &format!("{}/", proxy.url("web")),
        "other.example",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 404);
    assert_eq!(a.header("x-strait-reason"), "no-route");
    assert_eq!(u["a"].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_90_10() {
    let u = upstreams(&["v1", "v2"]).await;
    let yaml = proxy("  accessLog: {enabled: false}")
        + &svc(&u, "v1")
        + &svc(&u, "v2")
        + &http_route(
            "r",
            "  rules:\n    - backendRefs: [{name: v1, weight: 90}, {name: v2, weight: 10}]",
        );
    let proxy = Proxy::start(&yaml);
    let url = format!("{}/", proxy.url("web"));
    let c = http1();
    let total = 2000;
    for _ in 0..total {
        let a = get(&c, &url, "split", &[]).await.unwrap();
        assert_eq!(a.status, 200);
    }
    let v2 = u["v2"].hits() as f64 / total as f64;
    assert_eq!(u["v1"].hits() + u["v2"].hits(), total);
    assert!(
        (0.07..=0.13).contains(&v2),
        "v2 got {:.1}% of requests, want 10 ± 3",
        v2 * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_weights_round_robin_and_ring_hash_affinity() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c1 = Upstream::start("c1").await;
    let c2 = Upstream::start("c2").await;
    let c3 = Upstream::start("c3").await;
    let yaml = proxy("")
        + &service("rr", "http1", &[(a.address(), 1), (b.address(), 3)], "")
        + &service("sticky", "http1", &[(c1.address(), 1), (c2.address(), 1), (c3.address(), 1)], "  loadBalancer: {policy: ring_hash, hashOn: {header: x-user}}")
        + &http_route("r", "  rules:\n    - {matches: [{path: {value: /rr}}], backendRefs: [{name: rr}]}\n    - {matches: [{path: {value: /sticky}}], backendRefs: [{name: sticky}]}");
    let proxy = Proxy::start(&yaml);
    let c = http1();
    for _ in 0..400 {
        get(&c, &format!("{}/rr", proxy.url("web")), "h", &[])
            .await
            .unwrap();
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (100, 300),
        "smooth weighted round robin is exact per cycle"
    );

    let mut owners = HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let ans = get(
                &c,
                &format!("{}/sticky", proxy.url("web")),
                "h",
                &[("x-user", &format!("user-{user}"))],
            )
            .await
            .unwrap();
            let owner = ans.header("x-upstream").to_owned();
            let first = owners.entry(user).or_insert_with(|| owner.clone());
            assert_eq!(*first, owner, "user-{user} moved in round {round}");
        }
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert!(
        distinct.len() >= 2,
        "30 users should spread over more than one endpoint"
    );
}

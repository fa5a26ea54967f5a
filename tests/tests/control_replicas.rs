//! Several `strait-control` replicas on one etcd (`--store etcd://`) are one control plane:
//! a write through any replica is read and pushed through every other; `kill -9` of a replica
//! loses no acknowledged write and no registration; a proxy fails over to another replica and
//! keeps serving meanwhile; replicas share one CA. Real etcd, real binaries, loopback only.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;
use strait_tests::client::{get, http1, send};
use strait_tests::config::{http1_service, BOOTSTRAP};
use strait_tests::control::{Backend, Store};
use strait_tests::{eventually, Control, Proxy, Upstream};

fn mesh(a: &Upstream, b: &Upstream, to: &str) -> String {
    http1_service("a", &a.address())
        + &http1_service("b", &b.address())
        + &format!(
            "---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: r}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [\"h\"]
  rules: [{{backendRefs: [{{name: {to}}}]}}]
"
        )
}

async fn upstream_of(proxy: &Proxy) -> String {
    match get(&http1(), &format!("{}/", proxy.url("web")), "h", &[]).await {
        Ok(a) if a.status == 200 => a.header("x-upstream").to_owned(),
        Ok(a) => format!("{} {}", a.status.as_u16(), a.header("x-strait-reason")),
        Err(e) => e,
    }
}

/// `POST URL/v1/apply` with `body`: the status.
async fn apply(url: &str, token: &str, body: &serde_json::Value) -> Result<u16, String> {
    let request = Request::post(format!("{url}/v1/apply"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    Ok(send(&http1(), request).await?.status.as_u16())
}

/// Whether `control` has node `pod-1` connected.
async fn connected(control: &Control) -> bool {
    let (_, body) = control.call(Method::GET, "/v1/proxies", None).await;
    body["items"].as_array().is_some_and(|items| {
        items
            .iter()
            .any(|p| p["node"] == "pod-1" && p["connected"] == true)
    })
}

async fn instance_ids(control: &Control) -> BTreeSet<String> {
    let (_, body) = control
        .call(Method::GET, "/v1/registry/instances", None)
        .await;
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_through_one_replica_is_read_and_pushed_through_the_others() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let store = Store::start(Backend::Etcd);
    let first = store.control();
    let second = store.replica_of(&first);
    let third = store.replica_of(&first);
    let (status, body) = first.apply("mesh.yaml", &mesh(&a, &b, "a")).await;
    assert_eq!(status, 200, "{body}");
    let proxy = third.attach(BOOTSTRAP, "pod-1");
    eventually(
        "config through the third replica",
        Duration::from_secs(5),
        || async { (upstream_of(&proxy).await == "a").then_some(()) },
    )
    .await;

    let (status, body) = second.apply("mesh.yaml", &mesh(&a, &b, "b")).await;
    assert_eq!(status, 200, "{body}");
    let version = body["applied"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["kind"] == "HTTPRoute"))
        .map(|i| i["resourceVersion"].clone())
        .unwrap_or_default();
    eventually(
        "the second replica's write pushed by the third",
        Duration::from_secs(3),
        || async { (upstream_of(&proxy).await == "b").then_some(()) },
    )
    .await;
    for replica in [&first, &third] {
        let (status, route) = replica
            .call(Method::GET, "/v1/resources/httproute/default/r", None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(route["resourceVersion"], version, "{route}");
        assert_eq!(
            route["document"]["spec"]["rules"][0]["backendRefs"][0]["name"],
            "b"
        );
    }
    // `straitctl proxies` on any replica lists the proxies of every replica.
    eventually(
        "the first replica lists the third's proxy",
        Duration::from_secs(5),
        || async { connected(&first).await.then_some(()) },
    )
    .await;
    let out = second.straitctl(&["proxies"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("pod-1"), "{table}");
    let (_, history) = first
        .call(
            Method::GET,
            "/v1/resources/HTTPRoute/default/r/history",
            None,
        )
        .await;
    assert_eq!(
        history["items"].as_array().map(Vec::len),
        Some(2),
        "{history}"
    );

    // A stale resourceVersion is refused whichever replica it reaches.
    let stale = mesh(&a, &b, "a").replace(
        "metadata: {name: r}",
        "metadata: {name: r, resourceVersion: \"1\"}",
    );
    let (status, body) = third.apply("mesh.yaml", &stale).await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = first
        .call(Method::DELETE, "/v1/resources/httproute/default/r", None)
        .await;
    assert_eq!(status, 200);
    let (status, _) = second
        .call(Method::GET, "/v1/resources/httproute/default/r", None)
        .await;
    assert_eq!(
        status, 404,
        "a delete through one replica is seen by another"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_during_a_write_loop_loses_no_acknowledged_write() {
    let store = Store::start(Backend::Etcd);
    let mut doomed = store.control();
    let survivor = store.replica_of(&doomed);
    let stop = Arc::new(AtomicBool::new(false));
    // Two writers, one per replica, each creating Services s-WRITER-N for as long as it can;
    // a write counts once the API answered 200.
    let mut writers = Vec::new();
    for (tag, control) in [("d", doomed.url()), ("s", survivor.url())] {
        let (stop, token) = (stop.clone(), survivor.token().to_owned());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("s-{tag}-{n}");
                n += 1;
                let body = json!({"files": [{"name": "s.yaml", "content": http1_service(&name, "127.0.0.1:9")}]});
                match apply(&control, &token, &body).await {
                    Ok(200) => acked.push(name),
                    Ok(_) => {}
                    // Its replica is gone.
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    eventually(
        "writes through both replicas",
        Duration::from_secs(10),
        || async {
            let (_, list) = survivor
                .call(Method::GET, "/v1/resources/service", None)
                .await;
            let names: Vec<&str> = list["items"]
                .as_array()
                .map(|i| i.iter().filter_map(|r| r["name"].as_str()).collect())
                .unwrap_or_default();
            (names.iter().any(|n| n.starts_with("s-d-"))
                && names.iter().filter(|n| n.starts_with("s-s-")).count() >= 3)
                .then_some(())
        },
    )
    .await;
    doomed.kill9();
    eventually(
        "the survivor keeps taking writes",
        Duration::from_secs(5),
        || async {
            let (_, list) = survivor
                .call(Method::GET, "/v1/resources/service", None)
                .await;
            (list["items"].as_array().map_or(0, Vec::len) > 10).then_some(())
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer"));
    }
    let (_, list) = survivor
        .call(Method::GET, "/v1/resources/service", None)
        .await;
    let stored: BTreeSet<&str> = list["items"]
        .as_array()
        .map(|i| i.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !stored.contains(n.as_str()))
        .collect();
    assert!(
        acked.iter().any(|n| n.starts_with("s-d-")),
        "the killed replica acknowledged writes"
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_outlives_its_replica_and_expires_when_heartbeats_stop() {
    let store = Store::start(Backend::Etcd);
    let mut first = store.control();
    let second = store.replica_of(&first);
    let (status, instance) = first
        .call(
            Method::POST,
            "/v1/registry/instances",
            Some(json!({"service": "api", "address": "127.0.0.1", "port": 9, "ttlSeconds": 3})),
        )
        .await;
    assert_eq!(status, 201, "{instance}");
    let id = instance["id"].as_str().unwrap_or_default().to_owned();
    eventually(
        "the other replica lists it",
        Duration::from_secs(3),
        || async { instance_ids(&second).await.contains(&id).then_some(()) },
    )
    .await;
    first.kill9();
    // Heartbeats through the surviving replica keep it for longer than its TTL.
    let heartbeat = format!("/v1/registry/instances/{id}/heartbeat");
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        let (status, body) = second.call(Method::PUT, &heartbeat, None).await;
        assert_eq!(status, 204, "{body}");
        assert!(
            instance_ids(&second).await.contains(&id),
            "kept while heartbeating"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Without heartbeats its lease expires: it leaves, and the expiry is announced.
    eventually(
        "expired without heartbeats",
        Duration::from_secs(10),
        || async { (!instance_ids(&second).await.contains(&id)).then_some(()) },
    )
    .await;
    let (status, _) = second.call(Method::PUT, &heartbeat, None).await;
    assert_eq!(status, 404);
    eventually(
        "mesh.registry.expired published",
        Duration::from_secs(5),
        || async {
            let (_, history) = second
                .call(
                    Method::GET,
                    "/v1/events/mesh.registry.expired/history",
                    None,
                )
                .await;
            history.to_string().contains(&id).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_fails_over_to_another_replica_and_keeps_serving_meanwhile() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let store = Store::start(Backend::Etcd);
    let mut first = store.control();
    let second = store.replica_of(&first);
    first.apply("mesh.yaml", &mesh(&a, &b, "a")).await;
    let controls = format!("{},{}", first.url(), second.url());
    let proxy = Proxy::start_with_control(BOOTSTRAP, &controls, "pod-1", &first.token_file());
    eventually(
        "config from the first replica",
        Duration::from_secs(5),
        || async { (upstream_of(&proxy).await == "a").then_some(()) },
    )
    .await;
    assert!(connected(&first).await, "the proxy starts on the first URL");

    first.kill9();
    for _ in 0..20 {
        assert_eq!(
            upstream_of(&proxy).await,
            "a",
            "keeps serving its last good config"
        );
    }
    eventually(
        "reconnected to the second replica",
        Duration::from_secs(10),
        || async { connected(&second).await.then_some(()) },
    )
    .await;
    let (status, body) = second.apply("mesh.yaml", &mesh(&a, &b, "b")).await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "a later apply reaches it",
        Duration::from_secs(3),
        || async { (upstream_of(&proxy).await == "b").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_ca_and_its_join_tokens() {
    let store = Store::start(Backend::Etcd);
    let identity = ["--trust-domain", "example.org"];
    let first = store.control_with_args(&identity);
    let second = store.replica_with_args(&first, &identity);
    assert_eq!(first.bundle(), second.bundle(), "one root for the mesh");

    // A join token made through one replica gets a certificate through the other.
    let out = first.straitctl(&[
        "identity",
        "token",
        "--namespace",
        "default",
        "--service-account",
        "reviews",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let uri = "spiffe://example.org/ns/default/sa/reviews";
    let (csr, _key) = strait_tests::tls::csr(uri);
    let answer = strait_tests::tls::TlsClient::new(&second.bundle(), None, false)
        .call(
            second.address(),
            Method::POST,
            "/v1/identity/certificates",
            Some(&token),
            Some(json!({ "csr": csr })),
        )
        .await
        .expect("the second replica answers");
    assert_eq!(answer.status, 200, "{}", answer.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_its_certificate_from_a_live_replica_when_the_first_is_dead() {
    let store = Store::start(Backend::Etcd);
    let identity = ["--trust-domain", "example.org"];
    let mut first = store.control_with_args(&identity);
    let second = store.replica_with_args(&first, &identity);
    let out = second.straitctl(&[
        "identity",
        "token",
        "--namespace",
        "default",
        "--service-account",
        "reviews",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    first.kill9();

    // The dead replica first: the join token's first contact, the CSR and the push stream
    // all have to find the live one.
    let controls = format!("{},{}", first.url(), second.url());
    let bootstrap = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: pod-1}}
spec:
  admin: 127.0.0.1:0
  identity: {{trustDomain: example.org, namespace: default, serviceAccount: reviews}}
  control: {{address: \"{controls}\", node: pod-1, tokenFile: join-token}}
  listeners:
    - {{name: web, address: 127.0.0.1:0, protocol: http}}
"
    );
    let proxy = Proxy::start_with_files(&bootstrap, &[("join-token", &token)]);
    eventually(
        "ready with a certificate from the second replica",
        Duration::from_secs(15),
        || async {
            let (status, _) = strait_tests::metrics::admin_get(proxy.admin(), "/ready").await;
            (status == 200).then_some(())
        },
    )
    .await;
    let (_, identity) = strait_tests::metrics::admin_get(proxy.admin(), "/identity").await;
    assert!(
        identity.contains("spiffe://example.org/ns/default/sa/reviews"),
        "{identity}"
    );
    assert!(
        connected(&second).await,
        "the push stream is on the live replica"
    );
}

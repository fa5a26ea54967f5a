//! strait-control end to end: the real control and proxy binaries, real upstreams.
//! Apply → proxies follow; optimistic concurrency; validation errors with field paths; auth;
//! durability across kill -9; registry discovery with TTL expiry; NACKs; the OpenAPI document.
//! Every case that touches the store runs against both backends (embedded redb, and etcd).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::json;
use strait_tests::client::{get, http1};
use strait_tests::config::{host_route, http1_service, BOOTSTRAP};
use strait_tests::control::{Backend, Store};
use strait_tests::{both_backends, eventually, Control, Proxy, Upstream};

// The cases that involve the store run once per backend (`NAME::embedded`, `NAME::etcd`).
both_backends!(
    an_applied_route_is_served_by_a_connected_proxy_within_2s,
    a_stale_resource_version_is_refused_with_409,
    an_invalid_resource_is_refused_with_file_line_and_field_path,
    the_proxy_survives_kill_9_of_the_control_and_resyncs_after_restart,
    registry_instances_feed_a_service_and_leave_it_when_their_ttl_lapses,
    a_config_the_proxy_cannot_apply_is_nacked_and_the_old_keeps_serving,
    a_first_version_the_proxy_cannot_serve_is_nacked_not_acked,
);

async fn upstream_of(proxy: &Proxy, host: &str) -> String {
    match get(&http1(), &format!("{}/", proxy.url("web")), host, &[]).await {
        Ok(a) if a.status == 200 => a.header("x-upstream").to_owned(),
        Ok(a) => format!("{} {}", a.status.as_u16(), a.header("x-strait-reason")),
        Err(e) => e,
    }
}

async fn proxy_status(control: &Control, node: &str) -> serde_json::Value {
    let (_, body) = control.call(Method::GET, "/v1/proxies", None).await;
    body["items"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["node"] == node).cloned())
        .unwrap_or_default()
}

async fn an_applied_route_is_served_by_a_connected_proxy_within_2s(backend: Backend) {
    let store = Store::start(backend);
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = store.control();
    let (status, _) = control
        .apply(
            "mesh.yaml",
            &(http1_service("a", &a.address()) + &host_route("r", "web", "shop.local", "a")),
        )
        .await;
    assert_eq!(status, 200);
    let proxy = control.attach(BOOTSTRAP, "pod-1");
    eventually(
        "first config from the control",
        Duration::from_secs(5),
        || async { (upstream_of(&proxy, "shop.local").await == "a").then_some(()) },
    )
    .await;

    let started = Instant::now();
    let (status, body) = control
        .apply(
            "mesh.yaml",
            &(http1_service("a", &a.address())
                + &http1_service("b", &b.address())
                + &host_route("r", "web", "shop.local", "b")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("the change served", Duration::from_secs(2), || async {
        (upstream_of(&proxy, "shop.local").await == "b").then_some(())
    })
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");

    let p = eventually("ACK recorded", Duration::from_secs(2), || async {
        let p = proxy_status(&control, "pod-1").await;
        (p["appliedVersion"] == p["sentVersion"] && p["connected"] == true).then_some(p)
    })
    .await;
    assert!(p["lastAck"].is_array(), "{p}");
    let out = control.straitctl(&["proxies"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("pod-1"), "{table}");
    assert!(proxy.count_messages("connected to control") >= 1);
}

async fn a_stale_resource_version_is_refused_with_409(backend: Backend) {
    let store = Store::start(backend);
    let control = store.control();
    let (_, applied) = control
        .apply("svc.yaml", &http1_service("api", "127.0.0.1:9"))
        .await;
    let version = applied["applied"][0]["resourceVersion"].as_u64().unwrap();
    let (status, _) = control
        .apply("svc.yaml", &http1_service("api", "127.0.0.1:10"))
        .await;
    assert_eq!(
        status, 200,
        "no resourceVersion: last writer wins (kubectl apply)"
    );
    let stale = http1_service("api", "127.0.0.1:11").replace(
        "metadata: {name: api}",
        &format!("metadata: {{name: api, resourceVersion: \"{version}\"}}"),
    );
    let (status, body) = control.apply("svc.yaml", &stale).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("stale"), "{body}");
    let (_, current) = control
        .call(Method::GET, "/v1/resources/service/default/api", None)
        .await;
    assert_eq!(
        current["document"]["spec"]["endpoints"][0]["address"],
        "127.0.0.1:10"
    );
    let (_, history) = control
        .call(
            Method::GET,
            "/v1/resources/Service/default/api/history",
            None,
        )
        .await;
    assert_eq!(history["items"].as_array().unwrap().len(), 2);

    // The same through straitctl, from a file.
    let file = control.scratch().join("stale.yaml");
    std::fs::write(&file, &stale).unwrap();
    let out = control.straitctl(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("409"));
}

async fn an_invalid_resource_is_refused_with_file_line_and_field_path(backend: Backend) {
    let store = Store::start(backend);
    let control = store.control();
    let file = control.scratch().join("bad.yaml");
    std::fs::write(
        &file,
        http1_service("api", "127.0.0.1:9") + &host_route("r", "web", "x", "missing"),
    )
    .unwrap();
    let out = control.straitctl(&["apply", "-f", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.yaml:") && stderr.contains("spec.rules[0].backendRefs[0].name"),
        "{stderr}"
    );
    let (_, list) = control.call(Method::GET, "/v1/resources", None).await;
    assert_eq!(
        list["items"],
        json!([]),
        "nothing of a refused apply is stored"
    );
    // Unknown fields are refused too, by path.
    let (status, body) = control
        .apply(
            "typo.yaml",
            &http1_service("api", "127.0.0.1:9").replace("protocol: http1", "protocl: http1"),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["errors"][0].as_str().unwrap().contains("typo.yaml:"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_call_needs_the_token() {
    let control = Control::start();
    for (method, path) in [
        (Method::GET, "/v1/resources"),
        (Method::POST, "/v1/apply"),
        (Method::GET, "/v1/proxies"),
        (Method::GET, "/v1/registry/instances"),
        (Method::GET, "/v1/push/stream?node=x"),
    ] {
        let (status, body) = control.call_as(None, method.clone(), path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        let (status, _) = control
            .call_as(Some("wrong-token"), method.clone(), path, None)
            .await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let (status, _) = control.call_as(None, Method::GET, "/healthz", None).await;
    assert_eq!(status, 200);
    assert!(
        !control.logs().join("\n").contains(control.token()),
        "the token never appears in the logs"
    );
}

async fn the_proxy_survives_kill_9_of_the_control_and_resyncs_after_restart(backend: Backend) {
    let store = Store::start(backend);
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let mut control = store.control();
    control
        .apply(
            "mesh.yaml",
            &(http1_service("a", &a.address())
                + &http1_service("b", &b.address())
                + &host_route("r", "web", "h", "a")),
        )
        .await;
    let proxy = control.attach(BOOTSTRAP, "pod-1");
    eventually(
        "config from the control",
        Duration::from_secs(5),
        || async { (upstream_of(&proxy, "h").await == "a").then_some(()) },
    )
    .await;

    let (status, instance) = control
        .call(
            Method::POST,
            "/v1/registry/instances",
            Some(json!({"service": "a", "address": "127.0.0.1", "port": 9, "ttlSeconds": 60})),
        )
        .await;
    assert_eq!(status, 201);
    control.kill9();
    for _ in 0..10 {
        assert_eq!(upstream_of(&proxy, "h").await, "a", "keeps serving");
    }
    eventually("the proxy noticed", Duration::from_secs(40), || async {
        (proxy.count_messages("control connection lost; serving the last good config") >= 1)
            .then_some(())
    })
    .await;

    control.restart();
    let (_, list) = control.call(Method::GET, "/v1/resources", None).await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        3,
        "state intact: {list}"
    );
    let (_, instances) = control
        .call(Method::GET, "/v1/registry/instances", None)
        .await;
    assert_eq!(
        instances["items"][0]["id"], instance["id"],
        "registration intact"
    );
    eventually("reconnected", Duration::from_secs(15), || async {
        (proxy_status(&control, "pod-1").await["connected"] == true).then_some(())
    })
    .await;
    control
        .apply(
            "mesh.yaml",
            &(http1_service("a", &a.address())
                + &http1_service("b", &b.address())
                + &host_route("r", "web", "h", "b")),
        )
        .await;
    eventually("resynced after restart", Duration::from_secs(3), || async {
        (upstream_of(&proxy, "h").await == "b").then_some(())
    })
    .await;
}

async fn registry_instances_feed_a_service_and_leave_it_when_their_ttl_lapses(backend: Backend) {
    let store = Store::start(backend);
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let control = store.control();
    let discovered = "---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  protocol: http1
  discovery: registry
";
    control
        .apply(
            "mesh.yaml",
            &(discovered.to_owned() + &host_route("r", "web", "api", "api")),
        )
        .await;
    let proxy = control.attach(BOOTSTRAP, "pod-1");
    eventually("no instance yet", Duration::from_secs(5), || async {
        (upstream_of(&proxy, "api").await == "503 no-healthy-endpoints").then_some(())
    })
    .await;

    let mut ids = Vec::new();
    for (up, tags) in [(&a, json!(["blue"])), (&b, json!(["green"]))] {
        let (status, instance) = control
            .call(
                Method::POST,
                "/v1/registry/instances",
                Some(
                    json!({"service": "api", "address": "127.0.0.1", "port": up.addr.port(),
                    "version": "v1", "tags": tags, "capabilities": ["http"], "ttlSeconds": 1}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{instance}");
        ids.push(instance["id"].as_str().unwrap().to_owned());
    }
    eventually(
        "both instances in rotation",
        Duration::from_secs(2),
        || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..6 {
                seen.insert(upstream_of(&proxy, "api").await);
            }
            (seen.len() == 2 && seen.contains("a") && seen.contains("b")).then_some(())
        },
    )
    .await;
    let (_, found) = control
        .call(
            Method::GET,
            "/v1/registry/instances?service=api&tag=green",
            None,
        )
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    let out = control.straitctl(&["services", "--capability", "http"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);

    // Only `a` heartbeats: `b` expires and leaves the proxy's rotation.
    let heartbeat = ids[0].clone();
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut only_a = false;
    while Instant::now() < deadline {
        let (status, _) = control
            .call(
                Method::PUT,
                &format!("/v1/registry/instances/{heartbeat}/heartbeat"),
                None,
            )
            .await;
        assert_eq!(status, 204);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(upstream_of(&proxy, "api").await);
        }
        if seen.len() == 1 && seen.contains("a") {
            only_a = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(only_a, "b expired and left the rotation");
    let (status, _) = control
        .call(
            Method::PUT,
            &format!("/v1/registry/instances/{}/heartbeat", ids[1]),
            None,
        )
        .await;
    assert_eq!(status, 404, "an expired instance is gone");
}

async fn a_config_the_proxy_cannot_apply_is_nacked_and_the_old_keeps_serving(backend: Backend) {
    let store = Store::start(backend);
    let a = Upstream::start("a").await;
    let control = store.control();
    control
        .apply(
            "mesh.yaml",
            &(http1_service("a", &a.address()) + &host_route("r", "web", "h", "a")),
        )
        .await;
    let proxy = control.attach(BOOTSTRAP, "pod-1");
    eventually("config applied", Duration::from_secs(5), || async {
        (upstream_of(&proxy, "h").await == "a").then_some(())
    })
    .await;
    // A ProxyConfig for this node whose listener cannot be bound (the control's own port).
    let taken = control.url().trim_start_matches("http://").to_owned();
    let node_config = format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: pod-1}}
spec:
  admin: 127.0.0.1:0
  listeners: [{{name: web, address: \"{taken}\", protocol: http}}]
"
    );
    let (status, body) = control.apply("node.yaml", &node_config).await;
    assert_eq!(status, 200, "{body}");
    let nack = eventually("NACK recorded", Duration::from_secs(5), || async {
        let p = proxy_status(&control, "pod-1").await;
        p["lastNack"].as_array().cloned()
    })
    .await;
    assert!(
        nack[1].as_str().unwrap().contains(&taken),
        "the NACK carries the proxy's error: {nack:?}"
    );
    assert_eq!(
        upstream_of(&proxy, "h").await,
        "a",
        "old config keeps serving"
    );
}

async fn a_first_version_the_proxy_cannot_serve_is_nacked_not_acked(backend: Backend) {
    let store = Store::start(backend);
    let control = store.control();
    // This node's listener address is taken (the control's own port): the version compiles,
    // but the proxy cannot bind it, so it must not ACK it.
    let taken = control.url().trim_start_matches("http://").to_owned();
    let node_config = format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: pod-9}}
spec:
  admin: 127.0.0.1:0
  listeners: [{{name: web, address: \"{taken}\", protocol: http}}]
"
    );
    let (status, body) = control.apply("node.yaml", &node_config).await;
    assert_eq!(status, 200, "{body}");
    // No bootstrap file: the proxy waits for the control's first version and starts on it.
    let mut child = std::process::Command::new(strait_tests::process::proxy_bin())
        .args([
            "--control",
            &control.url(),
            "--node",
            "pod-9",
            "--token-file",
        ])
        .arg(control.token_file())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let exited = eventually("the proxy gives up", Duration::from_secs(10), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(!exited.success(), "{exited:?}");
    let p = proxy_status(&control, "pod-9").await;
    let nack = p["lastNack"].as_array().cloned().unwrap_or_default();
    assert!(
        nack.get(1)
            .and_then(|e| e.as_str())
            .is_some_and(|e| e.contains(&taken)),
        "the NACK carries the bind error: {p}"
    );
    assert!(p["lastAck"].is_null(), "never ACKed: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_what_is_served() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let control = Control::start();
    let (status, doc) = control.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 12, "{}", paths.len());
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for (path, operations) in paths {
        let concrete = path
            .replace("{kind}", "Service")
            .replace("{namespace}", "default")
            .replace("{name}", "nope")
            .replace("{id}", "nope")
            .replace("{topic}", "demo.topic");
        for method in operations.as_object().unwrap().keys() {
            let query = if concrete == "/v1/push/stream" {
                "?node=openapi"
            } else {
                ""
            };
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(format!("{}{concrete}{query}", control.url()))
                .header("authorization", format!("Bearer {}", control.token()))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
                .await
                .expect("answer")
                .expect("request");
            let status = resp.status().as_u16();
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            let routed_404 = status == 404
                && resp
                    .headers()
                    .get("content-type")
                    .is_some_and(|v| v.to_str().unwrap_or("").starts_with("application/json"));
            assert!(
                status != 404 || routed_404,
                "{method} {path} is documented but not served"
            );
        }
    }
}

async fn history(control: &Control, topic: &str) -> serde_json::Value {
    let (_, body) = control
        .call(Method::GET, &format!("/v1/events/{topic}/history"), None)
        .await;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_publish_mesh_events_on_the_bus() {
    let up = Upstream::start("up").await;
    up.fail_with(Some(500));
    let mut control = Control::start();
    let breaking = format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: up}}
spec:
  protocol: http1
  endpoints: [{{address: \"{}\"}}]
  circuitBreaker: {{failureThreshold: 2, openTimeout: 30s}}
",
        up.address()
    );
    control
        .apply(
            "mesh.yaml",
            &(breaking + &host_route("r", "web", "h", "up")),
        )
        .await;
    let proxy = control.attach(BOOTSTRAP, "pod-7");
    eventually("config applied", Duration::from_secs(5), || async {
        (upstream_of(&proxy, "h").await == "500 ").then_some(())
    })
    .await;
    upstream_of(&proxy, "h").await;
    assert_eq!(upstream_of(&proxy, "h").await, "503 circuit-open");

    let opened = eventually(
        "mesh.circuit.opened published",
        Duration::from_secs(5),
        || async {
            let body = history(&control, "mesh.circuit.opened").await;
            let items = body["items"]
                .as_array()
                .or(body["events"].as_array())
                .cloned()?;
            items.first().cloned()
        },
    )
    .await;
    assert_eq!(opened["data"]["service"], "up", "{opened}");
    assert_eq!(opened["source"], "proxy/pod-7", "{opened}");
    assert_eq!(opened["priority"], "high", "{opened}");
    let applied = history(&control, "mesh.config.applied").await;
    assert!(applied.to_string().contains("pod-7"), "{applied}");

    // Durable: the published events survive kill -9 of the control.
    control.restart();
    let body = history(&control, "mesh.circuit.opened").await;
    assert!(body.to_string().contains("proxy/pod-7"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_can_name_the_control_instead_of_the_command_line() {
    let a = Upstream::start("a").await;
    let control = Control::start();
    control
        .apply(
            "mesh.yaml",
            &(http1_service("a", &a.address()) + &host_route("r", "web", "h", "a")),
        )
        .await;
    let bootstrap = BOOTSTRAP.replace(
        "spec:\n",
        &format!(
            "spec:\n  control: {{address: \"{}\", node: pod-9, tokenFile: token}}\n",
            control.url()
        ),
    );
    let proxy = Proxy::start_with_files(&bootstrap, &[("token", control.token())]);
    eventually(
        "config from the control named in spec.control",
        Duration::from_secs(5),
        || async { (upstream_of(&proxy, "h").await == "a").then_some(()) },
    )
    .await;
    assert_eq!(proxy_status(&control, "pod-9").await["connected"], true);
}

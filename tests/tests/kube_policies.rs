//! `strait-control serve --policies kubernetes`: the mesh's policies are the cluster's Strait
//! custom resources and Gateway API HTTPRoutes, watched through the Kubernetes API stand-in
//! (`strait_tests::kube_api`, the real list/watch protocol over HTTPS with a kubeconfig),
//! validated as `straitctl apply` validates, pushed to a real proxy, and answered with
//! `status.conditions` on each object. Not tested against a real API server.

use std::time::Duration;

use serde_json::{json, Value};
use strait_tests::client::{get, http1};
use strait_tests::config::BOOTSTRAP;
use strait_tests::kube_api::KubeApi;
use strait_tests::{eventually, Control, Proxy, Upstream};

const STRAIT: &str = "strait.dev/v1alpha1";
const GATEWAY: &str = "gateway.networking.k8s.io/v1";

fn service(name: &str, address: &str) -> Value {
    json!({"apiVersion": STRAIT, "kind": "Service",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"protocol": "http1", "endpoints": [{"address": address}]}})
}

fn route(name: &str, host: &str, backend: &str) -> Value {
    json!({"apiVersion": STRAIT, "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"parentRefs": [{"name": "web"}], "hostnames": [host],
                    "rules": [{"backendRefs": [{"name": backend}]}]}})
}

async fn upstream_of(proxy: &Proxy, host: &str) -> String {
    match get(&http1(), &format!("{}/", proxy.url("web")), host, &[]).await {
        Ok(a) if a.status == 200 => a.header("x-upstream").to_owned(),
        Ok(a) => format!("{} {}", a.status.as_u16(), a.header("x-strait-reason")),
        Err(e) => e,
    }
}

/// A condition of `conditions` by type.
fn condition(conditions: &Value, kind: &str) -> Value {
    conditions
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
        .unwrap_or_default()
}

/// Waits until the object's `Accepted` condition (on `status.conditions`, or for a Gateway
/// API route in the control's `status.parents` entry) is `want` for its current generation.
async fn accepted(api: &KubeApi, api_version: &str, kind: &str, name: &str, want: &str) -> Value {
    let what = format!("{kind} shop/{name} Accepted={want}");
    eventually(&what, Duration::from_secs(10), || async {
        let object = api.get(api_version, kind, "shop", name)?;
        let conditions = if api_version == GATEWAY {
            object["status"]["parents"][0]["conditions"].clone()
        } else {
            object["status"]["conditions"].clone()
        };
        let accepted = condition(&conditions, "Accepted");
        let current = accepted["observedGeneration"] == object["metadata"]["generation"];
        (accepted["status"] == want && current).then_some(object)
    })
    .await
}

/// `straitctl ARGS` against `control`, off the async workers' backs.
fn straitctl(control: &Control, args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| control.straitctl(args))
}

async fn start(api: &KubeApi) -> (Control, Proxy) {
    let kubeconfig = api.kubeconfig().to_string_lossy().into_owned();
    let control =
        Control::start_with_args(&["--policies", "kubernetes", "--kubeconfig", &kubeconfig]);
    let proxy = control.attach(BOOTSTRAP, "pod-1");
    (control, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_reach_a_proxy_and_straitctl_lists_them_read_only() {
    let api = KubeApi::start().await;
    let a = Upstream::start("a").await;
    api.apply(service("a", &a.address()));
    api.apply(route("r", "shop.local", "a"));
    let (control, proxy) = start(&api).await;
    eventually("the route served", Duration::from_secs(10), || async {
        (upstream_of(&proxy, "shop.local").await == "a").then_some(())
    })
    .await;
    let object = accepted(&api, STRAIT, "HTTPRoute", "r", "True").await;
    let resolved = condition(&object["status"]["conditions"], "ResolvedRefs");
    assert_eq!(resolved["status"], "True", "{object}");
    accepted(&api, STRAIT, "Service", "a", "True").await;

    let out = straitctl(&control, &["get", "httproutes"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("shop") && text.contains(" r "),
        "{text}"
    );
    let dir = strait_tests::process::TempDir::new("kube-apply");
    let file = dir.path().join("svc.yaml");
    std::fs::write(&file, "apiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec: {protocol: http1, endpoints: [{address: \"127.0.0.1:1\"}]}\n").expect("write");
    let out = straitctl(&control, &["apply", "-f", &file.to_string_lossy()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("kubectl"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_resource_is_not_accepted_and_the_last_good_version_keeps_serving() {
    let api = KubeApi::start().await;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    api.apply(service("a", &a.address()));
    api.apply(service("b", &b.address()));
    api.apply(route("r", "shop.local", "a"));
    let (_control, proxy) = start(&api).await;
    eventually("the route served", Duration::from_secs(10), || async {
        (upstream_of(&proxy, "shop.local").await == "a").then_some(())
    })
    .await;

    api.apply(route("r", "shop.local", "nope"));
    let object = accepted(&api, STRAIT, "HTTPRoute", "r", "False").await;
    let conditions = &object["status"]["conditions"];
    let accepted_ = condition(conditions, "Accepted");
    let message = accepted_["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.rules[0].backendRefs[0]"), "{object}");
    assert!(
        message.contains("last accepted version keeps serving"),
        "{object}"
    );
    let resolved = condition(conditions, "ResolvedRefs");
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("False"), Some("BackendNotFound")),
        "{object}"
    );
    for _ in 0..5 {
        assert_eq!(
            upstream_of(&proxy, "shop.local").await,
            "a",
            "the last good route serves"
        );
    }

    let mut broken = service("b", &b.address());
    broken["spec"]["endpoints"][0]["address"] = json!("not-an-address");
    api.apply(broken);
    let object = accepted(&api, STRAIT, "Service", "b", "False").await;
    let message = condition(&object["status"]["conditions"], "Accepted")["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap_or_default()
            .contains("spec.endpoints[0].address"),
        "{object}"
    );

    api.apply(service("b", &b.address()));
    api.apply(route("r", "shop.local", "b"));
    accepted(&api, STRAIT, "HTTPRoute", "r", "True").await;
    eventually("the fixed route served", Duration::from_secs(5), || async {
        (upstream_of(&proxy, "shop.local").await == "b").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_api_httproute_routes_traffic_and_unsupported_fields_are_refused() {
    let api = KubeApi::start().await;
    let b = Upstream::start("b").await;
    api.apply(service("b", &b.address()));
    api.apply(json!({"apiVersion": GATEWAY, "kind": "HTTPRoute",
        "metadata": {"name": "gw", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "web"}], "hostnames": ["gw.local"],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [{"name": "b", "port": 8080}]}]}}));
    let (control, proxy) = start(&api).await;
    eventually(
        "the Gateway API route served",
        Duration::from_secs(10),
        || async { (upstream_of(&proxy, "gw.local").await == "b").then_some(()) },
    )
    .await;
    let object = accepted(&api, GATEWAY, "HTTPRoute", "gw", "True").await;
    assert_eq!(
        object["status"]["parents"][0]["controllerName"],
        "strait.dev/control"
    );
    assert_eq!(
        object["status"]["parents"][0]["parentRef"],
        json!({"name": "web"})
    );
    let out = straitctl(&control, &["get", "httproutes", "-n", "shop"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" gw "),
        "{out:?}"
    );

    api.apply(json!({"apiVersion": GATEWAY, "kind": "HTTPRoute",
        "metadata": {"name": "gw", "namespace": "shop"},
        "spec": {"parentRefs": [{"name": "web"}], "hostnames": ["gw.local"],
                 "rules": [{"backendRefs": [{"name": "b", "port": 8080}],
                            "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "x"}}]}]}}));
    let object = accepted(&api, GATEWAY, "HTTPRoute", "gw", "False").await;
    let accepted_ = condition(&object["status"]["parents"][0]["conditions"], "Accepted");
    assert_eq!(accepted_["reason"], "UnsupportedValue", "{object}");
    assert!(
        accepted_["message"]
            .as_str()
            .unwrap_or_default()
            .contains("URLRewrite"),
        "{object}"
    );
    assert_eq!(
        upstream_of(&proxy, "gw.local").await,
        "b",
        "the last good route serves"
    );
}

//! Kubernetes discovery end to end: the API server stand-in ([`KubeApi`]), the real control
//! following it (`--kubeconfig`, or the in-cluster environment), a real proxy attached to the
//! control, real upstreams. EndpointSlices as the API documentation shows them; what changes
//! in them reaches the proxy's `/clusters` and its traffic within a second, and a 410 Gone or
//! a dropped watch costs nothing but a relist or a resumed watch. A `tls.mode: mesh` Service
//! without identities expects the ServiceAccounts of its endpoints' pods, over a real mTLS hop.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strait_tests::client::{get, http1};
use strait_tests::config::BOOTSTRAP;
use strait_tests::kube_api::KubeApi;
use strait_tests::metrics::{cluster, clusters};
use strait_tests::{eventually, Control, Proxy, Upstream};

/// How soon a change in the cluster must show at the proxy.
const WITHIN: Duration = Duration::from_secs(1);
/// The first config: the control starts its watch, lists, the proxy connects.
const FIRST: Duration = Duration::from_secs(20);

/// The Strait side: a Service following Kubernetes Service `shop/reviews` on its port `http`,
/// and a route to it on listener `web`.
const MESH: &str = "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {name: reviews}
spec:
  protocol: http1
  discovery: kubernetes
  kubernetes: {service: reviews, namespace: shop, port: http}
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: reviews}]}]
";

/// Pods behind Kubernetes Service `reviews`: upstreams on 127.0.0.11, .12, ... all on one
/// port, as a Service's pods are (each its own IP, the same target port).
struct Pods {
    upstreams: Vec<Upstream>,
    port: u16,
}

impl Pods {
    async fn start(names: &[&str]) -> Self {
        'attempt: for _ in 0..20 {
            let first = Upstream::http1_at(names[0], SocketAddr::from(([127, 0, 0, 11], 0)))
                .await
                .expect("bind");
            let port = first.addr.port();
            let mut upstreams = vec![first];
            for (i, name) in names.iter().enumerate().skip(1) {
                let ip = [127, 0, 0, 11 + i as u8];
                match Upstream::http1_at(name, SocketAddr::from((ip, port))).await {
                    Ok(u) => upstreams.push(u),
                    Err(_) => continue 'attempt,
                }
            }
            return Self { upstreams, port };
        }
        panic!("no port free on every loopback address");
    }

    fn ip(&self, name: &str) -> IpAddr {
        self.upstream(name).addr.ip()
    }

    fn address(&self, name: &str) -> String {
        self.upstream(name).address()
    }

    fn upstream(&self, name: &str) -> &Upstream {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The Pod objects, with their ServiceAccount, as the API serves them.
    fn register(&self, api: &KubeApi) {
        for u in &self.upstreams {
            pod(api, &format!("reviews-{}", u.name), u.addr.ip(), "reviews");
        }
    }
}

/// An endpoint's conditions, as the EndpointSlice controller sets them.
#[derive(Clone, Copy)]
enum State {
    Ready,
    NotReady,
    /// Shutting down but still serving (`ready: false, serving: true, terminating: true`).
    Terminating,
}

/// EndpointSlice `reviews-abc` of Service `shop/reviews` (discovery.k8s.io/v1, as the API
/// reference shows it) with `endpoints` in their states, each naming its Pod.
fn slice(api: &KubeApi, pods: &Pods, endpoints: &[(&str, State)]) -> Value {
    let endpoints: Vec<(IpAddr, String, State)> = endpoints
        .iter()
        .map(|(name, state)| (pods.ip(name), format!("reviews-{name}"), *state))
        .collect();
    slice_at(api, pods.port, &endpoints)
}

/// The same slice, its endpoints given as (address, Pod name, state) on one `port`.
fn slice_at(api: &KubeApi, port: u16, endpoints: &[(IpAddr, String, State)]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(ip, pod, state)| {
            let (ready, serving, terminating) = match state {
                State::Ready => (true, true, false),
                State::NotReady => (false, false, false),
                State::Terminating => (false, true, true),
            };
            let uid = api.get("v1", "Pod", "shop", pod).expect("pod")["metadata"]["uid"].clone();
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "nodeName": "node-1",
                "zone": "zone-a",
                "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": uid},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "reviews-abc",
            "namespace": "shop",
            "generateName": "reviews-",
            "labels": {
                "kubernetes.io/service-name": "reviews",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "reviews",
                                 "uid": "4b3c3f0e-0000-4000-8000-00000000000a",
                                 "controller": true, "blockOwnerDeletion": true}],
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": port, "appProtocol": "http"}],
        "endpoints": endpoints,
    })
}

/// Pod `shop/NAME` running as ServiceAccount `service_account`.
fn pod(api: &KubeApi, name: &str, ip: IpAddr, service_account: &str) {
    api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "reviews"}},
        "spec": {"serviceAccountName": service_account,
                 "containers": [{"name": "app", "image": "reviews:1"}]},
        "status": {"phase": "Running", "podIP": ip.to_string()},
    }));
}

fn set(api: &KubeApi, pods: &Pods, endpoints: &[(&str, State)]) {
    api.apply(slice(api, pods, endpoints));
}

/// The endpoints the proxy has for `reviews`.
async fn endpoints_at(proxy: &Proxy) -> BTreeSet<String> {
    let all = clusters(proxy.admin()).await;
    if !all["services"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["name"] == "reviews"))
    {
        return BTreeSet::new();
    }
    cluster(&all, "reviews")["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str().map(str::to_owned))
        .collect()
}

/// Waits (at most `within`) until the proxy's endpoints are exactly `names`'s addresses;
/// returns how long it took.
async fn reaches(proxy: &Proxy, pods: &Pods, names: &[&str], within: Duration) -> Duration {
    let want: BTreeSet<String> = names.iter().map(|n| pods.address(n)).collect();
    let started = Instant::now();
    eventually(
        &format!("the proxy's endpoints are {want:?}"),
        within,
        || async { (endpoints_at(proxy).await == want).then_some(()) },
    )
    .await;
    started.elapsed()
}

/// Who answers `path` through the proxy: the upstream's name, or the status and reason.
async fn served_by(proxy: &Proxy, path: &str) -> String {
    match get(
        &http1(),
        &format!("{}{path}", proxy.url("web")),
        "reviews.shop",
        &[],
    )
    .await
    {
        Ok(a) if a.status == 200 => a.header("x-upstream").to_owned(),
        Ok(a) => format!("{} {}", a.status.as_u16(), a.header("x-strait-reason")),
        Err(e) => e,
    }
}

/// Who answers 8 requests in a row.
async fn traffic(proxy: &Proxy) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..8 {
        seen.insert(served_by(proxy, "/").await);
    }
    seen
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// A control with `control_args` and `env`, holding [`MESH`], and a proxy attached to it.
async fn mesh(control_args: &[&str], env: &[(String, String)]) -> (Control, Proxy) {
    let control = Control::start_with_env(control_args, env);
    let (status, body) = control.apply("mesh.yaml", MESH).await;
    assert_eq!(status, 200, "{body}");
    let proxy = control.attach(BOOTSTRAP, "pod-1");
    (control, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slice_changes_reach_the_proxy_within_a_second() {
    let api = KubeApi::start().await;
    let pods = Pods::start(&["a", "b", "c"]).await;
    pods.register(&api);
    set(&api, &pods, &[("a", State::Ready)]);
    let kubeconfig = api.kubeconfig().to_string_lossy().into_owned();
    let (control, proxy) = mesh(&["--kubeconfig", &kubeconfig], &[]).await;
    reaches(&proxy, &pods, &["a"], FIRST).await;
    assert_eq!(traffic(&proxy).await, names(&["a"]));

    // Added: b ready, c not ready yet.
    set(
        &api,
        &pods,
        &[
            ("a", State::Ready),
            ("b", State::Ready),
            ("c", State::NotReady),
        ],
    );
    let took = reaches(&proxy, &pods, &["a", "b"], WITHIN).await;
    println!("added: {took:?}");
    assert_eq!(traffic(&proxy).await, names(&["a", "b"]));

    // c becomes ready, b not ready.
    set(
        &api,
        &pods,
        &[
            ("a", State::Ready),
            ("b", State::NotReady),
            ("c", State::Ready),
        ],
    );
    let took = reaches(&proxy, &pods, &["a", "c"], WITHIN).await;
    println!("not ready: {took:?}");
    assert_eq!(traffic(&proxy).await, names(&["a", "c"]));

    // a terminates while serving slow requests: they finish on a, new ones go to c only.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{}/delay/1500", proxy.url("web"));
            tokio::spawn(async move { get(&http1(), &url, "reviews.shop", &[]).await })
        })
        .collect();
    let a_address = pods.address("a");
    eventually(
        "a request in flight on a",
        Duration::from_secs(10),
        || async {
            let all = clusters(proxy.admin()).await;
            cluster(&all, "reviews")["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["address"] == a_address.as_str() && e["inFlight"].as_u64() > Some(0))
                .then_some(())
        },
    )
    .await;
    set(
        &api,
        &pods,
        &[
            ("a", State::Terminating),
            ("b", State::NotReady),
            ("c", State::Ready),
        ],
    );
    let took = reaches(&proxy, &pods, &["c"], WITHIN).await;
    println!("terminating: {took:?}");
    let hits_on_a = pods.upstream("a").hits();
    assert_eq!(traffic(&proxy).await, names(&["c"]));
    assert_eq!(
        pods.upstream("a").hits(),
        hits_on_a,
        "no new request reaches a terminating endpoint"
    );
    let mut finished = BTreeSet::new();
    for request in slow {
        let answer = request
            .await
            .expect("task")
            .expect("in-flight request answered");
        assert_eq!(answer.status, 200, "in-flight requests finish");
        finished.insert(answer.header("x-upstream").to_owned());
    }
    assert!(
        finished.contains("a"),
        "a's in-flight request finished on a: {finished:?}"
    );

    // Removed: the slice goes (the Service's pods are all gone).
    assert!(api.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        "shop",
        "reviews-abc"
    ));
    let took = reaches(&proxy, &pods, &[], WITHIN).await;
    println!("removed: {took:?}");
    assert_eq!(served_by(&proxy, "/").await, "503 no-healthy-endpoints");
    drop(control);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_gone_relists_and_a_dropped_watch_resumes() {
    let api = KubeApi::start().await;
    let pods = Pods::start(&["a", "b"]).await;
    pods.register(&api);
    set(&api, &pods, &[("a", State::Ready)]);
    // In the cluster: the in-cluster environment (the control's ServiceAccount).
    let (control, proxy) = mesh(&[], &api.env()).await;
    reaches(&proxy, &pods, &["a"], FIRST).await;
    let lists = api.lists_of("endpointslices");
    assert_eq!(lists, 1, "{:?}", api.requests());

    // etcd compacted past the watch: 410 Gone in the stream, and the change after it is seen
    // through a new list.
    api.expire_watches();
    set(&api, &pods, &[("a", State::Ready), ("b", State::Ready)]);
    reaches(&proxy, &pods, &["a", "b"], Duration::from_secs(10)).await;
    assert_eq!(
        api.lists_of("endpointslices"),
        2,
        "relisted after 410: {:?}",
        api.requests()
    );
    assert_eq!(traffic(&proxy).await, names(&["a", "b"]));

    // A dropped stream: the control resumes watching from where it was, without a list.
    eventually(
        "the watch is open again",
        Duration::from_secs(10),
        || async { (api.open_watches() > 0).then_some(()) },
    )
    .await;
    api.close_watches();
    set(&api, &pods, &[("b", State::Ready)]);
    reaches(&proxy, &pods, &["b"], Duration::from_secs(10)).await;
    assert_eq!(
        api.lists_of("endpointslices"),
        2,
        "resumed, not relisted: {:?}",
        api.requests()
    );
    assert_eq!(traffic(&proxy).await, names(&["b"]));
    drop(control);
}

const TD: &str = "mesh.test";

/// A proxy for identity shop/SA (node SA) with `listeners`, attached to `control` with a join
/// token, once it is ready (certificate and the control's config in).
async fn meshed_proxy(control: &Control, service_account: &str, listeners: &str) -> Proxy {
    let output = control.straitctl(&[
        "identity",
        "token",
        "--namespace",
        "shop",
        "--service-account",
        service_account,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let bootstrap = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: {service_account}}}
spec:
  admin: 127.0.0.1:0
  identity: {{trustDomain: {TD}, namespace: shop, serviceAccount: {service_account}}}
  control: {{address: \"{}\", node: {service_account}, tokenFile: join-token}}
  listeners: [{listeners}]
",
        control.url()
    );
    let proxy = Proxy::start_with_files(&bootstrap, &[("join-token", &token)]);
    eventually("the proxy is ready", Duration::from_secs(20), || async {
        let (status, _) = strait_tests::metrics::admin_get(proxy.admin(), "/ready").await;
        (status == 200).then_some(())
    })
    .await;
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_service_expects_the_service_accounts_of_its_pods() {
    let api = KubeApi::start().await;
    let app = Upstream::start("reviews-app").await;
    let kubeconfig = api.kubeconfig().to_string_lossy().into_owned();
    let control = Control::start_with_args(&["--trust-domain", TD, "--kubeconfig", &kubeconfig]);
    // The reviews pod: a proxy with identity shop/reviews, mTLS only, in front of the app; and
    // `reviews`, mesh, with no identities: the control names them from the pods.
    let docs = format!(
        "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: reviews-app}}
spec:
  protocol: http1
  endpoints: [{{address: \"{}\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: reviews-app}}
spec:
  parentRefs: [{{name: inbound}}]
  rules: [{{backendRefs: [{{name: reviews-app}}]}}]
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: reviews}}
spec:
  protocol: http1
  discovery: kubernetes
  kubernetes: {{service: reviews, namespace: shop, port: http}}
  tls: {{mode: mesh}}
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: reviews}}
spec:
  parentRefs: [{{name: web}}]
  rules: [{{backendRefs: [{{name: reviews}}]}}]
",
        app.address()
    );
    let (status, body) = control.apply("mesh.yaml", &docs).await;
    assert_eq!(status, 200, "{body}");
    let reviews = meshed_proxy(
        &control,
        "reviews",
        "{name: inbound, address: 127.0.0.1:0, protocol: http, tls: {mode: mutual}}",
    )
    .await;
    let frontend = meshed_proxy(
        &control,
        "frontend",
        "{name: web, address: 127.0.0.1:0, protocol: http}",
    )
    .await;
    let inbound = reviews.listener("inbound");
    pod(&api, "reviews-a", inbound.ip(), "reviews");
    let endpoint = vec![(inbound.ip(), "reviews-a".to_owned(), State::Ready)];
    api.apply(slice_at(&api, inbound.port(), &endpoint));

    eventually("reviews answers through the mTLS hop", FIRST, || async {
        (served_by(&frontend, "/").await == "reviews-app").then_some(())
    })
    .await;
    let config = strait_tests::metrics::admin_get(frontend.admin(), "/config")
        .await
        .1;
    assert!(
        config.contains("spiffe://mesh.test/ns/shop/sa/reviews"),
        "{config}"
    );

    // The same address, now said to be a pod of another ServiceAccount: the peer's certificate
    // no longer matches what the Service expects.
    pod(&api, "reviews-b", inbound.ip(), "impostor");
    let endpoint = vec![(inbound.ip(), "reviews-b".to_owned(), State::Ready)];
    api.apply(slice_at(&api, inbound.port(), &endpoint));
    eventually(
        "the other identity is expected",
        Duration::from_secs(10),
        || async { (served_by(&frontend, "/").await == "502 tls-failure").then_some(()) },
    )
    .await;
}

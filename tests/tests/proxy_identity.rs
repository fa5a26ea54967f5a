//! The proxy's identity from the control, as a user sees it: a proxy holding a join token gets
//! a certificate for exactly its identity before it reports `/ready`; a token for another
//! identity leaves it unready, saying why; certificates renewed under a request loop with no
//! failed request; the push stream over mTLS; the first certificate with a Kubernetes
//! ServiceAccount token, reviewed by a stand-in API server.

use std::time::Duration;

use strait_tests::client::{get, http1};
use strait_tests::metrics::admin_get;
use strait_tests::{eventually, Control, Proxy, Upstream};

const TD: &str = "example.org";
const REVIEWS: &str = "spiffe://example.org/ns/default/sa/reviews";

/// `straitctl identity token` for default/SA.
fn join_token(control: &Control, sa: &str) -> String {
    let output = control.straitctl(&[
        "identity",
        "token",
        "--namespace",
        "default",
        "--service-account",
        sa,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A bootstrap for the reviews identity attached to `control` as node `reviews-pod`, with
/// `extra` documents.
fn bootstrap(control: &Control, extra: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: reviews-pod}}
spec:
  admin: 127.0.0.1:0
  drainTimeout: 2s
  identity: {{trustDomain: {TD}, namespace: default, serviceAccount: reviews}}
  control: {{address: \"{}\", node: reviews-pod, tokenFile: join-token}}
  listeners:
    - {{name: web, address: 127.0.0.1:0, protocol: http}}
{extra}",
        control.url()
    )
}

/// A service and a route for listener `web` (applied to the control).
fn routed_to(upstream: &Upstream) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  protocol: http1
  endpoints: [{{address: \"{}\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: all}}
spec:
  parentRefs: [{{name: web}}]
  rules: [{{backendRefs: [{{name: api}}]}}]
",
        upstream.addr
    )
}

async fn identity(proxy: &Proxy) -> serde_json::Value {
    let (_, body) = admin_get(proxy.admin(), "/identity").await;
    serde_json::from_str(&body).unwrap_or_default()
}

/// Waits for `/ready`; checks that whenever it answers 200 the identity is installed.
async fn ready_with_identity(proxy: &Proxy) -> serde_json::Value {
    eventually("the proxy is ready", Duration::from_secs(20), || async {
        let (status, _) = admin_get(proxy.admin(), "/ready").await;
        if status != 200 {
            return None;
        }
        let id = identity(proxy).await;
        assert_eq!(
            id["status"],
            "active",
            "ready before the identity was installed: {id}\n{}",
            proxy.logs().join("\n")
        );
        Some(id)
    })
    .await
}

#[tokio::test]
async fn a_join_token_gets_a_certificate_for_exactly_the_proxys_identity_before_ready() {
    let control = Control::start_with_args(&["--trust-domain", TD]);
    let token = join_token(&control, "reviews");
    let proxy = Proxy::start_with_files(&bootstrap(&control, ""), &[("join-token", &token)]);
    let id = ready_with_identity(&proxy).await;
    assert_eq!(id["spiffeId"], REVIEWS, "{id}");
    assert_eq!(id["source"], "control", "{id}");
    let bundle = control.bundle();
    let root = strait_tests::tls::certificates(&bundle);
    assert_eq!(id["trustBundle"].as_array().map(Vec::len), Some(root.len()));
    // The control issued it for the join token, and the push stream (which takes no token
    // over TLS: the proxy's certificate speaks) is connected.
    assert!(
        control
            .logs()
            .iter()
            .any(|l| l.contains("issued a certificate") && l.contains(REVIEWS)),
        "{}",
        control.logs().join("\n")
    );
    let proxies = control.straitctl(&["proxies"]);
    let listed = String::from_utf8_lossy(&proxies.stdout);
    assert!(listed.contains("reviews-pod"), "{listed}");
    // Nothing in the proxy's view shows the key.
    let (_, config) = admin_get(proxy.admin(), "/config").await;
    assert!(!config.contains("PRIVATE KEY"));
    assert!(!identity(&proxy).await.to_string().contains("PRIVATE KEY"));
    assert!(!proxy.logs().iter().any(|l| l.contains("PRIVATE KEY")));
}

#[tokio::test]
async fn a_join_token_for_another_identity_is_refused_and_the_proxy_stays_unready() {
    let control = Control::start_with_args(&["--trust-domain", TD]);
    let token = join_token(&control, "ratings");
    let proxy = Proxy::start_with_files(&bootstrap(&control, ""), &[("join-token", &token)]);
    let line = proxy.log_line("no certificate from the control").await;
    assert!(line.contains("403"), "{line}");
    assert!(line.contains("ratings"), "{line}");
    let (status, _) = admin_get(proxy.admin(), "/ready").await;
    assert_eq!(status, 503);
    let id = identity(&proxy).await;
    assert_eq!(id["status"], "pending", "{id}");
    assert_eq!(id["source"], "control", "{id}");
}

#[tokio::test]
async fn a_token_of_another_control_is_refused_before_anything_is_sent() {
    let control = Control::start_with_args(&["--trust-domain", TD]);
    let other = Control::start_with_args(&["--trust-domain", TD]);
    let token = join_token(&other, "reviews");
    let proxy = Proxy::start_with_files(&bootstrap(&control, ""), &[("join-token", &token)]);
    let line = proxy.log_line("no certificate from the control").await;
    assert!(line.contains("not the control the token is for"), "{line}");
    assert!(!control
        .logs()
        .iter()
        .any(|l| l.contains("issued a certificate")));
}

#[tokio::test]
async fn certificates_are_renewed_under_a_request_loop_without_a_failed_request() {
    let upstream = Upstream::start("api").await;
    let control = Control::start_with_args(&["--trust-domain", TD, "--cert-ttl", "6s"]);
    let (status, body) = control.apply("api.yaml", &routed_to(&upstream)).await;
    assert_eq!(status, 200, "{body}");
    let token = join_token(&control, "reviews");
    let proxy = Proxy::start_with_files(&bootstrap(&control, ""), &[("join-token", &token)]);
    let first = ready_with_identity(&proxy).await;
    let client = http1();
    let url = format!("{}/loop", proxy.url("web"));
    let mut serials = vec![first["serial"].as_str().unwrap_or_default().to_owned()];
    let mut requests = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while serials.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than 2 renewals in 30s: {serials:?}\n{}",
            proxy.logs().join("\n")
        );
        let answer = get(&client, &url, "api", &[]).await;
        let status = answer.map(|a| a.status).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "request {requests} failed");
        requests += 1;
        let serial = identity(&proxy).await["serial"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
    }
    // Renewals were made with the certificate, not the join token.
    let renewed = control
        .logs()
        .iter()
        .filter(|l| l.contains("issued a certificate") && l.contains("\"certificate\""))
        .count();
    assert!(renewed >= 2, "{}", control.logs().join("\n"));
    // The push stream stayed up through the renewals.
    let (status, _) = admin_get(proxy.admin(), "/ready").await;
    assert_eq!(status, 200);
    assert!(requests > 0);
}

/// A pod's bootstrap: the projected ServiceAccount token as `tokenFile`, the trust bundle
/// mounted as `trustBundleFile` (a ServiceAccount token carries no bundle hash).
fn pod_bootstrap(control: &Control) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: reviews-pod}}
spec:
  admin: 127.0.0.1:0
  identity: {{trustDomain: {TD}, namespace: default, serviceAccount: reviews, trustBundleFile: roots.pem}}
  control: {{address: \"{}\", node: reviews-pod, tokenFile: strait-token}}
  listeners:
    - {{name: web, address: 127.0.0.1:0, protocol: http}}
",
        control.url()
    )
}

/// What a projected token looks like (the stand-in only compares it).
const POD_JWT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsic3RyYWl0Il19.c2lnbmF0dXJl";

#[tokio::test]
async fn in_kubernetes_the_first_certificate_comes_with_the_pods_service_account_token() {
    let kube = strait_tests::kube::TokenReviewServer::start().await;
    kube.add_service_account(POD_JWT, "default", "reviews");
    let control = Control::start_with_env(&["--trust-domain", TD], &kube.env());
    let proxy = Proxy::start_with_files(
        &pod_bootstrap(&control),
        &[("strait-token", POD_JWT), ("roots.pem", &control.bundle())],
    );
    let id = ready_with_identity(&proxy).await;
    assert_eq!(id["spiffeId"], REVIEWS, "{id}");
    assert_eq!(id["source"], "control", "{id}");
    let reviews = kube.reviews.lock().expect("reviews").clone();
    let (bearer, review) = reviews.first().expect("a TokenReview was asked for");
    assert_eq!(bearer, "control-sa-token", "the control's own token");
    assert_eq!(review["kind"], "TokenReview");
    assert_eq!(review["spec"]["token"], POD_JWT);
    assert_eq!(review["spec"]["audiences"], serde_json::json!(["strait"]));
    assert!(
        control
            .logs()
            .iter()
            .any(|l| l.contains("issued a certificate") && l.contains("kubernetes")),
        "{}",
        control.logs().join("\n")
    );
}

#[tokio::test]
async fn a_service_account_token_gets_only_its_own_identity_and_an_unknown_one_none() {
    let kube = strait_tests::kube::TokenReviewServer::start().await;
    kube.add_service_account(POD_JWT, "default", "ratings");
    let control = Control::start_with_env(&["--trust-domain", TD], &kube.env());
    let other = Proxy::start_with_files(
        &pod_bootstrap(&control),
        &[("strait-token", POD_JWT), ("roots.pem", &control.bundle())],
    );
    let unknown = Proxy::start_with_files(
        &pod_bootstrap(&control),
        &[
            ("strait-token", "not-a-known-token"),
            ("roots.pem", &control.bundle()),
        ],
    );
    for (proxy, status) in [(&other, "403"), (&unknown, "401")] {
        let line = proxy.log_line("no certificate from the control").await;
        assert!(line.contains(status), "{line}");
        let (ready, _) = admin_get(proxy.admin(), "/ready").await;
        assert_eq!(ready, 503);
    }
    assert!(!control
        .logs()
        .iter()
        .any(|l| l.contains("issued a certificate")));
}

//! AuthorizationPolicy end to end: requests a policy denies are answered 403 `forbidden` by the
//! proxy and never reach the upstream, paths are judged in their normalised form, route and
//! listener targets, hot reload, the decision counter, TCP listeners, what a peer without
//! an identity (plaintext) is allowed, and policies on the identity and namespace of a real
//! mTLS peer (a client proxy's outbound `tls.mode: mesh` to an inbound `tls.mode: mutual`).

use std::time::Duration;

use strait_tests::client::{exact_target, get, h2c, http1};
use strait_tests::config::BOOTSTRAP;
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{reload, scrape, value};
use strait_tests::tls::{Leaf, TestCa};
use strait_tests::{eventually, Control, Proxy, TcpEcho, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An AuthorizationPolicy document; `spec` is YAML lines indented by two spaces.
fn policy(name: &str, spec: &str) -> String {
    format!("---\napiVersion: strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}\n")
}

/// Listener `web` routing every request to `app`, plus `extra` documents.
fn web_to(app: &Upstream, extra: &str) -> String {
    proxy("")
        + &service("app", "http1", &[(app.address(), 1)], "")
        + &http_route(
            "api",
            "  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: app}]}]",
        )
        + extra
}

/// Sends one HTTP/1.1 request through `proxy`'s `web` with the target exactly as written;
/// returns the status and `x-strait-reason` (empty when absent).
async fn exchange(proxy: &Proxy, method: &str, target: &str) -> (u16, String) {
    exact_target(proxy.listener("web"), "shop.local", method, target).await
}

const READERS: &str = "  targetRefs: [{kind: Listener, name: web}]
  action: ALLOW
  rules:
    - to:
        - methods: [GET, HEAD]
          paths: [\"/api/*\", \"/version\"]";

const NO_INTERNAL: &str = "  targetRefs: [{kind: Listener, name: web}]
  action: DENY
  rules: [{to: [{paths: [\"/api/internal/*\"]}]}]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_normalised_paths_are_decided_and_denied_requests_reach_no_upstream() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&web_to(
        &app,
        &(policy("readers", READERS) + &policy("no-internal", NO_INTERNAL)),
    ));
    let forbidden = (403, "forbidden".to_owned());
    let served = (200, String::new());
    let cases = [
        ("GET", "/api/users", &served),
        ("HEAD", "/api/users", &served),
        ("GET", "/api/./users", &served),
        ("GET", "/version", &served),
        ("POST", "/api/users", &forbidden),
        ("DELETE", "/api/users", &forbidden),
        ("GET", "/version/more", &forbidden),
        ("GET", "/admin", &forbidden),
        ("GET", "/api/../admin", &forbidden),
        ("GET", "/api/%2e%2e/admin", &forbidden),
        ("GET", "/api/%2E%2E/admin", &forbidden),
        ("GET", "//api//..//admin", &forbidden),
        // Allowed by `readers`, but DENY policies come first, whatever the spelling.
        ("GET", "/api/internal/keys", &forbidden),
        ("GET", "/api/public/../internal/keys", &forbidden),
        ("GET", "/api/public/%2e%2e/internal/keys", &forbidden),
        ("GET", "/api//internal/keys", &forbidden),
    ];
    for (method, target, expected) in cases {
        assert_eq!(
            &exchange(&proxy, method, target).await,
            expected,
            "{method} {target}"
        );
    }
    // HTTP/2 goes through the same phase.
    let a = get(
        &h2c(),
        &format!("{}/api/%2e%2e/admin", proxy.url("web")),
        "shop.local",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.header("x-strait-reason")),
        (403, "forbidden")
    );
    let allowed = cases.iter().filter(|c| c.2 .0 == 200).count();
    assert_eq!(
        app.hits(),
        allowed,
        "only allowed requests reach the upstream"
    );

    let metrics = scrape(proxy.admin()).await;
    assert!(
        metrics.contains("# HELP strait_authz_decisions_total"),
        "described"
    );
    let decisions = |policy: &str, action: &str, result: &str| {
        value(
            &metrics,
            "strait_authz_decisions_total",
            &[("policy", policy), ("action", action), ("result", result)],
        )
    };
    assert_eq!(
        decisions("default/readers", "ALLOW", "allow"),
        Some(allowed as f64)
    );
    assert_eq!(decisions("default/no-internal", "DENY", "deny"), Some(4.0));
    assert_eq!(
        decisions("default", "DENY", "deny"),
        Some((cases.len() + 1 - allowed - 4) as f64),
        "denied because no ALLOW rule matched (the HTTP/2 request included)"
    );
    // Denied requests are answered by the proxy, not counted under a service.
    assert_eq!(
        value(
            &metrics,
            "strait_requests_total",
            &[("listener", "web"), ("service", "app"), ("code", "403")]
        ),
        Some((cases.len() + 1 - allowed) as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_policy_applies_to_the_requests_its_route_serves_only() {
    let app = Upstream::start("app").await;
    let yaml = proxy("")
        + &service("app", "http1", &[(app.address(), 1)], "")
        + &http_route(
            "admin",
            "  rules: [{matches: [{path: {value: /admin}}], backendRefs: [{name: app}]}]",
        )
        + &http_route(
            "public",
            "  rules: [{matches: [{path: {value: /public}}], backendRefs: [{name: app}]}]",
        )
        + &policy(
            "admin-read-only",
            "  targetRefs: [{kind: HTTPRoute, name: admin}]\n  rules: [{to: [{methods: [GET]}]}]",
        );
    let proxy = Proxy::start(&yaml);
    assert_eq!(exchange(&proxy, "GET", "/admin/users").await.0, 200);
    assert_eq!(
        exchange(&proxy, "POST", "/admin/users").await,
        (403, "forbidden".to_owned())
    );
    // The same path spelt through another route's prefix is still the admin route's.
    assert_eq!(
        exchange(&proxy, "POST", "/public/../admin/users").await,
        (403, "forbidden".to_owned())
    );
    assert_eq!(exchange(&proxy, "POST", "/public/form").await.0, 200);
    assert_eq!(
        exchange(&proxy, "POST", "/elsewhere").await,
        (404, "no-route".to_owned()),
        "a route's policy does not reach requests no route serves"
    );
    assert_eq!(app.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_peer_has_no_identity_and_listener_policies_apply_before_routing() {
    let app = Upstream::start("app").await;
    let only_productpage = policy(
        "only-productpage",
        "  targetRefs: [{kind: Listener, name: web}]
  rules: [{from: [{identities: [\"spiffe://cluster.local/ns/default/sa/productpage\"]}]}]",
    );
    let proxy = Proxy::start(&web_to(&app, &only_productpage));
    assert_eq!(
        exchange(&proxy, "GET", "/api").await,
        (403, "forbidden".to_owned())
    );
    let unrouted = strait_tests::config::proxy("")
        + &service("app", "http1", &[(app.address(), 1)], "")
        + &http_route(
            "api",
            "  rules: [{matches: [{path: {value: /api}}], backendRefs: [{name: app}]}]",
        )
        + &only_productpage;
    reload(&proxy, &unrouted).await;
    assert_eq!(
        exchange(&proxy, "GET", "/nowhere").await,
        (403, "forbidden".to_owned()),
        "the listener's policy is checked before routing: 403, not 404"
    );
    let from_namespace = policy(
        "from-default",
        "  targetRefs: [{kind: Listener, name: web}]\n  rules: [{from: [{namespaces: [default]}]}]",
    );
    reload(&proxy, &web_to(&app, &from_namespace)).await;
    assert_eq!(
        exchange(&proxy, "GET", "/api").await,
        (403, "forbidden".to_owned())
    );
    // A DENY naming identities does not match a peer that has none.
    let deny_productpage = policy(
        "deny-productpage",
        "  targetRefs: [{kind: Listener, name: web}]
  action: DENY
  rules: [{from: [{identities: [\"spiffe://cluster.local/ns/default/sa/*\"]}]}]",
    );
    reload(&proxy, &web_to(&app, &deny_productpage)).await;
    assert_eq!(exchange(&proxy, "GET", "/api").await.0, 200);
    assert_eq!(app.hits(), 1);
    let metrics = scrape(proxy.admin()).await;
    assert_eq!(
        value(
            &metrics,
            "strait_authz_decisions_total",
            &[
                ("policy", "default"),
                ("action", "ALLOW"),
                ("result", "allow")
            ]
        ),
        Some(1.0),
        "no DENY matched and no ALLOW is in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_takes_effect_on_reload() {
    let app = Upstream::start("app").await;
    let proxy = Proxy::start(&web_to(&app, ""));
    let url = format!("{}/api/orders", proxy.url("web"));
    let status = || async {
        let a = get(&http1(), &url, "shop.local", &[]).await.unwrap();
        (a.status.as_u16(), a.header("x-strait-reason").to_owned())
    };
    assert_eq!(status().await.0, 200);
    let deny = |paths: &str| {
        policy(
            "freeze",
            &format!("  targetRefs: [{{kind: Listener, name: web}}]\n  action: DENY\n  rules: [{{to: [{{paths: [\"{paths}\"]}}]}}]"),
        )
    };
    reload(&proxy, &web_to(&app, &deny("/api/*"))).await;
    assert_eq!(status().await, (403, "forbidden".to_owned()));
    reload(&proxy, &web_to(&app, &deny("/other/*"))).await;
    assert_eq!(status().await.0, 200);
    reload(&proxy, &web_to(&app, "")).await;
    assert_eq!(status().await.0, 200);
    assert_eq!(app.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_is_refused_on_reload_and_the_last_good_one_kept() {
    let app = Upstream::start("app").await;
    let deny_all = policy(
        "deny-all",
        "  targetRefs: [{kind: Listener, name: web}]\n  action: DENY\n  rules: [{}]",
    );
    let proxy = Proxy::start(&web_to(&app, &deny_all));
    assert_eq!(exchange(&proxy, "GET", "/").await.0, 403);
    let bad = policy(
        "deny-all",
        "  targetRefs: [{kind: Listener, name: nope}]\n  action: DENY\n  rules: [{}]",
    );
    proxy.write_config(&web_to(&app, &bad));
    proxy.signal("HUP");
    eventually(
        "the reload is rejected",
        Duration::from_secs(10),
        || async {
            let metrics = scrape(proxy.admin()).await;
            value(
                &metrics,
                "strait_config_reloads_total",
                &[("result", "rejected")],
            )
            .filter(|&n| n >= 1.0)
        },
    )
    .await;
    assert!(
        proxy
            .logs()
            .iter()
            .any(|l| l.contains("spec.targetRefs[0].name: no listener `nope`")),
        "the error names the field"
    );
    assert_eq!(exchange(&proxy, "GET", "/").await.0, 403);
    assert_eq!(app.hits(), 0);
}

fn tcp_with(echo: &TcpEcho, extra: &str) -> String {
    proxy("")
        + &service("echo", "tcp", &[(echo.addr.to_string(), 1)], "")
        + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: echo}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: echo}]\n"
        + extra
}

/// Writes `hello`, half-closes and reads what comes back until EOF (5 s at most).
async fn echoed(proxy: &Proxy) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(proxy.listener("db"))
        .await
        .unwrap();
    // The proxy may already have closed a denied connection: a failed write is an answer too.
    let _ = stream.write_all(b"hello").await;
    let _ = stream.shutdown().await;
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut back))
        .await
        .expect("the proxy closes or echoes within 5 s");
    // A reset is a close too.
    let _ = read;
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_closes_connections_its_policies_deny() {
    let echo = TcpEcho::start().await;
    let deny_all = policy(
        "deny-all",
        "  targetRefs: [{kind: Listener, name: db}]\n  action: DENY\n  rules: [{}]",
    );
    let proxy = Proxy::start(&tcp_with(&echo, &deny_all));
    assert_eq!(echoed(&proxy).await, b"", "closed without a byte");
    let only_identified = policy(
        "only-identified",
        "  targetRefs: [{kind: Listener, name: db}]\n  rules: [{from: [{identities: [\"*\"]}]}]",
    );
    reload(&proxy, &tcp_with(&echo, &only_identified)).await;
    assert_eq!(
        echoed(&proxy).await,
        b"",
        "a plaintext peer has no identity"
    );
    let metrics = scrape(proxy.admin()).await;
    assert_eq!(
        value(
            &metrics,
            "strait_tcp_connections_total",
            &[("listener", "db")]
        ),
        None,
        "no connection was proxied"
    );
    assert_eq!(
        value(
            &metrics,
            "strait_authz_decisions_total",
            &[
                ("policy", "default/deny-all"),
                ("action", "DENY"),
                ("result", "deny")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &metrics,
            "strait_authz_decisions_total",
            &[
                ("policy", "default"),
                ("action", "DENY"),
                ("result", "deny")
            ]
        ),
        Some(1.0)
    );
    reload(&proxy, &tcp_with(&echo, "")).await;
    assert_eq!(echoed(&proxy).await, b"hello", "without the policy: echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_stores_policies_and_pushes_them_to_the_proxies_they_target() {
    let app = Upstream::start("app").await;
    let control = Control::start();
    let mesh = service("app", "http1", &[(app.address(), 1)], "")
        + &http_route(
            "api",
            "  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: app}]}]",
        );
    let (status, body) = control.apply("mesh.yaml", &mesh).await;
    assert_eq!(status, 200, "{body}");
    let proxy = control.attach(BOOTSTRAP, "pod-1");
    let status = || async {
        get(
            &http1(),
            &format!("{}/api", proxy.url("web")),
            "shop.local",
            &[],
        )
        .await
        .map(|a| a.status.as_u16())
        .unwrap_or(0)
    };
    eventually("the route is served", Duration::from_secs(20), || async {
        (status().await == 200).then_some(())
    })
    .await;

    let dir = strait_tests::process::TempDir::new("authz");
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        policy(
            "deny-all",
            "  targetRefs: [{kind: Listener, name: web}, {kind: Listener, name: elsewhere}]\n  action: DENY\n  rules: [{}]",
        ),
    )
    .unwrap();
    let out = control.straitctl(&["apply", "-f", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = control.straitctl(&["get", "authorizationpolicies"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && listed.contains("deny-all"),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The proxy has `web` only: it gets the policy narrowed to it (a target it lacks would
    // make it refuse the whole version).
    eventually("the policy is pushed", Duration::from_secs(20), || async {
        (status().await == 403).then_some(())
    })
    .await;

    // A policy that targets an HTTPRoute the store does not have is refused at apply.
    std::fs::write(
        &file,
        policy(
            "dangling",
            "  targetRefs: [{kind: HTTPRoute, name: gone}]\n  rules: [{}]",
        ),
    )
    .unwrap();
    let out = control.straitctl(&["apply", "-f", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("no HTTPRoute `gone`"),
        "{stderr}"
    );
    // Nor may the route a policy targets be deleted from under it.
    std::fs::write(
        &file,
        policy(
            "api-readers",
            "  targetRefs: [{kind: HTTPRoute, name: api}]\n  rules: [{to: [{methods: [GET]}]}]",
        ),
    )
    .unwrap();
    let out = control.straitctl(&["apply", "-f", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = control.straitctl(&["delete", "httproute", "api"]);
    assert!(!out.status.success(), "the policy still targets it");
}

// ---- identities from real mTLS peers ----

const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/ratings";
const PRODUCTPAGE: &str = "spiffe://cluster.local/ns/default/sa/productpage";
const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const FRONTEND_WEB: &str = "spiffe://cluster.local/ns/frontend/sa/web";

/// A proxy with identity `me` (files from `ca`) and `yaml` as config.
fn meshed(yaml: &str, ca: &TestCa, me: &Leaf) -> Proxy {
    Proxy::start_with_files(
        yaml,
        &[
            ("id.crt", &me.chain),
            ("id.key", &me.key),
            ("roots.pem", &ca.bundle),
        ],
    )
}

const IDENTITY_FILES: &str =
    "  identity: {certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}";

/// The ratings pod's proxy: listener `inbound` (`tls.mode: mutual`) to `app`, with `policies`.
fn ratings_inbound(app: &Upstream, policies: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: ratings}}
spec:
  admin: 127.0.0.1:0
  drainTimeout: 5s
{IDENTITY_FILES}
  listeners:
    - {{name: inbound, address: 127.0.0.1:0, protocol: http, tls: {{mode: mutual}}}}
"
    ) + &service("app", "http1", &[(app.address(), 1)], "")
        + &http_route(
            "to-app",
            "  parentRefs: [{name: inbound}]\n  rules: [{backendRefs: [{name: app}]}]",
        )
        + policies
}

/// A client pod's proxy: listener `web` to Service `ratings` at `inbound`, over mTLS
/// (`tls.mode: mesh`) with the ratings identity required of the peer.
fn client_outbound(inbound: std::net::SocketAddr) -> String {
    proxy(IDENTITY_FILES)
        + &service(
            "ratings",
            "http1",
            &[(inbound.to_string(), 1)],
            &format!("  tls: {{mode: mesh, identities: [\"{RATINGS}\"]}}"),
        )
        + &http_route(
            "to-ratings",
            "  parentRefs: [{name: web}]\n  rules: [{backendRefs: [{name: ratings}]}]",
        )
}

/// Waits until `proxy` answers `/ready` (its identity installed).
async fn ready(proxy: &Proxy) {
    let url = format!("http://{}/ready", proxy.admin());
    eventually("the proxy is ready", Duration::from_secs(10), || async {
        let answer = get(&http1(), &url, "admin", &[]).await.ok()?;
        (answer.status == 200).then_some(())
    })
    .await;
}

/// `GET /api` through `client`: the status and `x-strait-reason`.
async fn through(client: &Proxy) -> (u16, String) {
    let a = get(
        &http1(),
        &format!("{}/api", client.url("web")),
        "ratings",
        &[],
    )
    .await
    .expect("an answer");
    (a.status.as_u16(), a.header("x-strait-reason").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_match_the_identity_and_namespace_of_the_mtls_peer() {
    let ca = TestCa::new("mesh");
    let app = Upstream::start("app").await;
    let exact_or_namespace = policy(
        "ratings-readers",
        &format!(
            "  targetRefs: [{{kind: Listener, name: inbound}}]
  action: ALLOW
  rules:
    - from:
        - identities: [\"{PRODUCTPAGE}\"]
        - namespaces: [frontend]"
        ),
    );
    let server = meshed(
        &ratings_inbound(&app, &exact_or_namespace),
        &ca,
        &ca.workload(RATINGS),
    );
    ready(&server).await;
    let inbound = server.listener("inbound");
    let mut clients = Vec::new();
    for id in [PRODUCTPAGE, REVIEWS, FRONTEND_WEB] {
        let client = meshed(&client_outbound(inbound), &ca, &ca.workload(id));
        ready(&client).await;
        clients.push(client);
    }
    let [productpage, reviews, frontend_web] = &clients[..] else {
        unreachable!("three clients")
    };
    let served = (200, String::new());
    let forbidden = (403, "forbidden".to_owned());

    // An exact identity, and a namespace: allowed; another identity: 403, upstream untouched.
    assert_eq!(through(productpage).await, served, "exact identity");
    assert_eq!(through(frontend_web).await, served, "namespace frontend");
    assert_eq!(app.hits(), 2);
    assert_eq!(through(reviews).await, forbidden, "another identity");
    assert_eq!(app.hits(), 2, "a denied request reaches no upstream");

    // A trailing `*`: everything under it, nothing beside it.
    let prefix = policy(
        "reviewers",
        "  targetRefs: [{kind: Listener, name: inbound}]
  action: ALLOW
  rules: [{from: [{identities: [\"spiffe://cluster.local/ns/default/sa/rev*\"]}]}]",
    );
    reload(&server, &ratings_inbound(&app, &prefix)).await;
    assert_eq!(through(reviews).await, served, "under the prefix");
    assert_eq!(through(productpage).await, forbidden, "beside the prefix");
    assert_eq!(through(frontend_web).await, forbidden, "another namespace");
    assert_eq!(app.hits(), 3);

    // DENY by namespace comes before any ALLOW.
    let deny_frontend = policy(
        "no-frontend",
        "  targetRefs: [{kind: Listener, name: inbound}]
  action: DENY
  rules: [{from: [{namespaces: [frontend]}]}]",
    );
    reload(&server, &ratings_inbound(&app, &deny_frontend)).await;
    assert_eq!(through(frontend_web).await, forbidden, "denied namespace");
    assert_eq!(through(productpage).await, served, "no ALLOW in force");
    assert_eq!(app.hits(), 4);

    let metrics = scrape(server.admin()).await;
    assert_eq!(
        value(
            &metrics,
            "strait_authz_decisions_total",
            &[
                ("policy", "default/no-frontend"),
                ("action", "DENY"),
                ("result", "deny")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tcp_listener_closes_connections_of_identities_its_policy_denies() {
    let ca = TestCa::new("mesh");
    let echo = TcpEcho::start().await;
    let server_yaml = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: ratings}}
spec:
  admin: 127.0.0.1:0
{IDENTITY_FILES}
  listeners:
    - {{name: db, address: 127.0.0.1:0, protocol: tcp, tls: {{mode: mutual}}}}
"
    ) + &service("echo", "tcp", &[(echo.addr.to_string(), 1)], "")
        + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: echo}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: echo}]\n"
        + &policy(
            "product-only",
            "  targetRefs: [{kind: Listener, name: db}]
  rules: [{from: [{identities: [\"spiffe://cluster.local/ns/default/sa/product*\"]}]}]",
        );
    let server = meshed(&server_yaml, &ca, &ca.workload(RATINGS));
    ready(&server).await;
    let client_yaml = proxy(IDENTITY_FILES)
        + &service(
            "ratings-db",
            "tcp",
            &[(server.listener("db").to_string(), 1)],
            &format!("  tls: {{mode: mesh, identities: [\"{RATINGS}\"]}}"),
        )
        + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: to-ratings}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: ratings-db}]\n";
    let productpage = meshed(&client_yaml, &ca, &ca.workload(PRODUCTPAGE));
    let reviews = meshed(&client_yaml, &ca, &ca.workload(REVIEWS));
    ready(&productpage).await;
    ready(&reviews).await;
    assert_eq!(echoed(&productpage).await, b"hello", "under the prefix");
    assert_eq!(echoed(&reviews).await, b"", "closed without a byte");
    let metrics = scrape(server.admin()).await;
    assert_eq!(
        value(
            &metrics,
            "strait_authz_decisions_total",
            &[
                ("policy", "default"),
                ("action", "DENY"),
                ("result", "deny")
            ]
        ),
        Some(1.0),
        "the reviews connection: no ALLOW rule matched"
    );
}

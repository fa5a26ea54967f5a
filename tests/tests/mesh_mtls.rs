//! The mesh path end to end: a control (the CA) and two proxies on loopback, each with a
//! certificate it got with a join token, client → frontend proxy → mTLS → ratings proxy → app.
//! The ratings proxy refuses handshakes without a mesh certificate and tells the app who called
//! (forged claims removed), the frontend refuses a peer whose identity the Service does not
//! accept (502 `tls-failure`), an identity policy judges callers and normalised paths through
//! the hop, opaque TCP rides it too, and both proxies renew their certificates, and the CA
//! rotates its root, under a request loop without one failed request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use strait_tests::client::{exact_target, get, http1, raw};
use strait_tests::mesh_peer::get_over_tls;
use strait_tests::metrics::{admin_get, scrape, value};
use strait_tests::tls::{ClientIdentity, TestCa};
use strait_tests::{eventually, Control, Proxy, TcpEcho, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "mesh.test";

fn id(service_account: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{service_account}")
}

/// `straitctl identity token` for default/SA.
fn join_token(control: &Control, service_account: &str) -> String {
    let output = control.straitctl(&[
        "identity",
        "token",
        "--namespace",
        "default",
        "--service-account",
        service_account,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A proxy for identity default/SA (node SA) with `listeners` (YAML flow mappings), attached
/// to `control` with a join token, once it is ready (certificate and the control's config in).
async fn meshed_proxy(control: &Control, service_account: &str, listeners: &[&str]) -> Proxy {
    let bootstrap = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: {service_account}}}
spec:
  admin: 127.0.0.1:0
  drainTimeout: 2s
  identity: {{trustDomain: {TD}, namespace: default, serviceAccount: {service_account}}}
  control: {{address: \"{}\", node: {service_account}, tokenFile: join-token}}
  listeners: [{}]
",
        control.url(),
        listeners.join(", ")
    );
    let token = join_token(control, service_account);
    let proxy = Proxy::start_with_files(&bootstrap, &[("join-token", &token)]);
    eventually("the proxy is ready", Duration::from_secs(20), || async {
        let (status, _) = admin_get(proxy.admin(), "/ready").await;
        (status == 200).then_some(())
    })
    .await;
    proxy
}

async fn identity(proxy: &Proxy) -> serde_json::Value {
    let (_, body) = admin_get(proxy.admin(), "/identity").await;
    serde_json::from_str(&body).unwrap_or_default()
}

/// The ratings side: the app's Service and route on listener `inbound`, and an ALLOW policy
/// for GET/HEAD `/api/*` from the frontend's identity.
fn ratings_side(app: &Upstream) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: ratings-app}}
spec:
  protocol: http1
  endpoints: [{{address: \"{app}\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: ratings-app}}
spec:
  parentRefs: [{{name: inbound}}]
  rules: [{{backendRefs: [{{name: ratings-app}}]}}]
---
apiVersion: strait.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: ratings-callers}}
spec:
  targetRefs: [{{kind: Listener, name: inbound}}]
  action: ALLOW
  rules:
    - from: [{{identities: [\"{frontend}\"]}}]
      to: [{{methods: [GET, HEAD], paths: [\"/api/*\"]}}]
",
        app = app.address(),
        frontend = id("frontend"),
    )
}

/// A mesh Service NAME of `protocol` at the ratings proxy's `inbound`, accepting `accepted`,
/// routed from listener `web` for host `NAME.local`; `extra` lines go in its spec.
fn mesh_service(name: &str, protocol: &str, inbound: &str, accepted: &str, extra: &str) -> String {
    format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  protocol: {protocol}
  endpoints: [{{address: \"{inbound}\"}}]
  tls: {{mode: mesh, identities: [\"{accepted}\"]}}
{extra}---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [\"{name}.local\"]
  rules: [{{backendRefs: [{{name: {name}}}]}}]
"
    )
}

const INBOUND: &str = "{name: inbound, address: 127.0.0.1:0, protocol: http, tls: {mode: mutual}}";
const WEB: &str = "{name: web, address: 127.0.0.1:0, protocol: http}";

/// A control, the ratings proxy in front of `app`, and the frontend proxy with mesh Services
/// to it: `ratings` (HTTP/2, pooled), `fresh` (HTTP/1, a new connection and handshake per
/// request) and `strict` (accepting only an identity the ratings proxy does not have).
struct Mesh {
    control: Control,
    ratings: Proxy,
    frontend: Proxy,
}

impl Mesh {
    async fn start(app: &Upstream, control_args: &[&str]) -> Self {
        let mut args = vec!["--trust-domain", TD];
        args.extend_from_slice(control_args);
        let control = Control::start_with_args(&args);
        let (status, body) = control.apply("ratings.yaml", &ratings_side(app)).await;
        assert_eq!(status, 200, "{body}");
        let ratings = meshed_proxy(&control, "ratings", &[INBOUND]).await;
        let inbound = ratings.listener("inbound").to_string();
        let services = mesh_service("ratings", "http2", &inbound, &id("ratings"), "")
            + &mesh_service(
                "fresh",
                "http1",
                &inbound,
                &id("ratings"),
                "  connectionPool: {maxIdlePerEndpoint: 0}\n",
            )
            + &mesh_service("strict", "http1", &inbound, &id("billing"), "");
        let (status, body) = control.apply("frontend.yaml", &services).await;
        assert_eq!(status, 200, "{body}");
        let frontend = meshed_proxy(&control, "frontend", &[WEB]).await;
        Self {
            control,
            ratings,
            frontend,
        }
    }

    /// GET `path` through the frontend for host `service.local`.
    async fn call(
        &self,
        service: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<strait_tests::client::Answer, String> {
        let url = format!("{}{path}", self.frontend.url("web"));
        get(&http1(), &url, &format!("{service}.local"), headers).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_is_mtls_and_the_inbound_proxy_tells_the_app_who_called() {
    let app = Upstream::start("ratings-app").await;
    let mesh = Mesh::start(&app, &[]).await;

    // Through the hop, over HTTP/2 and over HTTP/1: the app learns the caller's SPIFFE ID,
    // whatever the client claims.
    for service in ["ratings", "fresh"] {
        for forged in [None, Some(id("admin"))] {
            let headers: Vec<(&str, &str)> = forged
                .as_deref()
                .map(|f| vec![("x-strait-client-id", f)])
                .unwrap_or_default();
            let answer = mesh.call(service, "/api/stars", &headers).await.unwrap();
            assert_eq!(answer.status, 200, "{service}: {answer:?}");
            let seen = answer.json();
            assert_eq!(
                seen["headers"]["x-strait-client-id"],
                serde_json::json!([id("frontend")]),
                "{service}: {seen}"
            );
        }
    }
    let metrics = scrape(mesh.ratings.admin()).await;
    let counted = value(
        &metrics,
        "strait_requests_total",
        &[("listener", "inbound"), ("client_id", &id("frontend"))],
    );
    assert_eq!(counted, Some(4.0), "{metrics}");

    // The ratings proxy's listener refuses whoever has no certificate of the mesh: no
    // certificate, one of another CA, plaintext. The app sees none of it.
    let hits = app.hits();
    let inbound = mesh.ratings.listener("inbound");
    let anonymous = get_over_tls(inbound, None, "/api/stars").await;
    assert!(anonymous.is_err(), "served: {anonymous:?}");
    let stranger = TestCa::new("stranger").workload(&id("frontend"));
    let stranger = ClientIdentity {
        chain_pem: stranger.chain,
        key_pem: stranger.key,
    };
    let forged = get_over_tls(inbound, Some(&stranger), "/api/stars").await;
    assert!(forged.is_err(), "served: {forged:?}");
    let plaintext = raw(inbound, b"GET /api/stars HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(!plaintext.contains("HTTP/1.1"), "{plaintext}");
    assert_eq!(app.hits(), hits);

    // A Service that accepts another identity than the peer's gets nothing through.
    let answer = mesh.call("strict", "/api/stars", &[]).await.unwrap();
    assert_eq!(answer.status, 502, "{answer:?}");
    assert_eq!(answer.header("x-strait-reason"), "tls-failure");
    assert_eq!(app.hits(), hits);
}

/// Opaque TCP through the hop: frontend's `db` -> TCPRoute -> a `tcp` Service with
/// `tls.mode: mesh` at the ratings proxy's `db-in` (a `tcp` listener with `tls.mode: mutual`)
/// -> TCPRoute -> an echo server.
fn tcp_hop(echo: &TcpEcho, db_in: &str) -> String {
    let doc = |kind: &str, name: &str, spec: &str| {
        format!("---\napiVersion: strait.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n{spec}\n")
    };
    doc(
        "Service",
        "echo",
        &format!("  protocol: tcp\n  endpoints: [{{address: \"{}\"}}]", echo.addr),
    ) + &doc(
        "TCPRoute",
        "echo",
        "  parentRefs: [{name: db-in}]\n  backendRefs: [{name: echo}]",
    ) + &doc(
        "Service",
        "echo-mesh",
        &format!(
            "  protocol: tcp\n  endpoints: [{{address: \"{db_in}\"}}]\n  tls: {{mode: mesh, identities: [\"{}\"]}}",
            id("ratings")
        ),
    ) + &doc(
        "TCPRoute",
        "echo-mesh",
        "  parentRefs: [{name: db}]\n  backendRefs: [{name: echo-mesh}]",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_rides_the_mtls_hop_and_plaintext_to_the_inbound_side_is_refused() {
    let echo = TcpEcho::start().await;
    let control = Control::start_with_args(&["--trust-domain", TD]);
    let ratings = meshed_proxy(
        &control,
        "ratings",
        &["{name: db-in, address: 127.0.0.1:0, protocol: tcp, tls: {mode: mutual}}"],
    )
    .await;
    let db_in = ratings.listener("db-in");
    let (status, body) = control
        .apply("tcp.yaml", &tcp_hop(&echo, &db_in.to_string()))
        .await;
    assert_eq!(status, 200, "{body}");
    let frontend = meshed_proxy(
        &control,
        "frontend",
        &["{name: db, address: 127.0.0.1:0, protocol: tcp}"],
    )
    .await;
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut stream = tokio::net::TcpStream::connect(frontend.listener("db"))
        .await
        .unwrap();
    stream.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("echoed in time")
        .unwrap();
    assert!(back == payload, "the bytes came back changed");
    // The ratings side takes no plaintext: the bytes go nowhere.
    let mut plain = tokio::net::TcpStream::connect(db_in).await.unwrap();
    plain.write_all(b"hello\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.windows(5).any(|w| w == b"hello"),
        "plaintext echoed: {read:?} {answer:?}"
    );
}

/// Sends one HTTP/1.1 request through `proxy`'s `web` with the target exactly as written;
/// returns the status and `x-strait-reason` (empty when absent).
async fn exchange(proxy: &Proxy, method: &str, target: &str) -> (u16, String) {
    exact_target(proxy.listener("web"), "ratings.local", method, target).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_policy_judges_callers_and_normalised_paths_through_the_hop() {
    let app = Upstream::start("ratings-app").await;
    let mesh = Mesh::start(&app, &[]).await;
    let forbidden = (403, "forbidden".to_owned());
    let served = (200, String::new());
    let cases = [
        ("GET", "/api/stars", &served),
        ("HEAD", "/api/stars", &served),
        ("GET", "/api/./stars", &served),
        ("POST", "/api/stars", &forbidden),
        ("GET", "/admin", &forbidden),
        ("GET", "/api", &forbidden),
        ("GET", "/api/../admin", &forbidden),
        ("GET", "/api/%2e%2e/admin", &forbidden),
        ("GET", "/api/%2E%2E/admin", &forbidden),
        ("GET", "//api//..//admin", &forbidden),
    ];
    for (method, target, expected) in cases {
        assert_eq!(
            &exchange(&mesh.frontend, method, target).await,
            expected,
            "frontend: {method} {target}"
        );
    }
    let allowed = cases.iter().filter(|c| c.2 .0 == 200).count();
    assert_eq!(app.hits(), allowed, "denied requests reach no app");

    // Another meshed proxy (same routes: its listener is also `web`), another identity: the
    // policy lets it in nowhere.
    let intruder = meshed_proxy(&mesh.control, "intruder", &[WEB]).await;
    assert_eq!(identity(&intruder).await["spiffeId"], id("intruder"));
    for (method, target, _) in cases {
        assert_eq!(
            exchange(&intruder, method, target).await,
            forbidden,
            "intruder: {method} {target}"
        );
    }
    assert_eq!(app.hits(), allowed);
    let metrics = scrape(mesh.ratings.admin()).await;
    let denied = value(
        &metrics,
        "strait_authz_decisions_total",
        &[
            ("policy", "default"),
            ("action", "DENY"),
            ("result", "deny"),
        ],
    );
    assert_eq!(
        denied,
        Some((2 * cases.len() - allowed) as f64),
        "{metrics}"
    );
}

/// The serial of `proxy`'s certificate in force.
async fn serial(proxy: &Proxy) -> String {
    identity(proxy).await["serial"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// How many roots `proxy`'s trust bundle has.
async fn roots(proxy: &Proxy) -> usize {
    identity(proxy).await["trustBundle"]
        .as_array()
        .map_or(0, Vec::len)
}

/// Requests through the hop until stopped: one loop on the pooled HTTP/2 Service, one on the
/// Service with a new connection (a handshake with the certificates in force) per request.
struct Load {
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<(&'static str, usize, Vec<String>)>>,
}

impl Load {
    fn start(mesh: &Arc<Mesh>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = ["ratings", "fresh"]
            .into_iter()
            .map(|service| {
                let (mesh, stop) = (mesh.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0usize, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        match mesh.call(service, "/api/stars", &[]).await {
                            Ok(a) if a.status == 200 => ok += 1,
                            other => failed.push(format!("{other:?}")),
                        }
                    }
                    (service, ok, failed)
                })
            })
            .collect();
        Self { stop, loops }
    }

    /// Stops the loops; every request must have been answered 200.
    async fn none_failed(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.loops {
            let (service, ok, failed) = task.await.unwrap();
            assert!(ok > 10, "{service}: only {ok} requests");
            assert!(
                failed.is_empty(),
                "{service}: {} of {} failed, e.g. {:?}",
                failed.len(),
                ok + failed.len(),
                &failed[..failed.len().min(3)]
            );
        }
    }
}

/// Polls both proxies until each has `renewals` more certificates than when called.
async fn renewed(mesh: &Mesh, renewals: usize) {
    let mut seen = [
        vec![serial(&mesh.frontend).await],
        vec![serial(&mesh.ratings).await],
    ];
    let within = Duration::from_secs(20 * renewals as u64);
    let deadline = tokio::time::Instant::now() + within;
    while seen.iter().any(|serials| serials.len() <= renewals) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "fewer than {renewals} renewals each in {within:?}: {seen:?}"
        );
        for (serials, proxy) in seen.iter_mut().zip([&mesh.frontend, &mesh.ratings]) {
            let now = serial(proxy).await;
            if serials.last() != Some(&now) {
                serials.push(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_proxies_renew_under_a_request_loop_through_the_hop_without_a_failed_request() {
    let app = Upstream::start("ratings-app").await;
    let mesh = Arc::new(Mesh::start(&app, &["--cert-ttl", "6s"]).await);
    let load = Load::start(&mesh);
    renewed(&mesh, 3).await;
    load.none_failed().await;
    // Renewals were made with the proxies' certificates, not their join tokens.
    let renewals = mesh
        .control
        .logs()
        .iter()
        .filter(|l| l.contains("issued a certificate") && l.contains("\"certificate\""))
        .count();
    assert!(renewals >= 6, "{}", mesh.control.logs().join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_through_the_hop_fails_no_request() {
    let app = Upstream::start("ratings-app").await;
    let mesh = Arc::new(Mesh::start(&app, &["--cert-ttl", "6s"]).await);
    let load = Load::start(&mesh);
    let rotate = |step: &'static str| {
        let mesh = mesh.clone();
        async move {
            let (status, body) = mesh
                .control
                .call(
                    Method::POST,
                    "/v1/identity/rotate",
                    Some(serde_json::json!({"step": step})),
                )
                .await;
            assert_eq!(status, 200, "{step}: {body}");
        }
    };
    let bundles = |n: usize| {
        let mesh = mesh.clone();
        async move {
            eventually(
                &format!("both proxies trust {n} root(s)"),
                Duration::from_secs(30),
                || async {
                    (roots(&mesh.frontend).await == n && roots(&mesh.ratings).await == n)
                        .then_some(())
                },
            )
            .await;
        }
    };
    // The documented order: the new root reaches every proxy (with its next certificate),
    // then leaves come from the new issuer and every proxy gets one, then the old root goes.
    rotate("add-root").await;
    bundles(2).await;
    rotate("switch-issuer").await;
    // One --cert-ttl: a renewal under way at the switch may still bring a leaf of the old issuer.
    renewed(&mesh, 2).await;
    rotate("remove-old-roots").await;
    bundles(1).await;
    renewed(&mesh, 1).await;
    load.none_failed().await;
}

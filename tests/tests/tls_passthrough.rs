//! TLS passthrough routed by SNI (`TLSRoute`): a real rustls client, through the proxy, to TLS
//! upstreams of the tests' own. The proxy holds no key: a client that verifies the upstream's
//! certificate for the name it asked for proves the bytes went through untouched, to the
//! upstream the name routes to.

use std::time::{Duration, Instant};

use strait_tests::config::{proxy, service};
use strait_tests::metrics::{reload, scrape, value};
use strait_tests::tls::{https_get_as, https_get_in_records_of, TestCa};
use strait_tests::tls_upstream::{Serve, TlsUpstream};
use strait_tests::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_route(name: &str, spec: &str) -> String {
    format!("---\napiVersion: strait.dev/v1alpha1\nkind: TLSRoute\nmetadata: {{name: {name}}}\nspec:\n{spec}\n")
}

fn tcp_service(name: &str, upstream: &TlsUpstream) -> String {
    service(name, "tcp", &[(upstream.addr.to_string(), 1)], "")
}

/// Three TLS upstreams: `a` (a.example, w.example), `b` (api.b.example, w.example) and the
/// fallback `f` (c.example, 127.0.0.1), each answering HTTP.
struct Upstreams {
    ca: TestCa,
    a: TlsUpstream,
    b: TlsUpstream,
    f: TlsUpstream,
}

impl Upstreams {
    async fn start() -> Self {
        let ca = TestCa::new("edge");
        let a = TlsUpstream::start(
            &ca.server_for(&["a.example", "w.example"]),
            None,
            Serve::Http,
        )
        .await;
        let b = TlsUpstream::start(
            &ca.server_for(&["api.b.example", "w.example"]),
            None,
            Serve::Http,
        )
        .await;
        let f = TlsUpstream::start(
            &ca.server_for(&["c.example", "127.0.0.1"]),
            None,
            Serve::Http,
        )
        .await;
        Self { ca, a, b, f }
    }

    /// Listener `db` (tcp): a.example → a; *.b.example → b; w.example split 90/10 between a
    /// and b; the TCPRoute (anything else) → f. `limits` goes under `spec:`.
    fn config(&self, limits: &str) -> String {
        proxy(limits)
            + &tcp_service("a", &self.a)
            + &tcp_service("b", &self.b)
            + &tcp_service("f", &self.f)
            + &tls_route("to-a", "  parentRefs: [{name: db}]\n  hostnames: [a.example]\n  rules: [{backendRefs: [{name: a}]}]")
            + &tls_route("to-b", "  parentRefs: [{name: db}]\n  hostnames: [\"*.b.example\"]\n  rules: [{backendRefs: [{name: b}]}]")
            + &tls_route("split", "  parentRefs: [{name: db}]\n  hostnames: [w.example]\n  rules: [{backendRefs: [{name: a, weight: 90}, {name: b, weight: 10}]}]")
            + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: fallback}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: f}]\n"
    }
}

async fn get(proxy: &Proxy, server_name: &str, roots: &str) -> Result<String, String> {
    https_get_as(proxy.listener("db"), server_name, roots).await
}

fn ok(answer: Result<String, String>, what: &str) {
    match answer {
        Ok(text) => assert!(text.starts_with("HTTP/1.1 200"), "{what}: {text}"),
        Err(e) => panic!("{what}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_name_picks_the_upstream_whose_certificate_the_client_verifies() {
    let ups = Upstreams::start().await;
    let proxy = Proxy::start(&ups.config(""));
    let roots = ups.ca.bundle.clone();

    ok(get(&proxy, "a.example", &roots).await, "a.example");
    assert_eq!((ups.a.accepts(), ups.b.accepts()), (1, 0));
    ok(
        get(&proxy, "api.b.example", &roots).await,
        "api.b.example (wildcard)",
    );
    assert_eq!((ups.a.accepts(), ups.b.accepts()), (1, 1));
    // A ClientHello spread over 64-byte records is read whole.
    let fragmented = https_get_in_records_of(proxy.listener("db"), "a.example", &roots, Some(64));
    ok(fragmented.await, "a.example in small records");
    assert_eq!((ups.a.accepts(), ups.b.accepts()), (2, 1));
    // No TLSRoute for the name, and no name at all (an IP address): the TCPRoute.
    ok(get(&proxy, "c.example", &roots).await, "c.example");
    ok(get(&proxy, "127.0.0.1", &roots).await, "no SNI");
    assert_eq!(ups.f.accepts(), 2);
    assert_eq!((ups.a.accepts(), ups.b.accepts()), (2, 1));

    let text = scrape(proxy.admin()).await;
    let routed = |route: &str, service: &str| {
        value(
            &text,
            "strait_tls_passthrough_connections_total",
            &[("listener", "db"), ("route", route), ("service", service)],
        )
    };
    assert_eq!(routed("to-a", "a"), Some(2.0), "{text}");
    assert_eq!(routed("to-b", "b"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "strait_tcp_connections_total", &[("listener", "db")]),
        Some(5.0),
        "{text}"
    );
    assert!(
        value(
            &text,
            "strait_tcp_bytes_total",
            &[("listener", "db"), ("direction", "upstream")]
        )
        .is_some_and(|bytes| bytes > 0.0),
        "{text}"
    );
    let access = strait_tests::eventually("the access log line", Duration::from_secs(5), || {
        let line = proxy
            .json_logs()
            .into_iter()
            .find(|l| l["target"] == "strait::access" && l["fields"]["sni"] == "a.example");
        async move { line }
    })
    .await;
    let fields = &access["fields"];
    assert_eq!(fields["route"], "to-a", "{access}");
    assert_eq!(fields["service"], "a", "{access}");
    assert_eq!(fields["endpoint"], ups.a.addr.to_string(), "{access}");
    assert_eq!(fields["listener"], "db", "{access}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ninety_ten_split_holds_over_many_connections() {
    let ups = Upstreams::start().await;
    let proxy = Proxy::start(&ups.config(""));
    const N: usize = 200;
    for i in 0..N {
        ok(
            get(&proxy, "w.example", &ups.ca.bundle).await,
            &format!("connection {i}"),
        );
    }
    let (a, b) = (ups.a.accepts(), ups.b.accepts());
    assert_eq!(a + b, N);
    // Binomial(200, 0.1): mean 20, standard deviation 4.2; this fails about once in 10^6.
    assert!((4..=40).contains(&b), "a {a}, b {b}");
}

/// Writes `bytes`, then waits for the proxy to close: Ok(how long it took), Err if it
/// answered anything or stayed open for 10 s.
async fn closed_after(proxy: &Proxy, bytes: &[u8]) -> Result<Duration, String> {
    let mut stream = tokio::net::TcpStream::connect(proxy.listener("db"))
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await {
        Ok(_) if got.is_empty() => Ok(started.elapsed()),
        Ok(_) => Err(format!("answered {got:?}")),
        Err(_) => Err("still open after 10 s".to_owned()),
    }
}

/// A real ClientHello's first `n` bytes (rustls' for a.example).
fn hello_prefix(n: usize) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("a.example").expect("name");
    let mut client =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    client.write_tls(&mut out).expect("hello");
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_slow_client_hellos_are_closed_and_others_still_served() {
    let ups = Upstreams::start().await;
    let proxy = Proxy::start(&ups.config("  limits: {headerReadTimeout: 1s}"));

    // A slow client holds a connection open while others come and go.
    let slow = tokio::spawn({
        let addr = proxy.listener("db");
        async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let started = Instant::now();
            stream.write_all(&hello_prefix(40)).await.expect("write");
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got));
            (read.await.is_ok() && got.is_empty(), started.elapsed())
        }
    });
    ok(
        get(&proxy, "a.example", &ups.ca.bundle).await,
        "while a ClientHello dawdles",
    );

    let not_a_hello = closed_after(&proxy, &[22, 3, 1, 0, 4, 2, 0, 0, 0]).await;
    assert!(
        not_a_hello.is_ok(),
        "a handshake that is not a ClientHello: {not_a_hello:?}"
    );
    // A ClientHello announcing 64 KiB.
    let huge = closed_after(&proxy, &[22, 3, 1, 0x40, 0, 1, 1, 0, 0]).await;
    assert!(huge.is_ok(), "an oversized ClientHello: {huge:?}");
    let mut bad_name = hello_prefix(usize::MAX);
    let at = bad_name
        .windows(9)
        .position(|w| w == b"a.example")
        .expect("the name in the hello");
    bad_name[at] = b'/';
    let bad = closed_after(&proxy, &bad_name).await;
    assert!(
        bad.is_ok(),
        "a server name that is not a host name: {bad:?}"
    );

    let (closed, after) = slow.await.expect("slow client");
    assert!(
        closed,
        "the slow ClientHello's connection was closed without an answer"
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(8),
        "closed after {after:?}, headerReadTimeout is 1s"
    );
    // None of them reached an upstream; the proxy still serves.
    assert_eq!(ups.a.accepts(), 1);
    assert_eq!(ups.b.accepts() + ups.f.accepts(), 0);
    ok(
        get(&proxy, "api.b.example", &ups.ca.bundle).await,
        "after them",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_switches_new_connections_and_an_invalid_route_is_refused() {
    let ups = Upstreams::start().await;
    let proxy = Proxy::start(&ups.config(""));
    ok(get(&proxy, "w.example", &ups.ca.bundle).await, "before");
    let before = ups.b.accepts();

    // All of w.example to b now.
    let config = ups.config("").replace(
        "[{name: a, weight: 90}, {name: b, weight: 10}]",
        "[{name: a, weight: 0}, {name: b, weight: 1}]",
    );
    reload(&proxy, &config).await;
    for _ in 0..10 {
        ok(
            get(&proxy, "w.example", &ups.ca.bundle).await,
            "after the reload",
        );
    }
    assert_eq!(ups.b.accepts(), before + 10);

    // An invalid TLSRoute is refused whole; the running routes stay.
    let broken = config.replace("hostnames: [a.example]", "hostnames: [\"a.example:443\"]");
    proxy.write_config(&broken);
    proxy.signal("HUP");
    let rejected = strait_tests::eventually(
        "the reload is rejected",
        Duration::from_secs(10),
        || async {
            let text = scrape(proxy.admin()).await;
            value(
                &text,
                "strait_config_reloads_total",
                &[("result", "rejected")],
            )
            .filter(|&n| n >= 1.0)
        },
    )
    .await;
    assert_eq!(rejected, 1.0);
    let logged = proxy.logs().join("\n");
    assert!(
        logged.contains("spec.hostnames[0]") && logged.contains("is not a server name"),
        "{logged}"
    );
    ok(
        get(&proxy, "a.example", &ups.ca.bundle).await,
        "after the rejected reload",
    );
}

/// Interception for real (network namespaces, iptables, the proxy as its own UID, as in
/// `interception.rs`): the app calls an external HTTPS API by address through the sidecar's
/// outbound `protocol: http` listener. The ClientHello's name picks the TLSRoute, which sends
/// it to another port of the API (its other region); a name no route claims goes where it was
/// going. The app verifies the API's certificate either way.
#[tokio::test]
async fn intercepted_https_is_routed_by_sni_and_unclaimed_names_pass_through() {
    use strait_config::sidecar::{ADMIN_PORT, OUTBOUND_PORT};
    use strait_tests::netns::{start_sidecar, Mesh, NsRuntime, BACKEND_ADDRESS, POD_ADDRESS};
    use strait_tests::process::{proxy_bin, TempDir};

    let mesh = match Mesh::create("sni") {
        Ok(mesh) => mesh,
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED intercepted TLS passthrough test: cannot create network namespaces \
                 here ({why}).\n"
            );
            return;
        }
    };
    let client = NsRuntime::start(&mesh.client).expect("client namespace runtime");
    let pod = NsRuntime::start(&mesh.pod).expect("pod namespace runtime");
    let backend = NsRuntime::start(&mesh.backend).expect("backend namespace runtime");
    let ca = TestCa::new("external");
    let at = |port: u16| -> std::net::SocketAddr {
        format!("{BACKEND_ADDRESS}:{port}")
            .parse()
            .expect("address")
    };
    let leaf = ca.server_for(&["api.example", "other.example"]);
    let (l1, l2) = (leaf.clone(), leaf);
    let origin = backend
        .run(async move { TlsUpstream::start_at(&l1, None, Serve::Http, at(443)).await })
        .await
        .expect("origin");
    let other_region = backend
        .run(async move { TlsUpstream::start_at(&l2, None, Serve::Http, at(8443)).await })
        .await
        .expect("other region");
    mesh.exec(&mesh.pod, &proxy_bin(), &["init-iptables", "--no-inbound"])
        .expect("init-iptables");
    let yaml = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: sidecar}}
spec:
  admin: 0.0.0.0:{ADMIN_PORT}
  listeners:
    - {{name: outbound, address: 127.0.0.1:{OUTBOUND_PORT}, protocol: http, mode: outbound}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: api-eu}}
spec:
  protocol: tcp
  endpoints: [{{address: \"{BACKEND_ADDRESS}:8443\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: TLSRoute
metadata: {{name: api}}
spec:
  parentRefs: [{{name: outbound}}]
  hostnames: [api.example]
  rules: [{{backendRefs: [{{name: api-eu}}]}}]
"
    );
    let dir = TempDir::new("sni-interception");
    let proxy = start_sidecar(&mesh, &client, &dir, &yaml).await;

    let call = |name: &'static str| {
        let roots = ca.bundle.clone();
        pod.run(async move { https_get_as(at(443), name, &roots).await })
    };
    ok(call("api.example").await, "api.example, routed");
    assert_eq!(
        (origin.accepts(), other_region.accepts()),
        (0, 1),
        "{}",
        proxy.logs()
    );
    ok(call("other.example").await, "other.example, passed through");
    assert_eq!(
        (origin.accepts(), other_region.accepts()),
        (1, 1),
        "{}",
        proxy.logs()
    );

    let admin: std::net::SocketAddr = format!("{POD_ADDRESS}:{ADMIN_PORT}")
        .parse()
        .expect("admin");
    let text = client.run(async move { scrape(admin).await }).await;
    let count = |route: &str, service: &str| {
        value(
            &text,
            "strait_tls_passthrough_connections_total",
            &[
                ("listener", "outbound"),
                ("route", route),
                ("service", service),
            ],
        )
    };
    assert_eq!(count("api", "api-eu"), Some(1.0), "{text}");
    assert_eq!(count("", "passthrough"), Some(1.0), "{text}");
}

/// TLSRoutes through the control: validated on apply (field paths), listed by straitctl, and
/// pushed to a proxy, which then routes by SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_route_applied_to_the_control_is_pushed_and_routes() {
    let ups = Upstreams::start().await;
    let control = strait_tests::Control::start();
    let bad = tls_route(
        "to-a",
        "  parentRefs: [{name: db}]\n  hostnames: [a.example]\n  rules: [{backendRefs: [{name: a}]}]",
    );
    let (status, body) = control.apply("bad.yaml", &bad).await;
    assert_eq!(status, 400, "a route to a Service the store lacks: {body}");
    let first = body["errors"][0].as_str().unwrap_or_default();
    assert!(
        first.contains("bad.yaml:") && first.contains("spec.rules[0].backendRefs[0].name"),
        "{body}"
    );
    let docs = tcp_service("a", &ups.a) + &tcp_service("f", &ups.f) + &bad
        + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: fallback}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: f}]\n";
    let (status, body) = control.apply("routes.yaml", &docs).await;
    assert_eq!(status, 200, "{body}");
    let listed = {
        let control = &control;
        tokio::task::block_in_place(|| control.straitctl(&["get", "tlsroutes"]))
    };
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success() && text.contains("to-a"), "{text}");

    let bootstrap = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: bootstrap}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {name: db, address: 127.0.0.1:0, protocol: tcp}
";
    let proxy = control.attach(bootstrap, "pod-1");
    strait_tests::eventually("routed by SNI", Duration::from_secs(20), || async {
        get(&proxy, "a.example", &ups.ca.bundle).await.ok()
    })
    .await;
    assert_eq!(ups.a.accepts(), 1);
    ok(
        get(&proxy, "c.example", &ups.ca.bundle).await,
        "the TCPRoute",
    );
    assert_eq!(ups.f.accepts(), 1);
}

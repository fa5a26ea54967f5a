//! TLS from the proxy to upstreams (`Service.spec.tls`): `mesh` (mTLS with the proxy's
//! identity, the peer's identity checked) over HTTP/1, HTTP/2 and opaque TCP, connections
//! pooled and sessions resumed, an identity rotated under load; `simple` origination verified
//! against a CA file, to an address or to a host name (resolved by the proxy, its name the
//! default SNI). The upstreams are TLS servers of the tests' own that record what they see.

use std::time::Duration;

use strait_tests::client::{get, http1, Answer};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::tls::{Leaf, TestCa};
use strait_tests::tls_upstream::{Serve, TlsUpstream};
use strait_tests::{eventually, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const RATINGS: &str = "spiffe://cluster.local/ns/default/sa/ratings";

/// A proxy whose identity is `me` (files), with `docs` after its ProxyConfig, once it is
/// ready (its identity installed).
async fn start_meshed(ca: &TestCa, me: &Leaf, docs: &str) -> Proxy {
    let yaml =
        proxy("  identity: {certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}") + docs;
    let proxy = Proxy::start_with_files(
        &yaml,
        &[
            ("id.crt", &me.chain),
            ("id.key", &me.key),
            ("roots.pem", &ca.bundle),
        ],
    );
    let ready = format!("http://{}/ready", proxy.admin());
    eventually("the proxy is ready", Duration::from_secs(10), || async {
        let answer = get(&http1(), &ready, "admin", &[]).await.ok()?;
        (answer.status == 200).then_some(())
    })
    .await;
    proxy
}

/// A mesh Service `ratings` of `protocol` at `upstream`, accepting `identities`, and a route
/// to it.
fn mesh_service(upstream: &TlsUpstream, protocol: &str, identities: &str) -> String {
    service(
        "ratings",
        protocol,
        &[(upstream.addr.to_string(), 1)],
        &format!("  tls: {{mode: mesh, identities: [{identities}]}}"),
    ) + &http_route("r", "  rules:\n    - {backendRefs: [{name: ratings}]}")
}

/// Reviews' proxy with ratings (an HTTP upstream presenting the ratings identity) as a mesh
/// Service of `protocol` accepting that identity.
async fn reviews_calling_ratings(protocol: &str) -> (TestCa, TlsUpstream, Proxy) {
    let ca = TestCa::new("mesh");
    let upstream = TlsUpstream::start(&ca.workload(RATINGS), Some(&ca.bundle), Serve::Http).await;
    let identities = format!("\"{RATINGS}\"");
    let proxy = start_meshed(
        &ca,
        &ca.workload(REVIEWS),
        &mesh_service(&upstream, protocol, &identities),
    )
    .await;
    (ca, upstream, proxy)
}

async fn call(proxy: &Proxy, path: &str) -> Answer {
    get(
        &http1(),
        &format!("{}{path}", proxy.url("web")),
        "ratings",
        &[],
    )
    .await
    .expect("answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_service_is_called_over_mtls_with_the_proxys_identity_on_one_pooled_connection() {
    let (_ca, upstream, proxy) = reviews_calling_ratings("http1").await;
    for _ in 0..5 {
        let answer = call(&proxy, "/").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let seen = answer.json();
        assert_eq!(
            seen["peer"], REVIEWS,
            "the upstream sees the proxy's identity"
        );
        assert_eq!(seen["alpn"], "http/1.1");
    }
    assert_eq!(upstream.requests(), 5);
    assert_eq!(
        upstream.accepts(),
        1,
        "one connection, one handshake, reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_identity_is_not_accepted_gets_nothing_and_the_client_502_tls_failure() {
    let ca = TestCa::new("mesh");
    let impostor = "spiffe://cluster.local/ns/default/sa/impostor";
    let upstream = TlsUpstream::start(&ca.workload(impostor), Some(&ca.bundle), Serve::Http).await;
    // A prefix that does not cover the impostor: `*` matches within `ns/default/sa/rat`.
    let proxy = start_meshed(
        &ca,
        &ca.workload(REVIEWS),
        &mesh_service(
            &upstream,
            "http1",
            &format!("\"{RATINGS}\", \"spiffe://cluster.local/ns/default/sa/rat*\""),
        ),
    )
    .await;
    let answer = call(&proxy, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-strait-reason"), "tls-failure");
    assert_eq!(upstream.requests(), 0, "nothing was sent to the wrong peer");
    // The log line may reach the test's reader a little after the answer.
    proxy.log_line("upstream tls handshake failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_with_a_trailing_star_accepts_the_identities_under_it() {
    let ca = TestCa::new("mesh");
    let upstream = TlsUpstream::start(&ca.workload(RATINGS), Some(&ca.bundle), Serve::Http).await;
    let proxy = start_meshed(
        &ca,
        &ca.workload(REVIEWS),
        &mesh_service(
            &upstream,
            "http1",
            "\"spiffe://cluster.local/ns/default/*\"",
        ),
    )
    .await;
    assert_eq!(call(&proxy, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_trust_bundle_gets_nothing_and_the_client_502_tls_failure() {
    let ca = TestCa::new("mesh");
    let stranger = TestCa::new("stranger");
    let upstream =
        TlsUpstream::start(&stranger.workload(RATINGS), Some(&ca.bundle), Serve::Http).await;
    let proxy = start_meshed(
        &ca,
        &ca.workload(REVIEWS),
        &mesh_service(&upstream, "http1", &format!("\"{RATINGS}\"")),
    )
    .await;
    let answer = call(&proxy, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-strait-reason"), "tls-failure");
    assert_eq!(upstream.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_service_without_an_identity_in_force_is_502_tls_failure_with_the_reason_logged() {
    let ca = TestCa::new("mesh");
    let upstream = TlsUpstream::start(&ca.workload(RATINGS), Some(&ca.bundle), Serve::Http).await;
    let proxy =
        Proxy::start(&(proxy("") + &mesh_service(&upstream, "http1", &format!("\"{RATINGS}\""))));
    let answer = call(&proxy, "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-strait-reason"), "tls-failure");
    // Counted by the upstream's accept loop, which may run after the proxy gave up.
    eventually(
        "the upstream saw the connection",
        Duration::from_secs(5),
        || {
            let accepts = upstream.accepts();
            async move { (accepts == 1).then_some(()) }
        },
    )
    .await;
    assert_eq!(upstream.requests(), 0, "connected, then no handshake");
    proxy
        .log_line("needs the proxy's identity (spec.identity)")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resumes_the_tls_session_instead_of_a_full_handshake() {
    let (_ca, upstream, proxy) = reviews_calling_ratings("http1").await;
    // `/close`: the upstream closes each connection after its answer.
    for _ in 0..3 {
        let answer = call(&proxy, "/close").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.json()["peer"], REVIEWS);
    }
    assert_eq!(upstream.accepts(), 3);
    assert_eq!(
        upstream.full_handshakes(),
        1,
        "only the first is a full handshake"
    );
    assert_eq!(upstream.resumed_handshakes(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_service_rides_mtls_with_alpn_h2_on_one_connection() {
    let (_ca, upstream, proxy) = reviews_calling_ratings("http2").await;
    for _ in 0..3 {
        let answer = call(&proxy, "/").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let seen = answer.json();
        assert_eq!(seen["alpn"], "h2");
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["peer"], REVIEWS);
    }
    assert_eq!(upstream.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_route_to_a_mesh_service_rides_mtls() {
    let ca = TestCa::new("mesh");
    let upstream = TlsUpstream::start(&ca.workload(RATINGS), Some(&ca.bundle), Serve::Echo).await;
    let docs = service(
        "ratings",
        "tcp",
        &[(upstream.addr.to_string(), 1)],
        &format!("  tls: {{mode: mesh, identities: [\"{RATINGS}\"]}}"),
    ) + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: t}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: ratings}]\n";
    let proxy = start_meshed(&ca, &ca.workload(REVIEWS), &docs).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.listener("db"))
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert!(back == payload, "echoed bytes differ ({} back)", back.len());
    assert_eq!(upstream.peers(), vec![REVIEWS.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_origination_verifies_the_server_against_the_ca_file_for_the_sni() {
    let ca = TestCa::new("public");
    let other = TestCa::new("other");
    let upstream = TlsUpstream::start(&ca.server("api.test.example"), None, Serve::Http).await;
    let addr = upstream.addr.to_string();
    let yaml = proxy("")
        + &service(
            "good",
            "http1",
            &[(addr.clone(), 1)],
            "  tls: {mode: simple, sni: api.test.example, caFile: good.pem}",
        )
        + &service(
            "wrong",
            "http1",
            &[(addr, 1)],
            "  tls: {mode: simple, sni: api.test.example, caFile: wrong.pem}",
        )
        + &http_route(
            "r",
            "  rules:
    - {matches: [{path: {type: PathPrefix, value: /wrong}}], backendRefs: [{name: wrong}]}
    - {backendRefs: [{name: good}]}",
        );
    let proxy = Proxy::start_with_files(
        &yaml,
        &[("good.pem", &ca.bundle), ("wrong.pem", &other.bundle)],
    );
    let answer = call(&proxy, "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json()["peer"],
        "",
        "no client certificate in simple mode"
    );
    let answer = call(&proxy, "/wrong").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-strait-reason"), "tls-failure");
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_endpoint_is_resolved_and_its_name_is_the_default_sni() {
    let ca = TestCa::new("public");
    let upstream = TlsUpstream::start(&ca.server("localhost"), None, Serve::Http).await;
    let port = upstream.addr.port();
    // The same server by name and by address, neither with an `sni`: the name is verified
    // against the certificate (for `localhost`), the address is not in it.
    let yaml = proxy("")
        + &service(
            "by-name",
            "http1",
            &[(format!("localhost:{port}"), 1)],
            "  tls: {mode: simple, caFile: ca.pem}",
        )
        + &service(
            "by-address",
            "http1",
            &[(upstream.addr.to_string(), 1)],
            "  tls: {mode: simple, caFile: ca.pem}",
        )
        + &http_route(
            "r",
            "  rules:
    - {matches: [{path: {type: PathPrefix, value: /by-address}}], backendRefs: [{name: by-address}]}
    - {backendRefs: [{name: by-name}]}",
        );
    let proxy = Proxy::start_with_files(&yaml, &[("ca.pem", &ca.bundle)]);
    for _ in 0..3 {
        let answer = call(&proxy, "/").await;
        assert_eq!(
            answer.status,
            200,
            "{answer:?}\n{}",
            proxy.logs().join("\n")
        );
    }
    assert_eq!(upstream.accepts(), 1, "pooled like an address endpoint");
    let answer = call(&proxy, "/by-address").await;
    assert_eq!(answer.status, 502);
    assert_eq!(answer.header("x-strait-reason"), "tls-failure");
    let clusters = strait_tests::metrics::clusters(proxy.admin()).await;
    let by_name = strait_tests::metrics::cluster(&clusters, "by-name");
    assert_eq!(
        by_name["endpoints"][0]["address"],
        format!("localhost:{port}"),
        "shown as configured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_rotated_under_load_fails_no_request_and_new_connections_present_it() {
    let (ca, upstream, proxy) = reviews_calling_ratings("http1").await;
    let url = proxy.url("web");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = |path: &'static str| {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let client = http1();
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match get(&client, &format!("{url}{path}"), "ratings", &[]).await {
                    Ok(a) if a.status == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    // Pooled connections, and a new connection per request (each a handshake).
    let (pooled, fresh) = (load("/"), load("/close"));
    eventually("requests flow", Duration::from_secs(10), || async {
        (upstream.requests() > 20).then_some(())
    })
    .await;
    let renewed = ca.workload(REVIEWS);
    let dir = proxy.config_path();
    let dir = dir.parent().unwrap();
    std::fs::write(dir.join("id.crt"), &renewed.chain).unwrap();
    std::fs::write(dir.join("id.key"), &renewed.key).unwrap();
    eventually(
        "new connections present the renewed certificate",
        Duration::from_secs(15),
        || async { (upstream.client_certificates() == 2).then_some(()) },
    )
    .await;
    let before = upstream.requests();
    eventually("requests still flow", Duration::from_secs(10), || async {
        (upstream.requests() > before + 20).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for task in [pooled, fresh] {
        let (ok, failed) = task.await.unwrap();
        assert!(ok > 0);
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(3)]
        );
    }
}

//! What the app behind a TLS listener is told about how its client spoke: a request that
//! arrived over TLS (termination with the user's certificate, or the mesh's mTLS) is forwarded
//! with `x-forwarded-proto: https` and `forwarded: ...;proto=https`, over HTTP/1.1 and h2 alike,
//! so an app that redirects plain-HTTP clients to HTTPS does not redirect these; plaintext
//! listeners still say `http`.

use strait_tests::client::{get, http1};
use strait_tests::config::{http_route, service};
use strait_tests::h2_wire;
use strait_tests::tls::{ClientIdentity, TestCa, TlsClient};
use strait_tests::{Proxy, Upstream};

const ME: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const PEER: &str = "spiffe://cluster.local/ns/default/sa/productpage";

/// A proxy with a mesh identity and three listeners routed to `up`: `edge` (TLS termination
/// with `edge`'s certificate), `inbound` (mTLS) and `plain`.
fn start(ca: &TestCa, up: &Upstream) -> Proxy {
    let yaml = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: test}
spec:
  admin: 127.0.0.1:0
  identity: {certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}
  listeners:
    - {name: edge, address: 127.0.0.1:0, protocol: http, tls: {mode: simple, certFile: edge.crt, keyFile: edge.key}}
    - {name: inbound, address: 127.0.0.1:0, protocol: http, tls: {mode: mutual}}
    - {name: plain, address: 127.0.0.1:0, protocol: http}
"
    .to_owned()
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - backendRefs: [{name: up}]");
    let edge = ca.server("127.0.0.1");
    let me = ca.workload(ME);
    Proxy::start_with_files(
        &yaml,
        &[
            ("edge.crt", &edge.chain),
            ("edge.key", &edge.key),
            ("id.crt", &me.chain),
            ("id.key", &me.key),
            ("roots.pem", &ca.bundle),
        ],
    )
}

/// The forwarding headers the app saw, from its JSON echo.
fn forwarded(echo: &serde_json::Value) -> (String, String) {
    let first = |name: &str| {
        echo["headers"][name][0]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (first("x-forwarded-proto"), first("forwarded"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_behind_a_tls_listener_is_told_its_client_spoke_https() {
    let ca = TestCa::new("edge");
    let up = Upstream::start("up").await;
    let proxy = start(&ca, &up);
    let https = ("https".to_owned(), "for=127.0.0.1;proto=https".to_owned());

    // Termination, HTTP/1.1 and h2 by ALPN.
    for h2 in [false, true] {
        let answer = TlsClient::new(&ca.bundle, None, h2)
            .call(proxy.listener("edge"), http::Method::GET, "/", None, None)
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{:?}", answer.json);
        assert_eq!(forwarded(&answer.json), https, "h2: {h2}");
    }

    // mTLS from a mesh peer.
    let peer = ca.workload(PEER);
    let peer = ClientIdentity {
        chain_pem: peer.chain,
        key_pem: peer.key,
    };
    let answer = strait_tests::mesh_peer::get_over_tls(proxy.listener("inbound"), Some(&peer), "/")
        .await
        .unwrap();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let echo: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    assert_eq!(forwarded(&echo), https, "{answer}");
    assert_eq!(echo["headers"]["x-strait-client-id"][0], PEER);

    // Plaintext stays http.
    let answer = get(&http1(), &proxy.url("plain"), "app", &[])
        .await
        .unwrap();
    assert_eq!(
        forwarded(&answer.json()),
        ("http".to_owned(), "for=127.0.0.1;proto=http".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_over_tls_must_open_with_the_preface_and_settings() {
    let ca = TestCa::new("edge");
    let up = Upstream::start("up").await;
    let proxy = start(&ca, &up);
    let h2 = TlsClient::new(&ca.bundle, None, true);
    for wire in [
        [h2_wire::PREFACE, h2_wire::PING].concat(),
        b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ] {
        let mut tls = h2.connect(proxy.listener("edge")).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        h2_wire::expect_goaway(&mut tls, &wire).await;
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_yet_to_send_its_preface_closes_at_once_on_drain() {
    use tokio::io::AsyncReadExt;
    let ca = TestCa::new("edge");
    let up = Upstream::start("up").await;
    let proxy = start(&ca, &up);
    let mut tls = TlsClient::new(&ca.bundle, None, true)
        .connect(proxy.listener("edge"))
        .await
        .unwrap();
    let signalled = std::time::Instant::now();
    proxy.signal("TERM");
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "closed by the drain: {closed:?}"
    );
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(1),
        "at once, not when headerReadTimeout ends: {:?}",
        signalled.elapsed()
    );
}

//! Host and path hardening: the authority that is routed is the one forwarded, userinfo in an
//! authority is refused, and paths are matched once normalised but forwarded as sent. Each
//! case runs over HTTP/1.1 and h2c.

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use strait_tests::client::{get, h2c, http1, send_to, Answer};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{CaptureUpstream, Proxy, Upstream};

const VERSIONS: [Version; 2] = [Version::HTTP_11, Version::HTTP_2];

/// Upstreams behind routes by host (`x`, `secret.local`) and, for any other host, by path
/// (`/public`, `/admin`).
struct Setup {
    proxy: Proxy,
    public: Upstream,
    secret: Upstream,
    admin: Upstream,
    public_h2: Upstream,
    wire: CaptureUpstream,
}

async fn setup() -> Setup {
    let public = Upstream::start("public").await;
    let secret = Upstream::start("secret").await;
    let admin = Upstream::start("admin").await;
    let public_h2 = Upstream::start("public-h2").await;
    let wire = CaptureUpstream::start().await;
    let yaml = proxy("")
        + &service("public", "http1", &[(public.address(), 1)], "")
        + &service("secret", "http1", &[(secret.address(), 1)], "")
        + &service("admin", "http1", &[(admin.address(), 1)], "")
        + &service("public-h2", "http2", &[(public_h2.address(), 1)], "")
        + &service("wire", "http1", &[(wire.addr.to_string(), 1)], "")
        + &http_route(
            "x",
            "  hostnames: [x]
  rules:
    - {matches: [{path: {value: /h2}}], backendRefs: [{name: public-h2}]}
    - {matches: [{path: {value: /wire}}], backendRefs: [{name: wire}]}
    - {backendRefs: [{name: public}]}",
        )
        + &http_route(
            "secret",
            "  hostnames: [secret.local]\n  rules:\n    - {backendRefs: [{name: secret}]}",
        )
        + &http_route(
            "paths",
            "  rules:
    - {matches: [{path: {type: PathPrefix, value: /public}}], backendRefs: [{name: public}]}
    - {matches: [{path: {type: PathPrefix, value: /admin}}], backendRefs: [{name: admin}]}",
        );
    Setup {
        proxy: Proxy::start(&yaml),
        public,
        secret,
        admin,
        public_h2,
        wire,
    }
}

/// A GET of `uri` in `version` carrying `host` as its Host header (none when empty).
fn request(version: Version, uri: &str, host: &str) -> Request<Full<Bytes>> {
    let mut req = Request::get(uri).version(version);
    if !host.is_empty() {
        req = req.header("host", host);
    }
    req.body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authority_routed_is_the_host_forwarded() {
    let s = setup().await;
    let addr = s.proxy.listener("web");
    for version in VERSIONS {
        // An absolute-form target (HTTP/1) or `:authority` (HTTP/2) names `x`; the Host
        // header names another route's host.
        let a = send_to(addr, request(version, "http://x/hello", "secret.local"))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{version:?}");
        assert_eq!(a.header("x-upstream"), "public", "{version:?}: routed by x");
        assert_eq!(
            a.json()["headers"]["host"],
            serde_json::json!(["x"]),
            "{version:?}: the Host an HTTP/1 upstream gets"
        );

        let a = send_to(addr, request(version, "http://x/h2", "secret.local"))
            .await
            .unwrap();
        let echo = a.json();
        assert_eq!(echo["upstream"], "public-h2", "{version:?}");
        assert_eq!(
            echo["authority"], "x",
            "{version:?}: the :authority an HTTP/2 upstream gets"
        );
        assert!(
            echo["headers"].get("host").is_none(),
            "{version:?}: no Host beside :authority: {echo}"
        );

        // On the wire, the one Host line an HTTP/1 upstream reads.
        let a = send_to(addr, request(version, "http://x/wire", "secret.local"))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{version:?}");
        let captured = s.wire.captured();
        let sent = captured
            .last()
            .expect("a request reached the wire upstream");
        let hosts: Vec<&str> = sent
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("host:"))
            .collect();
        assert_eq!(hosts, ["host: x"], "{version:?}: {sent}");
    }
    // An origin-form request's Host is its authority, and stays as sent.
    let a = send_to(addr, request(Version::HTTP_11, "/hello", "X:80"))
        .await
        .unwrap();
    assert_eq!(a.header("x-upstream"), "public");
    assert_eq!(a.json()["headers"]["host"], serde_json::json!(["X:80"]));
    assert_eq!(
        s.secret.hits(),
        0,
        "nothing reached the Host header's route"
    );
    assert_eq!(s.public_h2.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_in_host_or_authority_is_400() {
    let s = setup().await;
    let addr = s.proxy.listener("web");
    let cases: [(Version, &str, &str); 6] = [
        (Version::HTTP_11, "/hello", "a@secret.local"),
        (Version::HTTP_11, "/hello", "a:pw@secret.local:80"),
        (
            Version::HTTP_11,
            "http://a@secret.local/hello",
            "secret.local",
        ),
        (Version::HTTP_11, "http://x/hello", "a@x"),
        (Version::HTTP_2, "http://a@secret.local/hello", ""),
        (Version::HTTP_2, "http://x/hello", "a@secret.local"),
    ];
    for (version, uri, host) in cases {
        let a: Answer = send_to(addr, request(version, uri, host)).await.unwrap();
        assert_eq!(a.status, 400, "{version:?} {uri} host {host:?}");
        assert_eq!(
            a.header("x-strait-reason"),
            "bad-request",
            "{version:?} {uri} host {host:?}"
        );
    }
    assert_eq!(
        (s.secret.hits(), s.public.hits()),
        (0, 0),
        "no upstream reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_matched_normalised_and_forwarded_as_sent() {
    let s = setup().await;
    let base = s.proxy.url("web");
    // (path as sent, upstream that serves it)
    let cases = [
        ("/public/x", "public"),
        ("/public/../admin", "admin"),
        ("/public/%2e%2e/admin", "admin"),
        ("/public/.%2E/admin/x", "admin"),
        ("/public/%2e%2e%2fadmin", "public"),
        ("//admin", "admin"),
        ("/../admin", "admin"),
        ("/%61dmin", "admin"),
        ("/admin/../public/x", "public"),
    ];
    for (name, client) in [("http1", http1()), ("h2c", h2c())] {
        for (path, want) in cases {
            let a = get(
                &client,
                &format!("{base}{path}?q=/../x"),
                "paths.local",
                &[],
            )
            .await
            .unwrap();
            assert_eq!(a.status, 200, "{name} {path}");
            let echo = a.json();
            assert_eq!(echo["upstream"], want, "{name} {path}");
            assert_eq!(echo["path"], path, "{name}: the path goes upstream as sent");
            assert_eq!(echo["query"], "q=/../x", "{name} {path}");
        }
    }
    assert_eq!(s.admin.hits(), 12);
}

//! Transparent interception for real: network namespaces stand in for a client, a pod and a
//! backend; `strait-proxy init-iptables` installs the rules in the pod namespace; the proxy
//! runs there as its own UID (like the injected sidecar). Neither the client nor the app knows
//! the proxy exists, yet both directions go through it.
//!
//! Needs root, `ip` (iproute2), `iptables` and `setpriv`. Skips — loudly — only where network
//! namespaces cannot be created.

use std::net::SocketAddr;
use std::time::Duration;

use strait_config::sidecar::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
use strait_tests::client::{get, http1};
use strait_tests::metrics::value;
use strait_tests::netns::{
    start_sidecar, tcp_round_trip, Mesh, NsRuntime, BACKEND_ADDRESS, CLIENT_ADDRESS, POD_ADDRESS,
};
use strait_tests::process::{proxy_bin, TempDir};
use strait_tests::{eventually, TcpEcho, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP_PORT: u16 = 8080;
const APP_OTHER_PORT: u16 = 8081;
const BACKEND_PORT: u16 = 9000;
const BACKEND_ECHO_PORT: u16 = 9001;

fn sidecar_config() -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: sidecar}}
spec:
  admin: 0.0.0.0:{ADMIN_PORT}
  drainTimeout: 5s
  listeners:
    - {{name: inbound, address: 0.0.0.0:{INBOUND_PORT}, protocol: http, mode: inbound}}
    - {{name: outbound, address: 127.0.0.1:{OUTBOUND_PORT}, protocol: http, mode: outbound}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: app}}
spec:
  protocol: http1
  endpoints: [{{address: \"127.0.0.1:{APP_PORT}\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: backend}}
spec:
  protocol: http1
  endpoints: [{{address: \"{BACKEND_ADDRESS}:{BACKEND_PORT}\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: app-inbound}}
spec:
  parentRefs: [{{name: inbound}}]
  hostnames: [app.strait.test]
  rules:
    - backendRefs: [{{name: app}}]
      requestHeaders: {{set: {{x-strait-inbound: routed}}}}
      responseHeaders: {{set: {{x-strait-route: app-inbound}}}}
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: backend-outbound}}
spec:
  parentRefs: [{{name: outbound}}]
  hostnames: [backend.strait.test]
  rules:
    - backendRefs: [{{name: backend}}]
      requestHeaders: {{set: {{x-strait-outbound: routed}}}}
"
    )
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

#[tokio::test]
async fn pod_traffic_goes_through_the_proxy_both_ways() {
    let mesh = match Mesh::create("icpt") {
        Ok(mesh) => mesh,
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED interception test: cannot create network namespaces here ({why}).\n\
                 *** It needs root with CAP_SYS_ADMIN/CAP_NET_ADMIN, iproute2 and iptables.\n"
            );
            return;
        }
    };
    let client = NsRuntime::start(&mesh.client).expect("client namespace runtime");
    let pod = NsRuntime::start(&mesh.pod).expect("pod namespace runtime");
    let backend = NsRuntime::start(&mesh.backend).expect("backend namespace runtime");

    // The app: two ports on every address of the pod. The backend: HTTP and a TCP echo.
    let app = pod
        .run(Upstream::http1_at("app", addr("0.0.0.0", APP_PORT)))
        .await
        .expect("app");
    let app_other = pod
        .run(Upstream::http1_at(
            "app-other",
            addr("0.0.0.0", APP_OTHER_PORT),
        ))
        .await
        .expect("app other port");
    let backend_http = backend
        .run(Upstream::http1_at("backend", addr("0.0.0.0", BACKEND_PORT)))
        .await
        .expect("backend");
    let _echo = backend
        .run(TcpEcho::start_at(addr("0.0.0.0", BACKEND_ECHO_PORT)))
        .await
        .expect("echo");

    // The init step, twice: the second run must leave the same rules.
    let bin = proxy_bin();
    mesh.exec(&mesh.pod, &bin, &["init-iptables"])
        .expect("init-iptables");
    let iptables = std::path::Path::new("iptables");
    let first = mesh
        .exec(&mesh.pod, iptables, &["-t", "nat", "-S"])
        .expect("iptables -S");
    mesh.exec(&mesh.pod, &bin, &["init-iptables"])
        .expect("init-iptables again");
    let second = mesh
        .exec(&mesh.pod, iptables, &["-t", "nat", "-S"])
        .expect("iptables -S");
    assert_eq!(first, second, "init-iptables is not idempotent");
    assert!(first.contains("STRAIT_OUTBOUND"), "{first}");

    // The proxy, as its own UID, like the injected sidecar.
    let dir = TempDir::new("interception");
    let mut proxy = start_sidecar(&mesh, &client, &dir, &sidecar_config()).await;
    let admin = addr(POD_ADDRESS, ADMIN_PORT);

    // Inbound: the client dials the app's address; the proxy's route rewrites the request.
    let app_url = format!("http://{POD_ADDRESS}:{APP_PORT}/hello");
    let answer = client
        .run(async move { get(&http1(), &app_url, "app.strait.test", &[]).await })
        .await
        .expect("inbound request");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-upstream"), "app");
    assert_eq!(answer.header("x-strait-route"), "app-inbound");
    let seen = answer.json();
    assert_eq!(seen["headers"]["x-strait-inbound"][0], "routed", "{seen}");
    assert_eq!(
        seen["headers"]["x-forwarded-for"][0], CLIENT_ADDRESS,
        "the app sees the real client: {seen}"
    );
    assert_eq!(app.hits(), 1);

    // Inbound, no route for this host: passed through to the port the client dialled.
    let other_url = format!("http://{POD_ADDRESS}:{APP_OTHER_PORT}/other");
    let answer = client
        .run(async move { get(&http1(), &other_url, "10.77.1.2:8081", &[]).await })
        .await
        .expect("inbound passthrough");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-upstream"), "app-other");
    assert!(answer.json()["headers"]["x-strait-inbound"].is_null());

    // Outbound: the app calls the backend by address; the proxy routes by Host and rewrites.
    let backend_url = format!("http://{BACKEND_ADDRESS}:{BACKEND_PORT}/api");
    let url = backend_url.clone();
    let answer = pod
        .run(async move { get(&http1(), &url, "backend.strait.test", &[]).await })
        .await
        .expect("outbound request");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.header("x-upstream"), "backend");
    assert_eq!(answer.json()["headers"]["x-strait-outbound"][0], "routed");

    // Outbound, no route: passed through unchanged (not a 404).
    let url = backend_url.clone();
    let answer = pod
        .run(async move { get(&http1(), &url, "elsewhere.example", &[]).await })
        .await
        .expect("outbound passthrough");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.json()["headers"]["x-strait-outbound"].is_null());
    assert_eq!(backend_http.hits(), 2);

    // Outbound opaque TCP (not HTTP): passed through to the original destination.
    let echo = addr(BACKEND_ADDRESS, BACKEND_ECHO_PORT);
    let echoed = pod
        .run(tcp_round_trip(echo, b"\x00\x01binary, not http"))
        .await;
    assert_eq!(echoed, b"\x00\x01binary, not http");

    // The proxy counted all of it.
    let metrics = client
        .run(async move {
            get(&http1(), &format!("http://{admin}/metrics"), "admin", &[])
                .await
                .map(|a| String::from_utf8_lossy(&a.body).into_owned())
        })
        .await
        .expect("scrape");
    let count = |labels: &[(&str, &str)]| value(&metrics, "strait_requests_total", labels);
    assert_eq!(
        count(&[
            ("listener", "inbound"),
            ("route", "app-inbound"),
            ("code", "200")
        ]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        count(&[
            ("listener", "outbound"),
            ("route", "backend-outbound"),
            ("code", "200")
        ]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        count(&[("listener", "inbound"), ("service", "passthrough")]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        count(&[("listener", "outbound"), ("service", "passthrough")]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            "strait_tcp_connections_total",
            &[("listener", "outbound")]
        ),
        Some(1.0),
        "{metrics}"
    );

    // An opaque connection the app keeps open across the shutdown (see below).
    let held = pod
        .run(async move {
            let mut stream = tokio::net::TcpStream::connect(echo).await.expect("connect");
            stream.write_all(b"before").await.expect("write");
            let mut back = [0u8; 6];
            stream.read_exact(&mut back).await.expect("echo");
            assert_eq!(&back, b"before");
            // Served from the test's thread from here: the namespace mattered for connecting.
            stream.into_std().expect("std stream")
        })
        .await;

    // /shutdown is refused from outside the pod, accepted from inside it.
    let refused = client
        .run(async move { post(admin, "/shutdown").await })
        .await;
    assert_eq!(refused, 403);

    // Draining: a slow inbound request is in flight when the pod's shutdown begins...
    let slow_url = format!("http://{POD_ADDRESS}:{APP_PORT}/delay/1500");
    let slow = client.spawn(async move { get(&http1(), &slow_url, "app.strait.test", &[]).await });
    eventually(
        "the slow request is in flight",
        Duration::from_secs(10),
        || {
            let clusters = client.run(async move {
                get(&http1(), &format!("http://{admin}/clusters"), "admin", &[])
                    .await
                    .ok()
                    .map(|a| a.json())
            });
            async move {
                let clusters = clusters.await?;
                let services = clusters["services"].as_array()?;
                let app = services.iter().find(|s| s["name"] == "app")?;
                (app["endpoints"][0]["inFlight"] == 1).then_some(())
            }
        },
    )
    .await;
    let local_admin = addr("127.0.0.1", ADMIN_PORT);
    let accepted = pod
        .run(async move { post(local_admin, "/shutdown").await })
        .await;
    assert_eq!(accepted, 202);
    // ...the app can still call out while it shuts down (outbound keeps accepting)...
    let url = backend_url.clone();
    let answer = pod
        .run(async move { get(&http1(), &url, "backend.strait.test", &[]).await })
        .await
        .expect("outbound request while draining");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["headers"]["x-strait-outbound"][0], "routed");
    // ...new inbound connections are no longer taken...
    let url = format!("http://{POD_ADDRESS}:{APP_PORT}/late");
    let late = client
        .run(async move { get(&http1(), &url, "app.strait.test", &[]).await })
        .await;
    assert!(late.is_err(), "inbound accepted while draining: {late:?}");
    // ...and the request in flight completes...
    let slow = slow.await.expect("slow task").expect("slow request");
    assert_eq!(slow.status, 200, "{slow:?}");
    // ...and the opaque connection, still open well after that, is still served: the drain
    // waits for it (up to drainTimeout) instead of exiting under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let echoed = tokio::task::spawn_blocking(move || {
        use std::io::{Read as _, Write as _};
        let mut held = held;
        held.set_nonblocking(false)?;
        held.set_read_timeout(Some(Duration::from_secs(5)))?;
        held.write_all(b"after!")?;
        let mut back = [0u8; 6];
        held.read_exact(&mut back)?;
        Ok::<_, std::io::Error>(back)
    })
    .await
    .expect("blocking task");
    assert_eq!(
        echoed.ok(),
        Some(*b"after!"),
        "the drain cut an open opaque connection"
    );
    let exited = eventually(
        "the proxy exits after /shutdown",
        Duration::from_secs(10),
        || {
            let done = proxy.exited();
            async move { done.then_some(()) }
        },
    )
    .await;
    let () = exited;
    assert!(proxy.logs().contains("POST /shutdown"), "{}", proxy.logs());
    drop((app, app_other, backend_http));
}

/// An outbound listener for opaque TCP: with a TCPRoute, connections go where the route says;
/// without one, to where they were going.
#[tokio::test]
async fn opaque_tcp_is_routed_by_a_tcp_route_or_passed_through() {
    let mesh = match Mesh::create("icpt-tcp") {
        Ok(mesh) => mesh,
        Err(why) => {
            eprintln!("\n*** SKIPPED TCP interception test: cannot create network namespaces here ({why}).\n");
            return;
        }
    };
    let client = NsRuntime::start(&mesh.client).expect("client namespace runtime");
    let pod = NsRuntime::start(&mesh.pod).expect("pod namespace runtime");
    let backend = NsRuntime::start(&mesh.backend).expect("backend namespace runtime");
    let _echo = backend
        .run(TcpEcho::start_at(addr("0.0.0.0", BACKEND_ECHO_PORT)))
        .await
        .expect("echo");
    let _http = backend
        .run(Upstream::http1_at("backend", addr("0.0.0.0", BACKEND_PORT)))
        .await
        .expect("backend");
    mesh.exec(&mesh.pod, &proxy_bin(), &["init-iptables", "--no-inbound"])
        .expect("init-iptables");
    let head = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: sidecar}}
spec:
  admin: 0.0.0.0:{ADMIN_PORT}
  listeners:
    - {{name: outbound, address: 127.0.0.1:{OUTBOUND_PORT}, protocol: tcp, mode: outbound}}
"
    );

    // No TCPRoute: even an HTTP request is bytes, passed through to the port dialled.
    let dir = TempDir::new("interception-tcp");
    let proxy = start_sidecar(&mesh, &client, &dir, &head).await;
    let http_target = addr(BACKEND_ADDRESS, BACKEND_PORT);
    let answer = pod
        .run(async move {
            // No half-close: the HTTP server answers, then closes (`Connection: close`).
            let mut stream = tokio::net::TcpStream::connect(http_target)
                .await
                .expect("connect");
            stream
                .write_all(b"GET /x HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut out = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
            out
        })
        .await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-upstream: backend"), "{text}");
    drop(proxy);

    // With a TCPRoute: the connection to the HTTP port is taken to the echo service instead.
    let routed = format!(
        "{head}---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: echo}}
spec:
  protocol: tcp
  endpoints: [{{address: \"{BACKEND_ADDRESS}:{BACKEND_ECHO_PORT}\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: TCPRoute
metadata: {{name: to-echo}}
spec:
  parentRefs: [{{name: outbound}}]
  backendRefs: [{{name: echo}}]
"
    );
    let dir = TempDir::new("interception-tcp-routed");
    let proxy = start_sidecar(&mesh, &client, &dir, &routed).await;
    let echoed = pod
        .run(tcp_round_trip(http_target, b"ping through the route"))
        .await;
    assert_eq!(echoed, b"ping through the route", "{}", proxy.logs());
}

async fn post(to: SocketAddr, path: &str) -> u16 {
    use bytes::Bytes;
    use http_body_util::Full;
    let req = http::Request::post(format!("http://{to}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    strait_tests::client::send(&http1(), req)
        .await
        .map(|a| a.status.as_u16())
        .unwrap_or(0)
}

//! mTLS into an intercepting inbound listener, for real: a meshed caller (a Strait proxy in
//! the client namespace, its Services `tls.mode: mesh`) dials the pod's app ports; the pod's
//! iptables rules redirect the connections to its sidecar's `mode: inbound` listener, which
//! ends the mTLS and passes the requests, and opaque TCP, on to the app in plaintext. Neither
//! app knows TLS was used, and the app learns who called.
//!
//! Needs root, `ip`, `iptables` and `setpriv` (see interception.rs). Skips — loudly — only
//! where network namespaces cannot be created.

use std::net::SocketAddr;
use std::time::Duration;

use strait_config::sidecar::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
use strait_tests::client::{get, http1};
use strait_tests::mesh_peer::get_over_tls;
use strait_tests::netns::{
    start_sidecar, tcp_round_trip, wait_ready, Mesh, NsProcess, NsRuntime, POD_ADDRESS,
};
use strait_tests::process::{proxy_bin, TempDir};
use strait_tests::tls::{ClientIdentity, TestCa};
use strait_tests::{eventually, TcpEcho, Upstream};

const APP_PORT: u16 = 8080;
const APP_ECHO_PORT: u16 = 8082;
/// The caller's listeners, on loopback in the client namespace.
const CALLER_HTTP: u16 = 16080;
const CALLER_TCP: u16 = 16081;
const CALLER_ADMIN: u16 = 16000;

const APP_ID: &str = "spiffe://mesh.test/ns/shop/sa/app";
const CALLER_ID: &str = "spiffe://mesh.test/ns/shop/sa/caller";

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("address")
}

/// The pod's sidecar: an inbound listener taking mesh TLS (`tls` is its mode).
fn sidecar_config(tls: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: sidecar}}
spec:
  admin: 0.0.0.0:{ADMIN_PORT}
  identity: {{certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}}
  listeners:
    - {{name: inbound, address: 0.0.0.0:{INBOUND_PORT}, protocol: http, mode: inbound, tls: {{mode: {tls}}}}}
    - {{name: outbound, address: 127.0.0.1:{OUTBOUND_PORT}, protocol: http, mode: outbound}}
"
    )
}

/// The meshed caller: HTTP and TCP to the pod's app ports over mTLS, expecting the app's
/// identity.
fn caller_config() -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: caller}}
spec:
  admin: 127.0.0.1:{CALLER_ADMIN}
  identity: {{certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}}
  listeners:
    - {{name: web, address: 127.0.0.1:{CALLER_HTTP}, protocol: http}}
    - {{name: db, address: 127.0.0.1:{CALLER_TCP}, protocol: tcp}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: app}}
spec:
  protocol: http1
  endpoints: [{{address: \"{POD_ADDRESS}:{APP_PORT}\"}}]
  tls: {{mode: mesh, identities: [\"{APP_ID}\"]}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: app-echo}}
spec:
  protocol: tcp
  endpoints: [{{address: \"{POD_ADDRESS}:{APP_ECHO_PORT}\"}}]
  tls: {{mode: mesh, identities: [\"{APP_ID}\"]}}
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: to-app}}
spec:
  parentRefs: [{{name: web}}]
  rules: [{{backendRefs: [{{name: app}}]}}]
---
apiVersion: strait.dev/v1alpha1
kind: TCPRoute
metadata: {{name: to-echo}}
spec:
  parentRefs: [{{name: db}}]
  backendRefs: [{{name: app-echo}}]
"
    )
}

/// Writes an identity for `id` (`id.crt`, `id.key`, `roots.pem`) into `dir`.
fn write_identity(dir: &TempDir, ca: &TestCa, id: &str) {
    let leaf = ca.workload(id);
    for (name, contents) in [
        ("id.crt", leaf.chain.as_str()),
        ("id.key", leaf.key.as_str()),
        ("roots.pem", ca.bundle.as_str()),
    ] {
        std::fs::write(dir.path().join(name), contents).expect("write");
    }
}

#[tokio::test]
async fn a_meshed_caller_reaches_the_pods_app_over_mtls_through_interception() {
    let mesh = match Mesh::create("icpt-mtls") {
        Ok(mesh) => mesh,
        Err(why) => {
            eprintln!(
                "\n*** SKIPPED inbound mTLS interception test: cannot create network namespaces here ({why}).\n"
            );
            return;
        }
    };
    let client = NsRuntime::start(&mesh.client).expect("client namespace runtime");
    let pod = NsRuntime::start(&mesh.pod).expect("pod namespace runtime");
    let app = pod
        .run(Upstream::http1_at("app", addr("0.0.0.0", APP_PORT)))
        .await
        .expect("app");
    let _echo = pod
        .run(TcpEcho::start_at(addr("0.0.0.0", APP_ECHO_PORT)))
        .await
        .expect("echo");
    mesh.exec(&mesh.pod, &proxy_bin(), &["init-iptables"])
        .expect("init-iptables");

    let ca = TestCa::new("mesh");
    let sidecar_dir = TempDir::new("icpt-mtls-sidecar");
    write_identity(&sidecar_dir, &ca, APP_ID);
    let sidecar = start_sidecar(&mesh, &client, &sidecar_dir, &sidecar_config("permissive")).await;
    let sidecar_yaml = sidecar_dir.path().join("sidecar.yaml");
    let caller_dir = TempDir::new("icpt-mtls-caller");
    write_identity(&caller_dir, &ca, CALLER_ID);
    let caller_yaml = caller_dir.path().join("proxy.yaml");
    std::fs::write(&caller_yaml, caller_config()).expect("write caller config");
    let mut caller = NsProcess::spawn(
        &mesh.client,
        &[],
        &proxy_bin(),
        &["--config", &caller_yaml.to_string_lossy()],
    );
    let caller_admin = addr("127.0.0.1", CALLER_ADMIN);
    assert!(
        wait_ready(&client, &mut caller, caller_admin).await,
        "the caller exited:\n{}",
        caller.logs()
    );

    // HTTP through the caller: mTLS to the pod's app port, redirected to the sidecar, which
    // ends it and passes the request on; the app is told who called (and not by the caller).
    let url = format!("http://127.0.0.1:{CALLER_HTTP}/hello");
    let answer = client
        .run(async move {
            get(
                &http1(),
                &url,
                "app.shop",
                &[("x-strait-client-id", "spiffe://mesh.test/ns/shop/sa/forged")],
            )
            .await
        })
        .await
        .expect("meshed request");
    assert_eq!(answer.status, 200, "{answer:?}\n{}", sidecar.logs());
    assert_eq!(answer.header("x-upstream"), "app");
    let seen = answer.json();
    assert_eq!(
        seen["headers"]["x-strait-client-id"],
        serde_json::json!([CALLER_ID]),
        "{seen}"
    );
    assert_eq!(app.hits(), 1);

    // Opaque TCP through the caller (no ALPN): passed through to the app's echo port.
    let echoed = client
        .run(tcp_round_trip(
            addr("127.0.0.1", CALLER_TCP),
            b"\x00\x01opaque over mTLS",
        ))
        .await;
    assert_eq!(echoed, b"\x00\x01opaque over mTLS", "{}", sidecar.logs());

    // Permissive: a plaintext client of the app still gets through; a TLS client without a
    // mesh certificate does not.
    let direct = format!("http://{POD_ADDRESS}:{APP_PORT}/plain");
    let answer = client
        .run(async move {
            get(
                &http1(),
                &direct,
                "app.shop",
                &[("x-strait-client-id", "spiffe://mesh.test/ns/shop/sa/forged")],
            )
            .await
        })
        .await
        .expect("plaintext request");
    assert_eq!(answer.status, 200, "{answer:?}");
    let seen = answer.json();
    assert!(
        seen["headers"]["x-strait-client-id"].is_null(),
        "a plaintext client's claim reached the app: {seen}"
    );
    let app_address = addr(POD_ADDRESS, APP_PORT);
    let refused = client
        .run(async move { get_over_tls(app_address, None, "/no-cert").await })
        .await;
    assert!(
        refused.is_err(),
        "a TLS client without a certificate got {refused:?}"
    );
    let stranger = TestCa::new("stranger").workload(CALLER_ID);
    let stranger = ClientIdentity {
        chain_pem: stranger.chain,
        key_pem: stranger.key,
    };
    let refused = client
        .run(async move { get_over_tls(app_address, Some(&stranger), "/other-ca").await })
        .await;
    assert!(
        refused.is_err(),
        "a certificate of another CA got {refused:?}"
    );

    // Mutual, hot reloaded: plaintext is refused from then on, the meshed caller still served.
    std::fs::write(&sidecar_yaml, sidecar_config("mutual")).expect("rewrite sidecar config");
    let direct = format!("http://{POD_ADDRESS}:{APP_PORT}/plain");
    let refused = eventually(
        "plaintext refused after the switch to mutual",
        Duration::from_secs(15),
        || {
            let url = direct.clone();
            let probe =
                client.run(async move { get(&http1(), &url, "app.shop", &[]).await.is_err() });
            async move { probe.await.then_some(()) }
        },
    )
    .await;
    let () = refused;
    let url = format!("http://127.0.0.1:{CALLER_HTTP}/after");
    let answer = client
        .run(async move { get(&http1(), &url, "app.shop", &[]).await })
        .await
        .expect("meshed request after the switch");
    assert_eq!(answer.status, 200, "{answer:?}\n{}", sidecar.logs());
    assert_eq!(
        answer.json()["headers"]["x-strait-client-id"],
        serde_json::json!([CALLER_ID])
    );
}

//! TLS on the proxy's listeners, end to end with real handshakes: `tls.mode: mutual` refuses
//! clients without a certificate of the mesh's trust domain and tells the upstream who the
//! client is (`x-strait-client-id`, forged ones removed everywhere), `permissive` serves
//! plaintext and mTLS on one port, `simple` terminates with the user's certificate (ALPN h2 and
//! http/1.1), an identity rotation under load fails no request, sessions resume, the access
//! log and `strait_requests_total` carry `client_id`, and opaque TCP rides mTLS too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind};
use strait_tests::config::{http_route, service};
use strait_tests::mesh_peer;
use strait_tests::metrics::{scrape, value};
use strait_tests::tls::{certificates, ClientIdentity, Leaf, TestCa};
use strait_tests::{eventually, Proxy, TcpEcho, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const ME: &str = "spiffe://cluster.local/ns/default/sa/reviews";
const PEER: &str = "spiffe://cluster.local/ns/default/sa/productpage";

/// A proxy with an identity from files and the listeners `inbound` (http, `tls_mode`),
/// `plain` (http, no TLS) and `db` (tcp, `tls_mode`), routing to `up` / `echo`.
fn mesh_yaml(tls_mode: &str, up: &Upstream, echo: Option<&TcpEcho>) -> String {
    let mut yaml = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: test}}
spec:
  admin: 127.0.0.1:0
  drainTimeout: 5s
  identity: {{certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}}
  listeners:
    - {{name: inbound, address: 127.0.0.1:0, protocol: http, tls: {{mode: {tls_mode}}}}}
    - {{name: plain, address: 127.0.0.1:0, protocol: http}}
    - {{name: db, address: 127.0.0.1:0, protocol: tcp, tls: {{mode: {tls_mode}}}}}
"
    ) + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - backendRefs: [{name: up}]");
    if let Some(echo) = echo {
        yaml += &service("echo", "tcp", &[(echo.addr.to_string(), 1)], "");
        yaml += "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: echo}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: echo}]\n";
    }
    yaml
}

fn start_mesh(yaml: &str, ca: &TestCa, me: &Leaf) -> Proxy {
    Proxy::start_with_files(
        yaml,
        &[
            ("id.crt", &me.chain),
            ("id.key", &me.key),
            ("roots.pem", &ca.bundle),
        ],
    )
}

/// A mesh client: presents `identity` (if any), offers `alpn`.
fn mesh_client(identity: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let identity = identity.map(|leaf| ClientIdentity {
        chain_pem: leaf.chain.clone(),
        key_pem: leaf.key.clone(),
    });
    mesh_peer::client_config(identity.as_ref(), alpn).expect("mesh client configuration")
}

/// A client of a `simple` listener: verifies the server against `bundle` for 127.0.0.1.
fn edge_client(bundle: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(bundle) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn handshake(
    config: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    TlsConnector::from(config.clone())
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// An HTTP connection (h2 when ALPN chose it, else HTTP/1.1) over any stream.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// What the upstream echoed.
#[derive(Debug)]
struct Seen {
    status: u16,
    version: Version,
    /// The request headers the upstream saw (JSON echo), or the body when not JSON.
    echo: serde_json::Value,
}

impl Seen {
    /// The upstream saw this header's values (joined by `,`), if at all.
    fn header(&self, name: &str) -> Option<String> {
        let values = self.echo["headers"].get(name)?.as_array()?;
        Some(
            values
                .iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

impl Sender {
    async fn over<S>(io: S, h2: bool) -> Result<Self, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        if h2 {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Self::H2(sender))
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Self::H1(sender))
        }
    }

    async fn tls(config: &Arc<ClientConfig>, addr: SocketAddr) -> Result<Self, String> {
        let tls = handshake(config, addr).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Self::over(tls, h2).await
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Seen, String> {
        let mut req = match self {
            Self::H1(_) => Request::builder().uri(path).header("host", "svc.local"),
            Self::H2(_) => Request::builder().uri(format!("http://svc.local{path}")),
        };
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let resp = match self {
            Self::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Self::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let (status, version) = (resp.status().as_u16(), resp.version());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let echo = serde_json::from_slice(&body)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned().into());
        Ok(Seen {
            status,
            version,
            echo,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_listener_refuses_clients_without_a_mesh_certificate() {
    let ca = TestCa::new("mesh");
    let up = Upstream::start("up").await;
    let proxy = start_mesh(&mesh_yaml("mutual", &up, None), &ca, &ca.workload(ME));
    let addr = proxy.listener("inbound");
    let refused = |config: Arc<ClientConfig>| async move {
        // TLS 1.3: the client's side of the handshake ends before the server has checked its
        // certificate; the refusal arrives as an alert on the first read.
        let result = async {
            let mut sender = Sender::tls(&config, addr).await?;
            sender.get("/who", &[]).await
        }
        .await;
        assert!(result.is_err(), "served: {result:?}");
    };
    refused(mesh_client(None, &[b"http/1.1"])).await;
    let stranger = TestCa::new("stranger");
    refused(mesh_client(Some(&stranger.workload(PEER)), &[b"http/1.1"])).await;
    let other_domain = ca.workload("spiffe://other.domain/ns/default/sa/productpage");
    refused(mesh_client(Some(&other_domain), &[b"http/1.1"])).await;
    refused(mesh_client(Some(&ca.server("127.0.0.1")), &[b"http/1.1"])).await;
    // Plaintext is not served either.
    let plaintext = strait_tests::client::raw(addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert!(!plaintext.contains("HTTP/1.1"), "{plaintext}");
    assert_eq!(up.hits(), 0);

    // A meshed client is served, over HTTP/1.1 and h2; the upstream learns who it is, and a
    // forged claim does not survive.
    let peer = ca.workload(PEER);
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let mut sender = Sender::tls(&mesh_client(Some(&peer), &[alpn]), addr)
            .await
            .unwrap();
        let seen = sender
            .get(
                "/who",
                &[("x-strait-client-id", "spiffe://cluster.local/ns/x/sa/admin")],
            )
            .await
            .unwrap();
        assert_eq!(seen.status, 200, "{seen:?}");
        assert_eq!(seen.header("x-strait-client-id").as_deref(), Some(PEER));
        let h2 = alpn == b"h2";
        assert_eq!(seen.version == Version::HTTP_2, h2, "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_client_id_is_removed_on_plaintext_listeners() {
    let ca = TestCa::new("mesh");
    let up = Upstream::start("up").await;
    let proxy = start_mesh(&mesh_yaml("permissive", &up, None), &ca, &ca.workload(ME));
    for listener in ["plain", "inbound"] {
        let tcp = TcpStream::connect(proxy.listener(listener)).await.unwrap();
        let mut sender = Sender::over(tcp, false).await.unwrap();
        let seen = sender
            .get("/who", &[("x-strait-client-id", PEER)])
            .await
            .unwrap();
        assert_eq!(seen.status, 200, "{listener}: {seen:?}");
        assert_eq!(seen.header("x-strait-client-id"), None, "{listener}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissive_listener_serves_plaintext_and_mtls_on_one_port() {
    let ca = TestCa::new("mesh");
    let up = Upstream::start("up").await;
    let proxy = start_mesh(&mesh_yaml("permissive", &up, None), &ca, &ca.workload(ME));
    let addr = proxy.listener("inbound");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let seen = Sender::over(tcp, false)
        .await
        .unwrap()
        .get("/plain", &[])
        .await
        .unwrap();
    assert_eq!(seen.status, 200);
    assert_eq!(seen.header("x-strait-client-id"), None);
    let peer = ca.workload(PEER);
    let seen = Sender::tls(&mesh_client(Some(&peer), &[b"h2"]), addr)
        .await
        .unwrap()
        .get("/mtls", &[])
        .await
        .unwrap();
    assert_eq!(seen.status, 200);
    assert_eq!(seen.header("x-strait-client-id").as_deref(), Some(PEER));
    // h2c prior knowledge still works in plaintext.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let seen = Sender::over(tcp, true)
        .await
        .unwrap()
        .get("/h2c", &[])
        .await
        .unwrap();
    assert_eq!((seen.status, seen.version), (200, Version::HTTP_2));
    // A TLS client without a certificate is refused: TLS on a permissive listener is mTLS.
    let result = async {
        Sender::tls(&mesh_client(None, &[b"http/1.1"]), addr)
            .await?
            .get("/anon", &[])
            .await
    }
    .await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_termination_speaks_h2_and_http1_by_alpn() {
    let users = TestCa::new("edge");
    let edge = users.server("127.0.0.1");
    let up = Upstream::start("up").await;
    let yaml = "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {name: test}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {name: edge, address: 127.0.0.1:0, protocol: http, tls: {mode: simple, certFile: edge.crt, keyFile: edge.key}}
"
    .to_owned()
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - backendRefs: [{name: up}]");
    let proxy =
        Proxy::start_with_files(&yaml, &[("edge.crt", &edge.chain), ("edge.key", &edge.key)]);
    let addr = proxy.listener("edge");
    for (alpn, version) in [
        (&[&b"h2"[..], b"http/1.1"][..], Version::HTTP_2),
        (&[&b"http/1.1"[..]][..], Version::HTTP_11),
        (&[][..], Version::HTTP_11),
    ] {
        let mut sender = Sender::tls(&edge_client(&users.bundle, alpn), addr)
            .await
            .unwrap();
        for _ in 0..3 {
            let seen = sender
                .get("/edge", &[("x-strait-client-id", PEER)])
                .await
                .unwrap();
            assert_eq!((seen.status, seen.version), (200, version), "{seen:?}");
            // No client certificate here: whoever claims an identity is not believed.
            assert_eq!(seen.header("x-strait-client-id"), None);
        }
    }
    // The user renews the certificate: new handshakes take it, none fails meanwhile (a key
    // written before its certificate is not taken alone).
    let renewed = users.server("127.0.0.1");
    let dir = proxy.config_path();
    let dir = dir.parent().unwrap();
    std::fs::write(dir.join("edge.key"), &renewed.key).unwrap();
    std::fs::write(dir.join("edge.crt"), &renewed.chain).unwrap();
    let new_cert = certificates(&renewed.chain).remove(0);
    let client = edge_client(&users.bundle, &[b"http/1.1"]);
    eventually(
        "new handshakes present the renewed certificate",
        Duration::from_secs(10),
        || async {
            let tls = handshake(&client, addr)
                .await
                .expect("handshakes keep working");
            (tls.get_ref().1.peer_certificates()?[0] == new_cert).then_some(())
        },
    )
    .await;
    // `Expect: 100-continue` over TLS: the interim answer reaches the client, which only then
    // sends its body.
    let mut tls = handshake(&edge_client(&users.bundle, &[b"http/1.1"]), addr)
        .await
        .unwrap();
    tls.write_all(
        b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut interim))
        .await
        .expect("100 Continue within 10s")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    tls.write_all(b"hello").await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    // A large body streamed through TLS both ways.
    let mut tls = handshake(&edge_client(&users.bundle, &[b"http/1.1"]), addr)
        .await
        .unwrap();
    let body = vec![b'x'; 300_000];
    let head = format!(
        "POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body).await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut back))
        .await
        .expect("answered")
        .ok();
    let text = String::from_utf8_lossy(&back);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..text.len().min(200)]
    );
    let echoed = back.iter().filter(|&&b| b == b'x').count();
    assert!(
        echoed >= body.len(),
        "{echoed} of {} bytes echoed",
        body.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_resumes_its_session() {
    let ca = TestCa::new("mesh");
    let up = Upstream::start("up").await;
    let proxy = start_mesh(&mesh_yaml("mutual", &up, None), &ca, &ca.workload(ME));
    let config = mesh_client(Some(&ca.workload(PEER)), &[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tls = handshake(&config, proxy.listener("inbound")).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        // A request read to its end: the session ticket comes with it.
        let seen = Sender::over(tls, false)
            .await
            .unwrap()
            .get("/again", &[])
            .await
            .unwrap();
        assert_eq!(seen.header("x-strait-client-id").as_deref(), Some(PEER));
    }
    assert_eq!(
        kinds,
        [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_rotation_under_load_fails_no_request() {
    let ca = TestCa::new("mesh");
    let up = Upstream::start("up").await;
    let first = ca.workload(ME);
    let proxy = start_mesh(&mesh_yaml("mutual", &up, None), &ca, &first);
    let addr = proxy.listener("inbound");
    let peer = ca.workload(PEER);
    let config = mesh_client(Some(&peer), &[b"http/1.1"]);
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One loop on a kept-alive connection, one with a new connection (fresh client config,
    // so a full handshake) per request.
    let kept = {
        let (config, served, stop) = (config.clone(), served.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sender = Sender::tls(&config, addr).await?;
            while !stop.load(Ordering::SeqCst) {
                let seen = sender.get("/kept", &[]).await?;
                if seen.status != 200 {
                    return Err(format!("{seen:?}"));
                }
                served.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, String>(())
        })
    };
    let fresh = {
        let (peer, served, stop) = (peer.clone(), served.clone(), stop.clone());
        tokio::spawn(async move {
            let mut certs = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let config = mesh_client(Some(&peer), &[b"http/1.1"]);
                let tls = handshake(&config, addr).await?;
                let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                if certs.last() != Some(&cert) {
                    certs.push(cert);
                }
                let seen = Sender::over(tls, false).await?.get("/fresh", &[]).await?;
                if seen.status != 200 {
                    return Err(format!("{seen:?}"));
                }
                served.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, String>(certs)
        })
    };
    eventually("requests flow", Duration::from_secs(10), || async {
        (served.load(Ordering::SeqCst) > 20).then_some(())
    })
    .await;
    let second = ca.workload(ME);
    let dir = proxy.config_path();
    let dir = dir.parent().unwrap();
    std::fs::write(dir.join("id.key"), &second.key).unwrap();
    std::fs::write(dir.join("id.crt"), &second.chain).unwrap();
    let new_cert = certificates(&second.chain).remove(0);
    let check = mesh_client(Some(&peer), &[b"http/1.1"]);
    eventually(
        "new handshakes present the renewed certificate",
        Duration::from_secs(10),
        || async {
            let tls = handshake(&check, addr).await.ok()?;
            (tls.get_ref().1.peer_certificates()?[0] == new_cert).then_some(())
        },
    )
    .await;
    let before = served.load(Ordering::SeqCst);
    eventually("requests flow after", Duration::from_secs(10), || async {
        (served.load(Ordering::SeqCst) > before + 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    kept.await
        .unwrap()
        .expect("the kept-alive connection failed no request");
    let certs = fresh.await.unwrap().expect("no fresh connection failed");
    assert_eq!(certs.len(), 2, "the old certificate, then the new one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_and_requests_total_carry_client_id() {
    let ca = TestCa::new("mesh");
    let up = Upstream::start("up").await;
    let proxy = start_mesh(&mesh_yaml("permissive", &up, None), &ca, &ca.workload(ME));
    let addr = proxy.listener("inbound");
    let mut mtls = Sender::tls(&mesh_client(Some(&ca.workload(PEER)), &[b"h2"]), addr)
        .await
        .unwrap();
    for _ in 0..3 {
        mtls.get("/logged-mtls", &[]).await.unwrap();
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    Sender::over(tcp, false)
        .await
        .unwrap()
        .get("/logged-plain", &[])
        .await
        .unwrap();
    let line = eventually("access log lines", Duration::from_secs(5), || async {
        let logs = proxy.json_logs();
        let of = |path: &str| {
            logs.iter()
                .find(|l| l["fields"]["message"] == "access" && l["fields"]["path"] == path)
                .cloned()
        };
        Some((of("/logged-mtls")?, of("/logged-plain")?))
    })
    .await;
    assert_eq!(line.0["fields"]["client_id"], PEER);
    assert_eq!(line.1["fields"]["client_id"], "-");
    let text = scrape(proxy.admin()).await;
    let requests = |client: &str| {
        value(
            &text,
            "strait_requests_total",
            &[
                ("listener", "inbound"),
                ("client_id", client),
                ("code", "200"),
            ],
        )
    };
    assert_eq!(requests(PEER), Some(3.0), "{text}");
    assert_eq!(requests(""), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_rides_mtls_inbound() {
    let ca = TestCa::new("mesh");
    let up = Upstream::start("up").await;
    let echo = TcpEcho::start().await;
    let proxy = start_mesh(
        &mesh_yaml("mutual", &up, Some(&echo)),
        &ca,
        &ca.workload(ME),
    );
    let addr = proxy.listener("db");
    let mut tls = handshake(&mesh_client(Some(&ca.workload(PEER)), &[]), addr)
        .await
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    tls.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut back))
        .await
        .expect("echoed within 10s")
        .unwrap();
    assert!(back == payload, "echoed bytes differ");
    // Without a client certificate: refused.
    let mut anon = handshake(&mesh_client(None, &[]), addr).await.unwrap();
    let _ = anon.write_all(b"hello").await;
    let mut buf = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_secs(10), anon.read(&mut buf))
        .await
        .expect("answered");
    assert!(!matches!(read, Ok(5)), "{read:?}");
}

//! Protocols: HTTP/1.1 and h2c clients, HTTP/2 upstreams, gRPC-style trailers, WebSocket,
//! and what the proxy does to headers on the way.

use futures_util::{SinkExt, StreamExt};
use strait_tests::client::{get, h2c, http1, send};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{Proxy, Upstream};
use tokio_tungstenite::tungstenite::Message;

async fn setup() -> (Proxy, Upstream, Upstream) {
    let h1 = Upstream::start("h1").await;
    let h2 = Upstream::start("h2").await;
    let yaml = proxy("")
        + &service("h1", "http1", &[(h1.address(), 1)], "")
        + &service("h2", "http2", &[(h2.address(), 1)], "")
        + &http_route(
            "r",
            "  rules:
    - matches: [{path: {value: /h2}}, {path: {value: /trailers}}]
      backendRefs: [{name: h2}]
    - backendRefs: [{name: h1}]
      requestHeaders: {set: {x-mesh: strait}, remove: [x-debug]}
      responseHeaders: {add: {x-served-by: strait}}",
        );
    (Proxy::start(&yaml), h1, h2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_clients_reach_http1_and_http2_upstreams() {
    let (proxy, h1, h2) = setup().await;
    let base = proxy.url("web");
    for (name, client) in [("http1", http1()), ("h2c", h2c())] {
        // An h2c client's :authority is the URL's host: it is what is routed (it wins over a
        // Host header, RFC 9113 §8.3.1) and what goes upstream, as Host or :authority.
        let want = if name == "h2c" {
            proxy.listener("web").to_string()
        } else {
            "svc.local".to_owned()
        };
        let a = get(&client, &format!("{base}/hello"), "svc.local", &[])
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{name}");
        let echo = a.json();
        assert_eq!(echo["upstream"], "h1", "{name}");
        assert_eq!(
            echo["version"], "HTTP/1.1",
            "{name}: http1 service gets HTTP/1.1"
        );
        assert_eq!(
            echo["headers"]["host"],
            serde_json::json!([want]),
            "{name}: Host is the client's authority"
        );

        let a = get(&client, &format!("{base}/h2"), "svc.local", &[])
            .await
            .unwrap();
        let echo = a.json();
        assert_eq!(echo["upstream"], "h2", "{name}");
        assert_eq!(
            echo["version"], "HTTP/2.0",
            "{name}: http2 service gets HTTP/2"
        );
        assert_eq!(
            echo["authority"],
            want.as_str(),
            "{name}: :authority is the client's"
        );
    }
    assert_eq!((h1.hits(), h2.hits()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_trailers_arrive() {
    let (proxy, _h1, _h2) = setup().await;
    let a = get(
        &h2c(),
        &format!("{}/trailers", proxy.url("web")),
        "grpc.local",
        &[("te", "trailers")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"payload");
    let trailers = a.trailers.expect("trailers forwarded");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    let (proxy, _h1, _h2) = setup().await;
    let addr = proxy.listener("web");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let back = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_hop_by_hop_headers() {
    let (proxy, _h1, _h2) = setup().await;
    let req = http::Request::get(format!("{}/headers", proxy.url("web")))
        .header("host", "svc.local")
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-debug", "removed by route")
        .header("x-mesh", "overwritten")
        .body(Default::default())
        .unwrap();
    let a = send(&http1(), req).await.unwrap();
    assert_eq!(
        a.header("x-served-by"),
        "strait",
        "response header added by the route"
    );
    let h = &a.json()["headers"];
    assert!(
        h.get("x-hop").is_none(),
        "header named by Connection removed: {h}"
    );
    assert!(h.get("keep-alive").is_none(), "keep-alive removed: {h}");
    assert!(h.get("x-debug").is_none(), "route removes x-debug: {h}");
    assert_eq!(h["x-mesh"][0], "strait", "route sets x-mesh");
    assert_eq!(h["x-forwarded-for"][0], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["forwarded"][0], "for=127.0.0.1;proto=http");
    assert_eq!(h["x-forwarded-proto"][0], "http");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let (proxy, _h1, _h2) = setup().await;
    let body: Vec<u8> = (0..8 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    for (name, client) in [("http1", http1()), ("h2c", h2c())] {
        let req = http::Request::post(format!("{}/echo", proxy.url("web")))
            .header("host", "svc.local")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let a = send(&client, req).await.unwrap();
        assert_eq!(a.status, 200, "{name}");
        assert_eq!(a.body.len(), body.len(), "{name}");
        assert!(a.body[..] == body[..], "{name}: echoed body differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_log_line_per_request() {
    let (proxy, _h1, _h2) = setup().await;
    get(
        &http1(),
        &format!("{}/logged?x=1", proxy.url("web")),
        "svc.local",
        &[],
    )
    .await
    .unwrap();
    let line = strait_tests::eventually(
        "access log line",
        std::time::Duration::from_secs(5),
        || async {
            proxy
                .json_logs()
                .into_iter()
                .find(|l| l["fields"]["message"] == "access" && l["fields"]["path"] == "/logged")
        },
    )
    .await;
    let f = &line["fields"];
    assert_eq!(f["method"], "GET");
    assert_eq!(f["authority"], "svc.local");
    assert_eq!(f["status"], 200);
    assert_eq!(f["route"], "r");
    assert_eq!(f["service"], "h1");
    assert!(f["endpoint"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(f["duration_ms"].as_f64().unwrap() >= 0.0);
}

/// An h2c server answering 200 "ok" that notes when each connection ends, by when it ended.
async fn h2c_noting_closes() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
) {
    use hyper::server::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = closed.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let noted = noted.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                noted.lock().unwrap().push(std::time::Instant::now());
            });
        }
    });
    (addr, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_connection_left_unused_past_the_idle_timeout_is_closed() {
    let run = async {
        let (addr, closed) = h2c_noting_closes().await;
        let yaml = proxy("")
            + &service(
                "h2",
                "http2",
                &[(addr.to_string(), 1)],
                "  connectionPool: {idleTimeout: 1s}",
            )
            + &http_route("r", "  rules:\n    - {backendRefs: [{name: h2}]}");
        let proxy = Proxy::start(&yaml);
        let url = format!("{}/", proxy.url("web"));
        for _ in 0..3 {
            let a = get(&http1(), &url, "svc.local", &[]).await.unwrap();
            assert_eq!((a.status.as_u16(), &a.body[..]), (200, &b"ok"[..]));
        }
        let idle_since = std::time::Instant::now();
        // The sweep runs every 2 s: closed between 1 s (the timeout) and 4 s after.
        strait_tests::eventually(
            "the upstream sees the proxy close the connection",
            std::time::Duration::from_secs(6),
            || async { (!closed.lock().unwrap().is_empty()).then_some(()) },
        )
        .await;
        let after = closed.lock().unwrap()[0].duration_since(idle_since);
        assert!(
            after >= std::time::Duration::from_secs(1),
            "closed {after:?} after its last request, before the idle timeout"
        );
        // The next request opens a new connection.
        let a = get(&http1(), &url, "svc.local", &[]).await.unwrap();
        assert_eq!((a.status.as_u16(), &a.body[..]), (200, &b"ok"[..]));
        assert_eq!(
            closed.lock().unwrap().len(),
            1,
            "one connection closed so far"
        );
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), run)
        .await
        .expect("test did not finish within 15 s");
}

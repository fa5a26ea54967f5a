//! TCP listeners: opaque bytes both ways, half-close respected.

use strait_tests::config::{proxy, service};
use strait_tests::metrics::{scrape, value};
use strait_tests::{Proxy, TcpEcho};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_mebibytes_both_ways_intact_with_half_close() {
    let echo = TcpEcho::start().await;
    let yaml = proxy("")
        + &service("echo", "tcp", &[(echo.addr.to_string(), 1)], "")
        + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: echo}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: echo}]\n  timeouts: {connect: 1s, idle: 30s}\n";
    let proxy = Proxy::start(&yaml);
    // Several pipe- and buffer-fulls, not periodic: a chunk lost, repeated or reordered shows.
    let mut rng = fastrand::Rng::with_seed(7);
    let payload: Vec<u8> = (0..8 << 20).map(|_| rng.u8(..)).collect();
    let stream = tokio::net::TcpStream::connect(proxy.listener("db"))
        .await
        .unwrap();
    let (mut r, mut w) = stream.into_split();
    let data = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        // Half-close: we are done sending but still want the echo back.
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), r.read_to_end(&mut back))
        .await
        .expect("echo within 20s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");

    let text = scrape(proxy.admin()).await;
    assert_eq!(
        value(&text, "strait_tcp_connections_total", &[("listener", "db")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "strait_tcp_bytes_total",
            &[("listener", "db"), ("direction", "upstream")]
        ),
        Some(payload.len() as f64)
    );
    assert_eq!(
        value(
            &text,
            "strait_tcp_bytes_total",
            &[("listener", "db"), ("direction", "downstream")]
        ),
        Some(payload.len() as f64)
    );
}

fn tcp_config(echo: &str, timeouts: &str) -> String {
    proxy("")
        + &service("echo", "tcp", &[(echo.to_owned(), 1)], "")
        + &format!("---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {{name: echo}}\nspec:\n  parentRefs: [{{name: db}}]\n  backendRefs: [{{name: echo}}]\n  timeouts: {timeouts}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout_and_an_active_one_is_not() {
    use std::time::{Duration, Instant};
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(&tcp_config(
        &echo.addr.to_string(),
        "{connect: 1s, idle: 500ms}",
    ));
    // Active: a byte every 200 ms for 1.5 s keeps the connection open past the idle timeout.
    let mut active = tokio::net::TcpStream::connect(proxy.listener("db"))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    for _ in 0..8 {
        active.write_all(b"x").await.unwrap();
        active.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle: closed by the proxy about 500 ms after the last byte.
    let mut idle = tokio::net::TcpStream::connect(proxy.listener("db"))
        .await
        .unwrap();
    idle.write_all(b"y").await.unwrap();
    idle.read_exact(&mut buf).await.unwrap();
    let last_byte = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest))
        .await
        .expect("closed by the proxy within 5 s")
        .ok();
    let after = last_byte.elapsed();
    assert!(
        after >= Duration::from_millis(450) && after < Duration::from_millis(1500),
        "closed {after:?} after the last byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_closes_the_client_connection() {
    use std::time::Duration;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let proxy = Proxy::start(&tcp_config(&dead, "{connect: 1s, idle: 30s}"));
    let mut client = tokio::net::TcpStream::connect(proxy.listener("db"))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), client.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "closed, not left hanging");
    assert!(rest.is_empty());
}

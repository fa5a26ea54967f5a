//! TCP listeners: opaque bytes both ways, half-close respected.

use strait_tests::config::{proxy, service};
use strait_tests::metrics::{scrape, value};
use strait_tests::{Proxy, TcpEcho};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_both_ways_with_half_close() {
    let echo = TcpEcho::start().await;
    let yaml = proxy("")
        + &service("echo", "tcp", &[(echo.addr.to_string(), 1)], "")
        + "---\napiVersion: strait.dev/v1alpha1\nkind: TCPRoute\nmetadata: {name: echo}\nspec:\n  parentRefs: [{name: db}]\n  backendRefs: [{name: echo}]\n  timeouts: {connect: 1s, idle: 30s}\n";
    let proxy = Proxy::start(&yaml);
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
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
        Some(1048576.0)
    );
    assert_eq!(
        value(
            &text,
            "strait_tcp_bytes_total",
            &[("listener", "db"), ("direction", "downstream")]
        ),
        Some(1048576.0)
    );
}

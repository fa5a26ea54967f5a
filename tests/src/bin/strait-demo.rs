//! `cargo run --release`: a local mesh on loopback — demo upstreams and the real proxy (run
//! in-process from the `strait-proxy` library) serving the contract's example config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use strait_tests::upstream::Upstream;

/// The example config, with demo ports.
const CONFIG: &str = include_str!("../../../deploy/examples/mesh.yaml");

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    strait_proxy::logging::init(strait_proxy::logging::LogFormat::Text);
    // The contract example points at these endpoints; start an upstream on each.
    let mut upstreams = Vec::new();
    for (name, port) in [
        ("reviews-v1-a", 9001),
        ("reviews-v1-b", 9002),
        ("reviews-v2", 9003),
    ] {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let up = Upstream::http1_at(name, addr)
            .await
            .with_context(|| format!("cannot start demo upstream {name} on {addr} (port busy?)"))?;
        upstreams.push(up);
    }
    let tcp = strait_tests::upstream::TcpEcho::start_at(([127, 0, 0, 1], 5432).into())
        .await
        .context("cannot start the demo TCP echo on 127.0.0.1:5432 (port busy?)")?;

    let dir = std::env::temp_dir().join(format!("strait-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config: PathBuf = dir.join("mesh.yaml");
    std::fs::write(&config, CONFIG)?;

    println!(
        "\nStrait demo: proxy on 127.0.0.1:15080 (HTTP) and 127.0.0.1:15432 (TCP echo), admin on 127.0.0.1:15000\n\
         config: {cfg} (edit it: the proxy reloads on save)\n\n\
         try:\n  \
         curl -s -H 'Host: reviews.local' http://127.0.0.1:15080/         # 90/10 split reviews-v1 / reviews-v2\n  \
         curl -s -H 'Host: reviews.local' -H 'x-canary: true' 'http://127.0.0.1:15080/api?debug=1'   # canary rule\n  \
         curl -s --http2-prior-knowledge -H 'Host: reviews' http://127.0.0.1:15080/\n  \
         curl -s http://127.0.0.1:15000/clusters ; curl -s http://127.0.0.1:15000/metrics | grep strait_\n  \
         echo hello | nc -q1 127.0.0.1 15432                              # TCP through the proxy\n\n\
         Ctrl-C stops everything.\n",
        cfg = config.display()
    );
    let options = strait_proxy::app::Options {
        config: Some(config),
        control: None,
        watch_interval: Duration::from_secs(1),
    };
    let result = strait_proxy::app::run(options).await;
    drop((upstreams, tcp));
    let _ = std::fs::remove_dir_all(&dir);
    result.context("proxy failed")
}

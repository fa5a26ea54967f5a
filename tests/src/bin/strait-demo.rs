//! `cargo run --release`: a local mesh on loopback — demo upstreams, the control process and
//! one proxy attached to it (both run in-process from their libraries), with the contract's
//! example policy applied through the control's API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use strait_tests::upstream::Upstream;

/// The example config, with demo ports.
const CONFIG: &str = include_str!("../../../deploy/examples/mesh.yaml");
const CONTROL: &str = "127.0.0.1:15010";

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
    let token_file: PathBuf = dir.join("token");
    std::fs::write(&token_file, format!("demo-{:016x}", fastrand::u64(..)))?;
    let token = std::fs::read_to_string(&token_file)?;

    // The control, in-process, with its state in the demo directory.
    let control_options = strait_control::server::Options {
        data_dir: dir.join("control"),
        store: None,
        listen: CONTROL.parse()?,
        token_file: Some(token_file.clone()),
        sweep_interval: Duration::from_millis(250),
        webhook: None,
        identity: None,
        install_metrics: false,
        bus: None,
    };
    let control = tokio::spawn(strait_control::server::serve(control_options));
    let client =
        strait_control::cli::client::Client::new(&format!("http://{CONTROL}"), Some(token));
    let mut applied = None;
    for _ in 0..100 {
        match client
            .call(
                http::Method::POST,
                "/v1/apply",
                Some(serde_json::json!({"files": [{"name": "deploy/examples/mesh.yaml", "content": CONFIG}]})),
            )
            .await
        {
            Ok(answer) => {
                applied = Some(answer);
                break;
            }
            Err(e) if control.is_finished() => anyhow::bail!("the control did not start: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    applied.context("the control did not answer on 127.0.0.1:15010 (port busy?)")?;

    // The proxy: bootstrap from the example's ProxyConfig, everything else from the control.
    let bootstrap = dir.join("bootstrap.yaml");
    std::fs::write(&bootstrap, CONFIG)?;
    let straitctl = format!(
        "cargo run -q --release -p strait-control --bin straitctl -- --token-file {}",
        token_file.display()
    );
    println!(
        "\nStrait demo: control on {CONTROL}, proxy on 127.0.0.1:15080 (HTTP) and 127.0.0.1:15432 (TCP echo), admin on 127.0.0.1:15000\n\n\
         try:\n  \
         curl -s -H 'Host: reviews.local' http://127.0.0.1:15080/         # 90/10 split reviews-v1 / reviews-v2\n  \
         curl -s -H 'Host: reviews.local' -H 'x-canary: true' 'http://127.0.0.1:15080/api?debug=1'   # canary rule\n  \
         curl -s --http2-prior-knowledge -H 'Host: reviews' http://127.0.0.1:15080/\n  \
         curl -s http://127.0.0.1:15000/clusters ; curl -s http://127.0.0.1:15000/metrics | grep strait_\n  \
         echo hello | nc -q1 127.0.0.1 15432                              # TCP through the proxy\n\n\
         and the control (token in {token}):\n  \
         {straitctl} proxies\n  \
         {straitctl} get httproutes\n  \
         {straitctl} get service reviews-v1 -o yaml\n  \
         {straitctl} apply -f deploy/examples/mesh.yaml      # edit it first: the proxy follows within a second\n  \
         {straitctl} events tail 'mesh.>'\n\n\
         Ctrl-C stops everything.\n",
        token = token_file.display(),
    );
    let options = strait_proxy::app::Options {
        config: Some(bootstrap),
        control: Some(strait_proxy::control::ControlTarget {
            urls: vec![format!("http://{CONTROL}").parse()?],
            node: "demo".into(),
            token: std::fs::read_to_string(&token_file).ok(),
            token_file: None,
            tls: None,
            listeners: Vec::new(),
        }),
        watch_interval: Duration::from_secs(1),
    };
    let result = strait_proxy::app::run(options).await;
    control.abort();
    drop((upstreams, tcp));
    let _ = std::fs::remove_dir_all(&dir);
    result.context("proxy failed")
}

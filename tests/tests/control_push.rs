//! Push fan-out: 100 watchers (each its own HTTP/2 connection, as 100 proxies would hold) all
//! receive an applied change; prints the time from apply to the last watcher. And what a proxy
//! attached to a control reports: `/ready` only once it serves the control's config (or after
//! `readyWithoutControlAfter`), `/config`'s `version` the control's revision.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_tests::client::{get, http1};
use strait_tests::metrics::admin_get;
use strait_tests::{eventually, Control, Proxy, Upstream};
use tokio::sync::watch;

const WATCHERS: usize = 100;

fn service(port: u16) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata: {{name: api}}\nspec:\n  protocol: http1\n  endpoints: [{{address: \"127.0.0.1:{port}\"}}]\n"
    )
}

/// Opens a push stream as node `name`; publishes every version it receives.
async fn watch_as(control: &Control, name: String, seen: watch::Sender<u64>) {
    let address = control.url().trim_start_matches("http://").to_owned();
    let token = control.token().to_owned();
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("http://{address}/v1/push/stream?node={name}"))
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.expect("stream");
    assert_eq!(resp.status(), 200);
    tokio::spawn(async move {
        let mut body = resp.into_body();
        let mut buffer = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) {
                    if let Some(version) = v["version"].as_u64() {
                        seen.send_replace(version);
                    }
                }
            }
        }
        drop(sender);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_100_watchers() {
    let control = Control::start();
    let (status, first) = control.apply("svc.yaml", &service(9001)).await;
    assert_eq!(status, 200);
    let v1 = first["applied"][0]["resourceVersion"].as_u64().unwrap();
    let mut receivers = Vec::new();
    for i in 0..WATCHERS {
        let (tx, rx) = watch::channel(0);
        watch_as(&control, format!("w{i}"), tx).await;
        receivers.push(rx);
    }
    for rx in &mut receivers {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&v| v >= v1))
            .await
            .expect("initial version")
            .expect("watcher alive");
    }

    let started = Instant::now();
    let (status, second) = control.apply("svc.yaml", &service(9002)).await;
    assert_eq!(status, 200);
    let v2 = second["applied"][0]["resourceVersion"].as_u64().unwrap();
    let latest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let waits = receivers.into_iter().map(|mut rx| {
        let latest = latest.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|&v| v >= v2))
                .await
                .expect("new version within 10 s")
                .expect("watcher alive");
            let mut l = latest.lock().unwrap();
            *l = (*l).max(started.elapsed());
        }
    });
    futures_util::future::join_all(waits).await;
    let took = *latest.lock().unwrap();
    println!(
        "push to {WATCHERS} watchers: {:.1} ms from apply to the last one",
        took.as_secs_f64() * 1000.0
    );
    let (_, proxies) = control.call(http::Method::GET, "/v1/proxies", None).await;
    let connected = proxies["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["connected"] == true && p["sentVersion"] == v2)
        .count();
    assert_eq!(connected, WATCHERS);
}

/// A bootstrap ProxyConfig (admin and one HTTP listener `web`) with `extra` lines under `spec:`.
fn bootstrap(extra: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: bootstrap}}
spec:
  admin: 127.0.0.1:0
  listeners:
    - {{name: web, address: 127.0.0.1:0, protocol: http}}
{extra}
"
    )
}

fn route_to(backend: &str) -> String {
    format!(
        "---\napiVersion: strait.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: web}}]\n  rules: [{{backendRefs: [{{name: {backend}}}]}}]\n"
    )
}

fn port_of(upstream: &Upstream) -> u16 {
    upstream
        .address()
        .parse::<std::net::SocketAddr>()
        .map_or(0, |a| a.port())
}

/// An address nothing listens on (yet).
fn free_address() -> std::net::SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    probe.local_addr().expect("address")
}

async fn ready_status(proxy: &Proxy) -> u16 {
    admin_get(proxy.admin(), "/ready").await.0
}

async fn admin_json(proxy: &Proxy, path: &str) -> serde_json::Value {
    let (status, body) = admin_get(proxy.admin(), path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

/// What the web listener answers: the upstream's name, or the status and reason.
async fn served_by(proxy: &Proxy) -> String {
    match get(
        &http1(),
        &format!("{}/", proxy.url("web")),
        "shop.local",
        &[],
    )
    .await
    {
        Ok(a) if a.status == 200 => a.header("x-upstream").to_owned(),
        Ok(a) => format!("{} {}", a.status.as_u16(), a.header("x-strait-reason")),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_is_unready_on_its_bootstrap_until_the_controls_first_config() {
    let upstream = Upstream::start("a").await;
    let address = free_address();
    let mut control = Control::not_started_at(address);
    let proxy = Proxy::start_with_control(
        &bootstrap(""),
        &format!("http://{address}"),
        "pod-1",
        &control.token_file(),
    );
    eventually(
        "the proxy tried the control",
        Duration::from_secs(10),
        || async {
            (proxy.count_messages("control connection lost; serving the last good config") > 0)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        ready_status(&proxy).await,
        503,
        "no config from the control yet"
    );
    // Meanwhile it serves the bootstrap: its listener answers (nothing is routed).
    assert_eq!(served_by(&proxy).await, "404 no-route");
    assert!(admin_json(&proxy, "/config").await["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("file:")));

    control.launch();
    let (status, body) = control
        .apply(
            "mesh.yaml",
            &(service(port_of(&upstream)) + &route_to("api")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "ready once the control's config is applied",
        Duration::from_secs(20),
        || async { (ready_status(&proxy).await == 200).then_some(()) },
    )
    .await;
    // Ready may come with the control's first (empty) version, the apply's one after it.
    eventually(
        "the control's config is served",
        Duration::from_secs(20),
        || async { (served_by(&proxy).await == "a").then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_without_control_after_reports_ready_on_the_bootstrap() {
    let address = free_address();
    let control = Control::not_started_at(address);
    let proxy = Proxy::start_with_control(
        &bootstrap("  readyWithoutControlAfter: 2s"),
        &format!("http://{address}"),
        "pod-1",
        &control.token_file(),
    );
    assert_eq!(ready_status(&proxy).await, 503, "waiting for the control");
    eventually(
        "ready on the bootstrap",
        Duration::from_secs(10),
        || async { (ready_status(&proxy).await == 200).then_some(()) },
    )
    .await;
    assert_eq!(
        proxy.count_messages(
            "no config from the control yet: reporting ready on the bootstrap (spec.readyWithoutControlAfter)"
        ),
        1
    );
    assert_eq!(served_by(&proxy).await, "404 no-route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_version_is_the_controls_revision_and_local_version_the_proxys_count() {
    let upstream = Upstream::start("a").await;
    let control = Control::start();
    let port = port_of(&upstream);
    // Several revisions before the proxy connects: the control's number runs ahead of the
    // proxy's own count.
    for port in [9, 10, port] {
        let (status, body) = control.apply("svc.yaml", &service(port)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = control.apply("route.yaml", &route_to("api")).await;
    assert_eq!(status, 200, "{body}");
    let revision = body["applied"][0]["resourceVersion"]
        .as_u64()
        .expect("revision");
    assert!(revision > 2, "{body}");
    let proxy = control.attach(&bootstrap(""), "pod-1");
    let config = eventually(
        "the control's config applied",
        Duration::from_secs(10),
        || async {
            let config = admin_json(&proxy, "/config").await;
            (config["version"] == revision).then_some(config)
        },
    )
    .await;
    assert_eq!(
        config["localVersion"], 2,
        "bootstrap, then the control's: {config}"
    );
    assert_eq!(admin_json(&proxy, "/clusters").await["version"], revision);
    let applied = eventually("the ACK recorded", Duration::from_secs(5), || async {
        let (_, proxies) = control.call(http::Method::GET, "/v1/proxies", None).await;
        let p = proxies["items"]
            .as_array()?
            .iter()
            .find(|p| p["node"] == "pod-1")?
            .clone();
        (p["appliedVersion"] == revision).then_some(p)
    })
    .await;
    assert_eq!(
        applied["appliedVersion"], config["version"],
        "straitctl proxies and /config agree"
    );
}

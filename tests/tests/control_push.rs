//! Push fan-out: 100 watchers (each its own HTTP/2 connection, as 100 proxies would hold) all
//! receive an applied change. Prints the time from apply to the last watcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_tests::Control;
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

//! SIGTERM: stop accepting, drain in-flight requests, exit 0.

use std::time::{Duration, Instant};

use strait_tests::client::{get, h2c, http1};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::admin_get;
use strait_tests::{eventually, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let slow = Upstream::start("slow").await;
    let yaml = proxy("")
        + &service("slow", "http1", &[(slow.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: slow}]}");
    let mut proxy = Proxy::start(&yaml);
    let web = proxy.listener("web");
    let url = format!("http://{web}/delay/1500");
    let in_flight = tokio::spawn(async move { get(&http1(), &url, "h", &[]).await });
    eventually(
        "request reached the upstream",
        Duration::from_secs(5),
        || async { (slow.hits() == 1).then_some(()) },
    )
    .await;

    let signalled = Instant::now();
    proxy.signal("TERM");
    // Draining: not ready any more, and new connections are refused once acceptors stop.
    eventually("listener closed", Duration::from_secs(2), || async {
        tokio::net::TcpStream::connect(web)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let answer = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(
        answer.status, 200,
        "the in-flight request finished normally"
    );
    assert_eq!(&answer.body[..], b"delayed\n");
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(Duration::from_secs(6));
        (status, proxy)
    })
    .await
    .unwrap();
    let (status, proxy) = status;
    let status = status.unwrap_or_else(|| {
        panic!(
            "proxy did not exit within the drain deadline:\n{}",
            proxy.logs().join("\n")
        )
    });
    assert!(status.success(), "exit status {status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "exited within drainTimeout (5s) + slack"
    );
    assert_eq!(
        proxy.count_messages("drained; exiting"),
        1,
        "{}",
        proxy.logs().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_live() {
    let up = Upstream::start("up").await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    assert_eq!(admin_get(proxy.admin(), "/live").await.0, 200);
    assert_eq!(admin_get(proxy.admin(), "/ready").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("up").await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&yaml);
    let mut client = tokio::net::TcpStream::connect(proxy.listener("web"))
        .await
        .unwrap();
    client
        .write_all(b"GET /status/204 HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = client.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 204"), "first answer");
    // Served many requests since (the drain signal must still reach an idle connection whose
    // task has been polled over and over).
    for _ in 0..20 {
        client
            .write_all(b"GET /status/204 HTTP/1.1\r\nHost: svc\r\n\r\n")
            .await
            .unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 204"));
    }
    let signalled = Instant::now();
    proxy.signal("TERM");
    let closed = tokio::time::timeout(Duration::from_secs(3), client.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "idle keep-alive connection closed by the drain: {closed:?}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "closed at once, not at the drain deadline"
    );
}

/// Names of the proxy's threads (`/proc/PID/task/*/comm`; tokio names its worker and
/// blocking threads `tokio-rt-worker`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("proc tasks")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_every_protocol_reloads_and_drains_on_one_thread() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let route = |to: &str| {
        http_route(
            "r",
            &format!("  rules:\n    - {{backendRefs: [{{name: {to}}}]}}"),
        )
    };
    let services = service("a", "http1", &[(a.address(), 1)], "")
        + &service("b", "http1", &[(b.address(), 1)], "");
    let mut sidecar =
        Proxy::start_with_args(&(proxy("") + &services + &route("a")), &["--workers", "1"]);
    let pid = sidecar.pid().expect("running");
    let names = thread_names(pid);
    assert!(
        !names.iter().any(|n| n.starts_with("tokio")),
        "--workers 1 runs the single-threaded scheduler on the main thread, got threads {names:?}"
    );
    let base = format!("http://{}", sidecar.listener("web"));
    for (name, client) in [("http1", http1()), ("h2c", h2c())] {
        for _ in 0..20 {
            let answer = get(&client, &format!("{base}/x"), "h", &[])
                .await
                .expect(name);
            assert_eq!(answer.status, 200, "{name}");
            assert_eq!(answer.headers["x-upstream"], "a", "{name}");
        }
    }
    sidecar.write_config(&(proxy("") + &services + &route("b")));
    sidecar.signal("HUP");
    eventually("the reload is served", Duration::from_secs(5), || async {
        let answer = get(&http1(), &format!("{base}/x"), "h", &[]).await.ok()?;
        (answer.headers["x-upstream"] == "b").then_some(())
    })
    .await;
    // A request in flight when SIGTERM comes still completes, then the proxy exits 0.
    let before = b.hits();
    let url = format!("{base}/delay/500");
    let in_flight = tokio::spawn(async move { get(&http1(), &url, "h", &[]).await });
    eventually(
        "request reached the upstream",
        Duration::from_secs(5),
        || async { (b.hits() > before).then_some(()) },
    )
    .await;
    sidecar.signal("TERM");
    let answer = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(answer.status, 200);
    let status = tokio::task::spawn_blocking(move || sidecar.wait_exit(Duration::from_secs(6)))
        .await
        .unwrap()
        .expect("exited within the drain deadline");
    assert!(status.success(), "exit status {status}");
}

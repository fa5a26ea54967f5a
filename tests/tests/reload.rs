//! Hot reload: no failed request across many reloads, invalid config rejected whole, file
//! changes picked up without a signal.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strait_tests::client::{get, http1};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{admin_get, scrape, value};
use strait_tests::{eventually, Proxy, Upstream};

fn config(a: &Upstream, b: &Upstream, target: &str) -> String {
    proxy("  accessLog: {enabled: false}")
        + &service("a", "http1", &[(a.address(), 1)], "")
        + &service("b", "http1", &[(b.address(), 1)], "")
        + &http_route(
            "r",
            &format!("  rules:\n    - {{backendRefs: [{{name: {target}}}]}}"),
        )
}

async fn config_version(proxy: &Proxy) -> u64 {
    let (_, body) = admin_get(proxy.admin(), "/config").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["version"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_during_100_reloads_under_load() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&config(&a, &b, "a"));
    let url = format!("{}/", proxy.url("web"));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = http1();
            while !stop.load(Ordering::Relaxed) {
                match get(&c, &url, "h", &[]).await {
                    Ok(ans) if ans.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed request: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for i in 1..=100u64 {
        proxy.write_config(&config(&a, &b, if i % 2 == 0 { "a" } else { "b" }));
        proxy.signal("HUP");
        eventually("reload applied", Duration::from_secs(10), || async {
            (config_version(&proxy).await > i).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(ok > 200, "load kept running ({ok} requests)");
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both versions served: a={} b={}",
        a.hits(),
        b.hits()
    );
    let text = scrape(proxy.admin()).await;
    assert!(
        value(
            &text,
            "strait_config_reloads_total",
            &[("result", "applied")]
        )
        .unwrap()
            >= 101.0
    );
    assert_eq!(value(&text, "strait_config_version", &[]), Some(101.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_is_rejected_and_the_old_keeps_serving() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&config(&a, &b, "a"));
    let url = format!("{}/", proxy.url("web"));
    let before = config_version(&proxy).await;
    // A route to a service that does not exist, on line 24 of the new file.
    let broken = config(&a, &b, "a").replace("{name: a}]}", "{name: missing}]}");
    proxy.write_config(&broken);
    proxy.signal("HUP");
    let error = eventually("rejection logged", Duration::from_secs(10), || async {
        proxy
            .json_logs()
            .into_iter()
            .find(|l| l["fields"]["message"] == "config rejected")
            .map(|l| l["fields"]["error"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert!(
        error.contains("config.yaml:"),
        "error names the file: {error}"
    );
    assert!(
        error.contains("spec.rules[0].backendRefs[0].name: no Service `missing`"),
        "error names the field path: {error}"
    );
    let text = scrape(proxy.admin()).await;
    assert_eq!(
        value(
            &text,
            "strait_config_reloads_total",
            &[("result", "rejected")]
        ),
        Some(1.0)
    );
    assert_eq!(
        config_version(&proxy).await,
        before,
        "/config still shows the old version"
    );
    let ans = get(&http1(), &url, "h", &[]).await.unwrap();
    assert_eq!(
        (ans.status.as_u16(), ans.header("x-upstream")),
        (200, "a"),
        "old config keeps serving"
    );

    // Broken YAML is rejected the same way.
    proxy.write_config("apiVersion: strait.dev/v1alpha1\nkind: [unclosed\n");
    proxy.signal("HUP");
    eventually(
        "second rejection counted",
        Duration::from_secs(10),
        || async {
            let text = scrape(proxy.admin()).await;
            (value(
                &text,
                "strait_config_reloads_total",
                &[("result", "rejected")],
            ) == Some(2.0))
            .then_some(())
        },
    )
    .await;
    assert_eq!(get(&http1(), &url, "h", &[]).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&config(&a, &b, "a"));
    let url = format!("{}/", proxy.url("web"));
    assert_eq!(served_by(&url).await, "a");
    proxy.write_config(&config(&a, &b, "b"));
    until_served_by(&url, "b").await;
}

/// The upstream that answers a request to `url`.
async fn served_by(url: &str) -> String {
    let answer = get(&http1(), url, "h", &[]).await.expect("request");
    answer.header("x-upstream").to_owned()
}

/// Waits (up to 5 s) for requests to `url` to be answered by `upstream`: a change applied.
async fn until_served_by(url: &str, upstream: &str) {
    eventually("file change applied", Duration::from_secs(5), || async {
        let answer = get(&http1(), url, "h", &[]).await.ok()?;
        (answer.header("x-upstream") == upstream).then_some(())
    })
    .await;
}

fn threads(proxy: &Proxy) -> usize {
    let pid = proxy.pid().expect("proxy running");
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| tasks.count())
        .unwrap_or(0)
}

/// A proxy with one worker is a process of one thread between reloads (the background thread
/// that reads and compiles config ends when idle, and polling a file that has not changed
/// does not start it), which makes every system call of the worker cheaper; a changed file
/// is still picked up, and the process is back to one thread after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_reloads_one_worker_is_the_only_thread_and_changes_are_still_seen() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start_with_args(&config(&a, &b, "a"), &["--workers", "1"]);
    let url = format!("{}/", proxy.url("web"));
    assert_eq!(served_by(&url).await, "a");
    let alone = || async { (threads(&proxy) == 1).then_some(()) };
    let settle = Duration::from_secs(10);
    eventually("one thread once the first reads are done", settle, alone).await;

    // Same length as before, so only the file's identity and times tell.
    proxy.write_config(&config(&a, &b, "b"));
    until_served_by(&url, "b").await;
    eventually("one thread again after the reload", settle, alone).await;
    assert_eq!(served_by(&url).await, "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_pools_survive_a_reload() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let proxy = Proxy::start(&config(&a, &b, "a"));
    let url = format!("{}/", proxy.url("web"));
    get(&http1(), &url, "h", &[]).await.unwrap();
    let idle = |body: &str| -> u64 {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "a")
            .unwrap()["endpoints"][0]["idleConnections"]
            .as_u64()
            .unwrap()
    };
    eventually(
        "connection back in the pool",
        Duration::from_secs(5),
        || async {
            let (_, body) = admin_get(proxy.admin(), "/clusters").await;
            (idle(&body) == 1).then_some(())
        },
    )
    .await;
    // A reload that changes a route but keeps service a's endpoint keeps its pool.
    proxy.write_config(&(config(&a, &b, "a") + "  # comment to change the file\n"));
    proxy.signal("HUP");
    eventually("reload applied", Duration::from_secs(10), || async {
        (config_version(&proxy).await == 2).then_some(())
    })
    .await;
    let (_, body) = admin_get(proxy.admin(), "/clusters").await;
    assert_eq!(
        idle(&body),
        1,
        "pooled connection kept across the reload: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_cannot_bind_rejects_the_config_and_keeps_the_old_listener() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&config(&a, &b, "a"));
    let url = format!("{}/", proxy.url("web"));
    assert_eq!(get(&http1(), &url, "h", &[]).await.unwrap().status, 200);
    // Move `web` to an address that is taken (upstream a's).
    let moved = config(&a, &b, "a").replace(
        "{name: web, address: 127.0.0.1:0",
        &format!("{{name: web, address: \"{}\"", a.address()),
    );
    assert_ne!(moved, config(&a, &b, "a"));
    proxy.write_config(&moved);
    proxy.signal("HUP");
    eventually("rejection logged", Duration::from_secs(10), || async {
        (proxy.count_messages("config rejected") >= 1).then_some(())
    })
    .await;
    for _ in 0..5 {
        let answer = get(&http1(), &url, "h", &[]).await.unwrap();
        assert_eq!(answer.status, 200, "the old listener still serves");
        assert_eq!(answer.header("x-upstream"), "a");
    }
}

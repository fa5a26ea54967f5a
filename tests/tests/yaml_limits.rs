//! YAML limits where a user meets them: a hot reload and the control's apply refuse an alias
//! bomb spread over many documents or files, with its file and line, and the process stays
//! small (`strait-proxy --check` is in check.rs).

use std::time::Duration;

use http::Method;
use serde_json::json;
use strait_tests::client::{get, http1};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::{eventually, Control, Proxy, Upstream};

/// One document whose aliases copy 99,081 nodes: just under the budget on its own.
fn aliased_document() -> String {
    format!(
        "x: &a [{}]\ny: [{}]\n",
        vec!["1"; 100].join(","),
        vec!["*a"; 980].join(",")
    )
}

/// `count` such documents in one stream (300 of them expanded to 2.3 GB before).
fn alias_bomb(count: usize) -> String {
    format!("---\n{}", aliased_document()).repeat(count)
}

/// The most memory process `pid` has held so far (MiB), from `/proc`.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

const BUDGET_SPENT: &str = "anchors and aliases copy more than 100000 nodes";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_refuses_an_alias_bomb_in_one_file_or_spread_over_many() {
    let control = Control::start();
    let pid = control.pid().expect("control runs");

    let (status, body) = control.apply("bomb.yaml", &alias_bomb(300)).await;
    assert_eq!(status, 400, "{body}");
    let errors = body["errors"].to_string();
    assert!(
        errors.contains(&format!("bomb.yaml:6:29: y[8]: {BUDGET_SPENT}")),
        "{body}"
    );

    // One document per file: the budget covers the whole apply, not each file.
    let files: Vec<_> = (0..100)
        .map(|i| json!({"name": format!("part-{i}.yaml"), "content": aliased_document()}))
        .collect();
    let (status, body) = control
        .call(Method::POST, "/v1/apply", Some(json!({ "files": files })))
        .await;
    assert_eq!(status, 400, "{body}");
    let errors = body["errors"].to_string();
    assert!(
        errors.contains("part-1.yaml:2:") && errors.contains(BUDGET_SPENT),
        "{body}"
    );

    let peak = peak_rss_mib(pid);
    assert!(peak < 256, "the control peaked at {peak} MiB");
    let (status, _) = control.call(Method::GET, "/v1/resources", None).await;
    assert_eq!(status, 200, "the control still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_refuses_an_alias_bomb_and_the_old_config_keeps_serving() {
    let up = Upstream::start("up").await;
    let config = proxy("  accessLog: {enabled: false}")
        + &service("up", "http1", &[(up.address(), 1)], "")
        + &http_route("r", "  rules:\n    - {backendRefs: [{name: up}]}");
    let proxy = Proxy::start(&config);
    let pid = proxy.pid().expect("proxy runs");

    proxy.write_config(&format!("{config}{}", alias_bomb(300)));
    proxy.signal("HUP");
    let error = eventually("rejection logged", Duration::from_secs(30), || async {
        proxy
            .json_logs()
            .into_iter()
            .find(|l| l["fields"]["message"] == "config rejected")
            .map(|l| l["fields"]["error"].as_str().unwrap_or_default().to_owned())
    })
    .await;
    assert!(
        error.contains("config.yaml:") && error.contains(BUDGET_SPENT),
        "{error}"
    );

    let peak = peak_rss_mib(pid);
    assert!(peak < 256, "the proxy peaked at {peak} MiB");
    let answer = get(&http1(), &format!("{}/", proxy.url("web")), "h", &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "the old config keeps serving");
}

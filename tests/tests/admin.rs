//! The admin endpoints: /config (redacted), /clusters, /metrics (promtool-clean), and the
//! telemetry listener that serves only /metrics, /ready and /live.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use strait_tests::client::{get, h2c, http1, send};
use strait_tests::config::{http_route, proxy, service};
use strait_tests::metrics::{admin_get, scrape, value};
use strait_tests::{eventually, Proxy, Upstream};

async fn setup() -> (Proxy, Upstream) {
    let up = Upstream::start("up").await;
    let yaml = proxy("")
        + &service("up", "http1", &[(up.address(), 2)], "")
        + &http_route(
            "secretive",
            "  rules:
    - backendRefs: [{name: up}]
      requestHeaders: {set: {authorization: \"Bearer s3cr3t\", x-mesh: strait}}
    - matches:
        - headers: [{name: X-Hub-Signature-256, value: sha256-h00k}, {name: x-env, value: prod}]
          queryParams: [{name: access_token, value: t0ken-q}, {name: page, value: '2'}]
      backendRefs: [{name: up}]
      requestHeaders: {add: {x-upstream-auth: upstr3am}}",
        );
    (Proxy::start(&yaml), up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_shows_version_and_resources_with_secrets_redacted() {
    let (proxy, up) = setup().await;
    let (status, body) = admin_get(proxy.admin(), "/config").await;
    assert_eq!(status, 200);
    assert!(!body.contains("s3cr3t"), "secret leaked in /config: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], 1);
    assert!(v["source"].as_str().unwrap().starts_with("file:"));
    let kinds: Vec<&str> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["ProxyConfig", "Service", "HTTPRoute"]);
    let set = &v["resources"][2]["spec"]["rules"][0]["requestHeaders"]["set"];
    assert_eq!(set["authorization"], "<redacted>");
    assert_eq!(set["x-mesh"], "strait", "non-secret values stay visible");
    // Values of matches and edits whose name looks like a credential's, wherever the word is.
    for secret in ["sha256-h00k", "t0ken-q", "upstr3am"] {
        assert!(!body.contains(secret), "{secret} shown in /config: {body}");
    }
    let rule = &v["resources"][2]["spec"]["rules"][1];
    let m = &rule["matches"][0];
    assert_eq!(m["queryParams"][0]["value"], "<redacted>");
    assert_eq!(m["queryParams"][1]["value"], "2");
    assert_eq!(m["headers"][0]["value"], "<redacted>");
    assert_eq!(m["headers"][1]["value"], "prod");
    assert_eq!(
        rule["requestHeaders"]["add"]["x-upstream-auth"],
        "<redacted>"
    );
    // The secret still reaches the upstream: redaction is for display only.
    let echo = get(&http1(), &format!("{}/", proxy.url("web")), "h", &[])
        .await
        .unwrap()
        .json();
    assert_eq!(echo["headers"]["authorization"][0], "Bearer s3cr3t");
    assert!(
        proxy.logs().iter().all(|l| !l.contains("s3cr3t")),
        "secret leaked into logs"
    );
    drop(up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_list_services_and_endpoints() {
    let (proxy, up) = setup().await;
    let (status, body) = admin_get(proxy.admin(), "/clusters").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let svc = &v["services"][0];
    assert_eq!(svc["name"], "up");
    assert_eq!(svc["endpoints"][0]["address"], up.address());
    assert_eq!(svc["endpoints"][0]["weight"], 2);
    assert_eq!(svc["endpoints"][0]["inFlight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_pass_promtool() {
    let (proxy, _up) = setup().await;
    let base = proxy.url("web");
    for _ in 0..3 {
        assert_eq!(
            get(&http1(), &format!("{base}/"), "h", &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
    assert_eq!(
        get(&h2c(), &format!("{base}/status/503"), "h", &[])
            .await
            .unwrap()
            .status,
        503
    );
    let text = scrape(proxy.admin()).await;
    let labels = [
        ("listener", "web"),
        ("route", "secretive"),
        ("service", "up"),
    ];
    assert_eq!(
        value(
            &text,
            "strait_requests_total",
            &[labels[0], labels[1], labels[2], ("code", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            "strait_requests_total",
            &[labels[0], labels[1], labels[2], ("code", "503")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "strait_request_duration_seconds_count", &labels),
        Some(4.0)
    );
    assert_eq!(value(&text, "strait_config_version", &[]), Some(1.0));
    assert_eq!(
        value(
            &text,
            "strait_config_reloads_total",
            &[("result", "applied")]
        ),
        Some(1.0)
    );

    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match promtool {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("STRAIT_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here but cannot run: {e}"
            );
            eprintln!("note: promtool not installed ({e}); skipping the format check (scripts/test.sh installs it)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telemetry_listener_serves_metrics_and_probes_and_nothing_else() {
    let up = Upstream::start("up").await;
    let yaml =
        proxy("  telemetry: 127.0.0.1:0") + &service("up", "http1", &[(up.address(), 1)], "");
    let proxy = Proxy::start(&yaml);
    let telemetry = eventually("the telemetry listener", Duration::from_secs(5), || async {
        proxy
            .json_logs()
            .iter()
            .any(|v| v["fields"]["listener"] == "telemetry")
            .then(|| proxy.listener("telemetry"))
    })
    .await;
    assert_ne!(telemetry, proxy.admin());
    let (status, text) = admin_get(telemetry, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("strait_config_version"), "{text}");
    assert_eq!(admin_get(telemetry, "/ready").await.0, 200);
    assert_eq!(admin_get(telemetry, "/live").await.0, 200);
    for path in ["/config", "/clusters", "/shutdown"] {
        assert_eq!(admin_get(telemetry, path).await.0, 404, "GET {path}");
    }
    let shutdown = Request::post(format!("http://{telemetry}/shutdown"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = send(&http1(), shutdown).await.unwrap();
    assert_eq!(
        answer.status, 404,
        "POST /shutdown on the telemetry listener"
    );
    // The admin server still serves everything, and the proxy did not start draining.
    assert_eq!(admin_get(proxy.admin(), "/config").await.0, 200);
    assert_eq!(admin_get(proxy.admin(), "/ready").await.0, 200);
}

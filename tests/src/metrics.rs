//! Reading the proxy's admin endpoints.

use std::net::SocketAddr;

use crate::client::{get, http1};

/// GET an admin path, returning (status, body).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let a = get(&http1(), &format!("http://{admin}{path}"), "admin", &[])
        .await
        .expect("admin request");
    (
        a.status.as_u16(),
        String::from_utf8_lossy(&a.body).into_owned(),
    )
}

/// The `/metrics` text.
pub async fn scrape(admin: SocketAddr) -> String {
    admin_get(admin, "/metrics").await.1
}

/// The value of sample `name` whose labels include every pair in `labels` (summed over the
/// rest), or None if there is no such sample.
pub fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, sample) = match line.rsplit_once(' ') {
            Some(p) => p,
            None => continue,
        };
        let (metric, label_text) = series.split_once('{').map_or((series, ""), |(m, l)| (m, l));
        if metric != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += sample.parse::<f64>().unwrap_or(0.0);
        }
    }
    found
}

/// The `/clusters` document.
pub async fn clusters(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = admin_get(admin, "/clusters").await;
    serde_json::from_str(&body).expect("/clusters is JSON")
}

/// Service `name` in a `/clusters` document.
pub fn cluster<'a>(clusters: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    clusters["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no service {name} in {clusters}"))
}

/// The version `/config` reports.
pub async fn config_version(admin: SocketAddr) -> u64 {
    let (_, body) = admin_get(admin, "/config").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("/config is JSON");
    v["version"].as_u64().expect("version")
}

/// Writes `yaml` as the proxy's config, sends SIGHUP, and waits (10 s at most) until the
/// proxy serves the new version.
pub async fn reload(proxy: &crate::Proxy, yaml: &str) {
    let before = config_version(proxy.admin()).await;
    proxy.write_config(yaml);
    proxy.signal("HUP");
    crate::eventually(
        "reload applied",
        std::time::Duration::from_secs(10),
        || async { (config_version(proxy.admin()).await > before).then_some(()) },
    )
    .await;
}

//! A proxy whose identity comes from files (cert-manager, SPIRE): `GET /identity` shows it,
//! a rotation of the files is picked up, files that do not make an identity are refused at
//! start and ignored on change, and the key never shows.

use std::time::Duration;

use strait_tests::client::http1;
use strait_tests::config::proxy;
use strait_tests::tls::TestCa;
use strait_tests::{eventually, Proxy};

fn identity_yaml() -> String {
    proxy("  identity: {certFile: id.crt, keyFile: id.key, trustBundleFile: roots.pem}")
}

async fn identity_of(proxy: &Proxy) -> serde_json::Value {
    let url = format!("http://{}/identity", proxy.admin());
    let answer = strait_tests::client::get(&http1(), &url, "admin", &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_from_files_is_shown_and_rotated_without_the_key() {
    let ca = TestCa::new("files");
    let first = ca.workload("spiffe://cluster.local/ns/default/sa/reviews");
    let proxy = Proxy::start_with_files(
        &identity_yaml(),
        &[
            ("id.crt", &first.chain),
            ("id.key", &first.key),
            ("roots.pem", &ca.bundle),
        ],
    );
    let shown = identity_of(&proxy).await;
    assert_eq!(
        shown["spiffeId"],
        "spiffe://cluster.local/ns/default/sa/reviews"
    );
    assert_eq!(shown["status"], "active");
    let serial = shown["serial"].as_str().unwrap().to_owned();
    assert_eq!(shown["trustBundle"].as_array().unwrap().len(), 1);
    let text = shown.to_string();
    assert!(!text.contains("PRIVATE KEY") && !text.contains(first.key.lines().nth(1).unwrap()));

    // cert-manager renews: new files. A half-written set (the key of another certificate)
    // is ignored; the whole set is taken.
    let second = ca.workload("spiffe://cluster.local/ns/default/sa/reviews");
    let dir = proxy.config_path();
    let dir = dir.parent().unwrap();
    std::fs::write(dir.join("id.crt"), &second.chain).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        identity_of(&proxy).await["serial"],
        serial,
        "a mismatched pair is not taken"
    );
    std::fs::write(dir.join("id.key"), &second.key).unwrap();
    eventually(
        "the renewed certificate is in force",
        Duration::from_secs(10),
        || async {
            let shown = identity_of(&proxy).await;
            (shown["serial"] != serial).then_some(())
        },
    )
    .await;
    let metrics = strait_tests::metrics::scrape(proxy.admin()).await;
    assert!(
        strait_tests::metrics::value(&metrics, "strait_identity_expiry_timestamp_seconds", &[])
            .is_some_and(|v| v > 0.0),
        "{metrics}"
    );
}

#[test]
fn identity_files_must_come_together_and_make_an_identity() {
    let dir = strait_tests::process::TempDir::new("identity-check");
    let yaml = proxy("  identity: {certFile: id.crt}");
    let file = dir.path().join("proxy.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = std::process::Command::new(strait_tests::process::proxy_bin())
        .arg("--check")
        .arg(&file)
        .output()
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(stderr.contains("spec.identity.keyFile"), "{stderr}");
    assert!(stderr.contains("spec.identity.trustBundleFile"), "{stderr}");

    // A key that is not the certificate's: the proxy refuses to start, saying why.
    let ca = TestCa::new("bad");
    let a = ca.workload("spiffe://td/ns/a/sa/a");
    let b = ca.workload("spiffe://td/ns/b/sa/b");
    std::fs::write(&file, identity_yaml()).unwrap();
    std::fs::write(dir.path().join("id.crt"), &a.chain).unwrap();
    std::fs::write(dir.path().join("id.key"), &b.key).unwrap();
    std::fs::write(dir.path().join("roots.pem"), &ca.bundle).unwrap();
    let out = std::process::Command::new(strait_tests::process::proxy_bin())
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        stderr.contains("not the leaf certificate's key"),
        "{stderr}"
    );
}

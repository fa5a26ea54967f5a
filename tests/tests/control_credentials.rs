//! What guards the control's API is unguessable: the generated token and the registry's
//! instance ids (the handles for heartbeat and deregister) come from the OS random source.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::Method;
use serde_json::json;
use strait_tests::control::control_bin;
use strait_tests::process::TempDir;
use strait_tests::{eventually, Control};

fn is_lower_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ids_are_128_bit_handles_for_heartbeat_and_deregister() {
    let control = Control::start();
    let mut ids = Vec::new();
    for port in [9001, 9002] {
        let (status, instance) = control
            .call(
                Method::POST,
                "/v1/registry/instances",
                Some(json!({"service": "api", "address": "127.0.0.1", "port": port})),
            )
            .await;
        assert_eq!(status, 201, "{instance}");
        let id = instance["id"].as_str().unwrap().to_owned();
        assert!(id.len() == 32 && is_lower_hex(&id), "id `{id}`");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    let path = |id: &str| format!("/v1/registry/instances/{id}");
    let (status, _) = control
        .call(Method::PUT, &format!("{}/heartbeat", path(&ids[0])), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = control.call(Method::DELETE, &path(&ids[1]), None).await;
    assert_eq!(status, 200);
    let (status, _) = control
        .call(Method::PUT, &format!("{}/heartbeat", path(&ids[1])), None)
        .await;
    assert_eq!(status, 404, "a deregistered id is gone");
}

/// Kills the control it holds on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_token_is_256_bit_hex_readable_by_the_owner_only() {
    let dir = TempDir::new("control-token");
    let data = dir.path().join("data");
    let _control = Running(
        Command::new(control_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn strait-control"),
    );
    let file = data.join("token");
    let token = eventually("token written", Duration::from_secs(10), || async {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|t| !t.is_empty())
    })
    .await;
    assert!(token.len() == 64 && is_lower_hex(&token), "token `{token}`");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

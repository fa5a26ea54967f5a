//! A real etcd server (Debian's `etcd-server`, installed by scripts/test.sh) on loopback port 0,
//! for the control's replicated store. Killed, and its data removed, on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::process::TempDir;

/// A running single-member etcd.
pub struct Etcd {
    child: Child,
    _dir: TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    address: SocketAddr,
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until it serves clients.
    pub fn start() -> Self {
        let dir = TempDir::new("etcd");
        let any = "http://127.0.0.1:0";
        let mut child = Command::new("etcd")
            .args(["--name", "strait-test"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", any, "--advertise-client-urls", any])
            .args([
                "--listen-peer-urls",
                any,
                "--initial-advertise-peer-urls",
                any,
            ])
            .args(["--initial-cluster", &format!("strait-test={any}")])
            .args(["--enable-grpc-gateway=false", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn etcd (Debian package etcd-server; scripts/test.sh installs it)");
        let logs = crate::process::stderr_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let address = logs.lock().expect("logs").iter().find_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                if !v["msg"].as_str()?.starts_with("serving client traffic") {
                    return None;
                }
                v["address"].as_str()?.parse().ok()
            });
            if let Some(address) = address {
                return Self {
                    child,
                    _dir: dir,
                    logs,
                    address,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "etcd exited at startup ({status}):\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `etcd://127.0.0.1:PORT`, for `strait-control serve --store`.
    pub fn store_url(&self) -> String {
        format!("etcd://{}", self.address)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- etcd logs (last 30) ----\n{}\n---- end ----",
                self.logs
                    .lock()
                    .map(|l| l
                        .iter()
                        .rev()
                        .take(30)
                        .rev()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n"))
                    .unwrap_or_default()
            );
        }
    }
}

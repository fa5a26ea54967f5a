//! The demo's proxies, each its own process: the demo runs itself again as `strait-demo proxy
//! CONFIG` (so `cargo run` builds one binary), with its logs in a file. A proxy process ends
//! when the demo does: its stdin is a pipe from the demo, and EOF on it ends the proxy.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use strait_tests::client::{get, http1};

/// The argument that makes `strait-demo` a proxy.
pub const PROXY_COMMAND: &str = "proxy";

/// Runs a proxy on the config at `path` until the demo (its stdin) goes away.
pub fn run_proxy(path: PathBuf) -> anyhow::Result<()> {
    strait_proxy::logging::init(strait_proxy::logging::LogFormat::Text);
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = strait_proxy::app::Options {
        config: Some(path),
        control: None,
        watch_interval: Duration::from_secs(1),
    };
    runtime
        .block_on(strait_proxy::app::run(options))
        .context("proxy failed")
}

/// A proxy process of the demo, killed when dropped.
pub struct DemoProxy {
    name: &'static str,
    child: Child,
    /// Held open: closing it ends the proxy even if the demo is killed.
    _stdin: Option<ChildStdin>,
    log: PathBuf,
    admin: SocketAddr,
}

impl DemoProxy {
    /// Starts `strait-demo proxy DIR/config.yaml`, logging to `DIR.log`.
    pub fn start(name: &'static str, dir: &Path, admin: SocketAddr) -> anyhow::Result<Self> {
        let log = dir.with_extension("log");
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg(PROXY_COMMAND)
            .arg(dir.join("config.yaml"))
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start the {name} proxy"))?;
        let stdin = child.stdin.take();
        Ok(Self {
            name,
            child,
            _stdin: stdin,
            log,
            admin,
        })
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Waits until the proxy reports `/ready` (its certificate and the control's config are
    /// in), or fails with the end of its log.
    pub async fn ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let url = format!("http://{}/ready", self.admin);
        let client = http1();
        loop {
            if let Ok(answer) = get(&client, &url, "admin", &[]).await {
                if answer.status == 200 {
                    return Ok(());
                }
            }
            let exited = self.child.try_wait()?;
            if exited.is_some() || tokio::time::Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("not ready after {within:?}"),
                };
                anyhow::bail!(
                    "the {} proxy {why}; the end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for DemoProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The `strait-proxy` process under test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the built `strait-proxy` binary (`STRAIT_PROXY_BIN` overrides).
pub fn proxy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRAIT_PROXY_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>/strait-proxy
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("strait-proxy");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh, unique directory.
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("strait-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running proxy with its config directory and captured logs.
pub struct Proxy {
    child: Option<Child>,
    dir: TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    addresses: HashMap<String, SocketAddr>,
}

impl Proxy {
    /// Starts the proxy on `yaml` (written to a fresh directory) and waits until its admin
    /// server and listeners are bound.
    pub fn start(yaml: &str) -> Self {
        let dir = TempDir::new("proxy");
        std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");
        Self::start_in(dir, &["--watch-interval", "200ms"])
    }

    /// Starts the proxy on `yaml` with extra command-line arguments (such as `--workers 1`).
    pub fn start_with_args(yaml: &str, args: &[&str]) -> Self {
        let dir = TempDir::new("proxy");
        std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");
        let mut all = vec!["--watch-interval", "200ms"];
        all.extend_from_slice(args);
        Self::start_in(dir, &all)
    }

    /// Starts the proxy on `yaml` with extra files next to it (`(name, content)`), such as a
    /// token file the config names.
    pub fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("proxy");
        std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write file");
        }
        Self::start_in(dir, &["--watch-interval", "200ms"])
    }

    /// Starts the proxy attached to a control as `node`, with `bootstrap` (a ProxyConfig:
    /// admin and listeners) used until the control answers.
    pub fn start_with_control(
        bootstrap: &str,
        control: &str,
        node: &str,
        token_file: &Path,
    ) -> Self {
        let dir = TempDir::new("proxy");
        std::fs::write(dir.path().join("config.yaml"), bootstrap).expect("write config");
        let token = token_file.to_string_lossy().into_owned();
        Self::start_in(
            dir,
            &[
                "--watch-interval",
                "200ms",
                "--control",
                control,
                "--node",
                node,
                "--token-file",
                &token,
            ],
        )
    }

    fn start_in(dir: TempDir, extra: &[&str]) -> Self {
        let mut child = Command::new(proxy_bin())
            .arg("--config")
            .arg(dir.path())
            .args(["--log-format", "json"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strait-proxy");
        let logs = crate::process::stderr_lines(&mut child);
        let mut proxy = Self {
            child: Some(child),
            dir,
            logs,
            addresses: HashMap::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !proxy.addresses.contains_key("admin") {
            if let Some(status) = proxy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "strait-proxy exited at startup ({status}):\n{}",
                    proxy.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "proxy did not start:\n{}",
                proxy.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
            proxy.addresses = proxy.bound_addresses();
        }
        proxy
    }

    fn bound_addresses(&self) -> HashMap<String, SocketAddr> {
        self.json_logs()
            .iter()
            .filter(|v| v["fields"]["message"] == "listening")
            .filter_map(|v| {
                let name = v["fields"]["listener"].as_str()?.to_owned();
                let addr = v["fields"]["address"].as_str()?.parse().ok()?;
                Some((name, addr))
            })
            .collect()
    }

    /// Address listener `name` is bound to (refreshed from the logs: listeners may be rebound).
    pub fn listener(&self, name: &str) -> SocketAddr {
        match self.bound_addresses().get(name) {
            Some(a) => *a,
            None => panic!(
                "no listener `{name}` in the logs:\n{}",
                self.logs().join("\n")
            ),
        }
    }

    /// The proxy's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The admin server address.
    pub fn admin(&self) -> SocketAddr {
        self.listener("admin")
    }

    /// `http://ADDR` of a listener.
    pub fn url(&self, listener: &str) -> String {
        format!("http://{}", self.listener(listener))
    }

    /// Replaces the config file (atomically: write then rename).
    pub fn write_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".config.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// The first log line containing `text`, waited for up to 10 s (panics after).
    pub async fn log_line(&self, text: &str) -> String {
        crate::eventually(
            &format!("the proxy logs {text:?}"),
            Duration::from_secs(10),
            || {
                let line = self.logs().into_iter().find(|l| l.contains(text));
                async move { line }
            },
        )
        .await
    }

    /// Log lines parsed as JSON (lines that are not JSON are skipped).
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many log lines have this `fields.message`.
    pub fn count_messages(&self, message: &str) -> usize {
        self.json_logs()
            .iter()
            .filter(|v| v["fields"]["message"] == message)
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- strait-proxy logs ----\n{}\n---- end ----",
                self.logs().join("\n")
            );
        }
    }
}

/// The lines `child` writes to its stderr (which must be piped), collected as they come by a
/// thread of their own.
pub fn stderr_lines(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let stderr = child.stderr.take().expect("stderr piped");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().expect("logs").push(line);
        }
    });
    logs
}

//! The `strait-control` process under test, and `straitctl`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;

use crate::client::{http1, send};
use crate::process::TempDir;

/// Path of a built binary of the workspace (`target/<profile>/NAME`), such as `strait-demo`.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Path of the built `strait-control` binary.
pub fn control_bin() -> PathBuf {
    bin("strait-control")
}

/// Path of the built `straitctl` binary.
pub fn straitctl_bin() -> PathBuf {
    bin("straitctl")
}

/// Which store a control keeps its state in: the end-to-end control suite runs each case
/// against both (see [`both_backends!`](crate::both_backends)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The default: redb in `--data-dir`.
    Embedded,
    /// `--store etcd://...`, on a real etcd the test starts.
    Etcd,
}

/// The store of one test: nothing to run for the embedded backend, a fresh etcd for the
/// other. Declare it before the controls that use it (so it outlives them).
pub struct Store {
    backend: Backend,
    etcd: Option<crate::etcd::Etcd>,
}

impl Store {
    /// A store of kind `backend`, started.
    pub fn start(backend: Backend) -> Self {
        let etcd = (backend == Backend::Etcd).then(crate::etcd::Etcd::start);
        Self { backend, etcd }
    }

    /// Which backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The `serve` arguments that select this store.
    pub fn args(&self) -> Vec<String> {
        match &self.etcd {
            Some(etcd) => vec!["--store".into(), etcd.store_url()],
            None => Vec::new(),
        }
    }

    /// A control on this store (its own data directory and token).
    pub fn control(&self) -> Control {
        self.control_with_args(&[])
    }

    /// A control on this store with extra `serve` arguments.
    pub fn control_with_args(&self, extra: &[&str]) -> Control {
        let mut args = self.args();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Control::start_with_args(&args)
    }

    /// Another replica of `first`'s control plane: the same store and token. Only with etcd
    /// (two embedded controls cannot share one file).
    pub fn replica_of(&self, first: &Control) -> Control {
        self.replica_with_args(first, &[])
    }

    /// [`replica_of`](Self::replica_of) with extra `serve` arguments.
    pub fn replica_with_args(&self, first: &Control, extra: &[&str]) -> Control {
        assert!(self.etcd.is_some(), "replicas need a shared store");
        let mut replica = Control::not_started_at(([127, 0, 0, 1], 0).into());
        replica.token = first.token.clone();
        std::fs::write(replica.token_file(), &replica.token).expect("write token");
        replica.extra = self.args();
        replica.extra.extend(extra.iter().map(|a| (*a).to_owned()));
        replica.spawn();
        replica
    }
}

/// Runs the async test case `NAME(Backend)` once per backend, as the tests `NAME::embedded`
/// and `NAME::etcd`: one suite, two stores.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$name($crate::control::Backend::Embedded).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn etcd() {
                    super::$name($crate::control::Backend::Etcd).await;
                }
            }
        )+
    };
}

/// A running control with its own data directory and token.
pub struct Control {
    child: Option<Child>,
    dir: TempDir,
    logs: Arc<Mutex<Vec<String>>>,
    address: SocketAddr,
    token: String,
    extra: Vec<String>,
    /// Extra environment of the process.
    env: Vec<(String, String)>,
    /// Serving HTTPS (started with `--trust-domain`).
    tls: bool,
}

impl Control {
    /// Starts a control on a fresh data directory, a free port and a new token.
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Starts a control like [`start`](Self::start), with extra `serve` arguments.
    pub fn start_with_args(extra: &[&str]) -> Self {
        let mut control = Self::not_started_at(([127, 0, 0, 1], 0).into());
        control.extra = extra.iter().map(|a| (*a).to_owned()).collect();
        control.spawn();
        control
    }

    /// A control that will listen on `address` but is not started yet: its token file exists,
    /// so a proxy can be pointed at it first. [`launch`](Self::launch) starts it.
    pub fn not_started_at(address: SocketAddr) -> Self {
        let dir = TempDir::new("control");
        let token = format!("test-token-{:016x}", fastrand::u64(..));
        std::fs::write(dir.path().join("token"), &token).expect("write token");
        Self {
            child: None,
            dir,
            logs: Arc::default(),
            address,
            token,
            extra: Vec::new(),
            env: Vec::new(),
            tls: false,
        }
    }

    /// Starts a control like [`start_with_args`](Self::start_with_args), with extra environment.
    pub fn start_with_env(extra: &[&str], env: &[(String, String)]) -> Self {
        let mut control = Self::not_started_at(([127, 0, 0, 1], 0).into());
        control.extra = extra.iter().map(|a| (*a).to_owned()).collect();
        control.env = env.to_vec();
        control.spawn();
        control
    }

    /// Starts a control made with [`not_started_at`](Self::not_started_at).
    pub fn launch(&mut self) {
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut child = Command::new(bin("strait-control"))
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen")
            .arg(self.address.to_string())
            .arg("--token-file")
            .arg(self.token_file())
            .args(["--log-format", "json"])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strait-control");
        let logs = crate::process::stderr_lines(&mut child);
        self.logs = logs;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((address, tls)) = self.listening() {
                self.address = address;
                self.tls = tls;
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "strait-control exited at startup ({status}):\n{}",
                    self.logs().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "control did not start:\n{}",
                self.logs().join("\n")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn listening(&self) -> Option<(SocketAddr, bool)> {
        self.json_logs()
            .iter()
            .find(|v| v["fields"]["message"] == "listening")
            .and_then(|v| {
                let address = v["fields"]["address"].as_str()?.parse().ok()?;
                Some((address, v["fields"]["tls"] == true))
            })
    }

    /// The control's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `http://127.0.0.1:PORT`, or `https://` when started with `--trust-domain`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    /// The API's address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The trust bundle file the control writes with `--trust-domain`.
    pub fn bundle_file(&self) -> PathBuf {
        self.dir.path().join("data").join("trust-bundle.pem")
    }

    /// The trust bundle (PEM) as the control's file has it now.
    pub fn bundle(&self) -> String {
        std::fs::read_to_string(self.bundle_file()).expect("trust bundle file")
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The file holding the token.
    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// A proxy started from `bootstrap` as node `node`, attached to this control with its
    /// token.
    pub fn attach(&self, bootstrap: &str, node: &str) -> crate::Proxy {
        crate::Proxy::start_with_control(bootstrap, &self.url(), node, &self.token_file())
    }

    /// A directory for test files (removed with the control).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the process with SIGKILL (no chance to flush anything).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::net::TcpListener::bind(self.address) {
                Ok(probe) => {
                    drop(probe);
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("port {} not free again: {e}", self.address),
            }
        }
        self.spawn();
    }

    /// Every log line of the current process.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// Log lines parsed as JSON.
    pub fn json_logs(&self) -> Vec<serde_json::Value> {
        self.logs()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Calls the API with the token: (status, JSON body or `null`).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.call_as(Some(&self.token), method, path, body).await
    }

    /// Calls the API presenting `token` (None: no Authorization header).
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        if self.tls {
            let answer = crate::tls::TlsClient::new(&self.bundle(), None, false)
                .call(self.address, method, path, token, body)
                .await
                .expect("control answers");
            return (answer.status, answer.json);
        }
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url()));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&b).expect("json"))
            }
            None => Bytes::new(),
        };
        let answer = send(&http1(), req.body(Full::new(bytes)).expect("request"))
            .await
            .expect("control answers");
        let json = if answer.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&answer.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&answer.body).into_owned())
            })
        };
        (answer.status.as_u16(), json)
    }

    /// Applies YAML text through the API (as file `name`).
    pub async fn apply(&self, name: &str, yaml: &str) -> (u16, serde_json::Value) {
        self.call(
            Method::POST,
            "/v1/apply",
            Some(serde_json::json!({"files": [{"name": name, "content": yaml}]})),
        )
        .await
    }

    /// Runs `straitctl ARGS` against this control (blocking; use from `spawn_blocking` or
    /// tests that do not serve anything in-process meanwhile).
    pub fn straitctl(&self, args: &[&str]) -> Output {
        Command::new(bin("straitctl"))
            .arg("--server")
            .arg(self.url())
            .arg("--token-file")
            .arg(self.token_file())
            .args(if self.tls {
                vec!["--ca-file".into(), self.bundle_file()]
            } else {
                vec![]
            })
            .args(args)
            .output()
            .expect("run straitctl")
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- strait-control logs ----\n{}\n---- end ----",
                self.logs().join("\n")
            );
        }
    }
}

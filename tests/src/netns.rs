//! Network namespaces for interception tests: a "pod" namespace between a "client" and a
//! "backend" namespace, each link a veth pair, and a way to run async code (servers, clients)
//! inside any of them from the test process.
//!
//! ```text
//!  client 10.77.1.1 ── veth ── 10.77.1.2  pod  10.77.2.1 ── veth ── 10.77.2.2 backend
//! ```
//!
//! Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN). [`Mesh::create`] says why when it cannot, so a
//! test can skip loudly; everything it creates is deleted on drop.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The pod's address on the client link (the "app" address clients dial).
pub const POD_ADDRESS: &str = "10.77.1.2";
/// The client's address.
pub const CLIENT_ADDRESS: &str = "10.77.1.1";
/// The pod's address on the backend link.
pub const POD_BACKEND_SIDE: &str = "10.77.2.1";
/// The backend's address.
pub const BACKEND_ADDRESS: &str = "10.77.2.2";

/// Three namespaces wired client ↔ pod ↔ backend.
#[derive(Debug)]
pub struct Mesh {
    /// Client namespace name.
    pub client: String,
    /// Pod namespace name.
    pub pod: String,
    /// Backend namespace name.
    pub backend: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Mesh {
    /// Creates the namespaces and links, named after `tag` and this process. An error says
    /// why namespaces cannot be made here (skip); a failure after that panics.
    pub fn create(tag: &str) -> Result<Self, String> {
        remove_stale(tag);
        let id = std::process::id();
        let name = |role: &str| format!("strait-{tag}-{id}-{role}");
        let mesh = Self {
            client: name("client"),
            pod: name("pod"),
            backend: name("backend"),
        };
        // From here on, drop cleans up whatever was created. Only failing to create a
        // namespace is a reason to skip; anything after that is a failure.
        for ns in [&mesh.client, &mesh.pod, &mesh.backend] {
            ip(&["netns", "add", ns])?;
        }
        let must = |result: Result<(), String>| {
            if let Err(e) = result {
                panic!("setting up the namespaces: {e}");
            }
        };
        for ns in [&mesh.client, &mesh.pod, &mesh.backend] {
            must(ip(&["-n", ns, "link", "set", "lo", "up"]));
        }
        // Interface names are global while being created: unique per process and mesh, and at
        // most 15 characters.
        static MESHES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MESHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let links = [
            (&mesh.client, CLIENT_ADDRESS, &mesh.pod, POD_ADDRESS, "c"),
            (
                &mesh.pod,
                POD_BACKEND_SIDE,
                &mesh.backend,
                BACKEND_ADDRESS,
                "b",
            ),
        ];
        for (left, left_ip, right, right_ip, short) in links {
            let (a, b) = (format!("s{id}-{n}{short}0"), format!("s{id}-{n}{short}1"));
            let (left_cidr, right_cidr) = (format!("{left_ip}/24"), format!("{right_ip}/24"));
            must(ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]));
            must(ip(&["link", "set", &a, "netns", left]));
            must(ip(&["link", "set", &b, "netns", right]));
            must(ip(&["-n", left, "addr", "add", &left_cidr, "dev", &a]));
            must(ip(&["-n", right, "addr", "add", &right_cidr, "dev", &b]));
            must(ip(&["-n", left, "link", "set", &a, "up"]));
            must(ip(&["-n", right, "link", "set", &b, "up"]));
        }
        Ok(mesh)
    }

    /// Runs `program args` inside namespace `ns` and returns its output (error on failure).
    pub fn exec(&self, ns: &str, program: &Path, args: &[&str]) -> Result<String, String> {
        let output = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("{} {args:?} failed: {text}", program.display()))
        }
    }
}

/// Deletes namespaces an earlier run (killed before it could clean up) left behind: those
/// named after `tag` and a process that no longer exists.
fn remove_stale(tag: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let prefix = format!("strait-{tag}-");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let pid = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it (and so their peers).
        for ns in [&self.client, &self.pod, &self.backend] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A single-threaded tokio runtime on its own thread inside a network namespace: every socket
/// the tasks spawned on it create belongs to that namespace.
pub struct NsRuntime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRuntime {
    /// Starts the runtime inside namespace `ns` (by name, as `ip netns` knows it).
    pub fn start(ns: &str) -> Result<Self, String> {
        let path = format!("/var/run/netns/{ns}");
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // SAFETY: `file` is an open namespace file for the whole call; setns changes only
            // this thread's network namespace, which is what we want.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if entered != 0 {
                let _ = ready_tx.send(Err(format!("setns: {}", std::io::Error::last_os_error())));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(runtime.handle().clone()));
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        let handle = ready_rx
            .recv()
            .map_err(|_| "namespace thread died".to_owned())??;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Starts `future` inside the namespace; await the handle for its output.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// Runs `future` inside the namespace and returns its output.
    pub async fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(future).await {
            Ok(output) => output,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A process started inside a namespace, its stderr captured, killed on drop.
pub struct NsProcess {
    child: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl NsProcess {
    /// Starts `program args` inside `ns`, prefixed by `wrapper` (e.g. `setpriv --reuid=...`).
    pub fn spawn(ns: &str, wrapper: &[&str], program: &Path, args: &[&str]) -> Self {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).args(wrapper);
        let mut child = command
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut logs) = sink.lock() {
                        logs.push(line);
                    }
                }
            });
        }
        Self {
            child: Some(child),
            logs,
        }
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- process logs ---\n{}", self.logs());
        }
    }
}

/// Starts the proxy in the pod namespace as UID 1530 (like the injected sidecar) on `yaml`,
/// and waits until its `/ready` answers 200 from the client namespace.
pub async fn start_sidecar(
    mesh: &Mesh,
    client: &NsRuntime,
    dir: &crate::process::TempDir,
    yaml: &str,
) -> NsProcess {
    use strait_config::sidecar::{ADMIN_PORT, PROXY_UID};
    let config = dir.path().join("sidecar.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let uid = PROXY_UID.to_string();
    let (reuid, regid) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    let config_arg = config.to_string_lossy().into_owned();
    let mut proxy = NsProcess::spawn(
        &mesh.pod,
        &["setpriv", &reuid, &regid, "--clear-groups"],
        &crate::process::proxy_bin(),
        &["--config", &config_arg, "--log-format", "json"],
    );
    let admin = std::net::SocketAddr::new(POD_ADDRESS.parse().expect("pod address"), ADMIN_PORT);
    let ready = wait_ready(client, &mut proxy, admin).await;
    assert!(ready, "the proxy exited:\n{}", proxy.logs());
    proxy
}

/// Waits (15 s at most) until `admin`'s `/ready` answers 200 when asked from `from`; false if
/// `proxy` exits first.
pub async fn wait_ready(
    from: &NsRuntime,
    proxy: &mut NsProcess,
    admin: std::net::SocketAddr,
) -> bool {
    use crate::client::{get, http1};
    crate::eventually(
        "the proxy is ready",
        std::time::Duration::from_secs(15),
        || {
            let exited = proxy.exited();
            let probe = from.run(async move {
                get(&http1(), &format!("http://{admin}/ready"), "admin", &[])
                    .await
                    .ok()
                    .map(|a| a.status.as_u16())
            });
            async move {
                if exited {
                    return Some(false);
                }
                (probe.await == Some(200)).then_some(true)
            }
        },
    )
    .await
}

/// A raw TCP exchange: writes `bytes` to `to`, half-closes, reads everything back (5 s at
/// most).
pub async fn tcp_round_trip(to: std::net::SocketAddr, bytes: &'static [u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(to).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut out),
    )
    .await;
    out
}

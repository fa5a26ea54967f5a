//! The proxies under test — Strait, nginx and haproxy configured as equivalent reverse proxies
//! (one worker/thread, keep-alive pools to the upstream, access logs off) — and "direct".

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A target: where to send HTTP (h1), h2c and TCP, and the process to measure.
pub struct Target {
    /// `direct`, `strait`, `nginx`, `haproxy`.
    pub name: String,
    /// HTTP/1.1 address.
    pub http: SocketAddr,
    /// h2c address.
    pub h2: SocketAddr,
    /// TCP address (to the sink).
    pub tcp: SocketAddr,
    /// Version string for the report.
    pub version: String,
    /// Strait's config file (for reloads).
    pub config: Option<PathBuf>,
    child: Option<Child>,
}

impl Target {
    /// The proxy's process id (None for direct).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into())
}

/// No proxy: straight to the upstreams.
pub fn direct(up: SocketAddr, sink: SocketAddr) -> Target {
    Target {
        name: "direct".into(),
        http: up,
        h2: up,
        tcp: sink,
        version: "-".into(),
        config: None,
        child: None,
    }
}

fn wait_ready(target: &mut Target) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect(target.http).is_ok()
            && std::net::TcpStream::connect(target.tcp).is_ok()
        {
            return Ok(());
        }
        if let Some(status) = target
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            return Err(format!("{} exited at startup: {status}", target.name));
        }
        if Instant::now() > deadline {
            return Err(format!("{} did not start", target.name));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `program`, to be started pinned to CPU 0 (the proxies'), its output discarded.
pub fn pinned(program: &Path) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg("0").arg(program);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// Strait's config: `routes` rules in one HTTPRoute — `/svc0` … `/svc{routes-2}` and a last
/// catch-all `/`, so a request for `/` is matched by the last rule of all.
pub fn strait_config(
    up: SocketAddr,
    sink: SocketAddr,
    http: SocketAddr,
    tcp: SocketAddr,
    admin: SocketAddr,
    routes: usize,
    marker: usize,
) -> String {
    let mut yaml = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: bench}}
spec:
  admin: {admin}
  accessLog: {{enabled: false}}
  limits: {{maxConnections: 100000}}
  listeners:
    - {{name: web, address: \"{http}\", protocol: http}}
    - {{name: db, address: \"{tcp}\", protocol: tcp}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: up}}
spec:
  protocol: http1
  endpoints: [{{address: \"{up}\"}}]
  connectionPool: {{maxIdlePerEndpoint: 1024}}
---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: sink}}
spec:
  protocol: tcp
  endpoints: [{{address: \"{sink}\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: TCPRoute
metadata: {{name: sink}}
spec:
  parentRefs: [{{name: db}}]
  backendRefs: [{{name: sink}}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: bench, annotations: {{marker: \"{marker}\"}}}}
spec:
  parentRefs: [{{name: web}}]
  rules:
"
    );
    for i in 0..routes.saturating_sub(1) {
        let _ = writeln!(yaml, "    - {{matches: [{{path: {{type: PathPrefix, value: /svc{i}}}}}], backendRefs: [{{name: up}}]}}");
    }
    yaml.push_str(
        "    - {matches: [{path: {type: PathPrefix, value: /}}], backendRefs: [{name: up}]}\n",
    );
    yaml
}

/// Starts the release `strait-proxy` with `routes` rules, pinned to CPU 0.
pub fn strait(
    bin: &Path,
    up: SocketAddr,
    sink: SocketAddr,
    routes: usize,
    dir: &Path,
) -> Result<Target, String> {
    let (http, tcp, admin) = (free_port(), free_port(), free_port());
    let config = dir.join(format!("strait-{routes}.yaml"));
    std::fs::write(
        &config,
        strait_config(up, sink, http, tcp, admin, routes, 0),
    )
    .map_err(|e| e.to_string())?;
    let child = pinned(bin)
        .arg("--config")
        .arg(&config)
        .args(["--watch-interval", "1h", "--log-format", "json"])
        .stderr(
            std::fs::File::create(dir.join(format!("strait-{routes}.log")))
                .map_err(|e| e.to_string())?,
        )
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut target = Target {
        name: if routes > 1 {
            format!("strait ({routes} routes)")
        } else {
            "strait".into()
        },
        http,
        h2: http,
        tcp,
        version: env!("CARGO_PKG_VERSION").into(),
        config: Some(config),
        child: Some(child),
    };
    wait_ready(&mut target)?;
    Ok(target)
}

/// Strait as [`strait`] starts it, plus `spec.tracing` at `sampling`: spans go over OTLP/HTTP
/// to the upstream, which answers them 200 like any request.
pub fn strait_traced(
    bin: &Path,
    up: SocketAddr,
    sink: SocketAddr,
    dir: &Path,
    sampling: &str,
) -> Result<Target, String> {
    let dir = dir.join(format!("tracing-{sampling}"));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut target = strait(bin, up, sink, 1, &dir)?;
    let config = target.config.clone().ok_or("no config")?;
    let yaml = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    let tracing = format!("  tracing: {{otlp: {{endpoint: \"http://{up}\", protocol: http}}, sampling: {sampling}}}\n  accessLog:");
    std::fs::write(&config, yaml.replacen("  accessLog:", &tracing, 1))
        .map_err(|e| e.to_string())?;
    let pid = target.pid().ok_or("no pid")?;
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    target.name = format!("strait tracing={sampling}");
    let log = dir.join("strait-1.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("\"version\":2")) {
        if Instant::now() > deadline {
            return Err(format!(
                "{}: the tracing config was not applied",
                target.name
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(target)
}

/// The first line `program arg` prints.
pub fn version_of(program: &str, arg: &str) -> Option<String> {
    let out = Command::new(program).arg(arg).output().ok()?;
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .into_owned();
    text.lines().next().map(|l| l.trim().to_owned())
}

/// nginx, one worker (no master), keep-alive upstream pool, streaming (no buffering).
pub fn nginx(up: SocketAddr, sink: SocketAddr, dir: &Path) -> Option<Result<Target, String>> {
    let bin = which("nginx")?;
    let version = version_of("nginx", "-v").unwrap_or_default();
    let (http, h2, tcp) = (free_port(), free_port(), free_port());
    let prefix = dir.join("nginx");
    let _ = std::fs::create_dir_all(prefix.join("logs"));
    let stream_module = [
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "/usr/share/nginx/modules/ngx_stream_module.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .map(|p| format!("load_module {p};\n"))
    .unwrap_or_default();
    let conf = format!(
        "{stream_module}worker_processes 1;
daemon off;
master_process off;
error_log stderr error;
pid {prefix}/nginx.pid;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  upstream up {{ server {up}; keepalive 1024; }}
  server {{
    listen {http};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}
  }}
  server {{
    listen {h2} http2;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}
  }}
}}
stream {{ server {{ listen {tcp}; proxy_pass {sink}; }} }}
",
        prefix = prefix.display()
    );
    let path = prefix.join("nginx.conf");
    if let Err(e) = std::fs::write(&path, conf) {
        return Some(Err(e.to_string()));
    }
    let child = match pinned(&bin)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&path)
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Some(Err(e.to_string())),
    };
    let mut target = Target {
        name: "nginx".into(),
        http,
        h2,
        tcp,
        version,
        config: None,
        child: Some(child),
    };
    Some(wait_ready(&mut target).map(|()| target))
}

/// haproxy, one thread, connection reuse to the upstream.
pub fn haproxy(up: SocketAddr, sink: SocketAddr, dir: &Path) -> Option<Result<Target, String>> {
    let bin = which("haproxy")?;
    let version = version_of("haproxy", "-v").unwrap_or_default();
    let (http, h2, tcp) = (free_port(), free_port(), free_port());
    let conf = format!(
        "global
  nbthread 1
  # 2 fds per proxied connection must fit the 20000-fd limit of this machine.
  maxconn 9900
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend web
  bind {http}
  default_backend up
frontend web2
  bind {h2} proto h2
  default_backend up
backend up
  server s1 {up}
frontend tcpin
  mode tcp
  bind {tcp}
  default_backend sink
backend sink
  mode tcp
  server s1 {sink}
"
    );
    let path = dir.join("haproxy.cfg");
    if let Err(e) = std::fs::write(&path, conf) {
        return Some(Err(e.to_string()));
    }
    let child = match pinned(&bin)
        .arg("-f")
        .arg(&path)
        .arg("-db")
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Some(Err(e.to_string())),
    };
    let mut target = Target {
        name: "haproxy".into(),
        http,
        h2,
        tcp,
        version,
        config: None,
        child: Some(child),
    };
    Some(wait_ready(&mut target).map(|()| target))
}

/// Where `program` is installed, if it is.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .chain(
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(program)),
        )
        .find(|p| p.is_file())
}

/// Starts Strait and, when installed, nginx and haproxy, with their files in `dir`; returns
/// them and, for each peer that could not be started, why.
pub fn start_proxies(
    bin: &Path,
    up: SocketAddr,
    sink: SocketAddr,
    dir: &Path,
) -> Result<(Vec<Target>, Vec<String>), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut proxies = vec![strait(bin, up, sink, 1, dir)?];
    let mut skipped = Vec::new();
    for (name, started) in [
        ("nginx", nginx(up, sink, dir)),
        ("haproxy", haproxy(up, sink, dir)),
    ] {
        match started {
            Some(Ok(t)) => proxies.push(t),
            Some(Err(e)) => skipped.push(format!("{name}: failed to start ({e})")),
            None => skipped.push(format!("{name}: not installed (apt-get install -y {name})")),
        }
    }
    Ok((proxies, skipped))
}

//! The mesh scenario's two-hop paths — client → outbound proxy → inbound proxy → upstream —
//! each hop its own process pinned to the proxies' CPU: Strait with mTLS between the hops
//! (identities from files), Strait in plaintext, and nginx with TLS between the hops (HTTPS
//! `proxy_pass` with a client certificate, the inbound nginx verifying it).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::certs::{MeshCerts, SERVER_ID, SERVER_NAME};
use crate::targets::{free_port, pinned, which};
use crate::{load, procstat};

/// Who serves a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Strait, mTLS between the hops.
    StraitMtls,
    /// Strait, plaintext between the hops.
    StraitPlain,
    /// nginx, TLS with client certificates between the hops.
    Nginx,
}

impl Kind {
    /// The report's column.
    pub fn name(self) -> &'static str {
        match self {
            Self::StraitMtls => "strait",
            Self::StraitPlain => "strait plaintext",
            Self::Nginx => "nginx",
        }
    }

    /// Whether the hop between the proxies is TLS.
    pub fn tls(self) -> bool {
        self != Self::StraitPlain
    }
}

/// A proxy process, killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One hop: a proxy process and the address it listens on.
pub struct Hop {
    pub address: SocketAddr,
    process: Process,
}

impl Hop {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }
}

/// A two-hop path.
pub struct MeshPath {
    pub kind: Kind,
    /// Where clients send requests (the outbound hop's plaintext listener).
    pub entry: SocketAddr,
    pub outbound: Hop,
    pub inbound: Hop,
}

impl MeshPath {
    /// CPU seconds both hops have used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        Some(
            procstat::cpu_seconds(self.outbound.pid())?
                + procstat::cpu_seconds(self.inbound.pid())?,
        )
    }
}

/// Starts the path of `kind` to `up`, with its files in `dir`; `pooled`: the outbound hop
/// keeps connections to the inbound one (else a new one per request). `Ok(None)`: nginx is
/// not installed.
pub async fn start(
    kind: Kind,
    pooled: bool,
    bin: &Path,
    up: SocketAddr,
    certs: &MeshCerts,
    dir: &Path,
) -> Result<Option<MeshPath>, String> {
    let dir = dir.join(format!(
        "{}-{}",
        kind.name().replace(' ', "-"),
        if pooled { "pooled" } else { "unpooled" }
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tls = kind.tls().then_some(certs);
    let (inbound, outbound) = match kind {
        Kind::StraitMtls | Kind::StraitPlain => {
            let inbound = strait(bin, &dir, "inbound", &strait_inbound(up, tls))?;
            let yaml = strait_outbound(inbound.address, pooled, tls);
            (inbound, strait(bin, &dir, "outbound", &yaml)?)
        }
        Kind::Nginx => {
            let Some(bin) = which("nginx") else {
                return Ok(None);
            };
            let inbound = nginx(&bin, &dir.join("inbound"), |listen| {
                nginx_inbound(listen, up, certs)
            })?;
            let to = inbound.address;
            let outbound = nginx(&bin, &dir.join("outbound"), |listen| {
                nginx_outbound(listen, to, pooled, certs)
            })?;
            (inbound, outbound)
        }
    };
    let path = MeshPath {
        kind,
        entry: outbound.address,
        outbound,
        inbound,
    };
    ready(&path).await?;
    Ok(Some(path))
}

/// Waits until a request through `path` is answered, for up to 10 s.
async fn ready(path: &MeshPath) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = load::saturate(path.entry, "bench", "/", 1, Duration::from_millis(50)).await;
        if run.ok > 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the {} mesh path did not answer", path.kind.name()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `strait-proxy` with `yaml` (in which `{listen}` and `{admin}` are filled in).
fn strait(bin: &Path, dir: &Path, name: &str, yaml: &str) -> Result<Hop, String> {
    let (address, admin) = (free_port(), free_port());
    let yaml = yaml
        .replace("{listen}", &address.to_string())
        .replace("{admin}", &admin.to_string());
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
    let child = pinned(bin)
        .arg("--config")
        .arg(&config)
        .args(["--watch-interval", "1h", "--log-format", "json"])
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    listening(address, Process(child), name)
}

/// The hop once `address` accepts connections (10 s at most).
fn listening(address: SocketAddr, mut process: Process, name: &str) -> Result<Hop, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(address).is_err() {
        if let Ok(Some(status)) = process.0.try_wait() {
            return Err(format!("mesh {name} hop exited at startup: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("mesh {name} hop did not start"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Hop { address, process })
}

/// The head of a Strait config: `tls` gives it the identity of `side` (files).
fn strait_head(name: &str, identity: Option<(&MeshCerts, &crate::certs::Side)>) -> String {
    let mut yaml = format!(
        "apiVersion: strait.dev/v1alpha1
kind: ProxyConfig
metadata: {{name: {name}}}
spec:
  admin: \"{{admin}}\"
  accessLog: {{enabled: false}}
  limits: {{maxConnections: 100000}}
"
    );
    if let Some((certs, side)) = identity {
        let _ = writeln!(
            yaml,
            "  identity: {{certFile: \"{}\", keyFile: \"{}\", trustBundleFile: \"{}\"}}",
            side.cert.display(),
            side.key.display(),
            certs.bundle.display()
        );
    }
    yaml
}

/// A service `name` at `address`, with `extra` lines in its spec, and the route to it.
fn strait_service(name: &str, address: SocketAddr, extra: &str) -> String {
    format!(
        "---
apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  protocol: http1
  endpoints: [{{address: \"{address}\"}}]
{extra}---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: web}}]
  rules:
    - {{backendRefs: [{{name: {name}}}]}}
"
    )
}

/// The inbound hop: a listener (`tls`: mutual, the server's identity) to the upstream.
fn strait_inbound(up: SocketAddr, tls: Option<&MeshCerts>) -> String {
    let mut yaml = strait_head("inbound", tls.map(|c| (c, &c.server)));
    let listener_tls = if tls.is_some() {
        ", tls: {mode: mutual}"
    } else {
        ""
    };
    let _ = writeln!(
        yaml,
        "  listeners:\n    - {{name: web, address: \"{{listen}}\", protocol: http{listener_tls}}}"
    );
    yaml + &strait_service("up", up, "  connectionPool: {maxIdlePerEndpoint: 1024}\n")
}

/// The outbound hop: a plaintext listener to the inbound hop (`tls`: mesh, the client's
/// identity, the server's checked); `pooled`: keep-alive between the hops.
fn strait_outbound(inbound: SocketAddr, pooled: bool, tls: Option<&MeshCerts>) -> String {
    let mut yaml = strait_head("outbound", tls.map(|c| (c, &c.client)));
    yaml.push_str("  listeners:\n    - {name: web, address: \"{listen}\", protocol: http}\n");
    let idle = if pooled { 1024 } else { 0 };
    let mut extra = format!("  connectionPool: {{maxIdlePerEndpoint: {idle}}}\n");
    if tls.is_some() {
        let _ = writeln!(
            extra,
            "  tls: {{mode: mesh, identities: [\"{SERVER_ID}\"]}}"
        );
    }
    yaml + &strait_service("hop", inbound, &extra)
}

/// Starts nginx (one worker, no master) with its files under `prefix` and the `server`
/// block `server(listen)` makes.
fn nginx(bin: &Path, prefix: &Path, server: impl Fn(SocketAddr) -> String) -> Result<Hop, String> {
    std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
    let address = free_port();
    let p = prefix.display();
    let conf = format!(
        "worker_processes 1;
daemon off;
master_process off;
error_log stderr error;
pid {p}/nginx.pid;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {p}/body; proxy_temp_path {p}/proxy;
  fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;
{}
}}
",
        server(address)
    );
    let path = prefix.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let log = std::fs::File::create(prefix.join("stderr.log")).map_err(|e| e.to_string())?;
    let child = pinned(bin)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&path)
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    listening(address, Process(child), "nginx")
}

/// nginx's inbound hop: TLS terminated, a client certificate from the bundle's root
/// required, keep-alive to the upstream.
fn nginx_inbound(listen: SocketAddr, up: SocketAddr, certs: &MeshCerts) -> String {
    format!(
        "  upstream up {{ server {up}; keepalive 1024; }}
  server {{
    listen {listen} ssl;
    ssl_certificate {}; ssl_certificate_key {};
    ssl_client_certificate {}; ssl_verify_client on;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }}
  }}",
        certs.server.cert.display(),
        certs.server.key.display(),
        certs.bundle.display()
    )
}

/// nginx's outbound hop: HTTPS to the inbound hop with the client certificate, the server
/// verified for its DNS name, sessions reused; `pooled`: keep-alive between the hops.
fn nginx_outbound(listen: SocketAddr, to: SocketAddr, pooled: bool, certs: &MeshCerts) -> String {
    let keepalive = if pooled { " keepalive 1024;" } else { "" };
    format!(
        "  upstream hop {{ server {to};{keepalive} }}
  server {{
    listen {listen};
    location / {{
      proxy_pass https://hop; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off;
      proxy_ssl_certificate {}; proxy_ssl_certificate_key {};
      proxy_ssl_trusted_certificate {}; proxy_ssl_verify on; proxy_ssl_name {SERVER_NAME};
      proxy_ssl_session_reuse on;
    }}
  }}",
        certs.client.cert.display(),
        certs.client.key.display(),
        certs.bundle.display()
    )
}

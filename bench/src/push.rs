//! Scenario `push`: config push to many proxies. N simulated proxies (100, 1,000; 5,000 too
//! when the scenario is named with `--only`) each
//! hold one HTTP/2 connection and speak the real push protocol (`GET /v1/push/stream`, an ACK
//! `POST /v1/push/ack` per version received); the bench applies one route change and times
//! it until every proxy's ACK was answered, over several applies (p50 and p99). On the
//! embedded store with one control, and on etcd + NATS JetStream with one and three replicas
//! (proxies spread over them; skipped when `etcd` or `nats-server` is not installed). Also the
//! controls' resident memory per 100 connected proxies.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::bus::{call, connect, start_nats, wait_for, watch, Process, TOKEN};
use crate::procstat;
use crate::report::Results;
use crate::settings::Settings;

const SCENARIO: &str = "config push";
/// Longest wait for every proxy to ACK one apply.
const ACK_LIMIT: Duration = Duration::from_secs(60);
/// Connections opened at once while the proxies connect.
const CONNECTING: usize = 100;

/// One setup of the control plane.
struct Setup {
    name: &'static str,
    distributed: bool,
    replicas: usize,
}

const SETUPS: [Setup; 3] = [
    Setup {
        name: "embedded ×1",
        distributed: false,
        replicas: 1,
    },
    Setup {
        name: "etcd+NATS ×1",
        distributed: true,
        replicas: 1,
    },
    Setup {
        name: "etcd+NATS ×3",
        distributed: true,
        replicas: 3,
    },
];

/// Running controls (and their etcd and NATS).
struct Plane {
    controls: Vec<(SocketAddr, u32)>,
    _processes: Vec<Process>,
}

/// Runs the scenario on each setup.
pub async fn push(settings: &Settings, control: &Path, work: &Path, results: &mut Results) {
    // 5,000 proxies only when asked for by name: the full run stays under ten minutes.
    let counts: &[usize] = if settings.quick {
        &[100]
    } else if settings.only.is_empty() {
        &[100, 1_000]
    } else {
        &[100, 1_000, 5_000]
    };
    let applies = if settings.quick { 3 } else { 10 };
    for setup in &SETUPS {
        for &n in counts {
            let dir = work.join("push");
            let plane = match start(setup, control, &dir) {
                Ok(plane) => plane,
                Err(e) => {
                    eprintln!("skipped push on {}: {e}", setup.name);
                    break;
                }
            };
            if let Err(e) = run(&plane, setup, n, applies, results).await {
                eprintln!("push to {n} proxies on {}: {e}", setup.name);
                results.errors(setup.name, 1);
            }
            drop(plane);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn start(setup: &Setup, control: &Path, dir: &Path) -> Result<Plane, String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).map_err(|e| e.to_string())?;
    let mut processes = Vec::new();
    let mut args: Vec<String> = Vec::new();
    if setup.distributed {
        let (etcd, store) = start_etcd(&dir.join("etcd"))?;
        processes.push(etcd);
        let (nats, bus) = start_nats(&dir.join("nats"))?;
        processes.push(nats);
        args.extend(["--store".to_owned(), store, "--bus".to_owned(), bus]);
    }
    let mut controls = Vec::new();
    for replica in 0..setup.replicas {
        let mut child = Command::new(control)
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join(format!("control-{replica}")))
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--token-file")
            .arg(&token)
            .args(&args)
            .env("RUST_LOG", "warn,strait_control::server=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", control.display()))?;
        let lines = watch(child.stderr.take());
        let pid = child.id();
        processes.push(Process(child));
        let address = wait_for(&lines, |line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "listening")
                .then(|| v["fields"]["address"].as_str()?.parse().ok())?
        })
        .ok_or("the control did not start")?;
        controls.push((address, pid));
    }
    Ok(Plane {
        controls,
        _processes: processes,
    })
}

/// A single-member etcd on loopback port 0 (Debian's `etcd-server`).
fn start_etcd(dir: &Path) -> Result<(Process, String), String> {
    let any = "http://127.0.0.1:0";
    let child = Command::new("etcd")
        .args(["--name", "bench"])
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen-client-urls", any, "--advertise-client-urls", any])
        .args([
            "--listen-peer-urls",
            any,
            "--initial-advertise-peer-urls",
            any,
        ])
        .args(["--initial-cluster", &format!("bench={any}")])
        .args(["--enable-grpc-gateway=false", "--logger", "zap"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.map_err(|e| format!("etcd not found ({e})"))?;
    let lines = watch(child.stderr.take());
    let process = Process(child);
    let address: SocketAddr = wait_for(&lines, |line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if !v["msg"].as_str()?.starts_with("serving client traffic") {
            return None;
        }
        v["address"].as_str()?.parse().ok()
    })
    .ok_or("etcd did not start")?;
    Ok((process, format!("etcd://{address}")))
}

fn mesh(host: &str) -> String {
    format!(
        "apiVersion: strait.dev/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  protocol: http1
  endpoints: [{{address: \"127.0.0.1:9\"}}]
---
apiVersion: strait.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: api}}
spec:
  parentRefs: [{{name: web}}]
  hostnames: [\"{host}\"]
  rules: [{{backendRefs: [{{name: api}}]}}]
"
    )
}

/// Applies the mesh with `host`; the revision it made.
async fn apply(address: SocketAddr, host: &str) -> Result<u64, String> {
    let mut sender = connect(address).await?;
    let body = serde_json::json!({"files": [{"name": "mesh.yaml", "content": mesh(host)}]});
    let (status, answer) = call(
        &mut sender,
        Method::POST,
        "/v1/apply",
        Some(body.to_string()),
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
    if status != 200 {
        return Err(format!("apply: {status} {answer}"));
    }
    answer["applied"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|r| r["resourceVersion"].as_u64()).max())
        .ok_or_else(|| format!("apply: no revision in {answer}"))
}

/// An ACK answered: which proxy, which version, when.
type Acked = (usize, u64, Instant);

async fn run(
    plane: &Plane,
    setup: &Setup,
    n: usize,
    applies: usize,
    results: &mut Results,
) -> Result<(), String> {
    let (first_control, _) = *plane.controls.first().ok_or("no control")?;
    let first = apply(first_control, "shop-0").await?;
    let idle: u64 = rss(plane);
    let (acks, mut acked) = mpsc::unbounded_channel::<Acked>();
    let mut connected = 0;
    while connected < n {
        let batch = (connected..n.min(connected + CONNECTING)).map(|i| {
            let (address, _) = plane.controls[i % plane.controls.len()];
            simulated_proxy(address, i, acks.clone())
        });
        for started in all(batch).await {
            started?;
        }
        connected = n.min(connected + CONNECTING);
    }
    wait_all(&mut acked, n, first, Instant::now()).await?;
    let per_100 = rss(plane).saturating_sub(idle) as f64 / n as f64 * 100.0 / 1024.0;
    results.add(
        SCENARIO,
        &format!("control RSS per 100 proxies (KiB), {n} proxies"),
        setup.name,
        per_100,
    );
    let mut times = Vec::new();
    for k in 1..=applies {
        // Apply through each replica in turn: a write on one reaches the proxies of all.
        let (address, _) = plane.controls[k % plane.controls.len()];
        let started = Instant::now();
        let version = apply(address, &format!("shop-{k}")).await?;
        let last = wait_all(&mut acked, n, version, started).await?;
        times.push(last.duration_since(started).as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).saturating_sub(1);
        times.get(i).copied().unwrap_or(f64::NAN)
    };
    eprintln!(
        "push to {n} proxies on {}: apply → all ACK p50 {:.0} ms, p99 {:.0} ms; {per_100:.0} KiB per 100 proxies",
        setup.name,
        at(0.5),
        at(0.99)
    );
    results.add(
        SCENARIO,
        &format!("apply → all ACK p50 (ms), {n} proxies"),
        setup.name,
        at(0.5),
    );
    results.add(
        SCENARIO,
        &format!("apply → all ACK p99 (ms), {n} proxies"),
        setup.name,
        at(0.99),
    );
    Ok(())
}

/// Resident memory of every control, summed.
fn rss(plane: &Plane) -> u64 {
    plane
        .controls
        .iter()
        .filter_map(|&(_, pid)| procstat::rss_bytes(pid))
        .sum()
}

/// Runs `futures` as tasks and waits for them all (a task that panicked is left out).
async fn all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(result) = handle.await {
            out.push(result);
        }
    }
    out
}

/// Waits until all `n` proxies answered `version` (or later); when the last answer came.
async fn wait_all(
    acked: &mut mpsc::UnboundedReceiver<Acked>,
    n: usize,
    version: u64,
    since: Instant,
) -> Result<Instant, String> {
    let mut done = HashSet::with_capacity(n);
    let mut last = since;
    let deadline = tokio::time::Instant::now() + ACK_LIMIT;
    while done.len() < n {
        let next = tokio::time::timeout_at(deadline, acked.recv()).await;
        let (proxy, answered, at) = match next {
            Ok(Some(ack)) => ack,
            Ok(None) => return Err("every proxy is gone".into()),
            Err(_) => {
                return Err(format!(
                    "{} of {n} proxies ACKed version {version} in {ACK_LIMIT:?}",
                    done.len()
                ))
            }
        };
        if answered >= version && done.insert(proxy) {
            last = last.max(at);
        }
    }
    Ok(last)
}

/// Connects proxy `index` and spawns its session; returns once its stream is open.
async fn simulated_proxy(
    address: SocketAddr,
    index: usize,
    acks: mpsc::UnboundedSender<Acked>,
) -> Result<(), String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) =
        http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let node = format!("bench-{index}");
    let request = Request::get(format!(
        "http://{address}/v1/push/stream?node={node}&listeners=web"
    ))
    .header("authorization", format!("Bearer {TOKEN}"))
    .body(Full::new(Bytes::new()))
    .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("push stream: {}", response.status()));
    }
    let mut body = response.into_body();
    tokio::spawn(async move {
        let mut buffer = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Some(version) = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["version"].as_u64())
                else {
                    continue; // keep-alive
                };
                let ack = serde_json::json!({"node": node, "version": version, "accepted": true});
                let request = Request::post(format!("http://{address}/v1/push/ack"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(ack.to_string())));
                let Ok(request) = request else { return };
                let answered = match sender.send_request(request).await {
                    Ok(response) => response.status().is_success(),
                    Err(_) => return,
                };
                if answered && acks.send((index, version, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    Ok(())
}

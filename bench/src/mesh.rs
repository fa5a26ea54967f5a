//! Scenario `mesh`: the service-mesh path, client → outbound proxy → (m)TLS → inbound proxy →
//! upstream, through Strait with mTLS, Strait in plaintext and nginx with TLS and client
//! certificates (see [`crate::mesh_paths`]), in one run:
//!
//! - keep-alive: requests/s (32 connections) and CPU per request of both hops together, p50 and
//!   p99 at 2k rps; then a new client connection per request (the hops still pooled);
//! - a new connection between the hops for every request (the outbound hop pools nothing):
//!   requests/s, CPU per request, and connections set up per second per core of CPU;
//! - the inbound hop alone, called over mTLS by this process with a new connection per
//!   request, with and without session resumption: CPU per handshake (with its one request),
//!   full and resumed;
//! - memory per idle keep-alive connection on the inbound hop (fresh instances), mTLS and
//!   plaintext.
//!
//! Each run is a third of `--seconds`, cut into (at least two) slices interleaved across the
//! paths as the HTTP/1 runs are, so that the scenario adds about 20 s per round.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::certs::MeshCerts;
use crate::mesh_paths::{self, Kind, MeshPath};
use crate::report::{median, Results};
use crate::scenarios::in_turn;
use crate::settings::Settings;
use crate::{load, procstat, tls_load};

const KEEP_ALIVE: &str = "mesh keep-alive";
const RECONNECTING: &str = "mesh, new client conn per request";
const UNPOOLED: &str = "mesh, new mTLS conn per request";
const HANDSHAKES: &str = "mesh inbound hop handshakes";
const MEMORY: &str = "mesh memory";

/// Runs the scenario, `settings.rounds` times, then its memory part.
pub async fn mesh(
    settings: &Settings,
    bin: &Path,
    up: SocketAddr,
    work: &Path,
    results: &mut Results,
) -> Result<(), String> {
    let dir = work.join("mesh");
    let certs = MeshCerts::make(&dir.join("certs"))?;
    let pooled = start_all(bin, up, &certs, &dir, true).await?;
    let unpooled = start_all(bin, up, &certs, &dir, false).await?;
    for path in pooled.iter().chain(&unpooled) {
        load::saturate(path.entry, "bench", "/", 8, Duration::from_millis(300)).await;
    }
    let (slices, slice) = slicing(settings);
    let configs = [
        ("full", certs.client_config(false)?),
        ("resumed", certs.client_config(true)?),
    ];
    for round in 0..settings.rounds {
        keep_alive(&pooled, slices, slice, results).await;
        fixed_rate(&pooled, slices, slice, results).await;
        reconnecting(&pooled, slices, slice, results).await;
        unpooled_hops(&unpooled, slices, slice, results).await;
        for (kind, config) in &configs {
            for (_, path) in in_turn(&pooled, round).filter(|(_, p)| p.kind.tls()) {
                inbound_handshakes(path, kind, config.clone(), slice * slices, results).await;
            }
        }
    }
    ratios(results);
    drop((pooled, unpooled));
    memory(settings, bin, up, &certs, &dir, results).await
}

/// Each run's slices: a third of `--seconds` in all, in at least two slices of at most about
/// a second.
fn slicing(settings: &Settings) -> (u32, Duration) {
    let total = Duration::from_secs_f64(settings.seconds / 3.0);
    let n = total.as_secs_f64().round().max(2.0) as u32;
    (n, total / n)
}

async fn start_all(
    bin: &Path,
    up: SocketAddr,
    certs: &MeshCerts,
    dir: &Path,
    pooled: bool,
) -> Result<Vec<MeshPath>, String> {
    let mut paths = Vec::new();
    for kind in [Kind::StraitMtls, Kind::StraitPlain, Kind::Nginx] {
        match mesh_paths::start(kind, pooled, bin, up, certs, dir).await? {
            Some(path) => paths.push(path),
            None => eprintln!("mesh: nginx not installed, its path skipped"),
        }
    }
    Ok(paths)
}

/// Saturation over keep-alive connections: requests/s and both hops' CPU per request.
async fn keep_alive(paths: &[MeshPath], slices: u32, slice: Duration, results: &mut Results) {
    saturation(KEEP_ALIVE, paths, slices, slice, results, |addr, slice| {
        Box::pin(load::saturate(addr, "bench", "/", 32, slice))
    })
    .await;
}

/// Saturation with a new client connection per request (the hops pooled).
async fn reconnecting(paths: &[MeshPath], slices: u32, slice: Duration, results: &mut Results) {
    saturation(
        RECONNECTING,
        paths,
        slices,
        slice,
        results,
        |addr, slice| Box::pin(load::saturate_reconnecting(addr, "bench", 32, slice)),
    )
    .await;
}

/// Saturation over keep-alive client connections, each request opening its own connection
/// between the hops (a handshake, resumed, on the TLS paths): also connections per second per
/// core of both hops' CPU.
async fn unpooled_hops(paths: &[MeshPath], slices: u32, slice: Duration, results: &mut Results) {
    let per_core = saturation(UNPOOLED, paths, slices, slice, results, |addr, slice| {
        Box::pin(load::saturate(addr, "bench", "/", 32, slice))
    })
    .await;
    for (path, (ok, cpu)) in paths.iter().zip(per_core) {
        if cpu > 0.0 {
            let metric = "hop connections/s per core (both hops' CPU)";
            results.add(UNPOOLED, metric, path.kind.name(), ok as f64 / cpu);
        }
    }
}

type RunFuture = std::pin::Pin<Box<dyn std::future::Future<Output = load::Run>>>;

/// Runs `run` on every path in interleaved slices; records requests/s and CPU per request
/// under `scenario` and returns each path's requests and CPU seconds.
async fn saturation(
    scenario: &str,
    paths: &[MeshPath],
    slices: u32,
    slice: Duration,
    results: &mut Results,
    run: impl Fn(SocketAddr, Duration) -> RunFuture,
) -> Vec<(u64, f64)> {
    let before: Vec<Option<f64>> = paths.iter().map(MeshPath::cpu_seconds).collect();
    let (mut ok, mut seconds) = (vec![0u64; paths.len()], vec![0f64; paths.len()]);
    for k in 0..slices as usize {
        for (i, path) in in_turn(paths, k) {
            let r = run(path.entry, slice).await;
            results.errors(path.kind.name(), r.errors);
            ok[i] += r.ok;
            seconds[i] += r.seconds;
        }
    }
    let mut spent = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let name = path.kind.name();
        let rps = ok[i] as f64 / seconds[i].max(1e-9);
        results.add(scenario, "requests/s (32 clients)", name, rps);
        let cpu = match (path.cpu_seconds(), before[i]) {
            (Some(after), Some(before)) => after - before,
            _ => 0.0,
        };
        let per_request = cpu * 1e6 / ok[i].max(1) as f64;
        results.add(scenario, "CPU µs/request, both hops", name, per_request);
        spent.push((ok[i], cpu));
    }
    spent
}

/// p50 and p99 at 2k requests/s over keep-alive connections.
async fn fixed_rate(paths: &[MeshPath], slices: u32, slice: Duration, results: &mut Results) {
    let mut merged: Vec<Option<hdrhistogram::Histogram<u64>>> = vec![None; paths.len()];
    for k in 0..slices as usize {
        for (i, path) in in_turn(paths, k) {
            let mut r = load::fixed_rate(path.entry, "bench", 2_000, slice, 64).await;
            results.errors(path.kind.name(), r.errors);
            r.merge_latency_into(&mut merged[i]);
        }
    }
    for (path, h) in paths.iter().zip(&merged) {
        let Some(h) = h else { continue };
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            let ms = h.value_at_quantile(q) as f64 / 1000.0;
            results.add(
                KEEP_ALIVE,
                &format!("{label} ms @ 2k rps"),
                path.kind.name(),
                ms,
            );
        }
    }
}

/// The inbound hop of `path` called directly over mTLS, a new connection per request, with
/// `config` (`kind`: whether it resumes): its CPU per handshake and handshakes per second
/// per core.
async fn inbound_handshakes(
    path: &MeshPath,
    kind: &str,
    config: std::sync::Arc<rustls::ClientConfig>,
    duration: Duration,
    results: &mut Results,
) {
    let pid = path.inbound.pid();
    let before = procstat::cpu_seconds(pid);
    let run = tls_load::handshakes(path.inbound.address, config, 8, duration).await;
    let name = path.kind.name();
    results.errors(name, run.errors);
    let (Some(before), Some(after)) = (before, procstat::cpu_seconds(pid)) else {
        return;
    };
    let cpu = after - before;
    let per = cpu * 1e6 / run.ok.max(1) as f64;
    results.add(
        HANDSHAKES,
        &format!("CPU µs per {kind} handshake + 1 request"),
        name,
        per,
    );
    if cpu > 0.0 {
        let metric = format!("{kind} handshakes/s per core");
        results.add(HANDSHAKES, &metric, name, run.ok as f64 / cpu);
    }
    let resumed = 100.0 * run.resumed as f64 / run.ok.max(1) as f64;
    results.add(HANDSHAKES, &format!("{kind}: % resumed"), name, resumed);
}

/// The targets' ratios: Strait's mTLS path against its plaintext one.
fn ratios(results: &mut Results) {
    for scenario in [KEEP_ALIVE, RECONNECTING, UNPOOLED] {
        let key = (scenario.to_owned(), "CPU µs/request, both hops".to_owned());
        let Some(by_path) = results.samples.get(&key) else {
            continue;
        };
        let (Some(mtls), Some(plain)) = (by_path.get("strait"), by_path.get("strait plaintext"))
        else {
            continue;
        };
        let ratio = median(mtls) / median(plain);
        results.add(scenario, "CPU/request, mTLS ÷ plaintext", "strait", ratio);
    }
}

/// Memory per idle keep-alive connection on the inbound hop, in fresh instances: mTLS
/// connections from this process to each TLS path's inbound hop, plaintext ones to Strait's
/// plaintext inbound hop.
async fn memory(
    settings: &Settings,
    bin: &Path,
    up: SocketAddr,
    certs: &MeshCerts,
    dir: &Path,
    results: &mut Results,
) -> Result<(), String> {
    let n = settings.idle_connections / 5;
    let dir = dir.join("memory");
    let config = certs.client_config(true)?;
    let mut per_connection = Vec::new();
    for kind in [Kind::StraitMtls, Kind::StraitPlain, Kind::Nginx] {
        let Some(path) = mesh_paths::start(kind, true, bin, up, certs, &dir).await? else {
            continue;
        };
        let (hop, pid) = (path.inbound.address, path.inbound.pid());
        let before = procstat::rss_bytes(pid).unwrap_or(0);
        // Held (type-erased) until the RSS is read.
        let (held, failed, _open): (usize, u64, Box<dyn std::any::Any>) = if kind.tls() {
            let (held, failed) = tls_load::idle_connections(hop, config.clone(), n).await;
            (held.len(), failed, Box::new(held))
        } else {
            let (held, failed) = load::idle_connections(hop, "bench", n).await;
            (held.len(), failed, Box::new(held))
        };
        results.errors(kind.name(), failed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = procstat::rss_bytes(pid).unwrap_or(0);
        let kib = after.saturating_sub(before) as f64 / 1024.0 / held.max(1) as f64;
        let metric = format!("inbound hop KiB per idle conn ({n} conns)");
        results.add(MEMORY, &metric, kind.name(), kib);
        per_connection.push((kind, kib));
    }
    let of = |k| {
        per_connection
            .iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, v)| *v)
    };
    if let (Some(mtls), Some(plain)) = (of(Kind::StraitMtls), of(Kind::StraitPlain)) {
        results.add(
            MEMORY,
            "KiB per idle conn, mTLS ÷ plaintext",
            "strait",
            mtls / plain,
        );
    }
    Ok(())
}

//! The scenarios run across the targets: HTTP/1 latency and saturation, h2c, 1 MiB
//! responses, TCP bulk, route scaling and memory with idle connections.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::report::Results;
use crate::settings::Settings;
use crate::targets::{self, start_proxies, Target};
use crate::{load, procstat};

/// CPU seconds (user + system) the target's process has used so far; None for direct.
fn cpu(target: &Target) -> Option<f64> {
    target.pid().and_then(procstat::cpu_seconds)
}

/// CPU seconds the target's process has used since it read `before` (from `cpu`).
fn cpu_since(target: &Target, before: Option<f64>) -> Option<f64> {
    Some(cpu(target)? - before?)
}

/// Scenario 5's connections: the RSS each proxy kept after the runs above, then, in a fresh
/// instance of each (a heap grown by earlier load would take new connections into memory it
/// already holds and hide their cost), the RSS with `idle_connections` idle keep-alive client
/// connections open and what each added.
pub async fn memory(
    settings: &Settings,
    bin: &Path,
    up: SocketAddr,
    sink: SocketAddr,
    work: &Path,
    loaded: &[Target],
    results: &mut Results,
) -> Result<(), String> {
    for t in loaded {
        if let Some(rss) = t.pid().and_then(procstat::rss_bytes) {
            let mib = rss as f64 / (1 << 20) as f64;
            results.add("memory", "RSS after the runs above (MiB)", &t.name, mib);
        }
    }
    let (fresh, _) = start_proxies(bin, up, sink, &work.join("memory"))?;
    for t in &fresh {
        let Some(pid) = t.pid() else { continue };
        let before = procstat::rss_bytes(pid).unwrap_or(0);
        let (held, failed) =
            load::idle_connections(t.http, "bench", settings.idle_connections).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = procstat::rss_bytes(pid).unwrap_or(0);
        results.errors(&t.name, failed);
        results.add(
            "memory",
            &format!("RSS with {} idle conns (MiB)", settings.idle_connections),
            &t.name,
            after as f64 / (1 << 20) as f64,
        );
        results.add(
            "memory",
            "KiB per idle connection",
            &t.name,
            after.saturating_sub(before) as f64 / 1024.0 / held.len().max(1) as f64,
        );
    }
    Ok(())
}

/// Scenario 2: HTTP/2 with 100 concurrent streams, each target in turn.
pub async fn h2c(settings: &Settings, targets: &[Target], round: usize, results: &mut Results) {
    for (_, t) in in_turn(targets, round) {
        let before = cpu(t);
        let r = load::h2_streams(t.h2, "bench", 100, settings.duration()).await;
        results.errors(&t.name, r.errors);
        results.add("h2c 100 streams", "requests/s", &t.name, r.rps());
        if let Some(spent) = cpu_since(t, before) {
            let per_request = spent * 1e6 / r.ok.max(1) as f64;
            results.add(
                "h2c 100 streams",
                "proxy CPU µs/request",
                &t.name,
                per_request,
            );
        }
    }
}

/// Scenario 3: 1 MiB responses, each target in turn.
pub async fn big_responses(
    settings: &Settings,
    targets: &[Target],
    round: usize,
    results: &mut Results,
) {
    for (_, t) in in_turn(targets, round) {
        let before = cpu(t);
        let r = load::saturate(t.http, "bench", "/big", 4, settings.duration()).await;
        results.errors(&t.name, r.errors);
        let mb = r.bytes as f64 / 1e6;
        results.add("1 MiB responses", "MB/s", &t.name, mb / r.seconds);
        if let Some(spent) = cpu_since(t, before) {
            let per_mb = spent * 1e3 / mb.max(1e-9);
            results.add("1 MiB responses", "proxy CPU ms/MB", &t.name, per_mb);
        }
    }
}

/// How long the machine is left quiet before a round's TCP bulk runs. A proxy's TCP bulk run
/// that starts right after that proxy served 10 GB of 1 MiB responses reads about half of what
/// it reads otherwise (Strait: 910–1030 MB/s against 1800–2200), and recovers over 5 to 10 s;
/// what lingers is not in the proxy's sockets, which are idle and empty by then. So the TCP
/// rounds run after the others, one after another, after a pause (none in `--quick`, whose
/// timings are not read).
pub const QUIET_BEFORE_TCP: Duration = Duration::from_secs(8);

/// Scenario 4: opaque TCP bulk, each target in turn. This process's own CPU is reported
/// beside the proxy's: the load generator and the sink share one core, and whether that core
/// or the proxy's is the bottleneck decides what the throughput measures.
pub async fn tcp_bulk(
    settings: &Settings,
    targets: &[Target],
    round: usize,
    results: &mut Results,
) {
    for (_, t) in in_turn(targets, round) {
        let own_cpu = || procstat::cpu_seconds(std::process::id());
        let (before, own_before) = (cpu(t), own_cpu());
        let r = load::bulk(t.tcp, settings.tcp_bytes).await;
        let (spent, own_after) = (cpu_since(t, before), own_cpu());
        results.errors(&t.name, r.errors);
        let gb = (r.bytes as f64 / 1e9).max(1e-9);
        results.add("tcp bulk", "MB/s", &t.name, gb * 1e3 / r.seconds);
        if let Some(spent) = spent {
            results.add("tcp bulk", "proxy CPU s/GB", &t.name, spent / gb);
        }
        if let (Some(b), Some(a)) = (own_before, own_after) {
            let loadgen = "load generator + sink";
            results.add(
                "tcp bulk",
                &format!("{loadgen} CPU s/GB"),
                &t.name,
                (a - b) / gb,
            );
            let busy = (a - b) * 100.0 / r.seconds;
            results.add("tcp bulk", &format!("{loadgen} core busy %"), &t.name, busy);
        }
    }
}

/// The targets, with their indices, in the order of turn `k` (a slice or a round): forward on
/// even turns and backward on odd ones, so that no target always runs right after the same
/// other one (Strait would otherwise always follow direct, whose run leaves the proxies' CPU
/// idle).
pub fn in_turn<T>(targets: &[T], k: usize) -> impl Iterator<Item = (usize, &T)> {
    let n = targets.len();
    (0..n)
        .map(move |j| if k % 2 == 0 { j } else { n - 1 - j })
        .map(move |i| (i, &targets[i]))
}

/// Scenario 1's latency: p50/p99/p99.9 at 2k and 5k rps. A round's run of each target is cut
/// into slices of about a second, interleaved across the targets (A B C C B A …) and merged
/// into one histogram per target: this VM stalls every process on it, the direct path
/// included, for milliseconds at a time and in spells of seconds, and slices spread a bad
/// spell over every target instead of loading it onto the one that ran through it.
pub async fn latency_at_fixed_rates(
    settings: &Settings,
    targets: &[Target],
    results: &mut Results,
) {
    let (slices, slice) = settings.slices();
    for rate in [2_000u64, 5_000] {
        let mut merged: Vec<Option<hdrhistogram::Histogram<u64>>> = vec![None; targets.len()];
        for k in 0..slices as usize {
            for (i, t) in in_turn(targets, k) {
                let mut r = load::fixed_rate(t.http, "bench", rate, slice, 64).await;
                results.errors(&t.name, r.errors);
                r.merge_latency_into(&mut merged[i]);
            }
        }
        for (t, h) in targets.iter().zip(&merged) {
            let Some(h) = h else { continue };
            for (q, label) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
                results.add(
                    "http1 small",
                    &format!("{label} ms @ {}k rps", rate / 1000),
                    &t.name,
                    h.value_at_quantile(q) as f64 / 1000.0,
                );
            }
        }
    }
}

/// Scenario 1, HTTP/1.1 keep-alive saturation (32 connections) and the proxy's CPU per
/// request, in one-second slices interleaved across the targets like the fixed-rate runs,
/// so that a spell of noise on this machine is shared by all targets instead of landing on
/// whichever ran through it. Each target's CPU is read before its first slice and after its
/// last (it is idle in between, while the others run).
pub async fn saturation_in_slices(settings: &Settings, targets: &[Target], results: &mut Results) {
    let (slices, slice) = settings.slices();
    let before: Vec<Option<f64>> = targets.iter().map(cpu).collect();
    let mut ok = vec![0u64; targets.len()];
    let mut seconds = vec![0f64; targets.len()];
    for k in 0..slices as usize {
        for (i, t) in in_turn(targets, k) {
            let r = load::saturate(t.http, "bench", "/", 32, slice).await;
            results.errors(&t.name, r.errors);
            ok[i] += r.ok;
            seconds[i] += r.seconds;
        }
    }
    for (i, t) in targets.iter().enumerate() {
        results.add(
            "http1 small",
            "requests/s (32 conns)",
            &t.name,
            ok[i] as f64 / seconds[i].max(1e-9),
        );
        if let Some(spent) = cpu_since(t, before[i]) {
            let per_request = spent * 1e6 / ok[i].max(1) as f64;
            results.add("http1 small", "proxy CPU µs/request", &t.name, per_request);
        }
    }
}

/// Scenario 6, route-table scaling: CPU per request with N rules, the request matching the
/// last; each run half of `--seconds` (a saturation run's CPU per request settles well within
/// it, and the full run stays under ten minutes).
pub async fn routes(
    settings: &Settings,
    bin: &Path,
    up: SocketAddr,
    sink: SocketAddr,
    work: &Path,
    results: &mut Results,
) -> Result<(), String> {
    let mut instances = Vec::new();
    for &n in &settings.route_counts {
        instances.push((n, targets::strait(bin, up, sink, n, work)?));
    }
    for (_, t) in &instances {
        load::saturate(t.http, "bench", "/", 8, Duration::from_millis(300)).await;
    }
    for _ in 0..settings.rounds {
        for (n, t) in &instances {
            let before = cpu(t);
            let r = load::saturate(t.http, "bench", "/", 32, settings.duration() / 2).await;
            results.errors("strait", r.errors);
            if let Some(spent) = cpu_since(t, before) {
                let per_request = spent * 1e6 / r.ok.max(1) as f64;
                let metric = format!("CPU µs/request, {n} routes");
                results.add("route scaling", &metric, "strait", per_request);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_turns_forward_then_backward() {
        let order = |k| {
            in_turn(&["a", "b", "c"], k)
                .map(|(i, t)| (i, *t))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(0), [(0, "a"), (1, "b"), (2, "c")]);
        assert_eq!(order(1), [(2, "c"), (1, "b"), (0, "a")]);
        assert_eq!(order(2), order(0));
    }
}

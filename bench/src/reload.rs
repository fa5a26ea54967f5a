//! Scenario 7: reloads under load, and the time to compile and swap the largest route table.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::report::{median, Results};
use crate::settings::Settings;
use crate::{load, targets};

/// Scenario 7, reloads under load: p99 at 2k rps with a reload every 100 ms vs none, and the
/// compile + swap time of the largest route table (from the proxy's `config applied` logs).
pub async fn reloads(
    settings: &Settings,
    bin: &Path,
    up: SocketAddr,
    sink: SocketAddr,
    work: &Path,
    results: &mut Results,
) -> Result<(), String> {
    let routes = settings.route_counts.iter().copied().max().unwrap_or(10);
    let t = targets::strait(bin, up, sink, routes, work)?;
    let config = t.config.clone().ok_or("no config")?;
    let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
    // Two versions written once; each reload points the config at the other one (a symlink
    // swapped by rename, as Kubernetes updates a mounted ConfigMap), so the reloads cost the
    // load generator's core three syscalls each rather than rewriting a megabyte file.
    let versions = ["a", "b"].map(|v| work.join(format!("strait-{routes}.{v}.yaml")));
    for (version, path) in ["a", "b"].iter().zip(&versions) {
        let marked = text.replace("marker: \"0\"", &format!("marker: \"{version}\""));
        std::fs::write(path, marked).map_err(|e| e.to_string())?;
    }
    let pid = t.pid().ok_or("strait exited")?;
    let swap = {
        let (config, versions) = (config.clone(), versions.clone());
        move |n: usize| -> std::io::Result<()> {
            let link = config.with_extension("next");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&versions[n % 2], &link)?;
            std::fs::rename(&link, &config)?;
            hangup(pid);
            Ok(())
        }
    };
    // Quiet and reloading runs in slices of about a second, alternating (Q R R Q Q R …) and
    // merged per round, for the reason the HTTP/1 fixed-rate runs are sliced: this VM's
    // spells of noise would otherwise land on whichever of the two ran through them.
    let (slices, slice) = settings.slices();
    let mut swaps = 0usize;
    for _ in 0..settings.rounds {
        let mut merged: [Option<hdrhistogram::Histogram<u64>>; 2] = [None, None];
        for k in 0..slices {
            let order = if k % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for reloading in order {
                let mut run = if reloading {
                    let run;
                    (run, swaps) = reloading_every_100ms(t.http, slice, &swap, swaps).await?;
                    // The last reload's parse and compile (~65 ms) end before a quiet slice.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    run
                } else {
                    load::fixed_rate(t.http, "bench", 2_000, slice, 64).await
                };
                results.errors("strait", run.errors);
                run.merge_latency_into(&mut merged[usize::from(reloading)]);
            }
        }
        if let [Some(quiet), Some(busy)] = &merged {
            results.add(
                "reload under load",
                "p99 ms @ 2k rps, no reloads",
                "strait",
                quiet.value_at_quantile(0.99) as f64 / 1000.0,
            );
            results.add(
                "reload under load",
                "p99 ms @ 2k rps, reload every 100 ms",
                "strait",
                busy.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
    }
    let log_path = work.join(format!("strait-{routes}.log"));
    let under_load = reload_durations(&log_path);
    // The same reload on an idle proxy: the cost of the work itself, without the requests
    // that preempt the low-priority reload thread.
    for _ in 0..5 {
        swap(swaps).map_err(|e| e.to_string())?;
        swaps += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let all = reload_durations(&log_path);
    let idle = all.get(under_load.len()..).unwrap_or_default();
    for (label, reloads) in [("at 2k rps", under_load.as_slice()), ("idle", idle)] {
        if reloads.is_empty() {
            continue;
        }
        let phase =
            |pick: fn(&Reload) -> f64| median(&reloads.iter().map(pick).collect::<Vec<_>>());
        results.add(
            "reload under load",
            &format!("YAML read + parse of {routes} routes, {label} (ms)"),
            "strait",
            phase(|r| r.parse_ms),
        );
        results.add(
            "reload under load",
            &format!("compile + swap of {routes} routes, {label} (ms)"),
            "strait",
            phase(|r| r.compile_ms),
        );
    }
    Ok(())
}

/// 2k requests/s to `addr` for `duration` while a thread calls `swap(n)` (a reload) every
/// 100 ms, counting on from `swaps`; returns the run and the count of swaps so far.
async fn reloading_every_100ms(
    addr: SocketAddr,
    duration: Duration,
    swap: &(impl Fn(usize) -> std::io::Result<()> + Clone + Send + 'static),
    swaps: usize,
) -> Result<(load::Run, usize), String> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reloader = {
        let (stop, swap) = (stop.clone(), swap.clone());
        std::thread::spawn(move || {
            let mut swaps = swaps;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = swap(swaps);
                swaps += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            swaps
        })
    };
    let run = load::fixed_rate(addr, "bench", 2_000, duration, 64).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = reloader.join().map_err(|_| "reloader panicked")?;
    Ok((run, swaps))
}

/// Sends SIGHUP to `pid` — directly, not by starting `kill`, which would take CPU from the load
/// generator on its core in the middle of the measurement.
fn hangup(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGHUP);
        }
    }
}

/// The phases of one applied reload, as the proxy logs them.
struct Reload {
    /// Reading the files and parsing the YAML into resources.
    parse_ms: f64,
    /// Compiling, building the runtime and swapping it in.
    compile_ms: f64,
}

/// Every reload the proxy logged as applied, in order.
fn reload_durations(log: &Path) -> Vec<Reload> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "config applied")
        .filter_map(|v| {
            Some(Reload {
                parse_ms: v["fields"]["parse_ms"].as_f64()?,
                compile_ms: v["fields"]["compile_ms"].as_f64()?,
            })
        })
        .collect()
}

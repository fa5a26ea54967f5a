//! `strait-bench`: Strait against direct, nginx and haproxy, in one run.
//!
//! ```text
//! scripts/bench.sh [--quick] [--rounds N] [--seconds S] [--only SCENARIO,...]
//! cargo run --release -p strait-bench [-- --quick ...]   # the same, building one after the other
//! ```
//!
//! Proxies run pinned to CPU 0; this process (load generator and upstream, one thread) to
//! CPU 1. Targets are interleaved round by round: each scenario runs every target in turn,
//! forward and backward by turns (the HTTP/1 fixed-rate latency and saturation runs in
//! one-second slices, A B C C B A A B C …), before the next scenario starts; each figure is
//! the median of the rounds with min–max; the report also gives the machine's floor for added
//! latency and the CPU time the hypervisor stole during the run. Writes
//! `target/bench/results.md` and `results.json`. `--quick` is the CI smoke mode: one short
//! round, and a non-zero exit if Strait errors or drops requests (never on timings).

mod bus;
mod certs;
mod load;
mod mesh;
mod mesh_paths;
mod procstat;
mod push;
mod reload;
mod report;
mod scenarios;
mod settings;
mod targets;
mod tls_load;
mod upstream;
mod wakeup;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use report::{Results, Steal, Wakeup};
use settings::Settings;

fn main() -> ExitCode {
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strait-bench: {e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit();
    if !procstat::pin_self(1) {
        eprintln!("strait-bench: cannot pin to CPU 1; figures will be noisier");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings.clone())) {
        Ok(results) => {
            let strait_errors: u64 = results
                .errors
                .iter()
                .filter(|(t, _)| t.starts_with("strait"))
                .map(|(_, n)| n)
                .sum();
            if settings.quick && strait_errors > 0 {
                eprintln!("strait-bench: Strait failed {strait_errors} requests");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strait-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit read and write exactly one rlimit struct we own.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max.min(1 << 20);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The `strait-proxy` binary beside this one. Started by `cargo run`, the bench first builds
/// it, with its own profile and target directory: cargo builds only the library of a package
/// depended on, so the binary would otherwise be missing on a fresh checkout, or older than
/// the source being measured.
fn strait_bin() -> Result<PathBuf, String> {
    built_bin("strait-proxy", "strait-proxy")
}

/// The binary `bin` of package `package` beside this one, built first under `cargo run`
/// (see [`strait_bin`]).
fn built_bin(package: &str, bin: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no target dir")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        build(&cargo, dir, package, bin)?;
    }
    let path = dir.join(bin);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it first (`cargo build --release -p {package}`)",
            path.display()
        ))
    }
}

/// Builds the `strait-proxy` binary into `dir` (`<target>/<profile>`), whose name gives the
/// profile (`debug` is cargo's `dev`), as it ships. `scripts/bench.sh` builds both in one
/// cargo invocation instead, which gives the same binary (this package adds no feature to a
/// dependency they share) sooner: from clean, 2m08s here against ~3m40s for this build after
/// the bench's own, which cannot overlap it.
fn build(cargo: &std::ffi::OsStr, dir: &Path, package: &str, bin: &str) -> Result<(), String> {
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => return Err(format!("no profile in {}", dir.display())),
    };
    let target_dir = dir.parent().ok_or("no target dir")?;
    eprintln!("building {bin} (profile {profile})");
    let status = std::process::Command::new(cargo)
        .args(["build", "-p", package, "--bin", bin])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cannot run cargo to build {bin}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building {bin} failed ({status})"))
    }
}

async fn run(settings: Settings) -> Result<Results, String> {
    let bin = if settings.runs_proxies() {
        strait_bin()?
    } else {
        std::env::current_exe().map_err(|e| e.to_string())?
    };
    let out_dir = bin
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("bench");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let work = out_dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let up = upstream::http().await.map_err(|e| e.to_string())?;
    let sink = upstream::sink().await.map_err(|e| e.to_string())?;

    let mut results = Results::default();
    let (began, steal_before) = (std::time::Instant::now(), procstat::steal_seconds());
    let trips = if settings.quick { 200 } else { 2_000 };
    results.wakeup = wakeup::round_trip(1, 0, trips)
        .zip(wakeup::round_trip(1, 1, trips))
        .map(|(other_cpu, same_cpu)| Wakeup {
            other_cpu,
            same_cpu,
        });
    let (mut targets, mut skipped) = (Vec::new(), Vec::new());
    if settings.runs_proxies() {
        targets.push(targets::direct(up, sink));
        let (proxies, not_started) = targets::start_proxies(&bin, up, sink, &work)?;
        targets.extend(proxies);
        skipped = not_started;
        if settings.tracing {
            for sampling in ["0", "1"] {
                targets.push(targets::strait_traced(&bin, up, sink, &work, sampling)?);
            }
        }
    }
    for s in &skipped {
        eprintln!("skipped {s}");
    }
    // Idle RSS first, before any traffic.
    for t in &targets {
        if let Some(rss) = t.pid().and_then(procstat::rss_bytes) {
            results.add(
                "memory",
                "idle RSS (MiB)",
                &t.name,
                rss as f64 / (1 << 20) as f64,
            );
        }
    }
    let step = |what: &str| eprintln!("[{:>4.0} s] {what}", began.elapsed().as_secs_f64());
    step("warming up");
    for t in &targets {
        load::saturate(t.http, "bench", "/", 8, Duration::from_millis(300)).await;
    }
    let rounds = settings.rounds;
    for round in 0..rounds {
        if settings.runs("http1") {
            step(&format!("round {}/{rounds}: http1", round + 1));
            scenarios::latency_at_fixed_rates(&settings, &targets, &mut results).await;
            scenarios::saturation_in_slices(&settings, &targets, &mut results).await;
        }
        if settings.runs("h2c") {
            step(&format!("round {}/{rounds}: h2c", round + 1));
            scenarios::h2c(&settings, &targets, round, &mut results).await;
        }
        if settings.runs("big") {
            step(&format!("round {}/{rounds}: 1 MiB responses", round + 1));
            scenarios::big_responses(&settings, &targets, round, &mut results).await;
        }
    }
    if settings.runs("tcp") {
        if !settings.quick {
            step("quiet before tcp bulk");
            tokio::time::sleep(scenarios::QUIET_BEFORE_TCP).await;
        }
        for round in 0..rounds {
            step(&format!("round {}/{rounds}: tcp bulk", round + 1));
            scenarios::tcp_bulk(&settings, &targets, round, &mut results).await;
        }
    }
    if settings.runs("routes") {
        step("route scaling");
        scenarios::routes(&settings, &bin, up, sink, &work, &mut results).await?;
    }
    if settings.runs("reload") {
        step("reloads under load");
        reload::reloads(&settings, &bin, up, sink, &work, &mut results).await?;
    }
    if settings.runs("bus") {
        step("event bus");
        let control = built_bin("strait-control", "strait-control")?;
        bus::bus(&settings, &control, &work, &mut results).await;
    }
    if settings.runs("mesh") {
        step("mesh: two hops, mTLS and plaintext");
        mesh::mesh(&settings, &bin, up, &work, &mut results).await?;
    }
    if settings.runs("push") {
        step("config push");
        let control = built_bin("strait-control", "strait-control")?;
        push::push(&settings, &control, &work, &mut results).await;
    }
    // 5. Memory with idle keep-alive connections, in fresh instances of the proxies.
    if settings.runs("memory") {
        step("memory with idle connections");
        scenarios::memory(&settings, &bin, up, sink, &work, &targets, &mut results).await?;
    }
    step("done");
    if let (Some(before), Some(after)) = (steal_before, procstat::steal_seconds()) {
        results.steal = Some(Steal {
            stolen: after - before,
            wall: began.elapsed().as_secs_f64(),
        });
    }
    report::report(&settings, &targets, &skipped, &results, &out_dir)?;
    Ok(results)
}

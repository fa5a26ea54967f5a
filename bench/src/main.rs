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

mod load;
mod procstat;
mod targets;
mod upstream;
mod wakeup;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use targets::Target;

/// Run settings.
#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    rounds: usize,
    seconds: f64,
    idle_connections: usize,
    route_counts: Vec<usize>,
    tcp_bytes: u64,
    /// Scenarios to run (`--only`); all when empty.
    only: Vec<String>,
}

/// Scenario names accepted by `--only`.
const SCENARIOS: [&str; 7] = ["http1", "h2c", "big", "tcp", "memory", "routes", "reload"];

impl Settings {
    fn from_args() -> Result<Self, String> {
        let mut s = Self {
            quick: false,
            rounds: 3,
            seconds: 4.0,
            idle_connections: 10_000,
            route_counts: vec![10, 1_000, 10_000],
            tcp_bytes: 2 << 30,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => {
                    s.quick = true;
                    s.rounds = 1;
                    s.seconds = 1.0;
                    s.idle_connections = 500;
                    s.route_counts = vec![10, 1_000];
                    s.tcp_bytes = 64 << 20;
                }
                "--rounds" => {
                    s.rounds = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--rounds N")?
                }
                "--seconds" => {
                    s.seconds = args
                        .next()
                        .and_then(|v| v.parse().ok())
                        .ok_or("--seconds S")?
                }
                "--only" => {
                    let list = args.next().ok_or("--only SCENARIO[,SCENARIO...]")?;
                    for name in list.split(',') {
                        if !SCENARIOS.contains(&name) {
                            return Err(format!(
                                "unknown scenario {name}; one of {}",
                                SCENARIOS.join(", ")
                            ));
                        }
                        s.only.push(name.to_owned());
                    }
                }
                other => {
                    return Err(format!(
                        "unknown argument {other}; use --quick, --rounds N, --seconds S, \
                         --only SCENARIO[,SCENARIO...] ({})",
                        SCENARIOS.join(", ")
                    ))
                }
            }
        }
        Ok(s)
    }

    /// Whether scenario `name` runs.
    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|n| n == name)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// How a run interleaved across the targets is cut: the number of slices (about one a
    /// second) and each one's length.
    fn slices(&self) -> (u32, Duration) {
        let n = self.seconds.round().max(1.0) as u32;
        (n, self.duration() / n)
    }
}

/// Samples per (scenario, metric, target), one per round.
#[derive(Debug, Default)]
struct Results {
    samples: BTreeMap<(String, String), BTreeMap<String, Vec<f64>>>,
    order: Vec<(String, String)>,
    errors: BTreeMap<String, u64>,
    /// Wall time of the run and the CPU time the hypervisor stole from the machine meanwhile.
    steal: Option<Steal>,
    /// Round trips to a waiting thread on the proxies' CPU and on the load generator's own.
    wakeup: Option<Wakeup>,
}

/// The machine's floor for added latency (see `wakeup`).
#[derive(Debug, Clone, Copy)]
struct Wakeup {
    other_cpu: wakeup::RoundTrip,
    same_cpu: wakeup::RoundTrip,
}

/// The hypervisor's share of the run: seconds stolen from all CPUs over `wall` seconds.
#[derive(Debug, Clone, Copy)]
struct Steal {
    stolen: f64,
    wall: f64,
}

impl Results {
    fn add(&mut self, scenario: &str, metric: &str, target: &str, value: f64) {
        let key = (scenario.to_owned(), metric.to_owned());
        if !self.samples.contains_key(&key) {
            self.order.push(key.clone());
        }
        self.samples
            .entry(key)
            .or_default()
            .entry(target.to_owned())
            .or_default()
            .push(value);
    }

    fn errors(&mut self, target: &str, n: u64) {
        *self.errors.entry(target.to_owned()).or_default() += n;
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn cpu(target: &Target) -> Option<f64> {
    target.pid().and_then(procstat::cpu_seconds)
}

/// CPU seconds the target's process has used since it read `before` (from `cpu`).
fn cpu_since(target: &Target, before: Option<f64>) -> Option<f64> {
    Some(cpu(target)? - before?)
}

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
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no target dir")?;
    if let Some(cargo) = std::env::var_os("CARGO") {
        build_proxy(&cargo, dir)?;
    }
    let bin = dir.join("strait-proxy");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: build it first (`cargo build --release -p strait-proxy`)",
            bin.display()
        ))
    }
}

/// Builds the `strait-proxy` binary into `dir` (`<target>/<profile>`), whose name gives the
/// profile (`debug` is cargo's `dev`), as it ships. `scripts/bench.sh` builds both in one
/// cargo invocation instead, which gives the same binary (this package adds no feature to a
/// dependency they share) sooner: from clean, 2m08s here against ~3m40s for this build after
/// the bench's own, which cannot overlap it.
fn build_proxy(cargo: &std::ffi::OsStr, dir: &Path) -> Result<(), String> {
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => return Err(format!("no profile in {}", dir.display())),
    };
    let target_dir = dir.parent().ok_or("no target dir")?;
    eprintln!("building strait-proxy (profile {profile})");
    let status = std::process::Command::new(cargo)
        .args(["build", "-p", "strait-proxy", "--bin", "strait-proxy"])
        .args(["--profile", profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cannot run cargo to build strait-proxy: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building strait-proxy failed ({status})"))
    }
}

async fn run(settings: Settings) -> Result<Results, String> {
    let bin = strait_bin()?;
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
    let mut targets = vec![targets::direct(up, sink)];
    let (proxies, skipped) = start_proxies(&bin, up, sink, &work)?;
    targets.extend(proxies);
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
            latency_at_fixed_rates(&settings, &targets, &mut results).await;
            saturation_in_slices(&settings, &targets, &mut results).await;
        }
        if settings.runs("h2c") {
            step(&format!("round {}/{rounds}: h2c", round + 1));
            h2c(&settings, &targets, round, &mut results).await;
        }
        if settings.runs("big") {
            step(&format!("round {}/{rounds}: 1 MiB responses", round + 1));
            big_responses(&settings, &targets, round, &mut results).await;
        }
    }
    if settings.runs("tcp") {
        if !settings.quick {
            step("quiet before tcp bulk");
            tokio::time::sleep(QUIET_BEFORE_TCP).await;
        }
        for round in 0..rounds {
            step(&format!("round {}/{rounds}: tcp bulk", round + 1));
            tcp_bulk(&settings, &targets, round, &mut results).await;
        }
    }
    if settings.runs("routes") {
        step("route scaling");
        routes(&settings, &bin, up, sink, &work, &mut results).await?;
    }
    if settings.runs("reload") {
        step("reloads under load");
        reloads(&settings, &bin, up, sink, &work, &mut results).await?;
    }
    // 5. Memory with idle keep-alive connections, in fresh instances of the proxies.
    if settings.runs("memory") {
        step("memory with idle connections");
        memory(&settings, &bin, up, sink, &work, &targets, &mut results).await?;
    }
    step("done");
    if let (Some(before), Some(after)) = (steal_before, procstat::steal_seconds()) {
        results.steal = Some(Steal {
            stolen: after - before,
            wall: began.elapsed().as_secs_f64(),
        });
    }
    report(&settings, &targets, &skipped, &results, &out_dir)?;
    Ok(results)
}

/// Starts Strait and, when installed, nginx and haproxy, with their files in `dir`; returns
/// them and, for each peer that could not be started, why.
fn start_proxies(
    bin: &Path,
    up: SocketAddr,
    sink: SocketAddr,
    dir: &Path,
) -> Result<(Vec<Target>, Vec<String>), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut proxies = vec![targets::strait(bin, up, sink, 1, dir)?];
    let mut skipped = Vec::new();
    for (name, started) in [
        ("nginx", targets::nginx(up, sink, dir)),
        ("haproxy", targets::haproxy(up, sink, dir)),
    ] {
        match started {
            Some(Ok(t)) => proxies.push(t),
            Some(Err(e)) => skipped.push(format!("{name}: failed to start ({e})")),
            None => skipped.push(format!("{name}: not installed (apt-get install -y {name})")),
        }
    }
    Ok((proxies, skipped))
}

/// Scenario 5's connections: the RSS each proxy kept after the runs above, then, in a fresh
/// instance of each (a heap grown by earlier load would take new connections into memory it
/// already holds and hide their cost), the RSS with `idle_connections` idle keep-alive client
/// connections open and what each added.
async fn memory(
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
async fn h2c(settings: &Settings, targets: &[Target], round: usize, results: &mut Results) {
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
async fn big_responses(
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
const QUIET_BEFORE_TCP: Duration = Duration::from_secs(8);

/// Scenario 4: opaque TCP bulk, each target in turn. This process's own CPU is reported
/// beside the proxy's: the load generator and the sink share one core, and whether that core
/// or the proxy's is the bottleneck decides what the throughput measures.
async fn tcp_bulk(settings: &Settings, targets: &[Target], round: usize, results: &mut Results) {
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
fn in_turn(targets: &[Target], k: usize) -> impl Iterator<Item = (usize, &Target)> {
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
async fn latency_at_fixed_rates(settings: &Settings, targets: &[Target], results: &mut Results) {
    let (slices, slice) = settings.slices();
    for rate in [2_000u64, 5_000] {
        let mut merged: Vec<Option<hdrhistogram::Histogram<u64>>> = vec![None; targets.len()];
        for k in 0..slices as usize {
            for (i, t) in in_turn(targets, k) {
                let r = load::fixed_rate(t.http, "bench", rate, slice, 64).await;
                results.errors(&t.name, r.errors);
                if let Some(h) = r.latency {
                    match &mut merged[i] {
                        Some(m) => {
                            let _ = m.add(&h);
                        }
                        None => merged[i] = Some(h),
                    }
                }
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
async fn saturation_in_slices(settings: &Settings, targets: &[Target], results: &mut Results) {
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
/// last.
async fn routes(
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
            let r = load::saturate(t.http, "bench", "/", 32, settings.duration()).await;
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

/// Scenario 7, reloads under load: p99 at 2k rps with a reload every 100 ms vs none, and the
/// compile + swap time of the largest route table (from the proxy's `config applied` logs).
async fn reloads(
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
                let run = if reloading {
                    let run;
                    (run, swaps) = reloading_every_100ms(t.http, slice, &swap, swaps).await?;
                    // The last reload's parse and compile (~65 ms) end before a quiet slice.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    run
                } else {
                    load::fixed_rate(t.http, "bench", 2_000, slice, 64).await
                };
                results.errors("strait", run.errors);
                let (Some(h), m) = (run.latency, &mut merged[usize::from(reloading)]) else {
                    continue;
                };
                match m {
                    Some(m) => {
                        let _ = m.add(&h);
                    }
                    None => *m = Some(h),
                }
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

fn report(
    settings: &Settings,
    targets: &[Target],
    skipped: &[String],
    results: &Results,
    out_dir: &Path,
) -> Result<(), String> {
    let names: Vec<String> = {
        let mut n: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        n.dedup();
        n
    };
    let has_nginx = names.iter().any(|n| n == "nginx");
    let mut command = format!(
        "scripts/bench.sh{}",
        if settings.quick {
            " --quick".to_owned()
        } else {
            format!(
                " --rounds {} --seconds {}",
                settings.rounds, settings.seconds
            )
        }
    );
    if !settings.only.is_empty() {
        let _ = write!(command, " --only {}", settings.only.join(","));
    }
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {}  ", procstat::machine());
    let _ = writeln!(
        md,
        "Peers: {}  ",
        targets
            .iter()
            .filter(|t| t.version != "-")
            .map(|t| format!("{} {}", t.name, t.version))
            .collect::<Vec<_>>()
            .join("; ")
    );
    if let Some(Wakeup {
        other_cpu,
        same_cpu,
    }) = results.wakeup
    {
        let _ = writeln!(
            md,
            "Floor: a round trip to a thread waiting on the proxies' CPU takes p50 {} µs, p99 {} µs \
             (on the load generator's own CPU: {} / {} µs); a proxied request makes two  ",
            other_cpu.p50, other_cpu.p99, same_cpu.p50, same_cpu.p99
        );
    }
    if !skipped.is_empty() {
        let _ = writeln!(md, "Skipped: {}  ", skipped.join("; "));
    }
    let _ = writeln!(
        md,
        "Command: `{command}` ({} round(s) of {} s, median [min–max])\n",
        settings.rounds, settings.seconds
    );
    let _ = write!(md, "| scenario | metric |");
    for n in &names {
        let _ = write!(md, " {n} |");
    }
    if has_nginx {
        let _ = write!(md, " strait / nginx |");
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "|{}",
        "---|".repeat(2 + names.len() + usize::from(has_nginx))
    );
    let mut json_rows = Vec::new();
    for key in &results.order {
        let Some(by_target) = results.samples.get(key) else {
            continue;
        };
        let _ = write!(md, "| {} | {} |", key.0, key.1);
        for n in &names {
            match by_target.get(n) {
                Some(v) => {
                    let (lo, hi) = v
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                            (l.min(x), h.max(x))
                        });
                    if v.len() > 1 {
                        let _ = write!(md, " {} [{}–{}] |", fmt(median(v)), fmt(lo), fmt(hi));
                    } else {
                        let _ = write!(md, " {} |", fmt(median(v)));
                    }
                }
                None => {
                    let _ = write!(md, " |");
                }
            }
        }
        if has_nginx {
            match (by_target.get("strait"), by_target.get("nginx")) {
                (Some(s), Some(n)) if median(n) > 0.0 => {
                    let _ = write!(md, " {:.2}× |", median(s) / median(n));
                }
                _ => {
                    let _ = write!(md, " |");
                }
            }
        }
        let _ = writeln!(md);
        json_rows.push(json!({
            "scenario": key.0, "metric": key.1,
            "targets": by_target.iter().map(|(t, v)| (t.clone(), json!({"median": median(v), "samples": v}))).collect::<serde_json::Map<_, _>>(),
        }));
    }
    if !results.errors.is_empty() {
        let _ = writeln!(
            md,
            "\nFailed requests: {}",
            results
                .errors
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(Steal { stolen, wall }) = results.steal {
        let cpus = procstat::online_cpus() as f64;
        let _ = writeln!(
            md,
            "\nHypervisor steal during the run: {stolen:.1} s of {:.0} CPU-seconds ({:.1}%)",
            wall * cpus,
            100.0 * stolen / (wall * cpus).max(1e-9)
        );
    }
    println!("{md}");
    std::fs::write(out_dir.join("results.md"), &md).map_err(|e| e.to_string())?;
    let doc = json!({
        "machine": procstat::machine(),
        "command": command,
        "peers": targets.iter().map(|t| json!({"name": t.name, "version": t.version})).collect::<Vec<_>>(),
        "skipped": skipped,
        "errors": results.errors,
        "steal_seconds": results.steal.map(|s| s.stolen),
        "round_trip_us": results.wakeup.map(|w| json!({
            "other_cpu": {"p50": w.other_cpu.p50, "p99": w.other_cpu.p99},
            "same_cpu": {"p50": w.same_cpu.p50, "p99": w.same_cpu.p99},
        })),
        "results": json_rows,
        "at": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_vec_pretty(&doc).unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    eprintln!("written: {}", out_dir.join("results.md").display());
    Ok(())
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

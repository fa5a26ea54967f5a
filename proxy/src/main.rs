//! `strait-proxy`: parse arguments, then run the proxy, check a config, or install the pod's
//! interception rules (`init-iptables`, so the init image is the proxy image).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use strait_proxy::control::ControlTarget;
use strait_proxy::logging::{self, LogFormat};

/// Strait's sidecar proxy.
#[derive(Debug, Parser)]
#[command(name = "strait-proxy", version, about, subcommand_negates_reqs = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file or directory of YAML files to serve from (hot reloaded).
    #[arg(long, value_name = "PATH", required_unless_present_any = ["check", "control"])]
    config: Option<PathBuf>,
    /// Validate PATH, print every error, exit 0 if valid and 1 if not.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["config", "control"])]
    check: Option<PathBuf>,
    /// Control process URL to take config from; several, comma-separated, for a replicated
    /// control (the proxy moves to the next when one goes away).
    #[arg(long, value_name = "URL", requires = "node")]
    control: Option<String>,
    /// This proxy's node name at the control.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// File holding the control's bearer token.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// How often config files are checked for changes, e.g. 1s or 500ms.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    watch_interval: Duration,
    /// Threads that serve traffic (default: the CPUs this process may use, counting its cgroup
    /// quota). With 1, everything runs on one thread with no cross-thread scheduling at all.
    #[arg(long, env = "STRAIT_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Install the nat rules that redirect the pod's TCP to the proxy (run as root with
    /// NET_ADMIN, in the pod's network namespace, before the proxy starts).
    InitIptables(strait_proxy::intercept::iptables::InitArgs),
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    strait_config::spec::Duration::parse(text).map(|d| d.get())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::InitIptables(init)) = &args.command {
        return match strait_proxy::intercept::iptables::run_init(init, &mut std::io::stdout()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strait-proxy init-iptables: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(path) = args.check {
        return check(&path);
    }
    logging::init(args.log_format);
    raise_open_files_limit();
    let control = match control_target(&args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("strait-proxy: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match runtime(args.workers) {
        Ok((rt, workers)) => {
            tracing::debug!(workers, "runtime started");
            rt
        }
        Err(e) => {
            eprintln!("strait-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = strait_proxy::app::Options {
        config: args.config,
        control,
        watch_interval: args.watch_interval,
    };
    match runtime.block_on(strait_proxy::app::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("strait-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime for `workers` threads (default: the CPUs this process may use). One worker gets
/// tokio's single-threaded scheduler, as linkerd2-proxy does for one core: a sidecar pinned or
/// limited to one CPU pays nothing for work stealing, cross-thread wake-ups or atomic run
/// queues. More get the multi-threaded one with that many workers.
fn runtime(workers: Option<u16>) -> std::io::Result<(tokio::runtime::Runtime, usize)> {
    let workers = workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    );
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    Ok((builder.enable_all().build()?, workers))
}

/// Every connection holds descriptors (two sockets, and two pipes when TCP is spliced), far
/// more than the soft limit of 1024 a container often starts with (containerd 2 under systemd
/// gives 1024 soft, 524288 hard). The soft limit is raised to the hard one, as Go programs do.
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

fn control_target(args: &Args) -> Result<Option<ControlTarget>, String> {
    let Some(url) = &args.control else {
        return Ok(None);
    };
    let urls = strait_proxy::control::parse_urls(url).map_err(|e| format!("--control {e}"))?;
    let node = args.node.clone().ok_or("--control needs --node NAME")?;
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    Ok(Some(ControlTarget {
        urls,
        node,
        token,
        token_file: args.token_file.clone(),
        tls: None,
        listeners: Vec::new(),
    }))
}

fn check(path: &std::path::Path) -> ExitCode {
    match strait_config::load_path(path) {
        Ok(snapshot) => {
            println!(
                "{}: valid ({} resources, {} listeners, {} services)",
                path.display(),
                snapshot.resources.len(),
                snapshot.listeners.len(),
                snapshot.services.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

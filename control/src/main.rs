//! `strait-control`: the control process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Strait's control process: policy store, registry, config push, event bus.
#[derive(Debug, Parser)]
#[command(name = "strait-control", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API.
    Serve {
        /// Directory for the durable state (created if missing).
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// API address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
        listen: SocketAddr,
        /// File holding the bearer token every API call must present (default: DIR/token,
        /// generated on first start).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let Command::Serve {
        data_dir,
        listen,
        token_file,
        log_format,
    } = Args::parse().command;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strait-control: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = strait_control::server::Options {
        data_dir,
        listen,
        token_file,
        sweep_interval: Duration::from_millis(250),
        install_metrics: true,
    };
    match runtime.block_on(strait_control::server::serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cannot serve");
            eprintln!("strait-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

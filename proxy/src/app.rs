//! The proxy process: load config, bind, serve, reload, and drain on SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::reload::{ReloadError, Reloader};

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct Options {
    /// Config file or directory.
    pub config: PathBuf,
    /// How often the config files are checked for changes.
    pub watch_interval: Duration,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The initial config is invalid or its listeners cannot be bound.
    #[error(transparent)]
    Config(#[from] ReloadError),
    /// The admin address cannot be bound.
    #[error("cannot bind admin server on {address}: {source}")]
    Admin {
        /// Address asked for.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics recorder could not be installed.
    #[error("cannot install metrics recorder: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// Runs until SIGTERM or SIGINT, then drains: stops accepting, lets in-flight requests finish
/// up to the configured drain timeout, and returns.
pub async fn run(options: Options) -> Result<(), StartError> {
    let prometheus = crate::metrics::install()?;
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;

    let reloader = Reloader::start(options.config.clone(), prometheus).await?;
    let shared = reloader.shared();
    let admin_address = shared.config.load().snapshot.proxy.admin;
    let admin = TcpListener::bind(admin_address)
        .await
        .map_err(|source| StartError::Admin {
            address: admin_address,
            source,
        })?;
    let bound = admin.local_addr().unwrap_or(admin_address);
    tracing::info!(listener = "admin", address = %bound, "listening");
    tokio::spawn(crate::admin::serve(admin, shared.clone()));
    reloader.mark_ready();
    let reloads = tokio::spawn(reloader.run(options.watch_interval));

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    let deadline = shared.config.load().snapshot.proxy.drain_timeout;
    tracing::info!(
        signal = signal_name,
        open_connections = shared.drain.open_connections(),
        drain_timeout_ms = deadline.as_millis() as u64,
        "draining"
    );
    shared.drain.start();
    let _ = reloads.await;
    if shared.drain.wait_closed(deadline).await {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!(
            open_connections = shared.drain.open_connections(),
            "drain deadline passed; exiting with connections open"
        );
    }
    Ok(())
}

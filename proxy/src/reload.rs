//! The reloader: the only writer of the active config.
//!
//! It re-reads the config on SIGHUP and when the files change (polled), validates and compiles
//! the whole set, reconciles long-lived state (endpoints, listeners), then swaps the new
//! version in with one store. A set with any error is rejected whole: the old one keeps serving.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use strait_config::load::{parse_sources, read_sources, Source};
use strait_config::{ConfigErrors, Snapshot};
use tokio::signal::unix::{signal, SignalKind};

use crate::active::EndpointRegistry;
use crate::listen::{BindError, Listeners};
use crate::metrics::{CONFIG_RELOADS, CONFIG_VERSION};
use crate::shared::{draining, Drain, Shared};

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config is invalid.
    #[error("invalid configuration:\n{0}")]
    Invalid(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Owns everything a reload changes.
pub struct Reloader {
    path: PathBuf,
    shared: Arc<Shared>,
    registry: EndpointRegistry,
    listeners: Listeners,
    fingerprint: u64,
}

impl Reloader {
    /// Loads the first config and binds its listeners; fails if either fails.
    pub async fn start(path: PathBuf, prometheus: PrometheusHandle) -> Result<Self, ReloadError> {
        let (sources, fingerprint) = read(&path)?;
        let snapshot = compile(&sources)?;
        let mut registry = EndpointRegistry::default();
        let active = registry.build(1, source_label(&path), snapshot);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(active),
            prometheus,
            ready: Default::default(),
            drain: Drain::default(),
        });
        let mut listeners = Listeners::default();
        listeners
            .reconcile(&shared.config.load().snapshot, &shared)
            .await?;
        metrics::gauge!(CONFIG_VERSION).set(1.0);
        metrics::counter!(CONFIG_RELOADS, "result" => "applied").increment(1);
        tracing::info!(version = 1u64, source = %path.display(), "config applied");
        Ok(Self {
            path,
            shared,
            registry,
            listeners,
            fingerprint,
        })
    }

    /// The shared state (to start the admin server and wait for shutdown).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Watches for SIGHUP and file changes until draining starts.
    pub async fn run(mut self, poll: Duration) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; relying on file polling");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain = self.shared.drain.watch();
        loop {
            let forced = tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => true,
                _ = tick.tick() => false,
                () = draining(&mut drain) => return,
            };
            self.reload(forced).await;
        }
    }

    /// Re-reads the config and applies it if it changed and is valid. `forced` (SIGHUP) only
    /// makes an unchanged config say so in the log.
    pub async fn reload(&mut self, forced: bool) {
        let (sources, fingerprint) = match read(&self.path) {
            Ok(read) => read,
            Err(e) => return self.reject(e.into(), 0),
        };
        if fingerprint == self.fingerprint {
            if forced {
                tracing::info!(source = %self.path.display(), "config unchanged since the last reload; nothing to do");
            }
            return;
        }
        match self.apply(&sources).await {
            Ok(version) => {
                self.fingerprint = fingerprint;
                tracing::info!(version, source = %self.path.display(), trigger = if forced { "signal" } else { "file change" }, "config applied");
            }
            Err(e) => self.reject(e, fingerprint),
        }
    }

    async fn apply(&mut self, sources: &[Source]) -> Result<u64, ReloadError> {
        let snapshot = compile(sources)?;
        self.listeners.reconcile(&snapshot, &self.shared).await?;
        let version = self.shared.config.load().version + 1;
        let active = self
            .registry
            .build(version, source_label(&self.path), snapshot);
        self.shared.config.store(Arc::new(active));
        metrics::gauge!(CONFIG_VERSION).set(version as f64);
        metrics::counter!(CONFIG_RELOADS, "result" => "applied").increment(1);
        Ok(version)
    }

    fn reject(&mut self, error: ReloadError, fingerprint: u64) {
        // Remember the rejected content so polling does not report it again every tick.
        self.fingerprint = fingerprint;
        metrics::counter!(CONFIG_RELOADS, "result" => "rejected").increment(1);
        let version = self.shared.config.load().version;
        tracing::error!(error = %error, serving_version = version, "config rejected");
    }

    /// Marks the proxy ready (listeners bound, config applied).
    pub fn mark_ready(&self) {
        self.shared.ready.store(true, Ordering::Release);
    }
}

fn read(path: &std::path::Path) -> Result<(Vec<Source>, u64), ConfigErrors> {
    let sources = read_sources(path)?;
    let mut hasher = DefaultHasher::new();
    for s in &sources {
        s.file.hash(&mut hasher);
        s.text.hash(&mut hasher);
    }
    Ok((sources, hasher.finish()))
}

fn compile(sources: &[Source]) -> Result<Snapshot, ConfigErrors> {
    strait_config::compile(&parse_sources(sources)?)
}

fn source_label(path: &std::path::Path) -> Arc<str> {
    format!("file:{}", path.display()).into()
}

//! The reloader: the only writer of the active config.
//!
//! It re-reads the config on SIGHUP and when the files change (polled), and takes versions
//! pushed by the control; it validates and compiles the whole set, reconciles long-lived state
//! (endpoints, listeners), then swaps the new version in with one store. A set with any error
//! is rejected whole: the old one keeps serving.
//!
//! With a control, the effective set is the control's documents plus, when the control sends
//! no `ProxyConfig` for this node, the local file's `ProxyConfig` (the bootstrap).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use strait_config::load::{parse_sources, read_sources, Source};
use strait_config::spec::Resource;
use strait_config::{ConfigErrors, LoadedDoc};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};

use crate::active::EndpointRegistry;
use crate::background;
use crate::control::ControlUpdate;
use crate::listen::{BindError, Listeners};
use crate::metrics::{CONFIG_RELOADS, CONFIG_VERSION};
use crate::shared::{Drain, Shared};
use crate::stamp::Stamp;

/// Why a config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config is invalid.
    #[error("invalid configuration:\n{0}")]
    Invalid(#[from] ConfigErrors),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The reload's blocking work panicked (a bug).
    #[error("reload failed: {0}")]
    Internal(String),
}

/// Runs CPU-heavy reload work (reading, parsing, compiling, building the runtime) on the
/// low-priority background thread.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReloadError> {
    background::run(work)
        .await
        .map_err(|e| ReloadError::Internal(e.to_string()))
}

/// The documents of the last applied control version.
#[derive(Debug)]
struct ControlDocs {
    version: u64,
    docs: Vec<LoadedDoc>,
}

/// Owns everything a reload changes.
pub struct Reloader {
    path: Option<PathBuf>,
    /// The local file's documents (the bootstrap when a control is attached).
    local: Vec<LoadedDoc>,
    control: Option<ControlDocs>,
    control_url: Arc<str>,
    shared: Arc<Shared>,
    registry: EndpointRegistry,
    listeners: Listeners,
    fingerprint: u64,
    /// The local files as they were when last read (`None`: read them at the next poll).
    stamp: Option<Stamp>,
}

/// Where the first config comes from.
#[derive(Debug)]
pub enum Initial {
    /// A file or directory.
    File(PathBuf),
    /// A file (the bootstrap), or nothing, plus the control's first version.
    Control {
        /// Bootstrap file, if any.
        path: Option<PathBuf>,
        /// The control's first version (when it answered before the proxy started).
        first: Option<ControlUpdate>,
        /// The control's URL, for `/config`'s `source`.
        url: Arc<str>,
    },
}

impl Reloader {
    /// Loads the first config and binds its listeners; fails if either fails.
    pub async fn start(
        initial: Initial,
        prometheus: PrometheusHandle,
        identity: Arc<crate::identity::IdentityStore>,
    ) -> Result<Self, ReloadError> {
        let (path, first, control_url) = match initial {
            Initial::File(path) => (Some(path), None, Arc::from("")),
            Initial::Control { path, first, url } => (path, first, url),
        };
        let (local, fingerprint) = match &path {
            Some(p) => {
                let (sources, fingerprint) = read(p)?;
                (parse_sources(&sources)?, fingerprint)
            }
            None => (Vec::new(), 0),
        };
        let control = match first {
            Some(ControlUpdate {
                version,
                text,
                verdict,
            }) => match parse_control(text) {
                Ok(docs) => Some((ControlDocs { version, docs }, verdict)),
                Err(e) => {
                    let _ = verdict.send(Err(e.to_string()));
                    return Err(e.into());
                }
            },
            None => None,
        };
        // The first version is answered once it serves: compiled, and its listeners bound.
        let (control, verdict) = control.unzip();
        let snapshot = match strait_config::compile(&effective(&local, control.as_ref())) {
            Ok(snapshot) => snapshot,
            Err(e) => {
                answer(verdict, Err(e.to_string()));
                return Err(e.into());
            }
        };
        let label = label(path.as_deref(), &control_url, control.as_ref());
        let mut registry = EndpointRegistry::new(identity.clone());
        let mut active = registry.build(1, label.clone(), snapshot);
        active.control_version = control.as_ref().map(|c| c.version);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(active),
            prometheus,
            ready: Default::default(),
            drain: Drain::default(),
            shutdown: Default::default(),
            identity,
        });
        let mut listeners = Listeners::default();
        let bound = listeners
            .reconcile(&shared.config.load().snapshot, &shared)
            .await;
        answer(
            verdict,
            bound.as_ref().map(|_| ()).map_err(|e| e.to_string()),
        );
        bound?;
        metrics::gauge!(CONFIG_VERSION).set(1.0);
        metrics::counter!(CONFIG_RELOADS, "result" => "applied").increment(1);
        tracing::info!(version = 1u64, source = %label, "config applied");
        Ok(Self {
            path,
            local,
            control,
            control_url,
            shared,
            registry,
            listeners,
            fingerprint,
            stamp: None,
        })
    }

    /// The shared state (to start the admin server and wait for shutdown).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Watches for SIGHUP, file changes and control versions until draining starts.
    pub async fn run(mut self, poll: Duration, mut updates: Option<mpsc::Receiver<ControlUpdate>>) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; relying on file polling");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Its own handle: the drain is watched across the reloads, which borrow `self`.
        let shared = self.shared.clone();
        let drained = shared.drain.drained();
        tokio::pin!(drained);
        loop {
            let forced = tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => true,
                _ = tick.tick() => false,
                Some(update) = async { match updates.as_mut() { Some(u) => u.recv().await, None => std::future::pending().await } } => {
                    self.apply_control(update).await;
                    continue;
                }
                () = drained.as_mut() => return,
            };
            if self.path.is_some() {
                self.reload(forced).await;
            }
        }
    }

    /// Applies one version from the control and answers it (ACK, or NACK with the errors).
    async fn apply_control(&mut self, update: ControlUpdate) {
        let started = std::time::Instant::now();
        let ControlUpdate {
            version,
            text,
            verdict,
        } = update;
        let parsed = off_thread(move || parse_control(text))
            .await
            .and_then(|parsed| parsed.map_err(ReloadError::from));
        let candidate = match parsed {
            Ok(docs) => ControlDocs { version, docs },
            Err(error) => {
                let _ = verdict.send(Err(error.to_string()));
                return self.reject(error, self.fingerprint);
            }
        };
        let parse = started.elapsed();
        let docs = effective(&self.local, Some(&candidate));
        let label = label(self.path.as_deref(), &self.control_url, Some(&candidate));
        match self.apply(docs, label.clone(), Some(version)).await {
            Ok(version) => {
                let took = Phases::since(started, parse);
                tracing::info!(version, source = %label, trigger = "control", duration_ms = took.total_ms, parse_ms = took.parse_ms, compile_ms = took.compile_ms, "config applied");
                if let Some(old) = self.control.replace(candidate) {
                    background::retire(Arc::new(old));
                }
                // Serving the control's config: what `/ready` waits for with a control.
                self.mark_ready();
                let _ = verdict.send(Ok(()));
            }
            Err(e) => {
                let _ = verdict.send(Err(e.to_string()));
                // A rejected set is as big as an applied one: free it off the request path.
                background::retire(Arc::new(candidate));
                self.reject(e, self.fingerprint);
            }
        }
    }

    /// Re-reads the config and applies it if it changed and is valid. `forced` (SIGHUP) only
    /// makes an unchanged config say so in the log.
    pub async fn reload(&mut self, forced: bool) {
        let Some(path) = self.path.clone() else {
            return;
        };
        // A poll that finds the files as they were read last time has nothing to do; a stamp
        // costs a few `stat` calls where a read wakes the background thread.
        let stamp = Stamp::of(&path);
        if let (false, Some(now), Some(then)) = (forced, &stamp, &self.stamp) {
            if now.unchanged_since(then) {
                return;
            }
        }
        let started = std::time::Instant::now();
        // Reading, hashing and parsing a large config is CPU work: keep it off the workers
        // that serve requests.
        let reading = path.clone();
        let known = self.fingerprint;
        let read = off_thread(move || {
            read(&reading).map(|(sources, fingerprint)| {
                let parsed = (fingerprint != known).then(|| parse_sources(&sources));
                (fingerprint, parsed)
            })
        })
        .await;
        let (fingerprint, parsed) = match read {
            Ok(Ok(read)) => {
                // What follows settles this content (applied, unchanged or rejected): the
                // files need no new look until their stamp changes.
                self.stamp = stamp;
                read
            }
            Ok(Err(e)) => return self.reject(e.into(), 0),
            Err(e) => return self.reject(e, 0),
        };
        let Some(parsed) = parsed else {
            if forced {
                tracing::info!(source = %path.display(), "config unchanged since the last reload; nothing to do");
            }
            return;
        };
        let local = match parsed {
            Ok(docs) => docs,
            Err(e) => return self.reject(e.into(), fingerprint),
        };
        let parse = started.elapsed();
        let docs = effective(&local, self.control.as_ref());
        let label = label(Some(&path), &self.control_url, self.control.as_ref());
        let control_version = self.control.as_ref().map(|c| c.version);
        match self.apply(docs, label.clone(), control_version).await {
            Ok(version) => {
                self.fingerprint = fingerprint;
                // The replaced trees are big: free them off the request path.
                background::retire(Arc::new(std::mem::replace(&mut self.local, local)));
                let took = Phases::since(started, parse);
                tracing::info!(version, source = %label, trigger = if forced { "signal" } else { "file change" }, duration_ms = took.total_ms, parse_ms = took.parse_ms, compile_ms = took.compile_ms, "config applied");
            }
            Err(e) => {
                // A rejected set is as big as an applied one: free it off the request path
                // (dropped here, 10,000 routes held a worker for ~6 ms).
                background::retire(Arc::new(local));
                self.reject(e, fingerprint)
            }
        }
    }

    /// Compiles `docs` and builds the runtime for them on a blocking thread (a big route table
    /// takes milliseconds), binds new listeners, then swaps the new version in.
    /// `control_version` is the control's revision of `docs`, if they include the control's.
    async fn apply(
        &mut self,
        docs: Vec<LoadedDoc>,
        label: Arc<str>,
        control_version: Option<u64>,
    ) -> Result<u64, ReloadError> {
        let snapshot = off_thread(move || strait_config::compile(&docs)).await??;
        self.listeners.reconcile(&snapshot, &self.shared).await?;
        let version = self.shared.config.load().version + 1;
        let placeholder = EndpointRegistry::new(self.shared.identity.clone());
        let mut registry = std::mem::replace(&mut self.registry, placeholder);
        let (registry, active) = off_thread(move || {
            let mut active = registry.build(version, label, snapshot);
            active.control_version = control_version;
            (registry, active)
        })
        .await?;
        self.registry = registry;
        let previous = self.shared.config.swap(Arc::new(active));
        // Freeing a big table is work too, done once the last request on it has ended.
        background::retire(previous);
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

    /// Marks the proxy ready (listeners bound, config applied; with a control, the control's).
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

/// ACKs (`Ok`) or NACKs a control version, when there is one to answer.
fn answer(verdict: Option<oneshot::Sender<Result<(), String>>>, result: Result<(), String>) {
    if let Some(verdict) = verdict {
        // The control may have gone; the proxy carries on either way.
        let _ = verdict.send(result);
    }
}

/// The control's documents, labelled `<control>` in errors.
fn parse_control(text: String) -> Result<Vec<LoadedDoc>, ConfigErrors> {
    parse_sources(&[Source {
        file: "<control>".into(),
        text,
    }])
}

/// Where the time of an applied reload went, in milliseconds: reading and parsing the YAML
/// into resources, then compiling, building the runtime and swapping it in.
struct Phases {
    total_ms: f64,
    parse_ms: f64,
    compile_ms: f64,
}

impl Phases {
    /// The phases of a reload that started at `started` and spent `parse` reading and parsing.
    fn since(started: std::time::Instant, parse: std::time::Duration) -> Self {
        let total = started.elapsed();
        Self {
            total_ms: total.as_secs_f64() * 1000.0,
            parse_ms: parse.as_secs_f64() * 1000.0,
            compile_ms: total.saturating_sub(parse).as_secs_f64() * 1000.0,
        }
    }
}

/// What to compile: the local set alone, or the control's documents plus the local
/// `ProxyConfig` when the control has none for this node.
fn effective(local: &[LoadedDoc], control: Option<&ControlDocs>) -> Vec<LoadedDoc> {
    let Some(control) = control else {
        return local.to_vec();
    };
    let is_proxy = |d: &&LoadedDoc| matches!(*d.resource, Resource::ProxyConfig(_));
    let mut docs: Vec<LoadedDoc> = if control.docs.iter().any(|d| is_proxy(&d)) {
        Vec::new()
    } else {
        local.iter().filter(is_proxy).cloned().collect()
    };
    docs.extend(control.docs.iter().cloned());
    docs
}

fn label(
    path: Option<&std::path::Path>,
    control_url: &str,
    control: Option<&ControlDocs>,
) -> Arc<str> {
    match (control, path) {
        (Some(c), _) => format!("control:{control_url} version {}", c.version).into(),
        (None, Some(p)) => format!("file:{}", p.display()).into(),
        (None, None) => "none".into(),
    }
}

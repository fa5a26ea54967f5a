//! The proxy process: load config, bind, serve, reload, and drain on SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strait_config::snapshot::IdentitySource;

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::Endpoints;
use crate::control::{ControlTarget, ControlUpdate};
use crate::identity::control::{ControlTls, Enrolment};
use crate::identity::IdentityStore;
use crate::reload::{Initial, ReloadError, Reloader};

/// How to run the proxy.
#[derive(Debug, Clone)]
pub struct Options {
    /// Config file or directory (with a control: the bootstrap used until it answers).
    pub config: Option<PathBuf>,
    /// The control to take config from.
    pub control: Option<ControlTarget>,
    /// How often the config files are checked for changes.
    pub watch_interval: Duration,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The initial config is invalid or its listeners cannot be bound.
    #[error(transparent)]
    Config(#[from] ReloadError),
    /// The admin or telemetry address cannot be bound.
    #[error("cannot bind the {listener} server on {address}: {source}")]
    Admin {
        /// `admin` or `telemetry`.
        listener: &'static str,
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
    /// Neither a config file nor a control was given.
    #[error("nothing to serve: give --config PATH, --control URL, or both")]
    NoConfig,
    /// The control named in the config cannot be used.
    #[error("{0}")]
    Control(String),
    /// The identity files do not make an identity.
    #[error("spec.identity: {0}")]
    Identity(#[from] crate::identity::files::FilesError),
    /// Stopped before the control sent a first config.
    #[error("stopped while waiting for the first config from the control")]
    Interrupted,
}

/// The control named by the `ProxyConfig` of the files at `path` (`spec.control`), if any. A
/// relative `tokenFile` is relative to the config's directory.
fn control_from_file(path: &std::path::Path) -> Result<Option<ControlTarget>, StartError> {
    let Ok(snapshot) = strait_config::load_path(path) else {
        // Invalid: the reloader reports why.
        return Ok(None);
    };
    let spec = snapshot.resources.iter().find_map(|r| match &**r {
        strait_config::spec::Resource::ProxyConfig(doc) => doc.spec.control.clone(),
        _ => None,
    });
    let Some(spec) = spec else {
        return Ok(None);
    };
    let bad = |message: String| StartError::Control(message);
    let urls = crate::control::parse_urls(&spec.address)
        .map_err(|e| bad(format!("spec.control.address {e}")))?;
    let (token, token_file) = match &spec.token_file {
        Some(file) => {
            let base = if path.is_dir() {
                path
            } else {
                path.parent().unwrap_or(std::path::Path::new("."))
            };
            let file = base.join(file);
            let token = std::fs::read_to_string(&file)
                .map_err(|e| bad(format!("spec.control.tokenFile {}: {e}", file.display())))?;
            (Some(token.trim().to_owned()), Some(file))
        }
        None => (None, None),
    };
    Ok(Some(ControlTarget {
        urls,
        node: spec.node,
        token,
        token_file,
        tls: None,
        listeners: Vec::new(),
    }))
}

/// The bootstrap's `spec.identity`, if it has one (an invalid bootstrap: the reloader says why).
fn identity_from_file(path: &std::path::Path) -> Option<IdentitySource> {
    strait_config::load_path(path).ok()?.proxy.identity
}

/// Sets up TLS to an `https://` control, and for an identity the control issues, the task
/// that gets and renews it (the push stream waits for it).
fn secure_control(
    mut target: ControlTarget,
    identity: Option<&IdentitySource>,
    store: &Arc<IdentityStore>,
) -> Result<ControlTarget, StartError> {
    let bad = |message: &str| StartError::Control(message.to_owned());
    // Every replica is spoken to the same way: the first URL's scheme says which.
    let Some(first) = target.urls.first().cloned() else {
        return Err(bad("no control URL"));
    };
    let https = first.scheme_str() == Some("https");
    match identity {
        None if https => return Err(bad(
            "an https:// control authenticates proxies by their certificate: give spec.identity",
        )),
        None => return Ok(target),
        Some(IdentitySource::Control { .. }) if !https => {
            return Err(bad(
                "spec.identity is issued by the control over TLS: give an https:// control address",
            ))
        }
        Some(_) if !https => return Ok(target),
        Some(_) => {}
    }
    // Certificates, like the push stream, come from any live replica.
    let tls = Arc::new(ControlTls::new(&target.urls, store.clone()).map_err(StartError::Control)?);
    if let (Some(spiffe_id), Some(IdentitySource::Control { trust_bundle, .. })) =
        (identity.and_then(IdentitySource::spiffe_id), identity)
    {
        let enrolment = Enrolment {
            spiffe_id,
            urls: target.urls.clone(),
            token_file: target.token_file.clone(),
            trust_bundle_file: trust_bundle.clone(),
        };
        tokio::spawn(crate::identity::control::run(tls.clone(), enrolment));
    }
    target.tls = Some(tls);
    Ok(target)
}

/// How often pooled upstream connections are checked for having been closed by the upstream
/// or idled past their service's `connectionPool.idleTimeout`.
const IDLE_SWEEP: std::time::Duration = std::time::Duration::from_secs(2);

/// Closes, every [`IDLE_SWEEP`], the pooled connections upstreams have closed while idle and
/// those unused for longer than their service's idle timeout.
async fn close_idle_connections(shared: std::sync::Arc<crate::shared::Shared>) {
    use crate::service::endpoint::idle_sweeps_allowed;
    let mut tick = tokio::time::interval(IDLE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let active = shared.config.load();
        let closed: usize = active
            .snapshot
            .services
            .iter()
            .zip(&active.services)
            .flat_map(|(service, runtime)| {
                let allowed = idle_sweeps_allowed(service.pool_idle_timeout, IDLE_SWEEP);
                runtime.endpoints.iter().map(move |e| e.close_idle(allowed))
            })
            .sum();
        if closed > 0 {
            tracing::debug!(
                closed,
                "closed pooled upstream connections that were closed by the upstream or idle too long"
            );
        }
    }
}

/// Binds an admin-server socket (`name`: `admin` or `telemetry`) and logs where.
async fn bind_admin(
    name: &'static str,
    address: std::net::SocketAddr,
) -> Result<TcpListener, StartError> {
    let socket = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Admin {
            listener: name,
            address,
            source,
        })?;
    let bound = socket.local_addr().unwrap_or(address);
    tracing::info!(listener = name, address = %bound, "listening");
    Ok(socket)
}

/// `spec.readyWithoutControlAfter`: reports ready on the bootstrap when the control has sent
/// no config within `after` (ready already, if it has).
async fn ready_without_control(shared: std::sync::Arc<crate::shared::Shared>, after: Duration) {
    tokio::time::sleep(after).await;
    if matches!(
        shared.config.load().snapshot.proxy.identity,
        Some(IdentitySource::Control { .. })
    ) {
        // Ready means able to speak mTLS: never without the certificate.
        shared.identity.wait().await;
    }
    if shared.config.load().control_version.is_none() {
        tracing::warn!(
            waited_ms = after.as_millis() as u64,
            "no config from the control yet: reporting ready on the bootstrap (spec.readyWithoutControlAfter)"
        );
        shared
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// How long a proxy that cannot start waits for its NACK to reach the control.
const NACK_DELIVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs until SIGTERM or SIGINT, then drains: stops accepting, lets in-flight requests finish
/// up to the configured drain timeout, and returns.
pub async fn run(options: Options) -> Result<(), StartError> {
    let prometheus = crate::metrics::install()?;
    // The exporter keeps a histogram's samples until they are drained: drain them on a timer,
    // or a proxy nobody scrapes would grow without bound. (The request-duration histogram is
    // not the exporter's, see `metrics::duration`; this guards any other one.)
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signal)?;

    let (updates, mut received) = tokio::sync::mpsc::channel::<ControlUpdate>(1);
    // `--control` wins; otherwise the bootstrap's `spec.control`, if it has one.
    let control = match (&options.control, &options.config) {
        (Some(target), _) => Some(target.clone()),
        (None, Some(path)) => control_from_file(path)?,
        (None, None) => None,
    };
    let identity_store = Arc::new(IdentityStore::default());
    let bootstrap_identity = options.config.as_deref().and_then(identity_from_file);
    if control.is_none() && matches!(bootstrap_identity, Some(IdentitySource::Control { .. })) {
        return Err(StartError::Control(
            "spec.identity is issued by the control: give spec.control (an https:// address)"
                .into(),
        ));
    }
    let control = control
        .map(|target| secure_control(target, bootstrap_identity.as_ref(), &identity_store))
        .transpose()?;
    let mut session = None;
    let initial = match (options.config.clone(), control.clone()) {
        (None, None) => return Err(StartError::NoConfig),
        (Some(path), None) => Initial::File(path),
        (path, Some(mut target)) => {
            let url: std::sync::Arc<str> = target
                .urls
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
                .into();
            if let Some(p) = &path {
                // Report the bootstrap's listeners, so the control attaches routes to them.
                if let Ok(snapshot) = strait_config::load_path(p) {
                    target.listeners = snapshot
                        .listeners
                        .iter()
                        .map(|l| l.name.to_string())
                        .collect();
                }
            }
            session = Some(tokio::spawn(crate::control::run(target, updates)));
            let first = if path.is_none() {
                tracing::info!(control = %url, "waiting for the first config from the control");
                tokio::select! {
                    update = received.recv() => Some(update.ok_or(StartError::Interrupted)?),
                    _ = terminate.recv() => return Err(StartError::Interrupted),
                    _ = interrupt.recv() => return Err(StartError::Interrupted),
                }
            } else {
                None
            };
            Initial::Control { path, first, url }
        }
    };
    let control_attached = control.is_some();
    let reloader = match Reloader::start(initial, prometheus, identity_store).await {
        Ok(reloader) => reloader,
        Err(e) => {
            // A first version from the control that cannot serve was NACKed: let that answer
            // reach the control before exiting (the session ends once no one takes versions).
            drop(received);
            if let Some(session) = session {
                let _ = tokio::time::timeout(NACK_DELIVERY, session).await;
            }
            return Err(e.into());
        }
    };
    let shared = reloader.shared();
    let proxy = shared.config.load().snapshot.proxy.clone();
    // Before the admin server answers: `/identity` never shows a pending files identity.
    if let Some(IdentitySource::Files {
        cert,
        key,
        trust_bundle,
    }) = &proxy.identity
    {
        let files = crate::identity::files::IdentityFiles {
            cert: cert.clone(),
            key: key.clone(),
            trust_bundle: trust_bundle.clone(),
        };
        // Refused at start like an invalid config: a proxy that must speak mTLS cannot serve
        // without an identity.
        shared.identity.install(files.load()?);
        tokio::spawn(crate::identity::files::watch(
            files,
            shared.identity.clone(),
            options.watch_interval,
        ));
    }
    let admin = bind_admin("admin", proxy.admin).await?;
    tokio::spawn(crate::admin::serve(admin, shared.clone(), Endpoints::All));
    if let Some(address) = proxy.telemetry {
        let telemetry = bind_admin("telemetry", address).await?;
        tokio::spawn(crate::admin::serve(
            telemetry,
            shared.clone(),
            Endpoints::Telemetry,
        ));
    }
    tokio::spawn(close_idle_connections(shared.clone()));
    if control_attached {
        tokio::spawn(crate::report::run(shared.clone()));
    }
    if control_attached && shared.config.load().control_version.is_none() {
        // Serving the bootstrap: ready means serving the control's config, so the app (held
        // back by the startup probe) does not start with nothing routed. The reloader marks
        // the proxy ready when the control's first config is applied.
        tracing::info!(
            "serving the bootstrap; /ready answers 503 until the control's first config is applied"
        );
        if let Some(after) = proxy.ready_without_control_after {
            tokio::spawn(ready_without_control(shared.clone(), after));
        }
    } else {
        reloader.mark_ready();
    }
    let reloads =
        tokio::spawn(reloader.run(options.watch_interval, control_attached.then_some(received)));

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        () = shared.shutdown.notified() => "POST /shutdown",
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

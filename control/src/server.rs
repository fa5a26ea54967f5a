//! `strait-control serve`: open the store (the data directory, or etcd), start the
//! components, serve the API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::api::{self, AppState};
use crate::auth::Token;
use crate::backend::embedded::Embedded;
use crate::backend::etcd::Etcd;
use crate::backend::StoreUrl;
use crate::ca::tls::TlsServer;
use crate::ca::{Ca, CaOptions};
use crate::cluster_policy::PolicySource;
use crate::events::EventSink;
use crate::kube::endpoints::watch::follow;
use crate::kube::endpoints::EndpointTable;
use crate::policy::{PolicyStore, Revisions};
use crate::push::Push;
use crate::registry::Registry;

/// How to run the control.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where state lives: the token and trust bundle files, the embedded store, the event bus.
    pub data_dir: PathBuf,
    /// Keep policies, the registry and the CA's state in etcd instead (`--store`): replicas.
    pub store: Option<StoreUrl>,
    /// API address.
    pub listen: SocketAddr,
    /// Bearer token file; generated into the data dir when absent.
    pub token_file: Option<PathBuf>,
    /// How often lapsed registry instances are removed.
    pub sweep_interval: Duration,
    /// Install the process-wide metrics recorder (off when another component of the same
    /// process owns it, as in the demo; `/metrics` is then empty).
    pub install_metrics: bool,
    /// The sidecar-injection webhook's HTTPS listener, if wanted.
    pub webhook: Option<crate::inject::server::WebhookOptions>,
    /// The mesh's CA (`--trust-domain`): the API is then served over TLS.
    pub identity: Option<CaOptions>,
    /// The event bus's NATS JetStream server (`nats://HOST:PORT`); embedded in the data dir
    /// when absent.
    pub bus: Option<String>,
    /// The Kubernetes API for `discovery: kubernetes` (`--kubeconfig`); without it, the
    /// in-cluster config when the control runs in a pod, else none.
    pub kubeconfig: Option<PathBuf>,
    /// Where policies come from (`--policies`).
    pub policies: PolicySource,
}

/// Runs until SIGTERM/SIGINT.
pub async fn serve(options: Options) -> anyhow::Result<()> {
    let prometheus = if options.install_metrics {
        PrometheusBuilder::new()
            .install_recorder()
            .context("cannot install the metrics recorder")?
    } else {
        PrometheusBuilder::new().build_recorder().handle()
    };
    // Drain histogram samples on a timer (the exporter does not when installed this way).
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let token = match &options.token_file {
        Some(path) => Token::load(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?,
        None => {
            std::fs::create_dir_all(&options.data_dir)?;
            let path = options.data_dir.join("token");
            let token = match Token::load(&path) {
                Ok(t) => t,
                Err(_) => Token::generate(&path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            };
            tracing::info!(token_file = %path.display(), "no --token-file: using the token in the data directory");
            token
        }
    };
    let webhook = match &options.webhook {
        Some(w) => Some((
            w.settings.clone(),
            crate::inject::server::bind(w)
                .await
                .context("cannot start the injection webhook")?,
        )),
        None => None,
    };
    // The event bus stays in the data directory's file whichever store holds the rest.
    let (backends, db) = match &options.store {
        None => Embedded::backends(&options.data_dir)
            .with_context(|| format!("cannot open the store in {}", options.data_dir.display()))?,
        Some(url) => {
            let backends = Etcd::backends(url)
                .with_context(|| format!("cannot reach etcd at {}", url.endpoints.join(",")))?;
            let db = crate::store::open(&options.data_dir, &[]).with_context(|| {
                format!("cannot open the store in {}", options.data_dir.display())
            })?;
            tracing::info!(endpoints = %url.endpoints.join(","), prefix = %url.prefix, "state in etcd");
            (backends, db)
        }
    };
    let ca = match &options.identity {
        Some(identity) => {
            let ca = Ca::open(backends.ca.clone(), identity, &options.data_dir)
                .context("cannot start the certificate authority")?;
            let authority = ca.authority();
            tracing::info!(
                trust_domain = authority.trust_domain(),
                trust_bundle = %ca.bundle_file().display(),
                bundle_sha256 = %authority.bundle().sha256(),
                "certificate authority ready; the trust bundle is in trust_bundle"
            );
            Some(ca)
        }
        None => None,
    };
    let webhook = match (webhook, &ca) {
        (Some((settings, (listener, tls))), Some(ca)) => {
            tracing::info!(address = %listener.local_addr()?, "injection webhook listening (TLS)");
            Some(tokio::spawn(crate::inject::server::serve(
                listener,
                tls,
                settings,
                ca.clone(),
            )))
        }
        (Some(_), None) => anyhow::bail!(
            "the injection webhook gives proxies their identity from the CA: give --trust-domain"
        ),
        (None, _) => None,
    };
    let bus = match &options.bus {
        None => crate::bus::Bus::open(db.clone()).context("cannot open the event bus")?,
        Some(url) => crate::bus::Bus::connect(url)
            .await
            .with_context(|| format!("cannot connect the event bus to {url}"))?,
    };
    let events: Arc<dyn EventSink> = bus.clone();
    let revisions = Revisions::new(backends.revision);
    let policy = PolicyStore::new(backends.policy, revisions.clone());
    let policy = Arc::new(match options.policies {
        PolicySource::Store => policy,
        PolicySource::Kubernetes => policy.read_only(crate::cluster_policy::READ_ONLY),
    });
    let registry = Arc::new(Registry::open(
        backends.registry,
        revisions.clone(),
        events.clone(),
    )?);
    tokio::spawn(registry.clone().sweep(options.sweep_interval));
    if let Some(remote) = backends.remote {
        tokio::spawn(registry.clone().follow(remote));
    }
    let mut push = Push::new(
        policy.clone(),
        registry.clone(),
        revisions.clone(),
        events,
        backends.proxies,
    );
    let cluster = match crate::kube::client::connect(options.kubeconfig.as_deref()).await {
        Ok(client) => client,
        // A pod without a ServiceAccount token (replicas that need no API) runs on without.
        Err(e @ crate::kube::client::ClientError::InCluster(_)) => {
            tracing::warn!(error = %e, "no Kubernetes API: `discovery: kubernetes` Services get no endpoints");
            None
        }
        Err(e) => return Err(e).context("cannot set up the Kubernetes client"),
    };
    if options.policies == PolicySource::Kubernetes {
        let client = cluster.clone().context(
            "--policies kubernetes needs the Kubernetes API: give --kubeconfig, or run the control in a pod",
        )?;
        tokio::spawn(crate::cluster_policy::run(client, policy.clone()));
        tracing::info!(
            "policies from the Kubernetes cluster (strait.dev resources, Gateway API HTTPRoutes)"
        );
    }
    if let Some(client) = cluster {
        let trust_domain = options.identity.as_ref().map(|i| i.trust_domain.clone());
        let table = Arc::new(EndpointTable::new(trust_domain));
        push = push.with_kubernetes(table.clone());
        tokio::spawn(follow(client, table, policy.clone(), revisions));
    }
    let push = Arc::new(push);
    let state = Arc::new(AppState {
        policy,
        registry,
        push,
        prometheus,
        openapi: crate::openapi::document({
            let mut paths = crate::bus::Bus::openapi_paths();
            if let (Some(all), serde_json::Value::Object(live)) =
                (paths.as_object_mut(), crate::live::api::openapi_paths())
            {
                all.extend(live);
            }
            paths
        }),
        ca: ca.clone(),
    });
    let live = crate::live::api::LiveState {
        app: state.clone(),
        bus: bus.clone(),
        live: Arc::default(),
    };
    let app = api::router(state, token, bus.router().merge(live.router()))
        .merge(crate::live::api::page());
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let address = listener.local_addr()?;
    match (ca, &options.identity) {
        (Some(ca), Some(identity)) => {
            let (tls, not_after) = TlsServer::new(ca, address, &identity.server_names)
                .context("cannot issue the control's serving certificate")?;
            let renewal = tokio::spawn(tls.clone().renew(not_after));
            tracing::info!(address = %address, data_dir = %options.data_dir.display(), tls = true, "listening");
            tls.serve(listener, app, shutdown()).await;
            renewal.abort();
        }
        _ => {
            tracing::info!(address = %address, data_dir = %options.data_dir.display(), "listening");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown())
                .await
                .context("server failed")?;
        }
    }
    if let Some(task) = webhook {
        task.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

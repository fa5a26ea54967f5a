//! A [`kube::Client`] for the control: from `--kubeconfig PATH`, or in a cluster from the
//! pod's ServiceAccount as every in-cluster client finds it (`KUBERNETES_SERVICE_HOST`,
//! `KUBERNETES_SERVICE_PORT`, `token`, `ca.crt` and `namespace` in
//! `/var/run/secrets/kubernetes.io/serviceaccount/`, which `STRAIT_KUBE_SERVICEACCOUNT_DIR`
//! overrides, as for TokenReview). The token file is re-read by kube-rs as it rotates.

use std::path::{Path, PathBuf};

use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Where a pod's ServiceAccount credentials are mounted.
const SERVICEACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: kube::config::KubeconfigError,
    },
    /// The in-cluster credentials could not be read.
    #[error("in-cluster config: {0}")]
    InCluster(String),
    /// kube-rs refused the config (TLS setup).
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, else the in-cluster environment; `None` without either (the
/// control runs outside Kubernetes).
pub async fn connect(kubeconfig: Option<&Path>) -> Result<Option<Client>, ClientError> {
    let config = match kubeconfig {
        Some(path) => Some(from_kubeconfig(path).await?),
        None => in_cluster()?,
    };
    match config {
        Some(config) => {
            tracing::info!(api = %config.cluster_url, "Kubernetes API");
            Ok(Some(Client::try_from(config)?))
        }
        None => Ok(None),
    }
}

async fn from_kubeconfig(path: &Path) -> Result<Config, ClientError> {
    let error = |source| ClientError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(error)?;
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(error)
}

/// The in-cluster config, or `None` outside a cluster (no `KUBERNETES_SERVICE_HOST`).
fn in_cluster() -> Result<Option<Config>, ClientError> {
    let (Ok(host), Ok(port)) = (
        std::env::var("KUBERNETES_SERVICE_HOST"),
        std::env::var("KUBERNETES_SERVICE_PORT"),
    ) else {
        return Ok(None);
    };
    let dir = std::env::var_os("STRAIT_KUBE_SERVICEACCOUNT_DIR")
        .map_or_else(|| PathBuf::from(SERVICEACCOUNT_DIR), PathBuf::from);
    let read = |name: &str| {
        let file = dir.join(name);
        std::fs::read(&file).map_err(|e| ClientError::InCluster(format!("{}: {e}", file.display())))
    };
    let ca = read("ca.crt")?;
    let roots = CertificateDer::pem_slice_iter(&ca)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ClientError::InCluster(format!("ca.crt: {e}")))?;
    let host = if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host
    };
    let url = format!("https://{host}:{port}")
        .parse()
        .map_err(|e| ClientError::InCluster(format!("KUBERNETES_SERVICE_HOST/PORT: {e}")))?;
    let mut config = Config::new(url);
    config.root_cert = Some(roots);
    config.default_namespace = read("namespace")
        .ok()
        .and_then(|ns| String::from_utf8(ns).ok())
        .map_or_else(|| "default".to_owned(), |ns| ns.trim().to_owned());
    config.auth_info = AuthInfo {
        token_file: Some(dir.join("token").to_string_lossy().into_owned()),
        ..AuthInfo::default()
    };
    Ok(Some(config))
}

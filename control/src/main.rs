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
        /// Directory for the durable state (created if missing); with --store, for the token,
        /// the trust bundle file and the event bus only.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Keep policies, the registry and the CA's state in etcd
        /// (`etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`); every control started with the same
        /// --store is a replica of one control plane. Default: the embedded store in --data-dir.
        #[arg(long, value_name = "URL")]
        store: Option<strait_control::backend::StoreUrl>,
        /// API address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
        listen: SocketAddr,
        /// File holding the bearer token every API call must present (default: DIR/token,
        /// generated on first start).
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Keep the event bus in NATS JetStream at this URL (`nats://HOST:PORT`) instead of
        /// DIR: every replica on the same server shares one bus.
        #[arg(long, value_name = "URL")]
        bus: Option<String>,
        /// Log format.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Kubeconfig file for the Kubernetes API (`discovery: kubernetes`); default: the
        /// pod's ServiceAccount when the control runs in a cluster.
        #[arg(long, value_name = "PATH")]
        kubeconfig: Option<PathBuf>,
        #[command(flatten)]
        webhook: WebhookArgs,
        #[command(flatten)]
        identity: IdentityArgs,
    },
}

/// The mesh's certificate authority; with it, the API is served over TLS.
#[derive(Debug, clap::Args)]
struct IdentityArgs {
    /// Trust domain of the mesh's SPIFFE IDs (`spiffe://D/ns/NS/sa/SA`); turns the CA and TLS on.
    #[arg(long, value_name = "D")]
    trust_domain: Option<String>,
    /// PEM issuer (intermediate) certificate to sign with, then any intermediates (and
    /// optionally the root); without it the control creates a root and issuer in its store.
    #[arg(long, value_name = "FILE", requires_all = ["trust_domain", "issuer_key"])]
    issuer_cert: Option<PathBuf>,
    /// PEM private key of --issuer-cert.
    #[arg(long, value_name = "FILE", requires = "issuer_cert")]
    issuer_key: Option<PathBuf>,
    /// PEM roots that proxies trust, with --issuer-cert (default: the self-signed
    /// certificates in --issuer-cert).
    #[arg(long, value_name = "FILE", requires = "issuer_cert")]
    trust_bundle: Option<PathBuf>,
    /// Lifetime of issued certificates (s, m, h or d); proxies renew at 70% of it.
    #[arg(long, value_name = "TTL", default_value = "24h", value_parser = strait_control::ca::parse_ttl)]
    cert_ttl: Duration,
    /// Extra DNS name or IP of the control's serving certificate (repeatable).
    #[arg(long = "server-name", value_name = "NAME", requires = "trust_domain")]
    server_names: Vec<String>,
}

impl IdentityArgs {
    fn options(self) -> Result<Option<strait_control::ca::CaOptions>, String> {
        let Some(trust_domain) = self.trust_domain else {
            return Ok(None);
        };
        strait_control::ca::spiffe::check_trust_domain(&trust_domain)
            .map_err(|e| format!("--trust-domain: {e}"))?;
        let issuer = match (self.issuer_cert, self.issuer_key) {
            (Some(cert), Some(key)) => Some(strait_control::ca::IssuerFiles {
                cert,
                key,
                trust_bundle: self.trust_bundle,
            }),
            _ => None,
        };
        Ok(Some(strait_control::ca::CaOptions {
            trust_domain,
            issuer,
            cert_ttl: self.cert_ttl,
            server_names: self.server_names,
        }))
    }
}

/// The sidecar-injection webhook (HTTPS, separate from the API).
#[derive(Debug, clap::Args)]
struct WebhookArgs {
    /// HTTPS address of the mutating admission webhook (`POST /inject`); off when absent.
    /// Needs --trust-domain: injected proxies get their identity from the CA.
    #[arg(long, value_name = "ADDR", requires_all = ["webhook_cert", "webhook_key", "trust_domain"])]
    webhook_listen: Option<SocketAddr>,
    /// PEM certificate chain for the webhook (its Service DNS name in the SANs).
    #[arg(long, value_name = "FILE")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key for the webhook.
    #[arg(long, value_name = "FILE")]
    webhook_key: Option<PathBuf>,
    /// PEM CA a client certificate must chain to when the API server presents one (optional:
    /// the webhook needs no credentials, it only patches the pods it is sent).
    #[arg(long, value_name = "FILE")]
    webhook_client_ca: Option<PathBuf>,
    /// Proxy image injected pods get.
    #[arg(long, value_name = "IMAGE", default_value = strait_control::inject::settings::DEFAULT_PROXY_IMAGE)]
    inject_proxy_image: String,
    /// Control URL injected proxies connect to (`https://`; a name in the control's serving
    /// certificate: see --server-name).
    #[arg(long, value_name = "URL", default_value = strait_control::inject::settings::DEFAULT_CONTROL_ADDRESS)]
    inject_control_address: String,
}

impl WebhookArgs {
    fn options(self) -> Option<strait_control::inject::server::WebhookOptions> {
        let listen = self.webhook_listen?;
        Some(strait_control::inject::server::WebhookOptions {
            listen,
            cert: self.webhook_cert?,
            key: self.webhook_key?,
            client_ca: self.webhook_client_ca,
            settings: strait_control::inject::Settings {
                proxy_image: self.inject_proxy_image,
                control_address: self.inject_control_address,
                ..Default::default()
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let Command::Serve {
        data_dir,
        store,
        listen,
        token_file,
        bus,
        log_format,
        kubeconfig,
        webhook,
        identity,
    } = Args::parse().command;
    let identity = match identity.options() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("strait-control: {e}");
            return ExitCode::from(2);
        }
    };
    // The workspace's one rustls provider, installed before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
        store,
        listen,
        token_file,
        sweep_interval: Duration::from_millis(250),
        install_metrics: true,
        webhook: webhook.options(),
        identity,
        bus,
        kubeconfig,
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

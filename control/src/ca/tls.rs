//! The control's HTTPS listener when it runs a CA: a serving certificate the CA issues for
//! the control itself (`spiffe://TD/ns/strait-system/sa/strait-control` plus DNS/IP SANs of
//! its address and `--server-name`s), renewed at 70% of its lifetime and after every rotation
//! step; ALPN h2 and http/1.1; client certificates optional, verified against the bundle when
//! presented. A verified peer's SPIFFE ID goes into each request as [`PeerIdentity`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::authority::CaError;
use super::service::Ca;
use super::spiffe::SpiffeId;
use super::{CONTROL_NAMESPACE, CONTROL_SERVICE_ACCOUNT};

/// The verified SPIFFE ID of the client certificate a request came with (absent without one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub SpiffeId);

/// How long open connections may take to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving side of the control's TLS.
#[derive(Debug)]
pub struct TlsServer {
    ca: Arc<Ca>,
    identity: SpiffeId,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    config: ArcSwap<ServerConfig>,
}

/// The TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA refused.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// rustls refused.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn rustls_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls(e.to_string())
}

/// DNS names and IPs of the serving certificate: `localhost`, the listen IP (loopback ones
/// when it is unspecified) and every `--server-name` (an IP or a DNS name).
fn names(listen: SocketAddr, server_names: &[String]) -> (Vec<String>, Vec<IpAddr>) {
    let mut dns = vec!["localhost".to_owned()];
    let mut ips = if listen.ip().is_unspecified() {
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]
    } else {
        vec![listen.ip()]
    };
    for name in server_names {
        match name.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.contains(name) => dns.push(name.clone()),
            Err(_) => {}
        }
    }
    (dns, ips)
}

impl TlsServer {
    /// Issues the first serving certificate; returns the server and that certificate's expiry.
    pub fn new(
        ca: Arc<Ca>,
        listen: SocketAddr,
        server_names: &[String],
    ) -> Result<(Arc<Self>, OffsetDateTime), TlsError> {
        let identity = SpiffeId::new(
            ca.authority().trust_domain(),
            CONTROL_NAMESPACE,
            CONTROL_SERVICE_ACCOUNT,
        )
        .map_err(|e| TlsError::Ca(CaError::Material(e.to_string())))?;
        let (dns, ips) = names(listen, server_names);
        let (config, not_after) = build(&ca, &identity, &dns, &ips)?;
        let server = Self {
            ca,
            identity,
            dns,
            ips,
            config: ArcSwap::new(config),
        };
        Ok((Arc::new(server), not_after))
    }

    /// Renews the serving certificate at 70% of its lifetime and after each CA change; runs
    /// until the task is dropped. A failed renewal is retried in a minute.
    pub async fn renew(self: Arc<Self>, first_not_after: OffsetDateTime) {
        let mut changes = self.ca.changes();
        let mut not_after = first_not_after;
        let mut issued_at = OffsetDateTime::now_utc();
        loop {
            let lifetime = (not_after - issued_at).max(time::Duration::ZERO);
            let wait = lifetime * 0.7 - (OffsetDateTime::now_utc() - issued_at);
            let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
            match build(&self.ca, &self.identity, &self.dns, &self.ips) {
                Ok((config, expiry)) => {
                    self.config.store(config);
                    issued_at = OffsetDateTime::now_utc();
                    not_after = expiry;
                    tracing::info!(not_after = %super::bundle::rfc3339(expiry), "renewed the control's serving certificate");
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot renew the control's serving certificate");
                    issued_at = OffsetDateTime::now_utc();
                    not_after = issued_at + time::Duration::seconds(86);
                }
            }
        }
    }

    /// Serves `app` over TLS on `listener` until `shutdown` completes, then lets open
    /// connections finish their requests.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()>,
    ) {
        let graceful = GracefulShutdown::new();
        let trust_domain = self.ca.authority().trust_domain().to_owned();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let acceptor = TlsAcceptor::from(self.config.load_full());
            let (app, watcher, trust_domain) =
                (app.clone(), graceful.watcher(), trust_domain.clone());
            tokio::spawn(async move {
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                let identity = peer_identity(tls.get_ref().1, &trust_domain);
                let service = service_fn(move |mut request: http::Request<Incoming>| {
                    if let Some(id) = &identity {
                        request.extensions_mut().insert(id.clone());
                    }
                    let mut app = app.clone();
                    async move { tower_service::Service::call(&mut app, request).await }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(client = %peer, error = %e, "connection ended with error");
                }
            });
        }
        drop(listener);
        // Push streams never end by themselves: wait for answers in flight, not for them.
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("connections still open after the grace period");
        }
    }
}

/// A configuration with a fresh serving certificate and the current bundle.
fn build(
    ca: &Ca,
    identity: &SpiffeId,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<(Arc<ServerConfig>, OffsetDateTime), TlsError> {
    let authority = ca.authority();
    let serving = authority.serving(identity, dns, ips, OffsetDateTime::now_utc())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(
        authority.bundle().root_store(),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(rustls_error)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(serving.chain, serving.key)
        .map_err(rustls_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), serving.not_after))
}

/// The SPIFFE ID of a verified client certificate of `trust_domain`, if one was presented.
fn peer_identity(
    connection: &rustls::ServerConnection,
    trust_domain: &str,
) -> Option<PeerIdentity> {
    let leaf = connection.peer_certificates()?.first()?;
    match SpiffeId::from_certificate(leaf) {
        Ok(id) if id.trust_domain() == trust_domain => Some(PeerIdentity(id)),
        Ok(id) => {
            tracing::debug!(peer = %id, "client certificate of another trust domain");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "client certificate without a SPIFFE ID");
            None
        }
    }
}

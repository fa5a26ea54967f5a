//! Spans leave the request path through a bounded queue; one task per collector batches them
//! and sends each batch with the OpenTelemetry OTLP exporter (gRPC or HTTP/protobuf, over TLS
//! to an `https://` collector). A span that finds the queue full is dropped and counted, never
//! waited for.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metrics::Counter;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use strait_config::snapshot::TracingSettings;
use strait_config::spec::OtlpProtocol;
use tokio::sync::mpsc;

use crate::metrics::{TRACING_SPANS_DROPPED, TRACING_SPANS_EXPORTED};
use crate::tls::client::{read_pem, roots_of, simple_config, TlsConfigError};

/// Most spans in one export request.
const MAX_BATCH: usize = 512;
/// How long a batch waits for more spans once it has one.
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// How long one export may take (the exporter's own retries included).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the exporter could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OpenTelemetry exporter refused its settings.
    #[error("OTLP exporter for {endpoint}: {source}")]
    Build {
        /// The collector.
        endpoint: String,
        /// Why.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// The collector's roots (`tracing.otlp.caFile`) cannot be used.
    #[error("OTLP exporter for {endpoint}: {source}")]
    Roots {
        /// The collector.
        endpoint: String,
        /// Why.
        source: TlsConfigError,
    },
}

/// What identifies a running export across reloads: a change of any restarts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportKey {
    endpoint: String,
    protocol: OtlpProtocol,
    /// The roots of an `https://` collector.
    ca_file: Option<PathBuf>,
    queue_size: usize,
    service_name: String,
}

impl ExportKey {
    /// The key of `settings` for a proxy whose spans name `service_name`.
    pub fn new(settings: &TracingSettings, service_name: &str) -> Self {
        Self {
            endpoint: settings.endpoint.clone(),
            protocol: settings.protocol,
            ca_file: settings.ca_file.clone(),
            queue_size: settings.queue_size,
            service_name: service_name.to_owned(),
        }
    }
}

/// The sending end of one collector's queue. Dropping the last one lets the task send what
/// is queued and end.
#[derive(Debug)]
pub struct SpanQueue {
    key: ExportKey,
    spans: mpsc::Sender<SpanData>,
    /// `strait_tracing_spans_dropped_total{reason="queue_full"}`.
    dropped: Counter,
}

impl SpanQueue {
    /// Makes the exporter and starts its task (within a Tokio runtime).
    pub fn start(key: ExportKey) -> Result<Self, ExportError> {
        let roots = |source| ExportError::Roots {
            endpoint: key.endpoint.clone(),
            source,
        };
        let ca_file = key.ca_file.as_deref();
        let built = match key.protocol {
            OtlpProtocol::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(key.endpoint.clone())
                    .with_timeout(EXPORT_TIMEOUT);
                if let Some(ca_file) = ca_file {
                    builder = builder.with_tls_config(grpc_tls(ca_file).map_err(roots)?);
                }
                builder.build()
            }
            OtlpProtocol::Http => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(key.endpoint.clone())
                    .with_timeout(EXPORT_TIMEOUT);
                if let Some(ca_file) = ca_file {
                    builder = builder.with_http_client(https_client(ca_file).map_err(roots)?);
                }
                builder.build()
            }
        };
        let mut exporter = built.map_err(|source| ExportError::Build {
            endpoint: key.endpoint.clone(),
            source,
        })?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(key.service_name.clone())
                .build(),
        );
        let (spans, queued) = mpsc::channel(key.queue_size);
        let batch = key.queue_size.min(MAX_BATCH);
        tokio::spawn(run(queued, exporter, batch, key.endpoint.clone()));
        Ok(Self {
            key,
            spans,
            dropped: dropped("queue_full"),
        })
    }

    /// What this queue exports to.
    pub fn key(&self) -> &ExportKey {
        &self.key
    }

    /// Queues a finished span, or counts it dropped when the queue is full.
    pub fn push(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped.increment(1);
        }
    }
}

/// tonic's TLS for an OTLP/gRPC collector verified against the roots in `ca_file` (tonic makes
/// its rustls configuration on the same ring provider).
fn grpc_tls(ca_file: &Path) -> Result<ClientTlsConfig, TlsConfigError> {
    let pem = read_pem(ca_file)?;
    // Checked here for a clear error; tonic parses the same bytes.
    roots_of(&pem, ca_file)?;
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
}

/// The OTLP/HTTP exporter's client for an `https://` collector verified against `ca_file`.
fn https_client(
    ca_file: &Path,
) -> Result<opentelemetry_http::hyper::HyperClient<HttpsConnector>, TlsConfigError> {
    let mut config = simple_config(ca_file, strait_config::spec::ServiceProtocol::Http1)?;
    // hyper-rustls sets ALPN itself (and refuses a configuration that already has it).
    config.alpn_protocols.clear();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector,
        EXPORT_TIMEOUT,
        None,
    ))
}

type HttpsConnector =
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

fn dropped(reason: &'static str) -> Counter {
    metrics::counter!(TRACING_SPANS_DROPPED, "reason" => reason)
}

/// Takes spans off the queue in batches and exports them, one batch at a time, until every
/// sender is gone and the queue is empty.
async fn run(
    mut queued: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    max_batch: usize,
    endpoint: String,
) {
    let exported = metrics::counter!(TRACING_SPANS_EXPORTED);
    let failed = dropped("export_failed");
    let mut failing = false;
    while let Some(first) = queued.recv().await {
        let mut batch = Vec::with_capacity(max_batch.min(64));
        batch.push(first);
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < max_batch {
            tokio::select! {
                () = &mut deadline => break,
                more = queued.recv() => match more {
                    Some(span) => batch.push(span),
                    None => break,
                },
            }
        }
        let count = batch.len() as u64;
        match exporter.export(batch).await {
            Ok(()) => {
                exported.increment(count);
                if std::mem::take(&mut failing) {
                    tracing::info!(%endpoint, "span export works again");
                }
            }
            Err(error) => {
                failed.increment(count);
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%endpoint, %error, "span export failed; spans are dropped until it works");
                }
            }
        }
    }
    // Nothing is left to send; the exporter's channel closes with it.
    let _ = exporter.shutdown();
}

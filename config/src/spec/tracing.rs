//! `ProxyConfig.spec.tracing`: trace context propagation and span export over OTLP.

use serde::{Deserialize, Serialize};

/// `ProxyConfig.spec.tracing`. When present, the proxy continues (or starts) the W3C and B3
/// trace context of every HTTP request it proxies, sets `x-request-id`, and exports a server
/// span per request and a client span per upstream try for the requests it samples.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSpec {
    /// Where spans go.
    pub otlp: OtlpSpec,
    /// Share of new traces recorded, 0 to 1. A request that carries a sampling decision
    /// (`traceparent` flags, `b3`, `X-B3-Sampled`) keeps it. Default 0.01.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<f64>,
    /// Spans waiting for export; beyond it spans are dropped and counted in
    /// `strait_tracing_spans_dropped_total`. Default 2048.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u32>,
}

/// `tracing.otlp`: the collector.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtlpSpec {
    /// The collector's URL, `http://host:port` or `https://host:port` (TLS, the collector
    /// verified for the host): gRPC at that address, or for `http` the path `/v1/traces`
    /// under it unless the URL has a path of its own.
    pub endpoint: String,
    /// `grpc` (default, port 4317 by convention) or `http` (protobuf over HTTP, port 4318).
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// PEM file of the roots an `https://` collector's certificate is verified against
    /// (default: the system's, `/etc/ssl/certs/ca-certificates.crt`); relative to the config
    /// file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    Http,
}

//! The report a proxy posts every few seconds (`POST /v1/push/report`), as the control reads it.

use serde::Deserialize;
use serde_json::Value;

/// One proxy's figures.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Node name.
    pub node: String,
    /// The workload beside the proxy (its `spec.workload`), which its edges start from.
    #[serde(default)]
    pub workload: Option<String>,
    /// The config version it serves.
    #[serde(default)]
    pub version: Option<u64>,
    /// Upper bounds (seconds) of the latency buckets.
    #[serde(default)]
    pub bounds: Vec<f64>,
    /// Counts per (listener, route, service) since the proxy started.
    #[serde(default)]
    pub edges: Vec<EdgeCounts>,
    /// Its services with their endpoints and breaker (admin `/clusters`' entries).
    #[serde(default)]
    pub services: Vec<Value>,
}

/// One edge's cumulative counts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EdgeCounts {
    /// Listener name.
    pub listener: String,
    /// Route name.
    pub route: String,
    /// Destination service.
    pub service: String,
    /// Requests per latency bucket (one more than the bounds).
    pub buckets: Vec<u64>,
    /// Requests answered 5xx.
    #[serde(default)]
    pub failures: u64,
}

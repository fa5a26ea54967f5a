//! `HTTPRoute`: hostnames and rules of matches → weighted backends, with per-rule policies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BackendRef, Duration, ParentRef};

/// `HTTPRoute.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Listeners (protocol `http`) this route serves; empty means every HTTP listener.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Hosts matched against Host / `:authority` (port ignored, case-insensitive);
    /// `*.example.com` matches any subdomain; empty matches every host.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules; for precedence between them see the crate docs.
    pub rules: Vec<HttpRuleSpec>,
}

/// One rule: when any of `matches` matches, send to `backendRefs` with these policies.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRuleSpec {
    /// Any one selects the rule; empty means match everything (`PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<HttpMatchSpec>,
    /// Services with relative weights, chosen per request.
    pub backend_refs: Vec<BackendRef>,
    /// Request and per-try timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpTimeouts>,
    /// Retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetrySpec>,
    /// Token-bucket rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Fault injection for chaos testing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultSpec>,
    /// Fire-and-forget copy of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSpec>,
    /// Header edits on the way to the upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderEditsSpec>,
    /// Header edits on the way back to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderEditsSpec>,
}

/// Conditions that must all hold for a match.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpMatchSpec {
    /// Path condition; none means any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    /// HTTP method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header conditions, all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchSpec>,
    /// Query parameter conditions, all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatchSpec>,
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatchSpec {
    /// `Exact`, `PathPrefix` (segment-aware: `/api` matches `/api/x`, not `/apix`) or `RegularExpression` (whole path).
    #[serde(rename = "type", default)]
    pub kind: PathMatchKind,
    /// The path, prefix or regex; paths start with `/`.
    pub value: String,
}

/// Path match kinds, as in Gateway API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum PathMatchKind {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value, at a segment boundary.
    #[default]
    PathPrefix,
    /// The whole path matches the regex.
    RegularExpression,
}

/// A header or query-parameter condition.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValueMatchSpec {
    /// Header (case-insensitive) or query parameter name.
    pub name: String,
    /// Expected value, or a regex matched against the whole value.
    pub value: String,
    /// `Exact` (default) or `RegularExpression`.
    #[serde(rename = "type", default)]
    pub kind: ValueMatchKind,
}

/// Value match kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum ValueMatchKind {
    /// Equal to the value.
    #[default]
    Exact,
    /// The whole value matches the regex.
    RegularExpression,
}

/// Route timeouts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpTimeouts {
    /// Whole exchange including retries; expiry answers 504 `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// One attempt; expiry is retriable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetrySpec {
    /// Extra tries after the first (total tries = 1 + attempts).
    pub attempts: u32,
    /// Conditions: `5xx`, `gateway-error`, `connect-failure`, `reset`, or a status code like `"503"`.
    #[serde(default)]
    pub retry_on: Vec<String>,
    /// Jittered exponential backoff between tries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffSpec>,
    /// Cap on retries relative to requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudgetSpec>,
    /// Request bodies up to this many bytes are kept for retrying. Default 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u32>,
}

/// Backoff bounds.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackoffSpec {
    /// First backoff. Default 25ms.
    pub base: Duration,
    /// Largest backoff. Default 250ms.
    pub max: Duration,
}

/// Retry budget.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Retries may be at most this percent of recent requests.
    pub percent: f64,
    /// Retries always allowed per second regardless of percent.
    #[serde(default)]
    pub min_retries_per_second: u32,
}

/// Token-bucket rate limit.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Refill rate.
    pub requests_per_second: f64,
    /// Bucket capacity.
    pub burst: u32,
    /// `route`, `client-ip` or `header:NAME`. Default `route`.
    #[serde(default = "route_key")]
    pub key: String,
}

fn route_key() -> String {
    "route".to_owned()
}

/// Fault injection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultSpec {
    /// Delay some requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayFault>,
    /// Answer some requests with a status without forwarding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortFault>,
}

/// Delay fault.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DelayFault {
    /// How long.
    pub fixed: Duration,
    /// Percent of requests (0–100).
    pub percent: f64,
}

/// Abort fault.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AbortFault {
    /// Status to answer.
    pub status: u16,
    /// Percent of requests (0–100).
    pub percent: f64,
}

/// Request mirroring.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorSpec {
    /// Where copies go.
    pub backend_ref: BackendRef,
    /// Percent of requests copied (0–100).
    pub percent: f64,
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderEditsSpec {
    /// Headers replaced (or created).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Headers appended.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

//! `TLSRoute`: TLS connections passed through untouched, routed by the server name (SNI) of
//! their ClientHello.

use serde::{Deserialize, Serialize};

use super::{BackendRef, ParentRef};

/// `TLSRoute.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRouteSpec {
    /// Listeners this route serves: `protocol: tcp` listeners, and intercepting
    /// (`mode: inbound|outbound`) `protocol: http` listeners; empty means every such listener.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Server names matched against the ClientHello's SNI (case-insensitive): exact, or
    /// `*.example.com` for any name under `example.com`. At least one.
    pub hostnames: Vec<String>,
    /// Exactly one rule: where the connections whose SNI matches go.
    pub rules: Vec<TlsRuleSpec>,
}

/// One rule of a TLSRoute.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsRuleSpec {
    /// Services (`protocol: tcp`) to connect to, chosen per connection by weight.
    pub backend_refs: Vec<BackendRef>,
}

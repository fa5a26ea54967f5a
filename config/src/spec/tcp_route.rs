//! `TCPRoute`: an L4 listener forwarded to weighted backends.

use serde::{Deserialize, Serialize};

use super::{BackendRef, Duration, ParentRef};

/// `TCPRoute.spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRouteSpec {
    /// Listeners (protocol `tcp`) this route serves; empty means every TCP listener.
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    /// Services (protocol `tcp`) to connect to, chosen per connection by weight.
    pub backend_refs: Vec<BackendRef>,
    /// Connect and idle timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<TcpTimeouts>,
}

/// Timeouts of a TCP route.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpTimeouts {
    /// Upstream connect timeout. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    /// Close the connection after this long with no bytes either way. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}

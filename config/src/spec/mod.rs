//! The file form of each resource kind: serde types that mirror the YAML exactly.
//!
//! Every struct denies unknown fields; defaults are documented on the field.

mod authorization_policy;
mod duration;
mod http_route;
mod meta;
mod proxy_config;
mod service;
mod tcp_route;
mod tls_route;
mod tracing;

use serde::{Deserialize, Serialize};

pub use authorization_policy::*;
pub use duration::Duration;
pub use http_route::*;
pub use meta::{Document, ObjectMeta, API_VERSION};
pub use proxy_config::*;
pub use service::*;
pub use tcp_route::*;
pub use tls_route::*;
pub use tracing::*;

/// A reference from a route to the listener it attaches to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// Listener name in the ProxyConfig.
    pub name: String,
}

/// A reference from a route to a Service, with its share of traffic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// Service name.
    pub name: String,
    /// Service namespace; the route's when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Relative share of requests. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Any resource of a known kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    /// Proxy bootstrap.
    ProxyConfig(Document<ProxyConfigSpec>),
    /// Upstream service.
    Service(Document<ServiceSpec>),
    /// HTTP routing.
    HttpRoute(Document<HttpRouteSpec>),
    /// TCP routing.
    TcpRoute(Document<TcpRouteSpec>),
    /// TLS passthrough routed by SNI.
    TlsRoute(Document<TlsRouteSpec>),
    /// Who may call what.
    AuthorizationPolicy(Document<AuthorizationPolicySpec>),
}

/// The kinds this build knows, as written in `kind:`.
pub const KINDS: [&str; 6] = [
    "ProxyConfig",
    "Service",
    "HTTPRoute",
    "TCPRoute",
    "TLSRoute",
    "AuthorizationPolicy",
];

impl Resource {
    /// The resource's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::ProxyConfig(d) => &d.metadata,
            Self::Service(d) => &d.metadata,
            Self::HttpRoute(d) => &d.metadata,
            Self::TcpRoute(d) => &d.metadata,
            Self::TlsRoute(d) => &d.metadata,
            Self::AuthorizationPolicy(d) => &d.metadata,
        }
    }

    /// `kind:` as written in YAML.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ProxyConfig(_) => "ProxyConfig",
            Self::Service(_) => "Service",
            Self::HttpRoute(_) => "HTTPRoute",
            Self::TcpRoute(_) => "TCPRoute",
            Self::TlsRoute(_) => "TLSRoute",
            Self::AuthorizationPolicy(_) => "AuthorizationPolicy",
        }
    }
}

//! `AuthorizationPolicy`: who may call what, on a listener or an HTTPRoute.

use serde::{Deserialize, Serialize};

/// `AuthorizationPolicy.spec`.
///
/// DENY policies are checked first; once any ALLOW policy targets a listener or route, a
/// request (or TCP connection) that no ALLOW rule matches is denied.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// What the policy applies to: `{kind: Listener, name: NAME}` (every request or connection
    /// on the listener) or `{kind: HTTPRoute, name: NAME}` (requests that route serves; the
    /// route is in the policy's namespace). At least one.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRef>,
    /// `ALLOW` or `DENY`. Default `ALLOW`.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// The policy applies when any rule matches. At least one; `[{}]` matches everything.
    #[serde(default)]
    pub rules: Vec<AuthorizationRuleSpec>,
}

/// What a policy targets.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `Listener` or `HTTPRoute`.
    pub kind: String,
    /// The listener's name in the ProxyConfig, or the HTTPRoute's name.
    pub name: String,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AuthorizationAction {
    /// Let the request through; once an ALLOW policy targets something, only what one allows
    /// gets through.
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// Refuse the request (403 `forbidden`) or close the connection.
    #[serde(rename = "DENY")]
    Deny,
}

impl AuthorizationAction {
    /// As written in YAML (and in the `action` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        }
    }
}

/// One rule: it matches when any `from` entry matches and any `to` entry matches.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationRuleSpec {
    /// Sources; none means any source (with or without an identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<SourceSpec>,
    /// Operations; none means any request. HTTP only: a TCP listener sees no method or path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<OperationSpec>,
}

/// A source: every field given must match.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceSpec {
    /// The peer's SPIFFE ID (`spiffe://TRUST-DOMAIN/ns/NS/sa/SA`), exact or with a trailing
    /// `*` for a prefix; `*` alone is any authenticated peer. A peer without an identity
    /// (plaintext) matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// The namespace in the peer's SPIFFE ID, exact or with a trailing `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// An operation: every field given must match.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OperationSpec {
    /// Methods, exactly as sent (`GET`, `POST`...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Paths, exact or with a trailing `*` for a prefix, matched on the normalised path
    /// without the query (dot segments removed, unreserved `%XX` decoded, `//` merged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

//! Authorization decisions: which policy, if any, decides a request or a connection. Pure:
//! knows nothing of sockets, TLS or metrics.
//!
//! # Semantics
//! - DENY policies are checked first: the first that has a matching rule denies.
//! - Then, when at least one ALLOW policy is in force, the first with a matching rule allows
//!   and a request none matches is denied (`Decision::Denied(None)`, the "default" deny).
//! - With no ALLOW policy in force, what no DENY policy matches is allowed.
//! - A rule matches when any of its `from` entries matches (none: any source) AND any of its
//!   `to` entries matches (none: any operation). Within an entry every field given must match.
//! - A peer without an identity matches no `identities` or `namespaces` pattern.
//! - A connection (opaque TCP) has no method or path: a rule's `to` counts as matching for a
//!   DENY policy and as not matching for an ALLOW one, so that what cannot be checked is
//!   refused rather than let through.

use std::sync::Arc;

use http::Method;

use crate::spec::AuthorizationAction;

/// Names — identities, namespaces, paths — matched exactly or by prefix (a pattern with a
/// trailing `*`; `*` alone matches anything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamePatterns {
    /// Exact names, sorted (binary search: no hashing per request).
    exact: Vec<Box<str>>,
    /// Prefixes, without their `*`.
    prefixes: Vec<Box<str>>,
}

impl NamePatterns {
    /// Compiles patterns: `text*` is a prefix, anything else exact.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Self {
        let mut set = Self::default();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some(prefix) => set.prefixes.push(prefix.into()),
                None => set.exact.push(pattern.into()),
            }
        }
        set.exact.sort_unstable();
        set.exact.dedup();
        set
    }

    /// Whether `name` is one of the exact names or starts with one of the prefixes.
    pub fn matches(&self, name: &str) -> bool {
        self.exact.binary_search_by(|e| (**e).cmp(name)).is_ok()
            || self.prefixes.iter().any(|p| name.starts_with(&**p))
    }
}

/// One `from` entry, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMatch {
    /// Patterns for the peer's SPIFFE ID (none: any).
    pub identities: Option<NamePatterns>,
    /// Patterns for the namespace in the peer's SPIFFE ID (none: any).
    pub namespaces: Option<NamePatterns>,
}

impl SourceMatch {
    fn matches(&self, peer: Option<&str>) -> bool {
        let Some(id) = peer else {
            return self.identities.is_none() && self.namespaces.is_none();
        };
        self.identities.as_ref().is_none_or(|p| p.matches(id))
            && self
                .namespaces
                .as_ref()
                .is_none_or(|p| spiffe_namespace(id).is_some_and(|ns| p.matches(ns)))
    }
}

/// One `to` entry, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationMatch {
    /// Methods (none: any).
    pub methods: Option<Vec<Method>>,
    /// Patterns for the normalised path (none: any).
    pub paths: Option<NamePatterns>,
}

impl OperationMatch {
    fn matches(&self, op: &Operation<'_>) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|ms| ms.iter().any(|m| m == op.method))
            && self.paths.as_ref().is_none_or(|p| p.matches(op.path))
    }
}

/// One rule, compiled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthzRule {
    /// Sources; empty: any.
    pub from: Vec<SourceMatch>,
    /// Operations; empty: any.
    pub to: Vec<OperationMatch>,
}

impl AuthzRule {
    fn matches(&self, req: &AuthzRequest<'_>, action: AuthorizationAction) -> bool {
        let from = self.from.is_empty() || self.from.iter().any(|s| s.matches(req.peer_identity));
        from && (self.to.is_empty()
            || match &req.operation {
                Some(op) => self.to.iter().any(|o| o.matches(op)),
                // Fail closed: see the module docs.
                None => action == AuthorizationAction::Deny,
            })
    }
}

/// One `AuthorizationPolicy`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzPolicy {
    /// `namespace/name` (the `policy` metric label).
    pub name: Arc<str>,
    /// Position among the snapshot's policies (dense, from 0), for per-policy state.
    pub id: usize,
    /// ALLOW or DENY.
    pub action: AuthorizationAction,
    /// The policy applies when any rule matches.
    pub rules: Vec<AuthzRule>,
}

impl AuthzPolicy {
    fn applies(&self, req: &AuthzRequest<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(req, self.action))
    }
}

/// What a request or connection shows to authorization.
#[derive(Debug, Clone, Copy)]
pub struct AuthzRequest<'a> {
    /// The peer's SPIFFE ID, when it presented a verified certificate.
    pub peer_identity: Option<&'a str>,
    /// Method and path of an HTTP request; `None` for an opaque TCP connection.
    pub operation: Option<Operation<'a>>,
}

/// The HTTP parts a rule's `to` looks at.
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    /// The request's method.
    pub method: &'a Method,
    /// The normalised path, without the query (see [`super::normalize_path`]).
    pub path: &'a str,
}

/// The outcome, with the policy that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Let through by this ALLOW policy, or (`None`) because no ALLOW policy is in force and
    /// no DENY policy matched.
    Allowed(Option<&'a AuthzPolicy>),
    /// Refused by this DENY policy, or (`None`) because ALLOW policies are in force and none
    /// matched.
    Denied(Option<&'a AuthzPolicy>),
}

impl Decision<'_> {
    /// Whether the request or connection may go on.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed(_))
    }
}

/// The policies in force on one listener or one HTTPRoute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorization {
    /// DENY policies, by namespace/name.
    deny: Vec<Arc<AuthzPolicy>>,
    /// ALLOW policies, by namespace/name.
    allow: Vec<Arc<AuthzPolicy>>,
}

impl Authorization {
    /// Groups policies by action, each once, in namespace/name order.
    pub fn new(policies: impl IntoIterator<Item = Arc<AuthzPolicy>>) -> Self {
        let mut set = Self::default();
        for policy in policies {
            let list = match policy.action {
                AuthorizationAction::Deny => &mut set.deny,
                AuthorizationAction::Allow => &mut set.allow,
            };
            if !list.iter().any(|p| p.id == policy.id) {
                list.push(policy);
            }
        }
        set.deny.sort_by(|a, b| a.name.cmp(&b.name));
        set.allow.sort_by(|a, b| a.name.cmp(&b.name));
        set
    }

    /// Decides `req` (see the [module](self) for the rules).
    pub fn decide(&self, req: &AuthzRequest<'_>) -> Decision<'_> {
        if let Some(deny) = self.deny.iter().find(|p| p.applies(req)) {
            return Decision::Denied(Some(deny));
        }
        if self.allow.is_empty() {
            return Decision::Allowed(None);
        }
        match self.allow.iter().find(|p| p.applies(req)) {
            Some(allow) => Decision::Allowed(Some(allow)),
            None => Decision::Denied(None),
        }
    }

    /// Every policy in force here.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<AuthzPolicy>> {
        self.deny.iter().chain(&self.allow)
    }
}

/// The namespace in a SPIFFE ID of the mesh's form, `spiffe://TRUST-DOMAIN/ns/NS/sa/SA`.
pub fn spiffe_namespace(id: &str) -> Option<&str> {
    let rest = id.strip_prefix("spiffe://")?;
    let (_trust_domain, path) = rest.split_once('/')?;
    let (namespace, after) = path.strip_prefix("ns/")?.split_once('/')?;
    (!namespace.is_empty() && after.starts_with("sa/")).then_some(namespace)
}

#[cfg(test)]
mod tests;

//! Compiling `AuthorizationPolicy`s: patterns checked and compiled once, then grouped into the
//! [`Authorization`] of each listener and each HTTPRoute they target.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::Method;

use super::proxy::ListenerDraft;
use super::Errors;
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::matching::authz::{
    Authorization, AuthzPolicy, AuthzRule, NamePatterns, OperationMatch, SourceMatch,
};
use crate::matching::normalize_path;
use crate::spec::{
    AuthorizationPolicySpec, Document, ListenerProtocol, OperationSpec, Resource, SourceSpec,
};

/// HTTPRoutes by `(namespace, name)`.
pub(crate) type RouteKey = (String, String);

/// Every policy of a set, and what each listener and route gets.
#[derive(Default)]
pub(crate) struct CompiledPolicies {
    /// All policies, by `id`.
    pub policies: Vec<Arc<AuthzPolicy>>,
    /// Per listener index (empty without a ProxyConfig).
    pub per_listener: Vec<Option<Arc<Authorization>>>,
    /// Per HTTPRoute.
    pub per_route: HashMap<RouteKey, Arc<Authorization>>,
}

impl CompiledPolicies {
    /// The policies in force on the HTTPRoute `namespace/name`, if any.
    pub(crate) fn route(&self, namespace: &str, name: &str) -> Option<Arc<Authorization>> {
        self.per_route
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }
}

/// The listeners `Listener` targets are resolved against.
#[derive(Clone, Copy)]
pub(crate) enum Listeners<'a> {
    /// One proxy's: every target must be one of them.
    Proxy(&'a [ListenerDraft]),
    /// The control's store, which has no proxy's listeners (a proxy may bring its own):
    /// targets are not checked, but a name that is a TCP listener in a stored ProxyConfig
    /// refuses `to` (that proxy would refuse the policy).
    Stored {
        /// Names of the TCP listeners of the stored ProxyConfigs.
        tcp: &'a BTreeSet<String>,
    },
}

/// Where a policy applies, once its references are resolved.
enum Target {
    Listener(usize),
    Route(RouteKey),
}

/// Compiles every AuthorizationPolicy.
pub(crate) fn compile_all(
    docs: &[LoadedDoc],
    listeners: Listeners<'_>,
    errors: &mut Errors,
) -> CompiledPolicies {
    let routes: BTreeSet<RouteKey> = docs
        .iter()
        .filter_map(|d| match &*d.resource {
            Resource::HttpRoute(r) => Some((r.metadata.namespace.clone(), r.metadata.name.clone())),
            _ => None,
        })
        .collect();
    let mut policies: Vec<(&LoadedDoc, &Document<AuthorizationPolicySpec>)> = docs
        .iter()
        .filter_map(|d| match &*d.resource {
            Resource::AuthorizationPolicy(p) => Some((d, p)),
            _ => None,
        })
        .collect();
    policies.sort_by(|a, b| {
        (&a.1.metadata.namespace, &a.1.metadata.name)
            .cmp(&(&b.1.metadata.namespace, &b.1.metadata.name))
    });

    let mut compiled = CompiledPolicies::default();
    let listener_count = match listeners {
        Listeners::Proxy(drafts) => drafts.len(),
        Listeners::Stored { .. } => 0,
    };
    let mut on_listener: Vec<Vec<Arc<AuthzPolicy>>> = vec![Vec::new(); listener_count];
    let mut on_route: HashMap<RouteKey, Vec<Arc<AuthzPolicy>>> = HashMap::new();
    for (doc, policy) in policies {
        let targets = resolve_targets(doc, policy, listeners, &routes, errors);
        let rules = compile_rules(doc, &policy.spec, errors);
        let meta = &policy.metadata;
        let policy = Arc::new(AuthzPolicy {
            name: format!("{}/{}", meta.namespace, meta.name).into(),
            id: compiled.policies.len(),
            action: policy.spec.action,
            rules,
        });
        for target in targets {
            match target {
                Target::Listener(l) => {
                    if let Some(list) = on_listener.get_mut(l) {
                        list.push(policy.clone());
                    }
                }
                Target::Route(key) => on_route.entry(key).or_default().push(policy.clone()),
            }
        }
        compiled.policies.push(policy);
    }
    compiled.per_listener = on_listener
        .into_iter()
        .map(|list| (!list.is_empty()).then(|| Arc::new(Authorization::new(list))))
        .collect();
    compiled.per_route = on_route
        .into_iter()
        .map(|(key, list)| (key, Arc::new(Authorization::new(list))))
        .collect();
    compiled
}

fn resolve_targets(
    doc: &LoadedDoc,
    policy: &Document<AuthorizationPolicySpec>,
    listeners: Listeners<'_>,
    routes: &BTreeSet<RouteKey>,
    errors: &mut Errors,
) -> Vec<Target> {
    let at = FieldPath::root().key("spec").key("targetRefs");
    let namespace = &policy.metadata.namespace;
    if policy.spec.target_refs.is_empty() {
        errors.at(
            doc,
            &at,
            "a policy needs at least one target, e.g. `targetRefs: [{kind: Listener, name: \
             inbound}]` or `[{kind: HTTPRoute, name: NAME}]`",
        );
    }
    let mut targets = Vec::new();
    for (i, target) in policy.spec.target_refs.iter().enumerate() {
        let here = at.index(i);
        match target.kind.as_str() {
            "Listener" => {
                let listeners = match listeners {
                    Listeners::Proxy(drafts) => drafts,
                    Listeners::Stored { tcp } => {
                        if tcp.contains(&target.name) {
                            check_no_operations(doc, policy, &target.name, errors);
                        }
                        continue;
                    }
                };
                match listeners.iter().position(|l| l.name == target.name) {
                    Some(l) => {
                        if listeners[l].protocol == ListenerProtocol::Tcp {
                            check_no_operations(doc, policy, &target.name, errors);
                        }
                        targets.push(Target::Listener(l));
                    }
                    None => {
                        let known: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                        errors.at(
                            doc,
                            &here.key("name"),
                            format!(
                                "no listener `{}` in the ProxyConfig; known: {}",
                                target.name,
                                known.join(", ")
                            ),
                        );
                    }
                }
            }
            "HTTPRoute" => {
                let key = (namespace.clone(), target.name.clone());
                if routes.contains(&key) {
                    targets.push(Target::Route(key));
                } else {
                    let known: Vec<&str> = routes
                        .iter()
                        .filter(|(ns, _)| ns == namespace)
                        .map(|(_, name)| name.as_str())
                        .collect();
                    let known = if known.is_empty() {
                        "there are none in it".to_owned()
                    } else {
                        format!("known: {}", known.join(", "))
                    };
                    errors.at(
                        doc,
                        &here.key("name"),
                        format!(
                            "no HTTPRoute `{}` in namespace `{namespace}` (a policy targets \
                             routes of its own namespace); {known}",
                            target.name
                        ),
                    );
                }
            }
            other => errors.at(
                doc,
                &here.key("kind"),
                format!("unknown target kind `{other}`; use `Listener` or `HTTPRoute`"),
            ),
        }
    }
    targets
}

/// A TCP listener sees no method or path: refuses `to` on a policy that targets one.
fn check_no_operations(
    doc: &LoadedDoc,
    policy: &Document<AuthorizationPolicySpec>,
    listener: &str,
    errors: &mut Errors,
) {
    let at = FieldPath::root().key("spec").key("rules");
    for (i, rule) in policy.spec.rules.iter().enumerate() {
        if !rule.to.is_empty() {
            errors.at(
                doc,
                &at.index(i).key("to"),
                format!(
                    "listener `{listener}` is a TCP listener: a connection has no method or \
                     path, so `to` cannot be checked there; drop `to` or target an HTTP \
                     listener or an HTTPRoute"
                ),
            );
        }
    }
}

fn compile_rules(
    doc: &LoadedDoc,
    spec: &AuthorizationPolicySpec,
    errors: &mut Errors,
) -> Vec<AuthzRule> {
    let at = FieldPath::root().key("spec").key("rules");
    if spec.rules.is_empty() {
        errors.at(
            doc,
            &at,
            "a policy needs at least one rule; `rules: [{}]` matches every request",
        );
    }
    spec.rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let here = at.index(i);
            AuthzRule {
                from: rule
                    .from
                    .iter()
                    .enumerate()
                    .map(|(j, s)| compile_source(doc, &here.key("from").index(j), s, errors))
                    .collect(),
                to: rule
                    .to
                    .iter()
                    .enumerate()
                    .map(|(j, o)| compile_operation(doc, &here.key("to").index(j), o, errors))
                    .collect(),
            }
        })
        .collect()
}

fn compile_source(
    doc: &LoadedDoc,
    at: &FieldPath,
    source: &SourceSpec,
    errors: &mut Errors,
) -> SourceMatch {
    SourceMatch {
        identities: patterns(
            doc,
            &at.key("identities"),
            &source.identities,
            identity_problem,
            errors,
        ),
        namespaces: patterns(
            doc,
            &at.key("namespaces"),
            &source.namespaces,
            namespace_problem,
            errors,
        ),
    }
}

fn compile_operation(
    doc: &LoadedDoc,
    at: &FieldPath,
    operation: &OperationSpec,
    errors: &mut Errors,
) -> OperationMatch {
    let methods = (!operation.methods.is_empty()).then(|| {
        operation
            .methods
            .iter()
            .enumerate()
            .filter_map(|(i, m)| match method(m) {
                Ok(method) => Some(method),
                Err(problem) => {
                    errors.at(doc, &at.key("methods").index(i), problem);
                    None
                }
            })
            .collect()
    });
    OperationMatch {
        methods,
        paths: patterns(
            doc,
            &at.key("paths"),
            &operation.paths,
            path_problem,
            errors,
        ),
    }
}

/// Compiles a list of patterns, reporting each that `problem` finds fault with; `None` for an
/// empty list (no condition).
fn patterns(
    doc: &LoadedDoc,
    at: &FieldPath,
    values: &[String],
    problem: fn(&str) -> Option<String>,
    errors: &mut Errors,
) -> Option<NamePatterns> {
    if values.is_empty() {
        return None;
    }
    for (i, value) in values.iter().enumerate() {
        if let Some(why) = problem(value) {
            errors.at(doc, &at.index(i), why);
        }
    }
    Some(NamePatterns::new(values.iter().map(String::as_str)))
}

/// What is wrong with a pattern's `*`: only one, at the end, is allowed.
fn star_problem(pattern: &str) -> Option<String> {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    body.contains('*')
        .then(|| format!("`{pattern}`: `*` is only allowed once, at the end (a prefix match)"))
}

fn identity_problem(pattern: &str) -> Option<String> {
    if let Some(why) = star_problem(pattern) {
        return Some(why);
    }
    if pattern == "*" {
        return None;
    }
    if !pattern.starts_with("spiffe://") {
        return Some(format!(
            "`{pattern}` is not a SPIFFE ID: write `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/ACCOUNT` \
             (a trailing `*` for a prefix), or use `namespaces`"
        ));
    }
    pattern
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii())
        .then(|| format!("`{pattern}` contains a space or a character a SPIFFE ID cannot hold"))
}

fn namespace_problem(pattern: &str) -> Option<String> {
    if let Some(why) = star_problem(pattern) {
        return Some(why);
    }
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    let valid = body
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    (!valid || pattern.is_empty()).then(|| {
        format!(
            "`{pattern}` is not a namespace: use lowercase letters, digits and `-` (a trailing \
             `*` for a prefix)"
        )
    })
}

fn path_problem(pattern: &str) -> Option<String> {
    if let Some(why) = star_problem(pattern) {
        return Some(why);
    }
    if pattern == "*" {
        return None;
    }
    if !pattern.starts_with('/') {
        return Some(format!(
            "`{pattern}` is not a path: paths start with `/` (a trailing `*` for a prefix)"
        ));
    }
    if pattern.contains(['?', '#']) {
        return Some(format!(
            "`{pattern}`: paths are matched without the query; drop what follows `?`"
        ));
    }
    // Requests are matched on their normalised path, so a pattern that is not normal would
    // never match. A prefix is checked as the start of a longer path: `/a/.*` may match
    // `/a/.well-known`, while `/a/../*` can match nothing.
    let (probe, is_prefix) = match pattern.strip_suffix('*') {
        Some(prefix) => (format!("{prefix}x"), true),
        None => (pattern.to_owned(), false),
    };
    let normal = normalize_path(&probe);
    if normal == probe {
        return None;
    }
    let suggestion = if is_prefix {
        format!("{}*", normal.strip_suffix('x').unwrap_or(&normal))
    } else {
        normal.into_owned()
    };
    Some(format!(
        "`{pattern}` is not a normalised path (requests are matched after dot segments are \
         removed, unreserved `%XX` decoded and `//` merged); write `{suggestion}`"
    ))
}

/// A method as written: a token, and upper case, since methods are case-sensitive and a
/// lowercase one would match no client's `GET`.
fn method(text: &str) -> Result<Method, String> {
    if text.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "`{text}`: methods are case-sensitive; write `{}`",
            text.to_ascii_uppercase()
        ));
    }
    Method::from_bytes(text.as_bytes())
        .ok()
        .filter(|_| !text.is_empty())
        .ok_or_else(|| format!("`{text}` is not an HTTP method (e.g. GET, POST)"))
}

#[cfg(test)]
mod tests;

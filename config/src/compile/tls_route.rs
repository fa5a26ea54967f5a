//! Compiling `TLSRoute`s: hostnames checked, one rule's backends resolved, routes attached to
//! the listeners that can pass TLS through.

use std::sync::Arc;

use super::http_route::backend_services;
use super::proxy::ListenerDraft;
use super::{resolve_service, Errors, ServiceIndexMap};
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::snapshot::{ListenerTls, Service, ServiceTls, TlsRoute};
use crate::spec::{Document, ListenerProtocol, Resource, TlsRouteSpec};

/// A compiled route with the hostnames it claims (lowercase, `*.` kept for wildcards).
pub(crate) type Attached = (Vec<String>, Arc<TlsRoute>);

/// Compiles every TLSRoute; returns the routes per listener index, in precedence order
/// (namespace, then name).
pub(crate) fn compile_all(
    docs: &[LoadedDoc],
    listeners: Option<&[ListenerDraft]>,
    services: &[Arc<Service>],
    index: &ServiceIndexMap,
    errors: &mut Errors,
) -> Vec<Vec<Attached>> {
    let mut routes: Vec<(&LoadedDoc, &Document<TlsRouteSpec>)> = docs
        .iter()
        .filter_map(|d| match &*d.resource {
            Resource::TlsRoute(r) => Some((d, r)),
            _ => None,
        })
        .collect();
    routes.sort_by(|a, b| {
        (&a.1.metadata.namespace, &a.1.metadata.name)
            .cmp(&(&b.1.metadata.namespace, &b.1.metadata.name))
    });
    let mut per_listener: Vec<Vec<Attached>> = vec![Vec::new(); listeners.map_or(0, <[_]>::len)];
    for (doc, route) in routes {
        let compiled = compile_route(doc, route, services, index, errors);
        let Some(listeners) = listeners else {
            continue;
        };
        let attached = attached_listeners(errors, doc, listeners, route);
        if let Some(compiled) = compiled {
            for l in attached {
                if let Some(slot) = per_listener.get_mut(l) {
                    slot.push(compiled.clone());
                }
            }
        }
    }
    per_listener
}

fn compile_route(
    doc: &LoadedDoc,
    route: &Document<TlsRouteSpec>,
    services: &[Arc<Service>],
    index: &ServiceIndexMap,
    errors: &mut Errors,
) -> Option<Attached> {
    let at = FieldPath::root().key("spec");
    let mut hostnames = Vec::new();
    if route.spec.hostnames.is_empty() {
        errors.at(
            doc,
            &at.key("hostnames"),
            "a TLSRoute needs at least one hostname (`hostnames: [api.example.com]`, or \
             `*.example.com` for a wildcard): connections are routed by their server name",
        );
    }
    for (i, host) in route.spec.hostnames.iter().enumerate() {
        let lower = host.to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        if super::names::is_dns_name(bare) && !bare.contains("..") {
            hostnames.push(lower);
        } else {
            errors.at(
                doc,
                &at.key("hostnames").index(i),
                format!(
                    "`{host}` is not a server name (a DNS name: no port, no scheme; \
                     `*.example.com` for a wildcard)"
                ),
            );
        }
    }
    let rule = match route.spec.rules.as_slice() {
        [one] => one,
        [] => {
            errors.at(
                doc,
                &at.key("rules"),
                "a TLSRoute needs one rule (`rules: [{backendRefs: [{name: SERVICE}]}]`)",
            );
            return None;
        }
        [_, extra @ ..] => {
            for i in 1..=extra.len() {
                errors.at(
                    doc,
                    &at.key("rules").index(i),
                    "a TLSRoute has one rule: a ClientHello offers nothing else to match on; \
                     split traffic with weights in the first rule's backendRefs, or route \
                     other hostnames with another TLSRoute",
                );
            }
            return None;
        }
    };
    let refs_at = at.key("rules").index(0).key("backendRefs");
    let backends = backend_services(
        doc,
        &refs_at,
        &rule.backend_refs,
        &route.metadata.namespace,
        services,
        index,
        errors,
        true,
    );
    for (i, r) in rule.backend_refs.iter().enumerate() {
        let namespace = r.namespace.as_deref();
        let Ok(si) = resolve_service(index, &route.metadata.namespace, &r.name, namespace) else {
            continue;
        };
        if let Some(ServiceTls::Simple { .. }) = services.get(si).and_then(|s| s.tls.as_ref()) {
            errors.at(
                doc,
                &refs_at.index(i).key("name"),
                format!(
                    "Service `{}` originates TLS (`tls.mode: simple`), but a TLSRoute passes \
                     the client's own TLS through: remove the Service's tls, or route with an \
                     HTTPRoute on a TLS-terminating listener",
                    r.name
                ),
            );
        }
    }
    let compiled = Arc::new(TlsRoute {
        name: route.metadata.name.as_str().into(),
        namespace: route.metadata.namespace.as_str().into(),
        backends: backends?,
    });
    Some((hostnames, compiled))
}

/// Whether a listener can pass TLS through: a TCP listener, or an intercepting HTTP one (which
/// sees TLS among the opaque connections it sniffs), that does not terminate TLS itself.
fn passes_tls_through(listener: &ListenerDraft) -> bool {
    (listener.protocol == ListenerProtocol::Tcp || !listener.mode.is_explicit())
        && listener.tls == ListenerTls::Disabled
}

/// Resolves `parentRefs` to listener indexes: every listener that can pass TLS through when
/// empty.
fn attached_listeners(
    errors: &mut Errors,
    doc: &LoadedDoc,
    listeners: &[ListenerDraft],
    route: &Document<TlsRouteSpec>,
) -> Vec<usize> {
    if route.spec.parent_refs.is_empty() {
        return (0..listeners.len())
            .filter(|&i| listeners.get(i).is_some_and(passes_tls_through))
            .collect();
    }
    let mut out = Vec::new();
    for (i, parent) in route.spec.parent_refs.iter().enumerate() {
        let here = FieldPath::root()
            .key("spec")
            .key("parentRefs")
            .index(i)
            .key("name");
        match listeners.iter().position(|l| l.name == parent.name) {
            Some(idx) if listeners.get(idx).is_some_and(passes_tls_through) => out.push(idx),
            Some(idx)
                if listeners
                    .get(idx)
                    .is_some_and(|l| l.tls != ListenerTls::Disabled) =>
            {
                errors.at(
                    doc,
                    &here,
                    format!(
                        "listener `{}` terminates TLS (`tls.mode`), so there is no ClientHello \
                         left to pass through: attach the TLSRoute to a listener without `tls`",
                        parent.name
                    ),
                )
            }
            Some(_) => errors.at(
                doc,
                &here,
                format!(
                    "listener `{}` is an explicit `protocol: http` listener: a TLSRoute attaches \
                     to `protocol: tcp` listeners and to intercepting (`mode: inbound|outbound`) \
                     ones",
                    parent.name
                ),
            ),
            None => {
                let known: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                errors.at(
                    doc,
                    &here,
                    format!(
                        "no listener `{}` in the ProxyConfig; known: {}",
                        parent.name,
                        known.join(", ")
                    ),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;

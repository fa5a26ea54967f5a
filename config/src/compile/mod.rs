//! Validated resources → one [`Snapshot`]. Every check happens here, every error is collected
//! with its location, and a snapshot is produced only when there is none.

mod authorization_policy;
mod discovery;
mod http_route;
mod names;
mod proxy;
mod service;
mod tcp_route;
mod tls_route;
mod tracing;

pub use tracing::is_workload_name;

use authorization_policy::Listeners;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::error::{ConfigError, ConfigErrors, FieldPath};
use crate::load::LoadedDoc;
use crate::snapshot::{ServiceIndex, Snapshot};
use crate::spec::{ListenerProtocol, Resource};
use crate::yaml::Node;

/// Collects errors; each is located through the document tree it refers to.
#[derive(Default)]
pub(crate) struct Errors(Vec<ConfigError>);

impl Errors {
    /// Records `message` at `path` of `doc`.
    pub(crate) fn at(&mut self, doc: &LoadedDoc, path: &FieldPath, message: impl Into<String>) {
        self.at_node(&doc.file, &doc.root, path, message);
    }

    /// How many errors are recorded so far.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    fn at_node(&mut self, file: &Path, root: &Node, path: &FieldPath, message: impl Into<String>) {
        let node = root.locate(path.segments());
        self.0.push(ConfigError {
            file: file.to_owned(),
            mark: node.mark,
            path: path.clone(),
            message: message.into(),
        });
    }
}

/// Services by `(namespace, name)`, for resolving `backendRefs`.
pub(crate) type ServiceIndexMap = HashMap<(String, String), ServiceIndex>;

/// Validates a set of documents the way the control process stores them: any number of
/// `ProxyConfig`s (one per node, each checked on its own), and Services and routes checked
/// together (references, weights, regexes...) without tying routes to any node's listeners.
pub fn validate(docs: &[LoadedDoc]) -> Result<(), ConfigErrors> {
    let mut errors = Errors::default();
    names::check_unique(docs, &mut errors);
    let (proxies, others): (Vec<&LoadedDoc>, Vec<&LoadedDoc>) = docs
        .iter()
        .partition(|d| matches!(*d.resource, Resource::ProxyConfig(_)));
    let mut tcp_listeners = BTreeSet::new();
    for doc in proxies {
        if let Some(proxy) = proxy::compile(doc, &mut errors) {
            tcp_listeners.extend(
                proxy
                    .listeners
                    .into_iter()
                    .filter(|l| l.protocol == ListenerProtocol::Tcp)
                    .map(|l| l.name),
            );
        }
    }
    let others: Vec<LoadedDoc> = others.into_iter().cloned().collect();
    let (services, index) = compile_services(&others, &mut errors);
    let stored = Listeners::Stored {
        tcp: &tcp_listeners,
    };
    let policies = authorization_policy::compile_all(&others, stored, &mut errors);
    http_route::compile_all(&others, None, &services, &index, &policies, &mut errors);
    tcp_route::compile_all(&others, None, &services, &index, &mut errors);
    tls_route::compile_all(&others, None, &services, &index, &mut errors);
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(sorted(errors))
    }
}

fn sorted(mut errors: Errors) -> ConfigErrors {
    errors.0.sort_by(|a, b| {
        (&a.file, a.mark.line, a.mark.column).cmp(&(&b.file, b.mark.line, b.mark.column))
    });
    ConfigErrors(errors.0)
}

fn compile_services(
    docs: &[LoadedDoc],
    errors: &mut Errors,
) -> (Vec<Arc<crate::snapshot::Service>>, ServiceIndexMap) {
    let mut services = Vec::new();
    let mut service_docs: Vec<&LoadedDoc> = docs
        .iter()
        .filter(|d| matches!(*d.resource, Resource::Service(_)))
        .collect();
    service_docs.sort_by(|a, b| {
        let (ma, mb) = (a.resource.metadata(), b.resource.metadata());
        (&ma.namespace, &ma.name).cmp(&(&mb.namespace, &mb.name))
    });
    let mut index = ServiceIndexMap::new();
    for doc in service_docs {
        if let Resource::Service(svc) = &*doc.resource {
            let compiled = service::compile(doc, svc, errors);
            index.insert(
                (svc.metadata.namespace.clone(), svc.metadata.name.clone()),
                services.len(),
            );
            services.push(Arc::new(compiled));
        }
    }
    (services, index)
}

/// Validates and compiles a set of documents into a snapshot.
///
/// The set must contain exactly one `ProxyConfig`.
pub fn compile(docs: &[LoadedDoc]) -> Result<Snapshot, ConfigErrors> {
    let mut errors = Errors::default();
    names::check_unique(docs, &mut errors);

    let (services, index) = compile_services(docs, &mut errors);

    let proxy_docs: Vec<&LoadedDoc> = docs
        .iter()
        .filter(|d| matches!(*d.resource, Resource::ProxyConfig(_)))
        .collect();
    let proxy = match proxy_docs.as_slice() {
        [one] => proxy::compile(one, &mut errors),
        [] => {
            errors.0.push(ConfigError {
                file: docs
                    .first()
                    .map_or_else(|| "<config>".into(), |d| d.file.to_path_buf()),
                mark: Default::default(),
                path: FieldPath::root(),
                message: "no ProxyConfig: the set needs exactly one (admin address and listeners)"
                    .into(),
            });
            None
        }
        [_, extra @ ..] => {
            for doc in extra {
                errors.at(
                    doc,
                    &FieldPath::root().key("kind"),
                    "a second ProxyConfig; the set needs exactly one",
                );
            }
            None
        }
    };

    let listeners = proxy.as_ref().map(|p| p.listeners.as_slice());
    let no_tcp = BTreeSet::new();
    let scope = listeners.map_or(Listeners::Stored { tcp: &no_tcp }, Listeners::Proxy);
    let policies = authorization_policy::compile_all(docs, scope, &mut errors);
    let (http, rule_count) =
        http_route::compile_all(docs, listeners, &services, &index, &policies, &mut errors);
    let tcp = tcp_route::compile_all(docs, listeners, &services, &index, &mut errors);
    let tls = tls_route::compile_all(docs, listeners, &services, &index, &mut errors);

    match proxy {
        Some(proxy) if errors.0.is_empty() => Ok(Snapshot {
            listeners: proxy::attach_routes(
                proxy.listeners,
                proxy::Routes {
                    http,
                    tcp,
                    tls,
                    authorization: policies.per_listener,
                },
            ),
            proxy: proxy.settings,
            services,
            rule_count,
            authorization_policies: policies.policies,
            resources: docs.iter().map(|d| d.resource.clone()).collect(),
        }),
        _ => Err(sorted(errors)),
    }
}

/// Resolves a backend reference against the service index: `Ok(index)` or an error message.
pub(crate) fn resolve_service(
    index: &ServiceIndexMap,
    route_namespace: &str,
    name: &str,
    namespace: Option<&str>,
) -> Result<ServiceIndex, String> {
    let ns = namespace.unwrap_or(route_namespace);
    index
        .get(&(ns.to_owned(), name.to_owned()))
        .copied()
        .ok_or_else(|| {
            let mut known: Vec<&str> = index
                .keys()
                .filter(|(n, _)| n == ns)
                .map(|(_, name)| name.as_str())
                .collect();
            known.sort_unstable();
            if known.is_empty() {
                format!("no Service `{name}` in namespace `{ns}` (there are no Services in it)")
            } else {
                format!(
                    "no Service `{name}` in namespace `{ns}`; known: {}",
                    known.join(", ")
                )
            }
        })
}

/// Reports a zero duration (every configured duration must be positive).
pub(crate) fn check_positive(
    errors: &mut Errors,
    doc: &LoadedDoc,
    path: &FieldPath,
    value: Option<crate::spec::Duration>,
) {
    if value.is_some_and(|d| d.get().is_zero()) {
        errors.at(doc, path, "must be greater than 0");
    }
}

/// Reports a value outside `min..=max`.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display + Copy>(
    errors: &mut Errors,
    doc: &LoadedDoc,
    path: &FieldPath,
    value: Option<T>,
    min: T,
    max: T,
) {
    if let Some(v) = value {
        if v < min || v > max {
            errors.at(
                doc,
                path,
                format!("{v} is out of range: must be between {min} and {max}"),
            );
        }
    }
}

#[cfg(test)]
mod tests;

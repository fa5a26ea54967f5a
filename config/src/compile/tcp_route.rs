//! Compiling `TCPRoute`s: at most one per TCP listener.

use std::sync::Arc;
use std::time::Duration;

use super::http_route::backend_services;
use super::proxy::{attached_listeners, ListenerDraft};
use super::{check_positive, Errors, ServiceIndexMap};
use crate::error::FieldPath;
use crate::load::LoadedDoc;
use crate::snapshot::{Service, TcpRoute};
use crate::spec::{ListenerProtocol, Resource};

/// Compiles every TCPRoute; returns the route per listener index.
pub(crate) fn compile_all(
    docs: &[LoadedDoc],
    listeners: Option<&[ListenerDraft]>,
    services: &[Arc<Service>],
    index: &ServiceIndexMap,
    errors: &mut Errors,
) -> Vec<Option<Arc<TcpRoute>>> {
    let mut per_listener: Vec<Option<Arc<TcpRoute>>> = vec![None; listeners.map_or(0, <[_]>::len)];
    for doc in docs {
        let Resource::TcpRoute(route) = &*doc.resource else {
            continue;
        };
        let at = FieldPath::root().key("spec");
        let backends = backend_services(
            doc,
            &at.key("backendRefs"),
            &route.spec.backend_refs,
            &route.metadata.namespace,
            services,
            index,
            errors,
            true,
        );
        let timeouts = route.spec.timeouts.as_ref();
        if let Some(t) = timeouts {
            check_positive(errors, doc, &at.key("timeouts").key("connect"), t.connect);
            check_positive(errors, doc, &at.key("timeouts").key("idle"), t.idle);
        }
        let Some(backends) = backends else {
            continue;
        };
        let compiled = Arc::new(TcpRoute {
            name: route.metadata.name.as_str().into(),
            backends,
            connect_timeout: timeouts
                .and_then(|t| t.connect)
                .map_or(Duration::from_secs(5), |d| d.get()),
            idle_timeout: timeouts
                .and_then(|t| t.idle)
                .map_or(Duration::from_secs(3600), |d| d.get()),
        });
        let Some(listeners) = listeners else {
            continue;
        };
        for l in attached_listeners(
            errors,
            doc,
            listeners,
            &route.spec.parent_refs,
            ListenerProtocol::Tcp,
        ) {
            match &per_listener[l] {
                Some(existing) => errors.at(
                    doc,
                    &at.key("parentRefs"),
                    format!(
                        "listener `{}` already has TCPRoute `{}`; a TCP listener serves one route",
                        listeners[l].name, existing.name
                    ),
                ),
                None => per_listener[l] = Some(compiled.clone()),
            }
        }
    }
    per_listener
}

//! The configuration being served: one compiled snapshot plus the runtime pieces built for it,
//! swapped as one value so everything a request sees agrees.

use std::collections::HashMap;
use std::sync::Arc;

use strait_config::snapshot::{HttpRule, Listener, Serves};
use strait_config::spec::{LbPolicy, ServiceProtocol};
use strait_config::Snapshot;

use crate::metrics::{unrouted, RequestMetrics};
use crate::service::balance::{Balancer, Policy};
use crate::service::endpoint::{Endpoint, Pool};

/// One applied configuration version.
#[derive(Debug)]
pub struct Active {
    /// Increases by one with every applied reload, from 1.
    pub version: u64,
    /// Where it came from (file path or control URL).
    pub source: Arc<str>,
    /// The compiled config.
    pub snapshot: Snapshot,
    /// Per service (same index as `snapshot.services`): endpoints and picker.
    pub services: Vec<ServiceRuntime>,
    /// Per listener (same index as `snapshot.listeners`): metric handles.
    pub listeners: Vec<ListenerRuntime>,
}

/// A service's endpoints (long-lived) and the picker built for this version.
#[derive(Debug)]
pub struct ServiceRuntime {
    /// Endpoints, same order as the compiled service's.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Picks among `endpoints`.
    pub balancer: Balancer,
}

/// Metric handles of one listener.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// `[rule id][backend position]`.
    pub rules: Vec<Vec<RequestMetrics>>,
    /// For requests answered before a route was chosen.
    pub unrouted: RequestMetrics,
}

impl Active {
    /// The listener called `name` and its index.
    pub fn listener(&self, name: &str) -> Option<(usize, &Listener)> {
        self.snapshot
            .listeners
            .iter()
            .enumerate()
            .find(|(_, l)| &*l.name == name)
    }

    /// Metric handles for a request on listener `li` served by `rule` via backend `position`.
    pub fn request_metrics(
        &self,
        li: usize,
        rule: &HttpRule,
        position: usize,
    ) -> Option<&RequestMetrics> {
        self.listeners.get(li)?.rules.get(rule.id)?.get(position)
    }
}

/// Identity of an endpoint across reloads: same service, address and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct EndpointKey {
    namespace: Arc<str>,
    service: Arc<str>,
    address: std::net::SocketAddr,
    protocol: ServiceProtocol,
}

/// Long-lived endpoint state, reconciled on every reload; owned by the reloader alone.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    endpoints: HashMap<EndpointKey, Arc<Endpoint>>,
}

impl EndpointRegistry {
    /// Builds the runtime for `snapshot`, reusing endpoints that still exist and dropping
    /// those that are gone (their pools close once in-flight requests let go).
    pub fn build(&mut self, version: u64, source: Arc<str>, snapshot: Snapshot) -> Active {
        let mut next = HashMap::with_capacity(self.endpoints.len());
        let services = snapshot
            .services
            .iter()
            .map(|svc| {
                let endpoints: Vec<Arc<Endpoint>> = svc
                    .endpoints
                    .iter()
                    .map(|ep| {
                        let key = EndpointKey {
                            namespace: svc.namespace.clone(),
                            service: svc.name.clone(),
                            address: ep.address,
                            protocol: svc.protocol,
                        };
                        let endpoint = self.endpoints.get(&key).cloned().unwrap_or_else(|| {
                            Arc::new(Endpoint::new(ep.address, new_pool(svc.protocol, svc.max_idle_per_endpoint)))
                        });
                        metrics::gauge!(crate::metrics::ENDPOINT_HEALTHY, "service" => svc.name.clone(), "endpoint" => endpoint.label.clone()).set(1.0);
                        next.insert(key, endpoint.clone());
                        endpoint
                    })
                    .collect();
                let weights: Vec<u32> = svc.endpoints.iter().map(|e| e.weight).collect();
                let keys: Vec<&str> = endpoints.iter().map(|e| &*e.label).collect();
                ServiceRuntime {
                    balancer: Balancer::new(policy(svc.lb_policy), &weights, &keys),
                    endpoints,
                }
            })
            .collect();
        self.endpoints = next;
        let listeners = snapshot
            .listeners
            .iter()
            .map(|l| listener_runtime(l, &snapshot))
            .collect();
        Active {
            version,
            source,
            snapshot,
            services,
            listeners,
        }
    }
}

fn listener_runtime(listener: &Listener, snapshot: &Snapshot) -> ListenerRuntime {
    let mut rules: Vec<Vec<RequestMetrics>> =
        (0..snapshot.rule_count).map(|_| Vec::new()).collect();
    if let Serves::Http(table) = &listener.serves {
        for rule in table.rules() {
            if let Some(slot) = rules.get_mut(rule.id) {
                if slot.is_empty() {
                    *slot = rule
                        .backends
                        .iter()
                        .map(|(s, _)| {
                            let service = snapshot
                                .services
                                .get(s)
                                .map_or_else(|| Arc::from(""), |svc| svc.name.clone());
                            RequestMetrics::new(&listener.name, &rule.route, &service)
                        })
                        .collect();
                }
            }
        }
    }
    ListenerRuntime {
        rules,
        unrouted: unrouted(&listener.name),
    }
}

fn new_pool(protocol: ServiceProtocol, max_idle: usize) -> Pool {
    match protocol {
        ServiceProtocol::Http1 => {
            Pool::Http1(Box::new(crossbeam_queue::ArrayQueue::new(max_idle.max(1))))
        }
        ServiceProtocol::Http2 | ServiceProtocol::Grpc => Pool::Http2(Default::default()),
        ServiceProtocol::Tcp => Pool::Tcp,
    }
}

fn policy(p: LbPolicy) -> Policy {
    match p {
        LbPolicy::RoundRobin => Policy::RoundRobin,
        LbPolicy::LeastRequest => Policy::LeastRequest,
        LbPolicy::Random => Policy::Random,
        LbPolicy::RingHash => Policy::RingHash,
    }
}

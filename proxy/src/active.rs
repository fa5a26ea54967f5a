//! The configuration being served: one compiled snapshot plus the runtime pieces built for it,
//! swapped as one value so everything a request sees agrees.

use std::collections::HashMap;
use std::sync::Arc;

use strait_config::snapshot::{EndpointAddress, HttpRule, Listener, Serves, ServiceTls};
use strait_config::spec::{LbPolicy, ListenerMode, ServiceProtocol};
use strait_config::Snapshot;

use crate::authz::DecisionCounters;
use crate::identity::IdentityStore;
use crate::metrics::{unrouted, RequestMetrics};
use crate::ratelimit::RateLimiter;
use crate::service::balance::{Balancer, Policy};
use crate::service::breaker::Breaker;
use crate::service::dns::Resolution;
use crate::service::endpoint::{Endpoint, Pool, Target};
use crate::service::health_check::{self, Checker};
use crate::service::idle::IdleStack;
use crate::service::outlier::Outlier;
use crate::service::state::ServiceState;
use crate::tls::client::UpstreamTls;
use crate::trace::export::{ExportKey, SpanQueue};
use crate::trace::Tracer;

/// One applied configuration version.
#[derive(Debug)]
pub struct Active {
    /// This proxy's own counter: increases by one with every applied reload, from 1 (the
    /// `strait_config_version` gauge).
    pub version: u64,
    /// The control's revision of the documents being served (`None`: config from files only).
    /// What `/config` shows as `version`, the number `straitctl proxies` shows.
    pub control_version: Option<u64>,
    /// Where it came from (file path or control URL).
    pub source: Arc<str>,
    /// The compiled config.
    pub snapshot: Snapshot,
    /// Per service (same index as `snapshot.services`): endpoints and picker.
    pub services: Vec<ServiceRuntime>,
    /// Per listener (same index as `snapshot.listeners`): metric handles.
    pub listeners: Vec<ListenerRuntime>,
    /// Per HTTP rule (index [`HttpRule::id`]): policy state.
    pub rules: Vec<RuleRuntime>,
    /// `strait_authz_decisions_total` handles of this version's AuthorizationPolicies.
    pub authz: DecisionCounters,
    /// Trace propagation and span export (`spec.tracing`), if configured.
    pub tracer: Option<Tracer>,
}

/// Long-lived policy state of one rule.
#[derive(Debug, Default)]
pub struct RuleRuntime {
    /// The rule's limiter, if it has a rate limit.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// `strait_ratelimit_rejected_total{route}`.
    pub rate_limited: Option<metrics::Counter>,
}

/// A service's endpoints (long-lived) and the picker built for this version.
#[derive(Debug)]
pub struct ServiceRuntime {
    /// Endpoints, same order as the compiled service's.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Picks among `endpoints`.
    pub balancer: Balancer,
    /// State that outlives config versions (retry budget, counters).
    pub state: Arc<ServiceState>,
    /// Circuit breaker and limits, if configured (kept while the policy is unchanged).
    pub breaker: Option<Arc<Breaker>>,
    /// Outlier detection, if configured (kept while the policy is unchanged).
    pub outlier: Option<Arc<Outlier>>,
}

impl ServiceRuntime {
    /// Picks an endpoint, avoiding `avoid` (the one a retry follows) when another is available.
    pub fn pick(&self, hash: Option<u64>, avoid: Option<usize>) -> Option<usize> {
        let first = self.balancer.pick(&self.endpoints, hash)?;
        match avoid {
            Some(previous) if previous == first => self
                .balancer
                .pick_other(&self.endpoints, previous)
                .or(Some(first)),
            _ => Some(first),
        }
    }
}

/// Metric handles of one listener.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// `[rule id][backend position]`.
    pub rules: Vec<Vec<RequestMetrics>>,
    /// For requests answered before a route was chosen.
    pub unrouted: RequestMetrics,
    /// For intercepted requests no route claims, passed through to their original destination
    /// (`route=""`, `service="passthrough"`); intercepting listeners only.
    pub passthrough: Option<RequestMetrics>,
    /// The source (`client_id`) of requests from clients without a certificate: the proxy's
    /// workload, whose own calls an outbound or explicit listener receives (`None` on
    /// `mode: inbound` listeners, whose callers are elsewhere).
    pub source: Option<Arc<str>>,
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

    /// Policy state of `rule`.
    pub fn rule(&self, rule: &HttpRule) -> Option<&RuleRuntime> {
        self.rules.get(rule.id)
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
    address: EndpointAddress,
    protocol: ServiceProtocol,
    /// Connections made with other TLS settings are not reused.
    tls: Option<ServiceTls>,
}

/// Identity of a rule's policy state across reloads: route and rule position.
type RuleKey = (Arc<str>, Arc<str>, usize);

/// Identity of a service across reloads: namespace and name.
type ServiceKey = (Arc<str>, Arc<str>);

/// Long-lived state — endpoints with their pools, rate-limit buckets — reconciled on every
/// reload: kept for what still exists (and, for policies, is unchanged), dropped otherwise.
/// Owned by the reloader alone.
#[derive(Debug)]
pub struct EndpointRegistry {
    /// The proxy's identity, which mesh TLS presents and verifies peers against.
    identity: Arc<IdentityStore>,
    /// Each service's TLS client configuration (and so its session cache), kept while the
    /// service's TLS settings and protocol stay the same.
    tls: HashMap<ServiceKey, (ServiceTls, ServiceProtocol, Arc<UpstreamTls>)>,
    endpoints: HashMap<EndpointKey, Arc<Endpoint>>,
    services: HashMap<ServiceKey, Arc<ServiceState>>,
    breakers: HashMap<ServiceKey, Arc<Breaker>>,
    outliers: HashMap<ServiceKey, Arc<Outlier>>,
    checkers: HashMap<EndpointKey, Checker>,
    limiters: HashMap<RuleKey, Arc<RateLimiter>>,
    /// The collector's span queue, kept while `spec.tracing` names the same collector.
    spans: Option<Arc<SpanQueue>>,
}

impl EndpointRegistry {
    /// An empty registry; mesh TLS uses `identity`.
    pub fn new(identity: Arc<IdentityStore>) -> Self {
        Self {
            identity,
            tls: HashMap::new(),
            endpoints: HashMap::new(),
            services: HashMap::new(),
            breakers: HashMap::new(),
            outliers: HashMap::new(),
            checkers: HashMap::new(),
            limiters: HashMap::new(),
            spans: None,
        }
    }

    /// Builds the runtime for `snapshot`, reusing endpoints and policy state that still exist
    /// (policy state only while its policy is unchanged) and dropping the rest: gone endpoints'
    /// pools close once in-flight requests let go, their health checks stop.
    pub fn build(&mut self, version: u64, source: Arc<str>, snapshot: Snapshot) -> Active {
        let mut endpoints_next = HashMap::with_capacity(self.endpoints.len());
        let mut states_next = HashMap::with_capacity(snapshot.services.len());
        let mut breakers_next = HashMap::new();
        let mut outliers_next = HashMap::new();
        let mut checkers_next = HashMap::new();
        let mut tls_next = HashMap::new();
        let mut services = Vec::with_capacity(snapshot.services.len());
        for svc in &snapshot.services {
            let id: ServiceKey = (svc.namespace.clone(), svc.name.clone());
            let tls = svc.tls.as_ref().map(|tls| {
                let upstream = match self.tls.get(&id) {
                    Some((t, p, built)) if t == tls && *p == svc.protocol => built.clone(),
                    _ => Arc::new(UpstreamTls::new(
                        &svc.name,
                        tls,
                        svc.protocol,
                        &self.identity,
                    )),
                };
                tls_next.insert(id.clone(), (tls.clone(), svc.protocol, upstream.clone()));
                upstream
            });
            let outlier =
                svc.outlier_detection
                    .as_ref()
                    .map(|policy| match self.outliers.get(&id) {
                        Some(o) if o.policy == *policy => o.clone(),
                        _ => Arc::new(Outlier::new(policy.clone())),
                    });
            let outlier_changed = match (self.outliers.get(&id), &outlier) {
                (Some(old), Some(new)) => !Arc::ptr_eq(old, new),
                (None, None) => false,
                _ => true,
            };
            let mut endpoints = Vec::with_capacity(svc.endpoints.len());
            for ep in &svc.endpoints {
                let key = EndpointKey {
                    namespace: svc.namespace.clone(),
                    service: svc.name.clone(),
                    address: ep.address.clone(),
                    protocol: svc.protocol,
                    tls: svc.tls.clone(),
                };
                let endpoint = match self.endpoints.get(&key) {
                    Some(existing) => {
                        if outlier_changed {
                            Outlier::reset(existing);
                        }
                        existing.clone()
                    }
                    None => Arc::new(
                        Endpoint::new(
                            &svc.name,
                            target(&ep.address),
                            ep.address.to_string().into(),
                            new_pool(svc.protocol, svc.max_idle_per_endpoint),
                        )
                        .with_tls(tls.clone()),
                    ),
                };
                match &svc.health_check {
                    Some(check) => {
                        let checker = match self.checkers.remove(&key) {
                            Some(running) if running.check == *check => running,
                            _ => health_check::start(endpoint.clone(), svc.protocol, check.clone()),
                        };
                        checkers_next.insert(key.clone(), checker);
                    }
                    None => {
                        endpoint.set_out(crate::service::endpoint::OutOfRotation::Unhealthy, false);
                    }
                }
                endpoints_next.insert(key, endpoint.clone());
                endpoints.push(endpoint);
            }
            let weights: Vec<u32> = svc.endpoints.iter().map(|e| e.weight).collect();
            let keys: Vec<&str> = endpoints.iter().map(|e| &*e.label).collect();
            let balancer = Balancer::new(policy(svc.lb_policy), &weights, &keys);
            let state = self
                .services
                .get(&id)
                .cloned()
                .unwrap_or_else(|| Arc::new(ServiceState::new(&svc.name)));
            let breaker = svc
                .circuit_breaker
                .as_ref()
                .map(|policy| match self.breakers.get(&id) {
                    Some(b) if b.policy == *policy => b.clone(),
                    _ => Arc::new(Breaker::new(&svc.name, policy.clone())),
                });
            if let Some(b) = &breaker {
                breakers_next.insert(id.clone(), b.clone());
            }
            if let Some(o) = &outlier {
                outliers_next.insert(id.clone(), o.clone());
            }
            states_next.insert(id, state.clone());
            services.push(ServiceRuntime {
                endpoints,
                balancer,
                state,
                breaker,
                outlier,
            });
        }
        self.endpoints = endpoints_next;
        self.tls = tls_next;
        self.services = states_next;
        self.breakers = breakers_next;
        self.outliers = outliers_next;
        // Checkers not carried over stop here (dropping aborts their tasks).
        self.checkers = checkers_next;
        let rules = self.rule_runtimes(&snapshot);
        let listeners = snapshot
            .listeners
            .iter()
            .map(|l| listener_runtime(l, &snapshot))
            .collect();
        let authz = DecisionCounters::new(&snapshot.authorization_policies);
        let tracer = self.tracer(&snapshot);
        Active {
            version,
            control_version: None,
            source,
            snapshot,
            services,
            listeners,
            rules,
            authz,
            tracer,
        }
    }

    /// The tracer of `snapshot`: its sampling ratio, and the running span queue when the
    /// collector is unchanged (a changed one starts a new queue; the old one sends what it
    /// holds and ends once the last request using it is done).
    fn tracer(&mut self, snapshot: &Snapshot) -> Option<Tracer> {
        let Some(settings) = &snapshot.proxy.tracing else {
            self.spans = None;
            return None;
        };
        let service = snapshot.proxy.workload.as_deref().unwrap_or("strait-proxy");
        let key = ExportKey::new(settings, service);
        let queue = match self.spans.take() {
            Some(running) if *running.key() == key => running,
            _ => match SpanQueue::start(key) {
                Ok(started) => Arc::new(started),
                Err(error) => {
                    tracing::warn!(%error, "tracing off: spans cannot be exported");
                    return None;
                }
            },
        };
        self.spans = Some(queue.clone());
        Some(Tracer::new(settings.sampling, queue))
    }

    fn rule_runtimes(&mut self, snapshot: &Snapshot) -> Vec<RuleRuntime> {
        let mut rules: Vec<RuleRuntime> = (0..snapshot.rule_count)
            .map(|_| RuleRuntime::default())
            .collect();
        let mut next = HashMap::new();
        for listener in &snapshot.listeners {
            let Serves::Http(table) = &listener.serves else {
                continue;
            };
            for rule in table.rules() {
                let (Some(spec), Some(slot)) = (&rule.policies.rate_limit, rules.get_mut(rule.id))
                else {
                    continue;
                };
                if slot.rate_limit.is_some() {
                    continue;
                }
                let key = (rule.namespace.clone(), rule.route.clone(), rule.index);
                let limiter = match self.limiters.get(&key) {
                    Some(existing) if existing.spec == *spec => existing.clone(),
                    _ => Arc::new(RateLimiter::new(spec)),
                };
                next.insert(key, limiter.clone());
                slot.rate_limit = Some(limiter);
                slot.rate_limited = Some(
                    metrics::counter!(crate::metrics::RATELIMIT_REJECTED, "route" => rule.route.clone()),
                );
            }
        }
        self.limiters = next;
        rules
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
        passthrough: (!listener.mode.is_explicit()).then(|| {
            RequestMetrics::new(
                &listener.name,
                &Arc::from(""),
                &Arc::from(crate::intercept::passthrough::SERVICE),
            )
        }),
        source: snapshot
            .proxy
            .workload
            .clone()
            .filter(|_| listener.mode != ListenerMode::Inbound),
    }
}

/// Where a new endpoint at `address` is dialled (a host name starts being resolved: the
/// endpoint keeps it resolved for as long as it exists).
fn target(address: &EndpointAddress) -> Target {
    match address {
        EndpointAddress::Ip(address) => Target::Fixed(*address),
        EndpointAddress::Host { name, port } => {
            Target::Host(Resolution::start(name.clone(), *port))
        }
    }
}

fn new_pool(protocol: ServiceProtocol, max_idle: usize) -> Pool {
    match protocol {
        ServiceProtocol::Http1 => Pool::Http1(IdleStack::new(max_idle)),
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

//! Endpoints from the cluster: what the EndpointSlices of each Kubernetes Service say, kept
//! in one table ([`EndpointTable`]), and a `discovery: kubernetes` Service document turned into
//! the static one a proxy runs ([`render`]).
//!
//! An endpoint is pushed while it is ready: `conditions.ready` not false (the API says an
//! unset `ready` means ready) and not `terminating`. A terminating endpoint, even while still
//! `serving`, drops out of the pushed set: the proxy sends it no new request and lets the
//! requests it has finish (its removal drains). Each endpoint carries the ServiceAccount of
//! the Pod its `targetRef` names, looked up by [`watch`], so a `tls.mode: mesh` Service
//! without `identities` expects exactly those pods' SPIFFE IDs.

pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use strait_config::spec::PortRef;

/// The label an EndpointSlice carries with the name of the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One EndpointSlice, reduced to what the proxies need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// Namespace of the slice and of its Service.
    pub namespace: String,
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub service: String,
    /// Its ports: (name, empty when unnamed; port number).
    pub ports: Vec<(String, u16)>,
    /// Its endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// Its first address (the API's consumers may use the first only; they are fungible).
    pub address: IpAddr,
    /// Ready for new requests: ready (or unset) and not terminating.
    pub ready: bool,
    /// The Pod behind it (its `targetRef`, when that is a Pod).
    pub pod: Option<PodRef>,
}

/// A Pod named by an endpoint's `targetRef`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (a Pod re-created under the same name is another Pod).
    pub uid: String,
}

impl Slice {
    /// The slice as the proxies need it; `None` when it names no Service or holds FQDN
    /// addresses (host names are not resolved by Strait).
    pub fn from_api(slice: &EndpointSlice) -> Option<Self> {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            return None;
        }
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let service = slice
            .metadata
            .labels
            .as_ref()?
            .get(SERVICE_NAME_LABEL)?
            .clone();
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .filter_map(|e| {
                let address = e.addresses.first()?.parse().ok()?;
                let conditions = e.conditions.as_ref();
                let ready = conditions.and_then(|c| c.ready) != Some(false)
                    && conditions.and_then(|c| c.terminating) != Some(true);
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        Some(PodRef {
                            namespace: r.namespace.clone().unwrap_or_else(|| namespace.clone()),
                            name: r.name.clone()?,
                            uid: r.uid.clone().unwrap_or_default(),
                        })
                    });
                Some(SliceEndpoint {
                    address,
                    ready,
                    pod,
                })
            })
            .collect();
        Some(Self {
            namespace,
            service,
            ports,
            endpoints,
        })
    }
}

/// A ready endpoint of a Service's port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ready {
    /// `ip:port`.
    pub address: SocketAddr,
    /// The ServiceAccount of its Pod, when known.
    pub service_account: Option<String>,
}

/// Every EndpointSlice the control follows, and the ServiceAccounts of their Pods.
#[derive(Debug)]
pub struct EndpointTable {
    trust_domain: Option<String>,
    state: Mutex<TableState>,
}

#[derive(Debug, Default)]
struct TableState {
    /// By (namespace, slice name).
    slices: BTreeMap<(String, String), Slice>,
    /// ServiceAccount of each Pod looked up.
    accounts: HashMap<PodRef, String>,
}

/// A slice's identity in the table: (namespace, name).
pub type SliceKey = (String, String);

impl EndpointTable {
    /// An empty table; `trust_domain` (the control's `--trust-domain`) makes ServiceAccounts
    /// into SPIFFE IDs for `tls.mode: mesh`.
    pub fn new(trust_domain: Option<String>) -> Self {
        Self {
            trust_domain,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, TableState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces every slice (after a list); whether anything changed.
    pub fn replace(&self, slices: Vec<(SliceKey, Slice)>) -> bool {
        let slices: BTreeMap<_, _> = slices.into_iter().collect();
        let mut state = self.state();
        let pods: BTreeSet<&PodRef> = slices
            .values()
            .flat_map(|s| s.endpoints.iter().filter_map(|e| e.pod.as_ref()))
            .collect();
        state.accounts.retain(|pod, _| pods.contains(pod));
        let changed = state.slices != slices;
        state.slices = slices;
        changed
    }

    /// Adds or replaces one slice; whether anything changed.
    pub fn apply(&self, key: SliceKey, slice: Slice) -> bool {
        let mut state = self.state();
        if state.slices.get(&key) == Some(&slice) {
            return false;
        }
        state.slices.insert(key, slice);
        true
    }

    /// Removes one slice; whether it was there.
    pub fn remove(&self, key: &SliceKey) -> bool {
        self.state().slices.remove(key).is_some()
    }

    /// Records the ServiceAccount of a Pod.
    pub fn set_account(&self, pod: PodRef, service_account: String) {
        self.state().accounts.insert(pod, service_account);
    }

    /// Whether the ServiceAccount of `pod` is known.
    pub fn knows(&self, pod: &PodRef) -> bool {
        self.state().accounts.contains_key(pod)
    }

    /// The ready endpoints of `namespace/service` on `port`, sorted, each address once.
    pub fn ready(&self, namespace: &str, service: &str, port: &PortRef) -> Vec<Ready> {
        let state = self.state();
        let mut ready = BTreeMap::new();
        let slices = state
            .slices
            .values()
            .filter(|s| s.namespace == namespace && s.service == service);
        for slice in slices {
            let Some(number) = slice.ports.iter().find_map(|(name, number)| match port {
                PortRef::Name(wanted) => (name == wanted).then_some(*number),
                PortRef::Number(wanted) => (u32::from(*number) == *wanted).then_some(*number),
            }) else {
                continue;
            };
            for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
                let address = SocketAddr::new(endpoint.address, number);
                let service_account = endpoint
                    .pod
                    .as_ref()
                    .and_then(|p| state.accounts.get(p).cloned());
                let entry = ready.entry(address).or_insert(None);
                if entry.is_none() {
                    *entry = service_account;
                }
            }
        }
        ready
            .into_iter()
            .map(|(address, service_account)| Ready {
                address,
                service_account,
            })
            .collect()
    }
}

/// A `discovery: kubernetes` Service document as a proxy runs it: `discovery` and
/// `kubernetes` replaced by the ready `endpoints` (none without a cluster). A `tls.mode: mesh`
/// Service without `identities` gets its endpoints' SPIFFE IDs
/// (`spiffe://TD/ns/NS/sa/SA`), and only the endpoints whose identity is known.
pub fn render(document: &Value, table: Option<&EndpointTable>) -> Value {
    let mut doc = document.clone();
    let spec = &document["spec"];
    let own_namespace = document["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let kubernetes = &spec["kubernetes"];
    let namespace = kubernetes["namespace"].as_str().unwrap_or(own_namespace);
    let service = kubernetes["service"].as_str().unwrap_or_default();
    let port = match &kubernetes["port"] {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(PortRef::Number),
        Value::String(name) => Some(PortRef::Name(name.clone())),
        _ => None,
    };
    let mut ready = match (table, port) {
        (Some(table), Some(port)) => table.ready(namespace, service, &port),
        _ => Vec::new(),
    };
    let mesh_peers_unnamed = spec["tls"]["mode"] == "mesh"
        && spec["tls"]["identities"]
            .as_array()
            .is_none_or(Vec::is_empty);
    if mesh_peers_unnamed {
        let trust_domain = table.and_then(|t| t.trust_domain.as_deref());
        let identity = |r: &Ready| {
            Some(format!(
                "spiffe://{}/ns/{namespace}/sa/{}",
                trust_domain?,
                r.service_account.as_deref()?
            ))
        };
        let before = ready.len();
        ready.retain(|r| identity(r).is_some());
        if ready.len() < before {
            tracing::warn!(namespace, service, left_out = before - ready.len(), "ready endpoints left out of a mesh Service: their pods' ServiceAccount (or the control's --trust-domain) is unknown");
        }
        let identities: BTreeSet<String> = ready.iter().filter_map(identity).collect();
        doc["spec"]["tls"]["identities"] = json!(identities);
    }
    if let Some(spec) = doc["spec"].as_object_mut() {
        spec.remove("discovery");
        spec.remove("kubernetes");
        let endpoints = ready
            .iter()
            .map(|r| json!({"address": r.address.to_string()}))
            .collect();
        spec.insert("endpoints".into(), Value::Array(endpoints));
    }
    doc
}

#[cfg(test)]
mod tests;

//! Config push: every proxy holds one long-lived stream and receives, for each new store
//! revision, the documents that concern it; it answers ACK, or NACK with the error.
//!
//! Wire format (one HTTP/2 stream per proxy, `GET /v1/push/stream?node=N&listeners=a,b`):
//! newline-delimited JSON, one [`NodeSnapshot`] per line, plus an empty line every
//! [`KEEPALIVE`] so dead peers are noticed. Answers go to `POST /v1/push/ack`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::ProxyDirectory;
use crate::events::EventSink;
use crate::kube::endpoints::EndpointTable;
use crate::policy::{PolicyStore, Revisions, StoredResource};
use crate::registry::Registry;
use crate::store::StoreError;

/// Longest NACK error kept (the rest is cut).
const MAX_ERROR: usize = 4096;

/// Interval of keep-alive lines on idle streams.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// What one proxy gets for one revision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeSnapshot {
    /// The store revision it reflects.
    pub version: u64,
    /// Documents (JSON form): the node's ProxyConfig if the control has one (named after the
    /// node), every Service (registry-discovered ones with their endpoints filled in), and the
    /// routes attached to the node's listeners.
    pub documents: Vec<Value>,
}

/// A proxy's answer to one version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// Node name.
    pub node: String,
    /// Version answered.
    pub version: u64,
    /// True: applied (ACK). False: rejected (NACK) with `error`.
    pub accepted: bool,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the control knows about one proxy, as `straitctl proxies` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// Node name.
    pub node: String,
    /// Whether its stream is open now.
    pub connected: bool,
    /// Listener names it reported.
    pub listeners: Vec<String>,
    /// Last version sent to it.
    pub sent_version: Option<u64>,
    /// Last version it applied (ACK).
    pub applied_version: Option<u64>,
    /// Last ACK: version and unix ms.
    pub last_ack: Option<(u64, u64)>,
    /// Last NACK: version, error, unix ms.
    pub last_nack: Option<(u64, String, u64)>,
    /// Unix ms of the last message from or to it.
    pub last_seen: u64,
    #[serde(skip)]
    sent_at: Option<Instant>,
    #[serde(skip)]
    streams: u32,
}

/// The push hub.
pub struct Push {
    policy: Arc<PolicyStore>,
    registry: Arc<Registry>,
    revisions: Arc<Revisions>,
    events: Arc<dyn EventSink>,
    proxies: Mutex<BTreeMap<String, ProxyStatus>>,
    /// Replicated stores: where every replica records its proxies.
    directory: Option<Arc<dyn ProxyDirectory>>,
    /// The stored resources at one revision, read once for every proxy rendering it.
    cached: Mutex<Option<(u64, Arc<Vec<StoredResource>>)>>,
    /// Endpoints of `discovery: kubernetes` Services, when the control reaches a cluster.
    kubernetes: Option<Arc<EndpointTable>>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Push {
    /// A hub over the store and registry.
    pub fn new(
        policy: Arc<PolicyStore>,
        registry: Arc<Registry>,
        revisions: Arc<Revisions>,
        events: Arc<dyn EventSink>,
        directory: Option<Arc<dyn ProxyDirectory>>,
    ) -> Self {
        metrics::describe_gauge!(
            "strait_control_proxies_connected",
            "Proxies with an open push stream."
        );
        metrics::describe_histogram!(
            "strait_control_push_seconds",
            metrics::Unit::Seconds,
            "Time from a store change to a proxy's ACK or NACK of it."
        );
        metrics::describe_counter!(
            "strait_control_push_answers_total",
            "Proxy answers to pushed versions, by result (ack or nack)."
        );
        Self {
            policy,
            registry,
            revisions,
            events,
            proxies: Mutex::new(BTreeMap::new()),
            directory,
            cached: Mutex::new(None),
            kubernetes: None,
        }
    }

    /// Takes `discovery: kubernetes` endpoints from `table`.
    pub fn with_kubernetes(mut self, table: Arc<EndpointTable>) -> Self {
        self.kubernetes = Some(table);
        self
    }

    fn proxies(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ProxyStatus>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shares this replica's view of a proxy with the other replicas.
    fn record(&self, status: Option<&ProxyStatus>) {
        if let (Some(directory), Some(status)) = (&self.directory, status) {
            if let Ok(json) = serde_json::to_vec(status) {
                directory.publish(&status.node, json);
            }
        }
    }

    /// Renders what `node` (with `listeners`, when the control has no ProxyConfig for it)
    /// should run at the current revision.
    pub fn render(&self, node: &str, listeners: &[String]) -> Result<NodeSnapshot, StoreError> {
        let version = *self.revisions.watch().borrow();
        let resources = self.resources_at(version)?;
        let proxy_config = resources
            .iter()
            .find(|r| r.kind == "ProxyConfig" && r.name == node);
        let listeners: Vec<String> = match proxy_config {
            Some(pc) => pc.document["spec"]["listeners"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .filter_map(|l| l["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            None => listeners.to_vec(),
        };
        let mut documents = Vec::with_capacity(resources.len());
        if let Some(pc) = proxy_config {
            documents.push(pc.document.clone());
        }
        // HTTPRoutes sent to this node, for the policies that target them.
        let mut routes = BTreeSet::new();
        for r in resources.iter() {
            match r.kind.as_str() {
                "Service" => documents.push(self.with_endpoints(&r.document)),
                "HTTPRoute" | "TCPRoute" | "TLSRoute" => {
                    if let Some(doc) = attach(&r.document, &listeners) {
                        if r.kind == "HTTPRoute" {
                            routes.insert((r.namespace.as_str(), r.name.as_str()));
                        }
                        documents.push(doc);
                    }
                }
                _ => {}
            }
        }
        for r in resources.iter().filter(|r| r.kind == "AuthorizationPolicy") {
            if let Some(doc) = target(&r.document, &r.namespace, &listeners, &routes) {
                documents.push(doc);
            }
        }
        Ok(NodeSnapshot { version, documents })
    }

    /// Every stored resource, read from the store once per revision however many proxies ask.
    fn resources_at(&self, version: u64) -> Result<Arc<Vec<StoredResource>>, StoreError> {
        let cached = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, resources)) = cached {
            if at == version {
                return Ok(resources);
            }
        }
        let resources = Arc::new(self.policy.list(None, None)?);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, resources.clone()));
        Ok(resources)
    }

    /// A Service document with `discovery: registry` or `kubernetes` turned into static
    /// endpoints.
    fn with_endpoints(&self, document: &Value) -> Value {
        if document["spec"]["discovery"] == "kubernetes" {
            return crate::kube::endpoints::render(document, self.kubernetes.as_deref());
        }
        if document["spec"]["discovery"] != "registry" {
            return document.clone();
        }
        let mut doc = document.clone();
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let endpoints: Vec<Value> = self
            .registry
            .endpoints(&namespace, &name)
            .into_iter()
            .map(|address| serde_json::json!({ "address": address }))
            .collect();
        if let Some(spec) = doc["spec"].as_object_mut() {
            spec.remove("discovery");
            spec.insert("endpoints".into(), Value::Array(endpoints));
        }
        doc
    }

    /// Marks `node`'s stream open.
    pub fn connected(&self, node: &str, listeners: Vec<String>) {
        let mut proxies = self.proxies();
        let entry = proxies
            .entry(node.to_owned())
            .or_insert_with(|| ProxyStatus {
                node: node.to_owned(),
                connected: true,
                listeners: Vec::new(),
                sent_version: None,
                applied_version: None,
                last_ack: None,
                last_nack: None,
                last_seen: now_ms(),
                sent_at: None,
                streams: 0,
            });
        entry.streams += 1;
        entry.connected = true;
        entry.listeners = listeners;
        entry.last_seen = now_ms();
        self.record(Some(entry));
        let count = proxies.values().filter(|p| p.connected).count();
        metrics::gauge!("strait_control_proxies_connected").set(count as f64);
        tracing::info!(node, "proxy connected");
    }

    /// Marks one of `node`'s streams closed.
    pub fn disconnected(&self, node: &str) {
        let mut proxies = self.proxies();
        if let Some(p) = proxies.get_mut(node) {
            p.streams = p.streams.saturating_sub(1);
            p.connected = p.streams > 0;
            p.last_seen = now_ms();
        }
        self.record(proxies.get(node));
        let count = proxies.values().filter(|p| p.connected).count();
        metrics::gauge!("strait_control_proxies_connected").set(count as f64);
        tracing::info!(node, "proxy disconnected");
    }

    /// Records that `version` was sent to `node`.
    pub fn sent(&self, node: &str, version: u64) {
        if let Some(p) = self.proxies().get_mut(node) {
            p.sent_version = Some(version);
            p.sent_at = Some(Instant::now());
            p.last_seen = now_ms();
            self.record(Some(p));
        }
    }

    /// Records a proxy's answer and publishes it on the bus.
    pub fn answer(&self, ack: &Ack) {
        {
            let mut proxies = self.proxies();
            let Some(p) = proxies.get_mut(&ack.node) else {
                return;
            };
            let now = now_ms();
            p.last_seen = now;
            if ack.accepted {
                p.applied_version = Some(ack.version);
                p.last_ack = Some((ack.version, now));
            } else {
                let mut error = ack.error.clone().unwrap_or_default();
                if error.len() > MAX_ERROR {
                    let mut cut = MAX_ERROR;
                    while !error.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    error.truncate(cut);
                    error.push_str("...");
                }
                p.last_nack = Some((ack.version, error, now));
            }
            if let (Some(at), Some(sent)) = (p.sent_at, p.sent_version) {
                if sent == ack.version {
                    metrics::histogram!("strait_control_push_seconds")
                        .record(at.elapsed().as_secs_f64());
                }
            }
            self.record(Some(p));
        }
        let result = if ack.accepted { "ack" } else { "nack" };
        metrics::counter!("strait_control_push_answers_total", "result" => result).increment(1);
        if ack.accepted {
            tracing::info!(node = %ack.node, version = ack.version, "proxy applied config");
            self.events.emit(
                "mesh.config.applied",
                serde_json::json!({"node": ack.node, "version": ack.version}),
            );
        } else {
            tracing::warn!(node = %ack.node, version = ack.version, error = ack.error.as_deref().unwrap_or(""), "proxy rejected config");
            self.events.emit(
                "mesh.config.rejected",
                serde_json::json!({"node": ack.node, "version": ack.version, "error": ack.error}),
            );
        }
    }

    /// Every proxy the control has seen since it started.
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.proxies().values().cloned().collect()
    }

    /// Every proxy of the control plane: with replicas, what every live replica recorded (per
    /// node, the view of the replica it is connected to, else the latest), else [`list`].
    ///
    /// [`list`]: Self::list
    pub fn list_all(&self) -> Vec<Value> {
        let local = || {
            self.list()
                .iter()
                .filter_map(|p| serde_json::to_value(p).ok())
                .collect()
        };
        let Some(directory) = &self.directory else {
            return local();
        };
        match directory.list() {
            Ok(views) => merge_views(views.iter().filter_map(|v| serde_json::from_slice(v).ok())),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read other replicas' proxies; listing this one's");
                local()
            }
        }
    }

    /// Wakes on every new revision.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revisions.watch()
    }
}

/// One entry per node: a connected view wins, then the most recently seen.
fn merge_views(views: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut by_node: BTreeMap<String, Value> = BTreeMap::new();
    for view in views {
        let Some(node) = view["node"].as_str().map(str::to_owned) else {
            continue;
        };
        let rank = |v: &Value| (v["connected"] == true, v["lastSeen"].as_u64().unwrap_or(0));
        match by_node.get(&node) {
            Some(kept) if rank(kept) >= rank(&view) => {}
            _ => {
                by_node.insert(node, view);
            }
        }
    }
    by_node.into_values().collect()
}

/// A route attached to `listeners`: kept if it names none of its parents (attaches to all) or
/// at least one of them, with `parentRefs` narrowed to those the node has. With no listener
/// known, routes are sent as they are.
fn attach(document: &Value, listeners: &[String]) -> Option<Value> {
    let parents = document["spec"]["parentRefs"].as_array();
    let Some(parents) = parents.filter(|p| !p.is_empty() && !listeners.is_empty()) else {
        return Some(document.clone());
    };
    let kept: Vec<Value> = parents
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| listeners.iter().any(|l| l == n))
        })
        .cloned()
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut doc = document.clone();
    doc["spec"]["parentRefs"] = Value::Array(kept);
    Some(doc)
}

/// An AuthorizationPolicy as `listeners` see it: kept if it targets one of them or one of the
/// `routes` sent to the node, with `targetRefs` narrowed to those. With no listener known,
/// listener targets are all kept (as routes are sent as they are).
fn target(
    document: &Value,
    namespace: &str,
    listeners: &[String],
    routes: &BTreeSet<(&str, &str)>,
) -> Option<Value> {
    let refs = document["spec"]["targetRefs"].as_array()?;
    let kept: Vec<Value> = refs
        .iter()
        .filter(|t| {
            let name = t["name"].as_str().unwrap_or_default();
            match t["kind"].as_str() {
                Some("Listener") => listeners.is_empty() || listeners.iter().any(|l| l == name),
                Some("HTTPRoute") => routes.contains(&(namespace, name)),
                _ => false,
            }
        })
        .cloned()
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut doc = document.clone();
    doc["spec"]["targetRefs"] = Value::Array(kept);
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replica_a_proxy_is_connected_to_speaks_for_it() {
        let views = [
            serde_json::json!({"node": "a", "connected": false, "lastSeen": 9}),
            serde_json::json!({"node": "a", "connected": true, "lastSeen": 5}),
            serde_json::json!({"node": "b", "connected": false, "lastSeen": 1}),
            serde_json::json!({"node": "b", "connected": false, "lastSeen": 3}),
        ];
        let merged = merge_views(views.into_iter());
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0]["connected"], true);
        assert_eq!(merged[1]["lastSeen"], 3);
    }

    #[test]
    fn routes_attach_to_the_nodes_listeners_only() {
        let route =
            serde_json::json!({"spec": {"parentRefs": [{"name": "web"}, {"name": "admin-web"}]}});
        let web = attach(&route, &["web".into()]).unwrap();
        assert_eq!(
            web["spec"]["parentRefs"],
            serde_json::json!([{"name": "web"}])
        );
        assert!(attach(&route, &["db".into()]).is_none());
        assert!(attach(&route, &[]).is_some(), "unknown listeners: send all");
        let any = serde_json::json!({"spec": {}});
        assert!(attach(&any, &["db".into()]).is_some());
    }

    #[test]
    fn policies_go_to_the_nodes_that_have_their_targets_only() {
        let policy = serde_json::json!({"spec": {"targetRefs": [
            {"kind": "Listener", "name": "inbound"},
            {"kind": "HTTPRoute", "name": "reviews"},
        ]}});
        let routes = BTreeSet::from([("default", "reviews")]);
        let none = BTreeSet::new();
        let both = target(&policy, "default", &["inbound".into()], &routes).unwrap();
        assert_eq!(both["spec"]["targetRefs"].as_array().map(Vec::len), Some(2));
        let route_only = target(&policy, "default", &["outbound".into()], &routes).unwrap();
        assert_eq!(
            route_only["spec"]["targetRefs"],
            serde_json::json!([{"kind": "HTTPRoute", "name": "reviews"}])
        );
        assert!(target(&policy, "default", &["outbound".into()], &none).is_none());
        assert!(
            target(&policy, "other", &["outbound".into()], &routes).is_none(),
            "a route of another namespace is another route"
        );
        assert!(
            target(&policy, "default", &[], &none).is_some(),
            "unknown listeners: send"
        );
    }
}

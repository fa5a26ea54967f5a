//! Config push: every proxy holds one long-lived stream and receives the documents that
//! concern it ([`render`]): all of them first, then, once a burst of store changes settled
//! ([`settle`]), only those that changed for it ([`delta`]); it answers each version with an
//! ACK, or a NACK with the error.
//!
//! Wire format (one HTTP/2 stream per proxy, `GET /v1/push/stream?node=N&listeners=a,b`):
//! newline-delimited JSON, one line per version (see [`delta`]), plus an empty line every
//! [`KEEPALIVE`] so dead peers are noticed. Answers go to `POST /v1/push/ack`.

pub mod delta;
pub mod render;
pub mod settle;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::backend::ProxyDirectory;
use crate::events::EventSink;
use crate::kube::endpoints::EndpointTable;
use crate::policy::{PolicyStore, Revisions, StoredResource};
use crate::registry::Registry;
use crate::store::StoreError;
use render::Piece;

/// Longest NACK error kept (the rest is cut).
const MAX_ERROR: usize = 4096;

/// Interval of keep-alive lines on idle streams.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

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
    /// Endpoints of `discovery: kubernetes` Services, when the control reaches a cluster.
    kubernetes: Option<Arc<EndpointTable>>,
    /// What proxies receive at one revision, rendered once for all of them.
    cached: Mutex<Option<Rendered>>,
    /// The revisions once a burst of changes settled: what streams push.
    settled: Arc<watch::Sender<u64>>,
}

/// The stored resources at one revision and, per set of listeners, what a proxy with those
/// listeners receives.
struct Rendered {
    revision: u64,
    resources: Vec<StoredResource>,
    /// Where in `resources` the ProxyConfig of each node is (the first in key order when
    /// namespaces repeat a name).
    proxy_configs: HashMap<String, usize>,
    by_listeners: HashMap<Vec<String>, Arc<Vec<Piece>>>,
}

impl Rendered {
    /// The stored resources at `revision`, nothing rendered yet.
    fn at(revision: u64, resources: Vec<StoredResource>) -> Self {
        let mut proxy_configs = HashMap::new();
        for (i, r) in resources.iter().enumerate() {
            if r.kind == "ProxyConfig" {
                proxy_configs.entry(r.name.clone()).or_insert(i);
            }
        }
        Self {
            revision,
            resources,
            proxy_configs,
            by_listeners: HashMap::new(),
        }
    }

    fn proxy_config(&self, node: &str) -> Option<&StoredResource> {
        self.proxy_configs
            .get(node)
            .and_then(|&i| self.resources.get(i))
    }
}

/// What one node receives at one revision.
pub struct NodeView {
    /// The store revision.
    pub version: u64,
    /// The node's ProxyConfig, if the control has one named after it.
    pub proxy_config: Option<Piece>,
    /// The rest (shared by every node with the same listeners).
    pub pieces: Arc<Vec<Piece>>,
}

impl NodeView {
    /// Every piece, the ProxyConfig first.
    pub fn iter(&self) -> impl Iterator<Item = &Piece> + Clone {
        self.proxy_config.iter().chain(self.pieces.iter())
    }
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
        let current = *revisions.watch().borrow();
        let settled = Arc::new(watch::Sender::new(current));
        tokio::spawn(settle::settle(
            revisions.watch(),
            settled.clone(),
            settle::QUIET,
            settle::MAX_DELAY,
        ));
        Self {
            policy,
            registry,
            revisions,
            events,
            proxies: Mutex::new(BTreeMap::new()),
            directory,
            cached: Mutex::new(None),
            kubernetes: None,
            settled,
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

    /// `f` of the stored resources at the current revision, read from the store once per
    /// revision.
    fn with_current<T>(&self, f: impl FnOnce(&mut Rendered) -> T) -> Result<T, StoreError> {
        let version = *self.revisions.watch().borrow();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        match cached.as_mut() {
            Some(rendered) if rendered.revision == version => Ok(f(rendered)),
            _ => {
                let rendered = cached.insert(Rendered::at(version, self.policy.list(None, None)?));
                Ok(f(rendered))
            }
        }
    }

    /// `f` of `node`'s ProxyConfig document at the current revision (`None`: the control has
    /// none named after it). What a proxy's every request is authorized by: no store read per
    /// request.
    pub fn with_proxy_config<T>(
        &self,
        node: &str,
        f: impl FnOnce(Option<&Value>) -> T,
    ) -> Result<T, StoreError> {
        self.with_current(|rendered| f(rendered.proxy_config(node).map(|r| &r.document)))
    }

    /// What `node` (with `listeners`, when the control has no ProxyConfig for it) receives at
    /// the current revision.
    pub fn view(&self, node: &str, listeners: &[String]) -> Result<NodeView, StoreError> {
        self.with_current(|rendered| {
            let proxy_config = rendered.proxy_config(node);
            let listeners = match proxy_config {
                Some(pc) => render::listeners_of(&pc.document),
                None => listeners.to_vec(),
            };
            let proxy_config =
                proxy_config.map(|pc| Piece::new(&pc.kind, &pc.namespace, &pc.name, &pc.document));
            let pieces = match rendered.by_listeners.get(&listeners) {
                Some(pieces) => pieces.clone(),
                None => {
                    let pieces = Arc::new(render::for_listeners(
                        &rendered.resources,
                        &listeners,
                        |d| self.with_endpoints(d),
                    ));
                    rendered.by_listeners.insert(listeners, pieces.clone());
                    pieces
                }
            };
            NodeView {
                version: rendered.revision,
                proxy_config,
                pieces,
            }
        })
    }

    /// Wakes when a burst of store changes settled.
    pub fn settled(&self) -> watch::Receiver<u64> {
        self.settled.subscribe()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backend::{Change, Commit, PolicyBackend, Resources};
    use crate::events::NoEvents;
    use strait_config::Source;

    /// The embedded backend, counting the listings it serves.
    #[derive(Debug)]
    struct CountingLists {
        inner: Arc<dyn PolicyBackend>,
        lists: AtomicUsize,
    }

    impl PolicyBackend for CountingLists {
        fn resources(&self, prefix: &str) -> Result<Resources, StoreError> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            self.inner.resources(prefix)
        }
        fn resource(&self, key: &str) -> Result<Option<StoredResource>, StoreError> {
            self.inner.resource(key)
        }
        fn history(&self, key: &str) -> Result<Vec<StoredResource>, StoreError> {
            self.inner.history(key)
        }
        fn commit(&self, base: u64, changes: &[Change]) -> Result<Commit, StoreError> {
            self.inner.commit(base, changes)
        }
    }

    fn proxy_config(node: &str, service_account: &str) -> String {
        format!(
            "apiVersion: strait.dev/v1alpha1\nkind: ProxyConfig\nmetadata: {{name: {node}}}\nspec:\n  admin: 127.0.0.1:0\n  identity: {{trustDomain: td.test, namespace: default, serviceAccount: {service_account}}}\n  listeners:\n    - {{name: web, address: 127.0.0.1:0, protocol: http}}\n---\n"
        )
    }

    #[tokio::test]
    async fn proxies_are_authorized_from_one_listing_per_revision() {
        let dir = std::env::temp_dir().join(format!("strait-push-{}", fastrand::u64(..)));
        let (backends, _) = crate::backend::embedded::Embedded::backends(&dir).unwrap();
        let revisions = Revisions::new(backends.revision);
        let counting = Arc::new(CountingLists {
            inner: backends.policy,
            lists: AtomicUsize::new(0),
        });
        let policy = Arc::new(PolicyStore::new(counting.clone(), revisions.clone()));
        let apply = |text: String| {
            let file = "proxies.yaml".into();
            policy.apply(&[Source { file, text }]).unwrap();
        };
        apply(
            (0..50)
                .map(|i| proxy_config(&format!("pod-{i}"), "web"))
                .collect(),
        );
        let registry = Arc::new(
            Registry::open(backends.registry, revisions.clone(), Arc::new(NoEvents)).unwrap(),
        );
        let push = Push::new(
            policy.clone(),
            registry,
            revisions,
            Arc::new(NoEvents),
            None,
        );
        let service_account = |node: &str| {
            push.with_proxy_config(node, |config| {
                config.map(|d| d["spec"]["identity"]["serviceAccount"].clone())
            })
            .unwrap()
        };

        let before = counting.lists.load(Ordering::Relaxed);
        for i in 0..200 {
            assert_eq!(
                service_account(&format!("pod-{}", i % 50)),
                Some("web".into())
            );
        }
        assert_eq!(service_account("pod-none"), None);
        assert_eq!(counting.lists.load(Ordering::Relaxed) - before, 1);

        // A new revision is read once (after the apply's own listing), and seen.
        apply(proxy_config("pod-7", "admin"));
        let before = counting.lists.load(Ordering::Relaxed);
        assert_eq!(service_account("pod-7"), Some("admin".into()));
        assert_eq!(service_account("pod-8"), Some("web".into()));
        assert!(push.view("pod-7", &[]).unwrap().proxy_config.is_some());
        assert_eq!(counting.lists.load(Ordering::Relaxed) - before, 1);
        let _ = std::fs::remove_dir_all(dir);
    }

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
}

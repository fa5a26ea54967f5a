//! The versioned policy store: `apply`, `get`, `delete`, history.
//!
//! Every change is validated by the same config crate the proxy uses, against the whole stored
//! set (a route may not point at a Service that does not exist, a Service still referenced may
//! not be deleted), so whatever the store holds always compiles. Every resource carries a
//! `resourceVersion` (the store's revision when it last changed); an apply or delete carrying a
//! stale one is refused (optimistic concurrency). The last [`HISTORY_DEPTH`] versions of each
//! resource are kept.
//!
//! Deciding is pure ([`plan_apply`], [`plan_delete`]); the backend commits the decision only if
//! no policy changed since the read it was based on, else the decision is made again (another
//! replica wrote first).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use strait_config::load::parse_sources;
use strait_config::{ConfigErrors, LoadedDoc, Source};
use tokio::sync::watch;

use crate::backend::{Change, Commit, PolicyBackend};
use crate::store::StoreError;

/// Versions kept per resource.
pub const HISTORY_DEPTH: usize = 10;

/// Reads and decisions before giving up when other replicas keep committing first.
const ATTEMPTS: usize = 8;

/// A resource as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoredResource {
    /// `Service`, `HTTPRoute`, ...
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The store revision of its last change.
    pub resource_version: u64,
    /// The document (JSON form of the YAML), `metadata.resourceVersion` included.
    pub document: serde_json::Value,
    /// Unix milliseconds of the change.
    pub updated_at: u64,
    /// History only: this version is a deletion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl StoredResource {
    fn key(&self) -> String {
        key(&self.kind, &self.namespace, &self.name)
    }
}

/// What happened to one applied document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its version now.
    pub resource_version: u64,
    /// `created`, `configured` or `unchanged`.
    pub result: &'static str,
}

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The documents (or the set they would make) are invalid.
    #[error("invalid configuration ({} errors)", .0.len())]
    Invalid(ConfigErrors),
    /// A `resourceVersion` does not match the stored one.
    #[error("{kind} {namespace}/{name}: resourceVersion {given} is stale (current: {current})")]
    Conflict {
        /// Kind.
        kind: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The version given.
        given: String,
        /// The stored version (`none` when it does not exist).
        current: String,
    },
    /// No such resource.
    #[error("{kind} {namespace}/{name} not found")]
    NotFound {
        /// Kind.
        kind: String,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Other writers kept committing first (every attempt was based on a stale read).
    #[error("the store kept changing during this write; try again")]
    Busy,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Policies come from somewhere else (`--policies kubernetes`): the message says where.
    #[error("{0}")]
    ReadOnly(&'static str),
}

/// The policy store.
#[derive(Debug)]
pub struct PolicyStore {
    backend: Arc<dyn PolicyBackend>,
    /// Serialises this replica's writes (other replicas' are caught by the commit's check).
    writer: Mutex<()>,
    changes: Arc<Revisions>,
    /// Set when users may not write (policies come from the cluster): why.
    read_only: Option<&'static str>,
}

/// `Kind/namespace/name`.
pub fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// The canonical kind for what a user typed (`svc`, `services`, `httproute`...).
pub fn canonical_kind(user: &str) -> Option<&'static str> {
    match user.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => Some("Service"),
        "httproute" | "httproutes" => Some("HTTPRoute"),
        "tcproute" | "tcproutes" => Some("TCPRoute"),
        "tlsroute" | "tlsroutes" => Some("TLSRoute"),
        "proxyconfig" | "proxyconfigs" => Some("ProxyConfig"),
        "authorizationpolicy" | "authorizationpolicies" | "authz" => Some("AuthorizationPolicy"),
        _ => None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl PolicyStore {
    /// The store on `backend`; changes are announced on `changes`.
    pub fn new(backend: Arc<dyn PolicyBackend>, changes: Arc<Revisions>) -> Self {
        Self {
            backend,
            writer: Mutex::new(()),
            changes,
            read_only: None,
        }
    }

    /// The same store refusing `apply` and `delete` with `why`; only [`replace`](Self::replace)
    /// writes.
    pub fn read_only(mut self, why: &'static str) -> Self {
        self.read_only = Some(why);
        self
    }

    /// Makes the stored set exactly `documents` (`Kind/namespace/name` → document, already
    /// valid together): changed ones are stored, missing ones deleted, in one commit. The
    /// revision it made, or `None` when nothing changed.
    pub fn replace(
        &self,
        documents: &BTreeMap<String, serde_json::Value>,
    ) -> Result<Option<u64>, PolicyError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..ATTEMPTS {
            let current = self.backend.resources("")?;
            let changes = plan_replace(documents, &current.items);
            if changes.is_empty() {
                return Ok(None);
            }
            if let Some(versions) = self.commit(current.revision, &changes)? {
                return Ok(versions.into_iter().max());
            }
        }
        Err(PolicyError::Busy)
    }

    /// Every current resource, in key order.
    pub fn list(
        &self,
        kind: Option<&str>,
        namespace: Option<&str>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let prefix = match (kind, namespace) {
            (Some(k), Some(ns)) => format!("{k}/{ns}/"),
            (Some(k), None) => format!("{k}/"),
            _ => String::new(),
        };
        Ok(self
            .backend
            .resources(&prefix)?
            .items
            .into_iter()
            .filter(|r| namespace.is_none_or(|ns| r.namespace == ns))
            .collect())
    }

    /// One resource.
    pub fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredResource>, StoreError> {
        self.backend.resource(&key(kind, namespace, name))
    }

    /// Past versions of one resource, oldest first (deletions included).
    pub fn history(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        self.backend.history(&key(kind, namespace, name))
    }

    /// Validates `sources` (multi-document YAML) together with everything stored, then stores
    /// every document whose content changed, all in one transaction.
    pub fn apply(&self, sources: &[Source]) -> Result<Vec<Applied>, PolicyError> {
        if let Some(why) = self.read_only {
            return Err(PolicyError::ReadOnly(why));
        }
        let docs = parse_sources(sources).map_err(PolicyError::Invalid)?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..ATTEMPTS {
            let current = self.backend.resources("")?;
            let (mut applied, changes) = plan_apply(&docs, &current.items)?;
            if changes.is_empty() {
                return Ok(applied);
            }
            let Some(versions) = self.commit(current.revision, &changes)? else {
                continue;
            };
            let mut versions = versions.into_iter();
            for a in applied.iter_mut().filter(|a| a.result != "unchanged") {
                a.resource_version = versions.next().unwrap_or(a.resource_version);
            }
            return Ok(applied);
        }
        Err(PolicyError::Busy)
    }

    /// Deletes one resource if the rest still validates without it (and, when `expected` is
    /// given, only if it is still at that version).
    pub fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        expected: Option<&str>,
    ) -> Result<StoredResource, PolicyError> {
        if let Some(why) = self.read_only {
            return Err(PolicyError::ReadOnly(why));
        }
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..ATTEMPTS {
            let current = self.backend.resources("")?;
            let (target, change) =
                plan_delete(&key(kind, namespace, name), expected, &current.items)?;
            if self.commit(current.revision, &[change])?.is_some() {
                return Ok(target);
            }
        }
        Err(PolicyError::Busy)
    }

    /// Commits `changes` decided on revision `base`: their versions, or `None` when the
    /// decision must be made again.
    fn commit(&self, base: u64, changes: &[Change]) -> Result<Option<Vec<u64>>, PolicyError> {
        match self.backend.commit(base, changes)? {
            Commit::Done(versions) => {
                if let Some(latest) = versions.iter().max() {
                    self.changes.announce(*latest);
                }
                Ok(Some(versions))
            }
            Commit::Moved => Ok(None),
            Commit::Stale { key, current } => {
                let change = changes.iter().find(|c| c.key == key);
                let record = change.map(|c| &c.record);
                Err(PolicyError::Conflict {
                    kind: record.map(|r| r.kind.clone()).unwrap_or_default(),
                    namespace: record.map(|r| r.namespace.clone()).unwrap_or_default(),
                    name: record.map(|r| r.name.clone()).unwrap_or_default(),
                    given: change
                        .and_then(|c| c.expected)
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    current: current.map_or_else(|| "none".into(), |v| v.to_string()),
                })
            }
        }
    }
}

/// What applying `docs` over `current` does: the answer for each document (new versions are
/// filled in after the commit) and the changes to commit.
pub fn plan_apply(
    docs: &[LoadedDoc],
    current: &[StoredResource],
) -> Result<(Vec<Applied>, Vec<Change>), PolicyError> {
    let current: BTreeMap<String, &StoredResource> = current.iter().map(|r| (r.key(), r)).collect();
    let mut expected = BTreeMap::new();
    for doc in docs {
        let meta = doc.resource.metadata();
        let k = key(doc.resource.kind(), &meta.namespace, &meta.name);
        if let Some(given) = &meta.resource_version {
            let stored = current.get(&k).map(|r| r.resource_version);
            let parsed = given.parse::<u64>().ok();
            if parsed.is_none() || stored != parsed {
                return Err(PolicyError::Conflict {
                    kind: doc.resource.kind().to_owned(),
                    namespace: meta.namespace.clone(),
                    name: meta.name.clone(),
                    given: given.clone(),
                    current: stored.map_or_else(|| "none".into(), |v| v.to_string()),
                });
            }
            expected.insert(k, parsed);
        }
    }
    let incoming: BTreeMap<String, &LoadedDoc> = docs
        .iter()
        .map(|d| {
            let m = d.resource.metadata();
            (key(d.resource.kind(), &m.namespace, &m.name), d)
        })
        .collect();
    let kept: Vec<&StoredResource> = current
        .iter()
        .filter(|(k, _)| !incoming.contains_key(*k))
        .map(|(_, r)| *r)
        .collect();
    let mut all = stored_docs(&kept)?;
    all.extend(docs.iter().cloned());
    strait_config::compile::validate(&all).map_err(PolicyError::Invalid)?;

    let mut applied = Vec::new();
    let mut changes = Vec::new();
    for doc in docs {
        let m = doc.resource.metadata();
        let kind = doc.resource.kind();
        let k = key(kind, &m.namespace, &m.name);
        let mut document = serde_json::to_value(&*doc.resource).map_err(StoreError::from)?;
        strip_version(&mut document);
        let previous = current.get(&k);
        let mut entry = Applied {
            kind: kind.to_owned(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            resource_version: 0,
            result: if previous.is_some() {
                "configured"
            } else {
                "created"
            },
        };
        if let Some(prev) = previous {
            let mut old = prev.document.clone();
            strip_version(&mut old);
            if old == document {
                entry.resource_version = prev.resource_version;
                entry.result = "unchanged";
                applied.push(entry);
                continue;
            }
        }
        applied.push(entry);
        changes.push(Change {
            expected: expected.get(&k).copied().flatten(),
            key: k,
            record: StoredResource {
                kind: kind.to_owned(),
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                resource_version: 0,
                document,
                updated_at: now_ms(),
                deleted: false,
            },
        });
    }
    Ok((applied, changes))
}

/// What making the stored set exactly `documents` takes: a put for each new or changed
/// document, a tombstone for each stored one not in `documents`.
pub fn plan_replace(
    documents: &BTreeMap<String, serde_json::Value>,
    current: &[StoredResource],
) -> Vec<Change> {
    let stored: BTreeMap<String, &StoredResource> = current.iter().map(|r| (r.key(), r)).collect();
    let mut changes = Vec::new();
    for (k, document) in documents {
        let mut document = document.clone();
        strip_version(&mut document);
        if let Some(previous) = stored.get(k) {
            let mut old = previous.document.clone();
            strip_version(&mut old);
            if old == document {
                continue;
            }
        }
        let mut parts = k.splitn(3, '/');
        let (kind, namespace, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        changes.push(Change {
            key: k.clone(),
            record: StoredResource {
                kind: kind.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                resource_version: 0,
                document,
                updated_at: now_ms(),
                deleted: false,
            },
            expected: None,
        });
    }
    for (k, resource) in stored {
        if documents.contains_key(&k) {
            continue;
        }
        let mut document = resource.document.clone();
        strip_version(&mut document);
        changes.push(Change {
            key: k,
            record: StoredResource {
                resource_version: 0,
                document,
                updated_at: now_ms(),
                deleted: true,
                ..resource.clone()
            },
            expected: None,
        });
    }
    changes
}

/// What deleting `k` from `current` does: the resource as it was, and its tombstone.
pub fn plan_delete(
    k: &str,
    expected: Option<&str>,
    current: &[StoredResource],
) -> Result<(StoredResource, Change), PolicyError> {
    let (kind, rest) = k.split_once('/').unwrap_or((k, ""));
    let (namespace, name) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(target) = current.iter().find(|r| r.key() == k).cloned() else {
        return Err(PolicyError::NotFound {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
    };
    if let Some(given) = expected {
        if given != target.resource_version.to_string() {
            return Err(PolicyError::Conflict {
                kind: kind.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                given: given.to_owned(),
                current: target.resource_version.to_string(),
            });
        }
    }
    let rest: Vec<&StoredResource> = current.iter().filter(|r| r.key() != k).collect();
    strait_config::compile::validate(&stored_docs(&rest)?).map_err(PolicyError::Invalid)?;
    let mut document = target.document.clone();
    strip_version(&mut document);
    let tombstone = StoredResource {
        resource_version: 0,
        document,
        updated_at: now_ms(),
        deleted: true,
        ..target.clone()
    };
    let change = Change {
        key: k.to_owned(),
        record: tombstone,
        expected: expected.map(|_| target.resource_version),
    };
    Ok((target, change))
}

/// The version pushed to proxies: the store-wide revision (every change to policies or the
/// registry has a higher one than the last, announced to watchers, the push streams, this
/// replica's own as it commits them, other replicas' as the store's watch reports them) plus
/// the number of endpoint changes this replica has seen in the cluster (Kubernetes discovery;
/// 0 without it). Both only grow, so their sum does, and a change to either wakes the streams.
#[derive(Debug)]
pub struct Revisions {
    version: watch::Sender<u64>,
    /// (store revision, discovery changes), summed into `version`.
    parts: Mutex<(u64, u64)>,
}

impl Revisions {
    /// Starts from `revision` (the store's when opened).
    pub fn new(revision: u64) -> Arc<Self> {
        Arc::new(Self {
            version: watch::channel(revision).0,
            parts: Mutex::new((revision, 0)),
        })
    }

    /// The latest version; a receiver wakes on every newer one.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Announces a committed revision (never moves backwards).
    pub fn announce(&self, revision: u64) {
        self.update(|(store, _)| {
            let newer = revision > *store;
            if newer {
                *store = revision;
            }
            newer
        });
    }

    /// Announces a change of discovered endpoints.
    pub fn discovered(&self) {
        self.update(|(_, discovered)| {
            *discovered += 1;
            true
        });
    }

    fn update(&self, change: impl FnOnce(&mut (u64, u64)) -> bool) {
        let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
        if change(&mut parts) {
            let version = parts.0 + parts.1;
            self.version.send_replace(version);
        }
    }
}

/// Stored resources as documents the config crate can validate again; errors in them name
/// `<stored KIND namespace/name>`.
pub fn stored_docs(
    resources: &[&StoredResource],
) -> Result<Vec<strait_config::LoadedDoc>, PolicyError> {
    let sources: Vec<Source> = resources
        .iter()
        .map(|r| Source {
            file: format!("<stored {} {}/{}>", r.kind, r.namespace, r.name).into(),
            text: r.document.to_string(),
        })
        .collect();
    parse_sources(&sources).map_err(PolicyError::Invalid)
}

/// Removes `metadata.resourceVersion` (stored documents carry the one the store gives them).
pub fn strip_version(document: &mut serde_json::Value) {
    if let Some(meta) = document
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("resourceVersion");
    }
}

/// Sets `metadata.resourceVersion` to `revision`.
pub fn set_version(document: &mut serde_json::Value, revision: u64) {
    if let Some(meta) = document
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.insert(
            "resourceVersion".into(),
            serde_json::Value::String(revision.to_string()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (PolicyStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("strait-policy-{}", fastrand::u64(..)));
        let (backends, _) = crate::backend::embedded::Embedded::backends(&dir).unwrap();
        let revisions = Revisions::new(backends.revision);
        (PolicyStore::new(backends.policy, revisions), dir)
    }

    fn source(text: &str) -> Vec<Source> {
        vec![Source {
            file: "f.yaml".into(),
            text: text.to_owned(),
        }]
    }

    const SVC: &str = "apiVersion: strait.dev/v1alpha1\nkind: Service\nmetadata: {name: api}\nspec:\n  protocol: http1\n  endpoints: [{address: \"127.0.0.1:9001\"}]\n";

    #[test]
    fn apply_versions_and_conflicts() {
        let (s, dir) = store();
        let a = s.apply(&source(SVC)).unwrap();
        assert_eq!((a[0].result, a[0].resource_version), ("created", 1));
        assert_eq!(s.apply(&source(SVC)).unwrap()[0].result, "unchanged");
        let changed = SVC.replace("9001", "9002");
        assert_eq!(s.apply(&source(&changed)).unwrap()[0].resource_version, 2);
        let stale = changed
            .replace("9002", "9003")
            .replace("{name: api}", "{name: api, resourceVersion: \"1\"}");
        assert!(matches!(
            s.apply(&source(&stale)),
            Err(PolicyError::Conflict { .. })
        ));
        assert_eq!(s.history("Service", "default", "api").unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn replace_stores_the_set_and_a_read_only_store_refuses_users() {
        let (s, dir) = store();
        let s = s.read_only("policies come from the cluster");
        let doc: serde_json::Value = serde_json::json!({"apiVersion": "strait.dev/v1alpha1",
            "kind": "Service", "metadata": {"name": "api", "namespace": "default"},
            "spec": {"protocol": "http1", "endpoints": [{"address": "127.0.0.1:9001"}]}});
        let set: BTreeMap<String, serde_json::Value> =
            [("Service/default/api".to_owned(), doc)].into();
        assert_eq!(s.replace(&set).unwrap(), Some(1));
        assert_eq!(s.replace(&set).unwrap(), None, "unchanged");
        assert!(matches!(
            s.apply(&source(SVC)),
            Err(PolicyError::ReadOnly(_))
        ));
        assert!(matches!(
            s.delete("Service", "default", "api", None),
            Err(PolicyError::ReadOnly(_))
        ));
        assert!(s.replace(&BTreeMap::new()).unwrap().is_some());
        assert!(s.list(None, None).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_referenced_service_cannot_be_deleted() {
        let (s, dir) = store();
        let route = "---\napiVersion: strait.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules: [{backendRefs: [{name: api}]}]\n";
        s.apply(&source(&format!("{SVC}{route}"))).unwrap();
        match s.delete("Service", "default", "api", None) {
            Err(PolicyError::Invalid(e)) => {
                let text = e.to_string();
                assert!(text.contains("<stored HTTPRoute default/r>"), "{text}");
            }
            other => panic!("{other:?}"),
        }
        s.delete("HTTPRoute", "default", "r", None).unwrap();
        s.delete("Service", "default", "api", None).unwrap();
        assert!(s.list(None, None).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}

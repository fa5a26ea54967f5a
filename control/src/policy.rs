//! The versioned policy store: `apply`, `get`, `delete`, history.
//!
//! Every change is validated by the same config crate the proxy uses, against the whole stored
//! set (a route may not point at a Service that does not exist, a Service still referenced may
//! not be deleted), so whatever the store holds always compiles. Every resource carries a
//! `resourceVersion` (the store's revision when it last changed); an apply or delete carrying a
//! stale one is refused (optimistic concurrency). The last [`HISTORY_DEPTH`] versions of each
//! resource are kept.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use strait_config::load::parse_sources;
use strait_config::{ConfigErrors, Source};
use tokio::sync::watch;

use crate::store::{self, db, JsonTable, StoreError};

/// Current resources: `Kind/namespace/name` → [`StoredResource`].
pub const RESOURCES: JsonTable = TableDefinition::new("resources");
/// Past versions: `Kind/namespace/name/REVISION` → [`StoredResource`].
pub const HISTORY: JsonTable = TableDefinition::new("resource_history");
/// Counters: `revision` → u64.
pub const META: JsonTable = TableDefinition::new("meta");

/// Versions kept per resource.
pub const HISTORY_DEPTH: usize = 10;

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
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The policy store.
#[derive(Debug)]
pub struct PolicyStore {
    db: Arc<Database>,
    /// Serialises validate-then-write so two applies cannot both validate against the old set.
    writer: Mutex<()>,
    changes: Arc<Revisions>,
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
    /// Opens the store on `db` (tables created by [`crate::store::open`]); changes are
    /// announced on `changes`.
    pub fn open(db: Arc<Database>, changes: Arc<Revisions>) -> Result<Self, StoreError> {
        Ok(Self {
            db,
            writer: Mutex::new(()),
            changes,
        })
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
        let all: Vec<(String, StoredResource)> = store::scan(&self.db, RESOURCES, &prefix)?;
        Ok(all
            .into_iter()
            .map(|(_, r)| r)
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
        store::get(&self.db, RESOURCES, &key(kind, namespace, name))
    }

    /// Past versions of one resource, oldest first (deletions included).
    pub fn history(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let prefix = format!("{}/", key(kind, namespace, name));
        Ok(store::scan(&self.db, HISTORY, &prefix)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Validates `sources` (multi-document YAML) together with everything stored, then stores
    /// every document whose content changed, all in one transaction.
    pub fn apply(&self, sources: &[Source]) -> Result<Vec<Applied>, PolicyError> {
        let docs = parse_sources(sources).map_err(PolicyError::Invalid)?;
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let current: BTreeMap<String, StoredResource> = self
            .list(None, None)?
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        for doc in &docs {
            let meta = doc.resource.metadata();
            let k = key(doc.resource.kind(), &meta.namespace, &meta.name);
            if let Some(given) = &meta.resource_version {
                let stored = current.get(&k).map(|r| r.resource_version.to_string());
                if stored.as_deref() != Some(given.as_str()) {
                    return Err(PolicyError::Conflict {
                        kind: doc.resource.kind().to_owned(),
                        namespace: meta.namespace.clone(),
                        name: meta.name.clone(),
                        given: given.clone(),
                        current: stored.unwrap_or_else(|| "none".into()),
                    });
                }
            }
        }
        let incoming: BTreeMap<String, &strait_config::LoadedDoc> = docs
            .iter()
            .map(|d| {
                let m = d.resource.metadata();
                (key(d.resource.kind(), &m.namespace, &m.name), d)
            })
            .collect();
        let kept: Vec<&StoredResource> = current
            .iter()
            .filter(|(k, _)| !incoming.contains_key(*k))
            .map(|(_, r)| r)
            .collect();
        let mut all = stored_docs(&kept)?;
        all.extend(docs.iter().cloned());
        strait_config::compile::validate(&all).map_err(PolicyError::Invalid)?;

        let tx = self.db.begin_write().map_err(db)?;
        let mut applied = Vec::new();
        let mut revision: u64;
        {
            let mut meta = tx.open_table(META).map_err(db)?;
            revision = read_revision(&meta)?;
            let mut resources = tx.open_table(RESOURCES).map_err(db)?;
            let mut history = tx.open_table(HISTORY).map_err(db)?;
            for doc in &docs {
                let m = doc.resource.metadata();
                let kind = doc.resource.kind();
                let k = key(kind, &m.namespace, &m.name);
                let mut document =
                    serde_json::to_value(&*doc.resource).map_err(StoreError::from)?;
                strip_version(&mut document);
                let previous = current.get(&k);
                if let Some(prev) = previous {
                    let mut old = prev.document.clone();
                    strip_version(&mut old);
                    if old == document {
                        applied.push(Applied {
                            kind: kind.to_owned(),
                            namespace: m.namespace.clone(),
                            name: m.name.clone(),
                            resource_version: prev.resource_version,
                            result: "unchanged",
                        });
                        continue;
                    }
                }
                revision += 1;
                set_version(&mut document, revision);
                let record = StoredResource {
                    kind: kind.to_owned(),
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                    resource_version: revision,
                    document,
                    updated_at: now_ms(),
                    deleted: false,
                };
                let bytes = store::encode(&record)?;
                resources.insert(k.as_str(), bytes.as_slice()).map_err(db)?;
                record_history(&mut history, &record)?;
                applied.push(Applied {
                    kind: kind.to_owned(),
                    namespace: m.namespace.clone(),
                    name: m.name.clone(),
                    resource_version: revision,
                    result: if previous.is_some() {
                        "configured"
                    } else {
                        "created"
                    },
                });
            }
            meta.insert("revision", store::encode(&revision)?.as_slice())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        if applied.iter().any(|a| a.result != "unchanged") {
            self.changes.announce(revision);
        }
        Ok(applied)
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
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let k = key(kind, namespace, name);
        let current = self.list(None, None)?;
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
        let tx = self.db.begin_write().map_err(db)?;
        let revision;
        {
            let mut meta = tx.open_table(META).map_err(db)?;
            revision = read_revision(&meta)? + 1;
            let mut resources = tx.open_table(RESOURCES).map_err(db)?;
            let mut history = tx.open_table(HISTORY).map_err(db)?;
            resources.remove(k.as_str()).map_err(db)?;
            let tombstone = StoredResource {
                resource_version: revision,
                updated_at: now_ms(),
                deleted: true,
                ..target.clone()
            };
            record_history(&mut history, &tombstone)?;
            meta.insert("revision", store::encode(&revision)?.as_slice())
                .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        self.changes.announce(revision);
        Ok(target)
    }
}

/// The store-wide revision: every change to policies or the registry takes the next number,
/// in the same transaction as the change, and announces it to watchers (the push streams).
#[derive(Debug)]
pub struct Revisions(watch::Sender<u64>);

impl Revisions {
    /// Starts from the revision stored in `db`.
    pub fn load(db: &Database) -> Result<Arc<Self>, StoreError> {
        let revision: u64 = store::get(db, META, "revision")?.unwrap_or(0);
        Ok(Arc::new(Self(watch::channel(revision).0)))
    }

    /// The latest revision; a receiver wakes on every newer one.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }

    /// Announces a committed revision (never moves backwards).
    pub fn announce(&self, revision: u64) {
        self.0.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// Takes the next revision inside write transaction `tx`.
    pub fn next(tx: &redb::WriteTransaction) -> Result<u64, StoreError> {
        let mut meta = tx.open_table(META).map_err(db)?;
        let revision = read_revision(&meta)? + 1;
        meta.insert("revision", store::encode(&revision)?.as_slice())
            .map_err(db)?;
        Ok(revision)
    }
}

fn read_revision(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<u64, StoreError> {
    match meta.get("revision").map_err(db)? {
        Some(v) => serde_json::from_slice(v.value()).map_err(|source| StoreError::Decode {
            key: "revision".into(),
            source,
        }),
        None => Ok(0),
    }
}

fn record_history(
    history: &mut redb::Table<&'static str, &'static [u8]>,
    record: &StoredResource,
) -> Result<(), StoreError> {
    let prefix = format!("{}/", record.key());
    let hk = format!("{prefix}{:020}", record.resource_version);
    history
        .insert(hk.as_str(), store::encode(record)?.as_slice())
        .map_err(db)?;
    let keys: Vec<String> = store::scan_in::<serde_json::Value>(history, &prefix)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    if keys.len() > HISTORY_DEPTH {
        for old in &keys[..keys.len() - HISTORY_DEPTH] {
            history.remove(old.as_str()).map_err(db)?;
        }
    }
    Ok(())
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

fn strip_version(document: &mut serde_json::Value) {
    if let Some(meta) = document
        .get_mut("metadata")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.remove("resourceVersion");
    }
}

fn set_version(document: &mut serde_json::Value, revision: u64) {
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
        let db = crate::store::open(&dir, &[RESOURCES, HISTORY, META]).unwrap();
        let revisions = Revisions::load(&db).unwrap();
        (PolicyStore::open(db, revisions).unwrap(), dir)
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

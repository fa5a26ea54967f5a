//! Where the control keeps its state: the seam between the components (policy store,
//! registry, CA) and the two stores they can run on.
//!
//! ```text
//!  policy ─┐                      ┌─ embedded: one redb file in --data-dir (one process)
//!  registry├─▶ PolicyBackend,  ───┤
//!  ca ─────┘   RegistryBackend,   └─ etcd: --store etcd://HOST:PORT[,...] (any number of
//!              CaBackend                 replicas; TTLs are leases; changes come back through
//!                                        a watch, see `Remote`)
//! ```
//!
//! The components keep their rules (validation, conflicts, TTL checks, rotation steps); a
//! backend only reads and commits what they decided, atomically, and says when another writer
//! got there first.

pub mod embedded;
pub mod etcd;
pub mod etcd_keys;
pub mod etcd_proxies;
pub mod url;

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::policy::StoredResource;
use crate::registry::Instance;
use crate::store::StoreError;

pub use url::StoreUrl;

/// Every current resource and the store revision they were read at.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// The store revision of the read (the base a commit is checked against).
    pub revision: u64,
    /// Current resources, in key order.
    pub items: Vec<StoredResource>,
}

/// One resource written or deleted by a commit.
#[derive(Debug, Clone)]
pub struct Change {
    /// `Kind/namespace/name`.
    pub key: String,
    /// What to store (`deleted`: the resource is removed and this is its tombstone in the
    /// history). The backend sets `resource_version` and `metadata.resourceVersion`.
    pub record: StoredResource,
    /// Commit only if the resource is still at this version (a user's `resourceVersion`).
    pub expected: Option<u64>,
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Stored: the version each change got, in order.
    Done(Vec<u64>),
    /// A policy changed after the base revision: read again, decide again.
    Moved,
    /// A change's `expected` version is not the stored one.
    Stale {
        /// `Kind/namespace/name`.
        key: String,
        /// The stored version (`None`: it does not exist).
        current: Option<u64>,
    },
}

/// The versioned policy documents and their history.
pub trait PolicyBackend: Send + Sync + std::fmt::Debug {
    /// Every current resource whose key starts with `prefix`.
    fn resources(&self, prefix: &str) -> Result<Resources, StoreError>;
    /// One resource.
    fn resource(&self, key: &str) -> Result<Option<StoredResource>, StoreError>;
    /// Past versions of one resource, oldest first, at most [`crate::policy::HISTORY_DEPTH`].
    fn history(&self, key: &str) -> Result<Vec<StoredResource>, StoreError>;
    /// Stores `changes` in one transaction if no resource changed after revision `base`.
    fn commit(&self, base: u64, changes: &[Change]) -> Result<Commit, StoreError>;
}

/// Registered instances and their time to live.
pub trait RegistryBackend: Send + Sync + std::fmt::Debug {
    /// Every registered instance.
    fn instances(&self) -> Result<Vec<Instance>, StoreError>;
    /// Stores a new instance with its TTL; returns the revision.
    fn put_instance(&self, instance: &Instance) -> Result<u64, StoreError>;
    /// Renews an instance's TTL; false when it is not registered (or its TTL lapsed).
    fn heartbeat(&self, id: &str) -> Result<bool, StoreError>;
    /// Removes instances (deregistered, or lapsed per [`lapsed`](Self::lapsed)); returns the
    /// revision.
    fn remove_instances(&self, ids: &[String]) -> Result<u64, StoreError>;
    /// Instances whose TTL lapsed and that the control must remove itself (the embedded store
    /// keeps heartbeats in memory; etcd's leases expire by themselves and come back as
    /// [`Remote::InstanceGone`]).
    fn lapsed(&self) -> Vec<String>;
    /// True for exactly one replica per expiry of `id`: that one announces it.
    fn claim_expiry(&self, id: &str) -> Result<bool, StoreError>;
}

/// The CA's state (its roots and issuer) and its join tokens.
pub trait CaBackend: Send + Sync + std::fmt::Debug {
    /// The value stored under `key`.
    fn ca_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `value` under `key` if the stored value is still `expected` (`None`: absent);
    /// false when it is not.
    fn ca_swap(&self, key: &str, expected: Option<&[u8]>, value: &[u8])
        -> Result<bool, StoreError>;
    /// Stores a join token's record until `expires_at` (unix seconds).
    fn put_token(&self, id: &str, record: &[u8], expires_at: u64) -> Result<(), StoreError>;
    /// A join token's record.
    fn token(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// What each replica knows of the proxies connected to it (replicated stores only), so that
/// `straitctl proxies` on any replica lists every proxy of the mesh.
pub trait ProxyDirectory: Send + Sync + std::fmt::Debug {
    /// Records this replica's view of `node` (JSON of its status), kept while this replica
    /// lives. Never waits: written in the background, in order.
    fn publish(&self, node: &str, status: Vec<u8>);
    /// Every view every live replica recorded.
    fn list(&self) -> Result<Vec<Vec<u8>>, StoreError>;
}

/// A change another replica (or the store itself) made, as a watch reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Remote {
    /// Something changed at this revision (policies or the registry).
    Revision(u64),
    /// An instance was registered.
    InstancePut(Instance),
    /// An instance left: deregistered, or its lease expired.
    InstanceGone {
        /// Its id.
        id: String,
        /// True when its TTL lapsed (no one deregistered it).
        expired: bool,
    },
}

/// The opened store: one object behind the three seams, and its watch.
#[derive(Debug)]
pub struct Backends {
    /// Policies.
    pub policy: Arc<dyn PolicyBackend>,
    /// The registry.
    pub registry: Arc<dyn RegistryBackend>,
    /// The CA's state.
    pub ca: Arc<dyn CaBackend>,
    /// The store revision when opened.
    pub revision: u64,
    /// Replicated stores only: what other replicas (and lease expiries) change, from
    /// `revision` on.
    pub remote: Option<mpsc::UnboundedReceiver<Remote>>,
    /// Replicated stores only: the proxies of every replica.
    pub proxies: Option<Arc<dyn ProxyDirectory>>,
}

impl Backends {
    /// The same object behind every seam, with no remote changes (one process).
    pub fn single<B>(backend: Arc<B>, revision: u64) -> Self
    where
        B: PolicyBackend + RegistryBackend + CaBackend + 'static,
    {
        Self {
            policy: backend.clone(),
            registry: backend.clone(),
            ca: backend,
            revision,
            remote: None,
            proxies: None,
        }
    }
}

//! The default store: tables in the one redb file of `--data-dir` (see [`crate::store`]).
//!
//! One process owns the file, so the only concurrency is between its own threads: a redb
//! write transaction is exclusive, which makes every commit's check-then-write atomic.
//! Heartbeats are kept in memory only (a heartbeat per instance per few seconds is not worth
//! an fsync); after a restart every stored instance gets one fresh TTL to heartbeat again.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, TableDefinition};

use super::{Backends, CaBackend, Change, Commit, PolicyBackend, RegistryBackend, Resources};
use crate::policy::{set_version, StoredResource, HISTORY_DEPTH};
use crate::registry::Instance;
use crate::store::{self, db, JsonTable, StoreError};

/// Current resources: `Kind/namespace/name` → [`StoredResource`].
pub const RESOURCES: JsonTable = TableDefinition::new("resources");
/// Past versions: `Kind/namespace/name/REVISION` → [`StoredResource`].
pub const HISTORY: JsonTable = TableDefinition::new("resource_history");
/// Counters: `revision` (every change) and `policy_revision` (the last policy change) → u64.
pub const META: JsonTable = TableDefinition::new("meta");
/// Instances: id → [`Instance`].
pub const INSTANCES: JsonTable = TableDefinition::new("instances");
/// The CA state (key `state`).
pub const CA: JsonTable = TableDefinition::new("ca");
/// Join tokens by id.
pub const JOIN_TOKENS: JsonTable = TableDefinition::new("ca_join_tokens");

/// Every table this backend keeps.
pub const TABLES: [JsonTable; 6] = [RESOURCES, HISTORY, META, INSTANCES, CA, JOIN_TOKENS];

/// The redb-backed store.
pub struct Embedded {
    db: Arc<Database>,
    /// Registered instances: their TTL and when each was last heard from.
    seen: Mutex<HashMap<String, (Duration, Instant)>>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

impl Embedded {
    /// Opens the tables in `db` (created if missing); stored instances get a fresh TTL.
    pub fn open(db: Arc<Database>) -> Result<Arc<Self>, StoreError> {
        let tx = db.begin_write().map_err(store::db)?;
        for table in TABLES {
            tx.open_table(table).map_err(store::db)?;
        }
        tx.commit().map_err(store::db)?;
        let now = Instant::now();
        let seen = store::scan::<Instance>(&db, INSTANCES, "")?
            .into_iter()
            .map(|(id, i)| (id, (ttl_of(&i), now)))
            .collect();
        Ok(Arc::new(Self {
            db,
            seen: Mutex::new(seen),
        }))
    }

    /// Opens `DIR/strait.redb` as every backend.
    pub fn backends(dir: &Path) -> Result<(Backends, Arc<Database>), StoreError> {
        let database = store::open(dir, &TABLES)?;
        let embedded = Self::open(database.clone())?;
        let revision = read_u64(&database, "revision")?;
        Ok((Backends::single(embedded, revision), database))
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Duration, Instant)>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write<T>(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let out = change(&tx)?;
        tx.commit().map_err(db)?;
        Ok(out)
    }
}

fn ttl_of(instance: &Instance) -> Duration {
    Duration::from_secs(u64::from(instance.registration.ttl_seconds))
}

fn read_u64(database: &Database, key: &str) -> Result<u64, StoreError> {
    Ok(store::get(database, META, key)?.unwrap_or(0))
}

fn meta_u64(
    meta: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    match meta.get(key).map_err(db)? {
        Some(v) => serde_json::from_slice(v.value()).map_err(|source| StoreError::Decode {
            key: key.into(),
            source,
        }),
        None => Ok(0),
    }
}

/// Takes the next store revision inside `tx`.
fn next_revision(tx: &redb::WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = tx.open_table(META).map_err(db)?;
    let revision = meta_u64(&meta, "revision")? + 1;
    meta.insert("revision", store::encode(&revision)?.as_slice())
        .map_err(db)?;
    Ok(revision)
}

fn record_history(
    history: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    record: &StoredResource,
) -> Result<(), StoreError> {
    let prefix = format!("{key}/");
    let hk = format!("{prefix}{:020}", record.resource_version);
    history
        .insert(hk.as_str(), store::encode(record)?.as_slice())
        .map_err(db)?;
    let keys: Vec<String> = store::scan_in::<serde_json::Value>(history, &prefix)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    if let Some(excess) = keys.len().checked_sub(HISTORY_DEPTH) {
        for old in keys.iter().take(excess) {
            history.remove(old.as_str()).map_err(db)?;
        }
    }
    Ok(())
}

impl PolicyBackend for Embedded {
    fn resources(&self, prefix: &str) -> Result<Resources, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let meta = tx.open_table(META).map_err(db)?;
        let revision = meta_u64(&meta, "revision")?;
        let table = tx.open_table(RESOURCES).map_err(db)?;
        let items = store::scan_in::<StoredResource>(&table, prefix)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        Ok(Resources { revision, items })
    }

    fn resource(&self, key: &str) -> Result<Option<StoredResource>, StoreError> {
        store::get(&self.db, RESOURCES, key)
    }

    fn history(&self, key: &str) -> Result<Vec<StoredResource>, StoreError> {
        Ok(store::scan(&self.db, HISTORY, &format!("{key}/"))?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    fn commit(&self, base: u64, changes: &[Change]) -> Result<Commit, StoreError> {
        self.write(|tx| {
            let mut meta = tx.open_table(META).map_err(db)?;
            if meta_u64(&meta, "policy_revision")? > base {
                return Ok(Commit::Moved);
            }
            let mut resources = tx.open_table(RESOURCES).map_err(db)?;
            for change in changes {
                let Some(expected) = change.expected else {
                    continue;
                };
                let current = match resources.get(change.key.as_str()).map_err(db)? {
                    Some(v) => Some(
                        serde_json::from_slice::<StoredResource>(v.value())
                            .map_err(|source| StoreError::Decode {
                                key: change.key.clone(),
                                source,
                            })?
                            .resource_version,
                    ),
                    None => None,
                };
                if current != Some(expected) {
                    return Ok(Commit::Stale {
                        key: change.key.clone(),
                        current,
                    });
                }
            }
            let mut history = tx.open_table(HISTORY).map_err(db)?;
            let mut revision = meta_u64(&meta, "revision")?;
            let mut versions = Vec::with_capacity(changes.len());
            for change in changes {
                // One revision per resource, as this store always numbered them.
                revision += 1;
                let mut record = change.record.clone();
                record.resource_version = revision;
                if record.deleted {
                    resources.remove(change.key.as_str()).map_err(db)?;
                } else {
                    set_version(&mut record.document, revision);
                    resources
                        .insert(change.key.as_str(), store::encode(&record)?.as_slice())
                        .map_err(db)?;
                }
                record_history(&mut history, &change.key, &record)?;
                versions.push(revision);
            }
            meta.insert("revision", store::encode(&revision)?.as_slice())
                .map_err(db)?;
            meta.insert("policy_revision", store::encode(&revision)?.as_slice())
                .map_err(db)?;
            Ok(Commit::Done(versions))
        })
    }
}

impl RegistryBackend for Embedded {
    fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        Ok(store::scan::<Instance>(&self.db, INSTANCES, "")?
            .into_iter()
            .map(|(_, i)| i)
            .collect())
    }

    fn put_instance(&self, instance: &Instance) -> Result<u64, StoreError> {
        let revision = self.write(|tx| {
            let revision = next_revision(tx)?;
            let mut t = tx.open_table(INSTANCES).map_err(db)?;
            t.insert(instance.id.as_str(), store::encode(instance)?.as_slice())
                .map_err(db)?;
            Ok(revision)
        })?;
        self.seen()
            .insert(instance.id.clone(), (ttl_of(instance), Instant::now()));
        Ok(revision)
    }

    fn heartbeat(&self, id: &str) -> Result<bool, StoreError> {
        Ok(match self.seen().get_mut(id) {
            Some((_, seen)) => {
                *seen = Instant::now();
                true
            }
            None => false,
        })
    }

    fn remove_instances(&self, ids: &[String]) -> Result<u64, StoreError> {
        {
            let mut seen = self.seen();
            for id in ids {
                seen.remove(id);
            }
        }
        self.write(|tx| {
            let revision = next_revision(tx)?;
            let mut t = tx.open_table(INSTANCES).map_err(db)?;
            for id in ids {
                t.remove(id.as_str()).map_err(db)?;
            }
            Ok(revision)
        })
    }

    fn lapsed(&self) -> Vec<String> {
        let now = Instant::now();
        self.seen()
            .iter()
            .filter(|(_, (ttl, seen))| now.duration_since(*seen) > *ttl)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn claim_expiry(&self, _id: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The one field of a stored join token this store reads: its expiry.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenExpiry {
    expires_at: u64,
}

impl CaBackend for Embedded {
    fn ca_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(CA).map_err(db)?;
        Ok(t.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    fn ca_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(CA).map_err(db)?;
            let current = t.get(key).map_err(db)?.map(|v| v.value().to_vec());
            if current.as_deref() != expected {
                return Ok(false);
            }
            t.insert(key, value).map_err(db)?;
            Ok(true)
        })
    }

    fn put_token(&self, id: &str, record: &[u8], _expires_at: u64) -> Result<(), StoreError> {
        let now = unix_now();
        self.write(|tx| {
            let mut t = tx.open_table(JOIN_TOKENS).map_err(db)?;
            // Expired tokens are dropped whenever a new one is made.
            let expired: Vec<String> = store::scan_in::<TokenExpiry>(&t, "")?
                .into_iter()
                .filter(|(_, e)| e.expires_at <= now)
                .map(|(k, _)| k)
                .collect();
            for key in expired {
                t.remove(key.as_str()).map_err(db)?;
            }
            t.insert(id, record).map_err(db)?;
            Ok(())
        })
    }

    fn token(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(JOIN_TOKENS).map_err(db)?;
        Ok(t.get(id).map_err(db)?.map(|v| v.value().to_vec()))
    }
}

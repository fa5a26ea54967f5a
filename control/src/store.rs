//! The embedded store's file: one redb database in `--data-dir` (the default backend, see
//! [`crate::backend`], and the event bus's tables).
//!
//! redb is a pure-Rust embedded B-tree store with ACID transactions whose commits are fsynced
//! (so an acknowledged write survives `kill -9`), a single file, and no background threads —
//! all the control needs, with nothing to operate. Each component owns its tables; this module
//! opens the file and gives them JSON-valued tables keyed by strings.

use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A string-keyed table of JSON values.
pub type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (I/O, corruption, ...). Boxed: redb's error is large.
    #[error("store: {0}")]
    Db(Box<redb::Error>),
    /// A stored value does not decode.
    #[error("store: bad record {key}: {source}")]
    Decode {
        /// Its key.
        key: String,
        /// Why.
        source: serde_json::Error,
    },
    /// A value does not encode.
    #[error("store: cannot encode: {0}")]
    Encode(#[from] serde_json::Error),
    /// etcd failed or did not answer (`--store etcd://`).
    #[error("store: etcd: {0}")]
    Etcd(String),
}

/// Converts any redb error.
pub fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// Opens (or creates) `DIR/strait.redb`, creating `tables` if missing.
pub fn open(dir: &Path, tables: &[JsonTable]) -> Result<Arc<Database>, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| db(redb::StorageError::Io(e)))?;
    let database = Database::create(dir.join("strait.redb")).map_err(db)?;
    let tx = database.begin_write().map_err(db)?;
    for table in tables {
        tx.open_table(*table).map_err(db)?;
    }
    tx.commit().map_err(db)?;
    Ok(Arc::new(database))
}

/// Reads one JSON value.
pub fn get<T: DeserializeOwned>(
    db_: &Database,
    table: JsonTable,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let tx = db_.begin_read().map_err(db)?;
    let t = tx.open_table(table).map_err(db)?;
    let Some(v) = t.get(key).map_err(db)? else {
        return Ok(None);
    };
    decode(key, v.value()).map(Some)
}

/// Every value whose key starts with `prefix`, in key order.
pub fn scan<T: DeserializeOwned>(
    db_: &Database,
    table: JsonTable,
    prefix: &str,
) -> Result<Vec<(String, T)>, StoreError> {
    let tx = db_.begin_read().map_err(db)?;
    let t = tx.open_table(table).map_err(db)?;
    scan_in(&t, prefix)
}

/// [`scan`] within an open table (read or write transaction).
pub fn scan_in<T: DeserializeOwned>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for entry in t.range::<&str>(prefix..).map_err(db)? {
        let (k, v) = entry.map_err(db)?;
        let key = k.value();
        if !key.starts_with(prefix) {
            break;
        }
        out.push((key.to_owned(), decode(key, v.value())?));
    }
    Ok(out)
}

/// Encodes a value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        key: key.to_owned(),
        source,
    })
}

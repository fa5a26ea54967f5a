//! The replicated store's I/O shell: etcd v3 through `etcd-client` (`--store etcd://...`).
//!
//! Every replica reads and commits here and learns what the others did from one watch on the
//! control's prefix ([`Remote`]). Nothing here decides: the key layout and the meaning of a
//! watch response are in [`super::etcd_keys`]; conflicts are etcd transaction compares.
//!
//! The components call their store synchronously (as redb is); this shell runs the client on
//! its own small runtime and waits for each call, in place on the caller's worker thread.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use tokio::sync::mpsc;

use super::etcd_keys::{self, Event, Keys};
use super::{
    Backends, CaBackend, Change, Commit, PolicyBackend, RegistryBackend, Remote, Resources,
    StoreUrl,
};
use crate::policy::{StoredResource, HISTORY_DEPTH};
use crate::registry::Instance;
use crate::store::StoreError;

/// How long a deregistration mark and an expiry claim stay (long enough for every replica's
/// watch to see them with the delete).
const MARK_TTL: i64 = 60;
/// Longest wait for one etcd call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before watching again after the watch broke.
const REWATCH: Duration = Duration::from_millis(500);

/// The etcd-backed store.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    keys: Keys,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.keys.all())
            .finish_non_exhaustive()
    }
}

/// The runtime the client's connections live on (never dropped: a runtime may not be dropped
/// on the workers of another).
pub(super) fn io_runtime() -> Result<&'static tokio::runtime::Runtime, StoreError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("etcd-io")
        .enable_all()
        .build()
        .map_err(|e| StoreError::Etcd(e.to_string()))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `call` to completion from synchronous code (an async worker or a blocking thread).
pub(super) fn wait<T>(
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    let handle = io_runtime()?.handle();
    let timed = async { tokio::time::timeout(CALL_TIMEOUT, call).await };
    let answer = if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| handle.block_on(timed))
    } else {
        handle.block_on(timed)
    };
    match answer {
        Ok(result) => result.map_err(etcd),
        Err(_) => Err(StoreError::Etcd(format!(
            "no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

fn etcd(e: etcd_client::Error) -> StoreError {
    StoreError::Etcd(e.to_string())
}

fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| u64::try_from(h.revision()).unwrap_or(0))
}

fn key_str(kv: &etcd_client::KeyValue) -> Result<&str, StoreError> {
    kv.key_str().map_err(etcd)
}

impl Etcd {
    /// Connects, reads the current revision and starts watching from it.
    pub fn backends(url: &StoreUrl) -> Result<Backends, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let endpoints = url.endpoints.clone();
        let client = wait(Client::connect(endpoints, Some(options)))?;
        let store = Arc::new(Self {
            client,
            keys: Keys::new(&url.prefix),
        });
        let revision = store.revision()?;
        let (tx, rx) = mpsc::unbounded_channel();
        io_runtime()?.spawn(store.as_ref().clone().watch(revision, tx));
        let proxies =
            super::etcd_proxies::EtcdProxies::start(store.client.clone(), store.keys.clone())?;
        let mut backends = Backends::single(store, revision);
        backends.remote = Some(rx);
        backends.proxies = Some(Arc::new(proxies));
        Ok(backends)
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.keys.all().to_owned();
        let answer = wait(async move {
            kv.get(key, Some(GetOptions::new().with_prefix().with_count_only()))
                .await
        })?;
        Ok(revision_of(answer.header()))
    }

    /// Follows every change under the prefix after `revision`, for as long as the process
    /// lives; reconnects after errors from where it stopped.
    async fn watch(self, mut revision: u64, changes: mpsc::UnboundedSender<Remote>) {
        loop {
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(i64::try_from(revision + 1).unwrap_or(i64::MAX));
            let mut client = self.client.watch_client();
            let mut stream = match client.watch(self.keys.all(), Some(options)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "etcd watch failed; retrying");
                    tokio::time::sleep(REWATCH).await;
                    continue;
                }
            };
            loop {
                let answer = match stream.message().await {
                    Ok(Some(answer)) => answer,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch broke; watching again");
                        break;
                    }
                };
                if answer.compact_revision() > 0 {
                    tracing::warn!(
                        compacted = answer.compact_revision(),
                        "etcd compacted past this replica's watch; following from there"
                    );
                    revision = u64::try_from(answer.compact_revision()).unwrap_or(revision);
                }
                if answer.events().is_empty() {
                    continue;
                }
                let at = revision_of(answer.header());
                let events: Vec<Event<'_>> = answer
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        Some(Event {
                            key: kv.key_str().ok()?,
                            value: kv.value(),
                            put: e.event_type() == EventType::Put,
                        })
                    })
                    .collect();
                for change in etcd_keys::remote_changes(&self.keys, at, &events) {
                    if changes.send(change).is_err() {
                        return;
                    }
                }
                revision = revision.max(at);
            }
            tokio::time::sleep(REWATCH).await;
        }
    }

    fn grant(&self, ttl: i64) -> Result<i64, StoreError> {
        let mut lease = self.client.lease_client();
        Ok(wait(async move { lease.grant(ttl.max(1), None).await })?.id())
    }

    fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        let mut kv = self.client.kv_client();
        wait(async move { kv.txn(txn).await })
    }

    fn get(
        &self,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        let mut kv = self.client.kv_client();
        wait(async move { kv.get(key, options).await })
    }

    fn mod_revision(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let answer = self.get(self.keys.resource(key), None)?;
        Ok(answer
            .kvs()
            .first()
            .map(|kv| u64::try_from(kv.mod_revision()).unwrap_or(0)))
    }
}

impl PolicyBackend for Etcd {
    fn resources(&self, prefix: &str) -> Result<Resources, StoreError> {
        let answer = self.get(
            self.keys.resource(prefix),
            Some(GetOptions::new().with_prefix()),
        )?;
        let items = answer
            .kvs()
            .iter()
            .map(|kv| etcd_keys::resource(key_str(kv)?, kv.value(), kv.mod_revision()))
            .collect::<Result<_, _>>()?;
        Ok(Resources {
            revision: revision_of(answer.header()),
            items,
        })
    }

    fn resource(&self, key: &str) -> Result<Option<StoredResource>, StoreError> {
        let answer = self.get(self.keys.resource(key), None)?;
        answer
            .kvs()
            .first()
            .map(|kv| etcd_keys::resource(key, kv.value(), kv.mod_revision()))
            .transpose()
    }

    fn history(&self, key: &str) -> Result<Vec<StoredResource>, StoreError> {
        let answer = self.get(
            self.keys.history(key),
            Some(GetOptions::new().with_prefix()),
        )?;
        answer
            .kvs()
            .iter()
            .map(|kv| etcd_keys::resource(key_str(kv)?, kv.value(), kv.mod_revision()))
            .collect()
    }

    fn commit(&self, base: u64, changes: &[Change]) -> Result<Commit, StoreError> {
        let base_i = i64::try_from(base).unwrap_or(i64::MAX);
        let mut compares = vec![Compare::mod_revision(
            self.keys.lock(),
            CompareOp::Less,
            base_i.saturating_add(1),
        )];
        let mut ops = vec![TxnOp::put(self.keys.lock(), "", None)];
        for change in changes {
            if let Some(expected) = change.expected {
                compares.push(Compare::mod_revision(
                    self.keys.resource(&change.key),
                    CompareOp::Equal,
                    i64::try_from(expected).unwrap_or(i64::MAX),
                ));
            }
            let value = crate::store::encode(&change.record)?;
            if change.record.deleted {
                ops.push(TxnOp::delete(self.keys.resource(&change.key), None));
            } else {
                ops.push(TxnOp::put(
                    self.keys.resource(&change.key),
                    value.clone(),
                    None,
                ));
            }
            // Keep the newest HISTORY_DEPTH versions: this one and the newest before it.
            let past = self.get(
                self.keys.history(&change.key),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            )?;
            let excess = (past.kvs().len() + 1).saturating_sub(HISTORY_DEPTH);
            for old in past.kvs().iter().take(excess) {
                ops.push(TxnOp::delete(old.key().to_vec(), None));
            }
            ops.push(TxnOp::put(
                self.keys.history_entry(&change.key, base),
                value,
                None,
            ));
        }
        let answer = self.txn(Txn::new().when(compares).and_then(ops))?;
        if answer.succeeded() {
            return Ok(Commit::Done(vec![
                revision_of(answer.header());
                changes.len()
            ]));
        }
        for change in changes {
            if let Some(expected) = change.expected {
                let current = self.mod_revision(&change.key)?;
                if current != Some(expected) {
                    return Ok(Commit::Stale {
                        key: change.key.clone(),
                        current,
                    });
                }
            }
        }
        Ok(Commit::Moved)
    }
}

impl RegistryBackend for Etcd {
    fn instances(&self) -> Result<Vec<Instance>, StoreError> {
        let answer = self.get(self.keys.instances(), Some(GetOptions::new().with_prefix()))?;
        answer
            .kvs()
            .iter()
            .map(|kv| etcd_keys::instance(key_str(kv)?, kv.value()))
            .collect()
    }

    fn put_instance(&self, instance: &Instance) -> Result<u64, StoreError> {
        let lease = self.grant(i64::from(instance.registration.ttl_seconds))?;
        let value = crate::store::encode(instance)?;
        let mut kv = self.client.kv_client();
        let key = self.keys.instance(&instance.id);
        let answer = wait(async move {
            kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
        })?;
        Ok(revision_of(answer.header()))
    }

    fn heartbeat(&self, id: &str) -> Result<bool, StoreError> {
        let answer = self.get(self.keys.instance(id), None)?;
        let Some(lease) = answer.kvs().first().map(etcd_client::KeyValue::lease) else {
            return Ok(false);
        };
        let mut client = self.client.lease_client();
        match wait(async move { client.keep_alive(lease).await }) {
            Ok(_) => Ok(true),
            // The lease ran out between the read and the keep-alive.
            Err(StoreError::Etcd(e)) if e.contains("lease not found") => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn remove_instances(&self, ids: &[String]) -> Result<u64, StoreError> {
        let mark = self.grant(MARK_TTL)?;
        let mut leases = Vec::new();
        let mut ops = Vec::new();
        for id in ids {
            let answer = self.get(self.keys.instance(id), None)?;
            leases.extend(answer.kvs().first().map(etcd_client::KeyValue::lease));
            ops.push(TxnOp::delete(self.keys.instance(id), None));
            ops.push(TxnOp::put(
                self.keys.deregistered(id),
                "",
                Some(PutOptions::new().with_lease(mark)),
            ));
        }
        let answer = self.txn(Txn::new().and_then(ops))?;
        for lease in leases.into_iter().filter(|l| *l != 0) {
            let mut client = self.client.lease_client();
            if let Err(e) = wait(async move { client.revoke(lease).await }) {
                tracing::debug!(error = %e, "cannot revoke a deregistered instance's lease");
            }
        }
        Ok(revision_of(answer.header()))
    }

    fn lapsed(&self) -> Vec<String> {
        Vec::new()
    }

    fn claim_expiry(&self, id: &str) -> Result<bool, StoreError> {
        let lease = self.grant(MARK_TTL)?;
        let key = self.keys.expired(id);
        let answer = self.txn(
            Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    "",
                    Some(PutOptions::new().with_lease(lease)),
                )]),
        )?;
        Ok(answer.succeeded())
    }
}

impl CaBackend for Etcd {
    fn ca_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let answer = self.get(self.keys.ca(key), None)?;
        Ok(answer.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn ca_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
    ) -> Result<bool, StoreError> {
        let key = self.keys.ca(key);
        let compare = match expected {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.to_vec()),
        };
        let answer = self.txn(Txn::new().when([compare]).and_then([TxnOp::put(
            key,
            value.to_vec(),
            None,
        )]))?;
        Ok(answer.succeeded())
    }

    fn put_token(&self, id: &str, record: &[u8], expires_at: u64) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ttl = i64::try_from(expires_at.saturating_sub(now)).unwrap_or(i64::MAX);
        let lease = self.grant(ttl)?;
        let mut kv = self.client.kv_client();
        let key = self.keys.token(id);
        let record = record.to_vec();
        wait(async move {
            kv.put(key, record, Some(PutOptions::new().with_lease(lease)))
                .await
        })?;
        Ok(())
    }

    fn token(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let answer = self.get(self.keys.token(id), None)?;
        Ok(answer.kvs().first().map(|kv| kv.value().to_vec()))
    }
}

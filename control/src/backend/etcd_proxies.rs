//! Each replica's view of its proxies, in etcd under its own lease: `straitctl proxies` on any
//! replica lists every proxy of the mesh, and a replica that dies takes its entries with it
//! when its lease expires.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions, Txn, TxnOp};
use tokio::sync::mpsc;

use super::etcd::{io_runtime, wait};
use super::etcd_keys::Keys;
use super::ProxyDirectory;
use crate::store::StoreError;

/// Seconds a dead replica's entries stay.
const LEASE_TTL: i64 = 10;
/// How often the lease is renewed.
const RENEW: Duration = Duration::from_secs(3);
/// Most views written in one etcd transaction (etcd's default limit is 128 operations).
const PER_TXN: usize = 100;
/// Most queued updates taken in at once (the newest view of each node is written).
const DRAIN: usize = 10_000;

/// This replica's writer of proxy views.
pub struct EtcdProxies {
    client: Client,
    keys: Keys,
    updates: mpsc::UnboundedSender<(String, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdProxies").finish_non_exhaustive()
    }
}

impl EtcdProxies {
    /// Starts the background writer under a fresh replica id.
    pub fn start(client: Client, keys: Keys) -> Result<Self, StoreError> {
        let replica = crate::auth::random_hex::<8>()
            .map_err(|e| StoreError::Etcd(format!("cannot draw a replica id: {e}")))?;
        let (updates, rx) = mpsc::unbounded_channel();
        io_runtime()?.spawn(write(client.clone(), keys.clone(), replica, rx));
        Ok(Self {
            client,
            keys,
            updates,
        })
    }
}

impl ProxyDirectory for EtcdProxies {
    fn publish(&self, node: &str, status: Vec<u8>) {
        let _ = self.updates.send((node.to_owned(), status));
    }

    fn list(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut kv = self.client.kv_client();
        let key = self.keys.proxies();
        let answer = wait(async move { kv.get(key, Some(GetOptions::new().with_prefix())).await })?;
        Ok(answer.kvs().iter().map(|kv| kv.value().to_vec()).collect())
    }
}

/// Writes views on the replica's lease, the newest of each node, as many at once as were
/// queued (a push to many proxies queues two views each); renews the lease, and writes every
/// view again on a new lease when it was lost (etcd unreachable for longer than its TTL).
async fn write(
    client: Client,
    keys: Keys,
    replica: String,
    mut updates: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let mut known: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut lease: Option<i64> = None;
    let mut renew = tokio::time::interval(RENEW);
    loop {
        let dirty: BTreeSet<String> = tokio::select! {
            update = updates.recv() => {
                let Some((node, status)) = update else { return };
                let mut dirty = BTreeSet::from([node.clone()]);
                known.insert(node, status);
                while dirty.len() < DRAIN {
                    let Ok((node, status)) = updates.try_recv() else { break };
                    dirty.insert(node.clone());
                    known.insert(node, status);
                }
                dirty
            }
            _ = renew.tick() => {
                let alive = match lease {
                    Some(id) => client.lease_client().keep_alive(id).await.is_ok(),
                    None => false,
                };
                if alive { continue }
                lease = None;
                known.keys().cloned().collect()
            }
        };
        if lease.is_none() {
            lease = match client.lease_client().grant(LEASE_TTL, None).await {
                Ok(granted) => Some(granted.id()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record proxies in etcd");
                    continue;
                }
            };
        }
        let options = lease.map(|id| PutOptions::new().with_lease(id));
        let puts: Vec<TxnOp> = dirty
            .iter()
            .filter_map(|node| {
                let status = known.get(node)?;
                let key = keys.proxy(node, &replica);
                Some(TxnOp::put(key, status.clone(), options.clone()))
            })
            .collect();
        for chunk in puts.chunks(PER_TXN) {
            let txn = Txn::new().and_then(chunk.to_vec());
            if let Err(e) = client.kv_client().txn(txn).await {
                tracing::warn!(error = %e, views = chunk.len(), "cannot record proxies in etcd");
                lease = None;
                break;
            }
        }
    }
}

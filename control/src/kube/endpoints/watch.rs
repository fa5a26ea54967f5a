//! Following the cluster: one watch of every EndpointSlice labelled with a Service name (list,
//! then watch from its resourceVersion with bookmarks; a 410 Gone or a broken stream relists,
//! with backoff on errors: kube-rs's `watcher`), into the [`EndpointTable`], and a GET of each
//! Pod an endpoint names, once, for its ServiceAccount. Every change that alters the table is
//! announced to the push streams.
//!
//! The watch starts once the store holds a `discovery: kubernetes` Service, so a control that
//! needs no discovery never asks the API for EndpointSlices.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::{EndpointTable, PodRef, Slice, SliceKey, SERVICE_NAME_LABEL};
use crate::policy::{PolicyStore, Revisions};

/// How long one Pod lookup may take.
const POD_LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pod lookups in flight at once.
const POD_LOOKUPS: usize = 8;

/// Waits for the first `discovery: kubernetes` Service, then follows the cluster's
/// EndpointSlices into `table` for as long as the control runs.
pub async fn follow(
    client: Client,
    table: Arc<EndpointTable>,
    policy: Arc<PolicyStore>,
    revisions: Arc<Revisions>,
) {
    let mut changes = revisions.watch();
    while !wanted(&policy) {
        if changes.changed().await.is_err() {
            return;
        }
    }
    tracing::info!("following the cluster's EndpointSlices");
    let slices: Api<EndpointSlice> = Api::all(client.clone());
    let config = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    let mut events = watcher::watcher(slices, config).default_backoff().boxed();
    let mut listing: Option<Vec<EndpointSlice>> = None;
    while let Some(event) = events.next().await {
        let changed = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                false
            }
            Ok(Event::InitApply(slice)) => {
                listing.get_or_insert_with(Vec::new).push(slice);
                false
            }
            Ok(Event::InitDone) => {
                let listed: Vec<(SliceKey, Slice)> = listing
                    .take()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(reduce)
                    .collect();
                tracing::info!(slices = listed.len(), "EndpointSlices listed");
                look_up_pods(&client, &table, &listed).await;
                table.replace(listed)
            }
            Ok(Event::Apply(slice)) => match reduce(&slice) {
                Some((key, slice)) => {
                    look_up_pods(&client, &table, &[(key.clone(), slice.clone())]).await;
                    table.apply(key, slice)
                }
                None => false,
            },
            Ok(Event::Delete(slice)) => table.remove(&key_of(&slice)),
            Err(e) => {
                tracing::warn!(error = %e, "EndpointSlice watch failed; retrying with backoff");
                false
            }
        };
        if changed {
            revisions.discovered();
        }
    }
}

/// Whether any stored Service is discovered in Kubernetes.
fn wanted(policy: &PolicyStore) -> bool {
    match policy.list(Some("Service"), None) {
        Ok(services) => services
            .iter()
            .any(|s| s.document["spec"]["discovery"] == "kubernetes"),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read Services");
            false
        }
    }
}

fn key_of(slice: &EndpointSlice) -> SliceKey {
    (
        slice.metadata.namespace.clone().unwrap_or_default(),
        slice.metadata.name.clone().unwrap_or_default(),
    )
}

fn reduce(slice: &EndpointSlice) -> Option<(SliceKey, Slice)> {
    Some((key_of(slice), Slice::from_api(slice)?))
}

/// Looks up the ServiceAccount of every Pod these slices name that the table does not know.
async fn look_up_pods(client: &Client, table: &EndpointTable, slices: &[(SliceKey, Slice)]) {
    let unknown: Vec<PodRef> = slices
        .iter()
        .flat_map(|(_, s)| s.endpoints.iter().filter_map(|e| e.pod.clone()))
        .filter(|pod| !table.knows(pod))
        .collect();
    let lookups = futures_util::stream::iter(unknown).map(|pod| async move {
        let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
        let found = tokio::time::timeout(POD_LOOKUP_TIMEOUT, pods.get_opt(&pod.name)).await;
        (pod, found)
    });
    let mut lookups = lookups.buffer_unordered(POD_LOOKUPS);
    while let Some((pod, found)) = lookups.next().await {
        match found {
            Ok(Ok(Some(found))) => {
                let same = pod.uid.is_empty() || found.metadata.uid.as_deref() == Some(&pod.uid);
                let account = found
                    .spec
                    .and_then(|s| s.service_account_name)
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "default".to_owned());
                if same {
                    table.set_account(pod, account);
                }
            }
            Ok(Ok(None)) => tracing::debug!(pod = %pod.name, "pod of an endpoint not found"),
            Ok(Err(e)) => {
                tracing::warn!(namespace = %pod.namespace, pod = %pod.name, error = %e, "cannot look up the pod of an endpoint")
            }
            Err(_) => {
                tracing::warn!(namespace = %pod.namespace, pod = %pod.name, "pod lookup timed out")
            }
        }
    }
}

//! `--policies kubernetes`: the mesh's policies are the cluster's Strait custom resources
//! (and Gateway API `HTTPRoute`s), not what `straitctl apply` stored.
//!
//! ```text
//!  API server ──watch (list+watch, bookmarks, relist on 410)──▶ objects, per kind
//!      objects ──object::candidate──▶ reconcile (same validation as `apply`)
//!          ├─▶ PolicyStore::replace (the accepted set; push sends it to the proxies as usual)
//!          └─▶ PATCH .../status  (Accepted / ResolvedRefs conditions, observedGeneration)
//! ```
//!
//! The policy store still holds the accepted set (so `straitctl get` and the push work as
//! before, and a restarted control serves the last good set until the cluster answers), but
//! refuses `apply` and `delete`: kubectl is the way in.

pub mod gateway;
pub mod object;
pub mod reconcile;
pub mod status;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use serde_json::Value;

use crate::policy::{strip_version, PolicyStore};
use reconcile::{Candidate, ObjectKey, Origin};

/// Why `apply` and `delete` are refused with `--policies kubernetes`.
pub const READ_ONLY: &str = "this control takes its policies from the Kubernetes cluster \
    (--policies kubernetes): change them with `kubectl apply` / `kubectl delete` on the \
    strait.dev resources";

/// Where the control takes policies from (`strait-control serve --policies`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicySource {
    /// Its own store, written with `straitctl apply` (the default).
    #[default]
    Store,
    /// The cluster's custom resources; the store only mirrors what was accepted.
    Kubernetes,
}

/// How long events are gathered before one reconciliation (a list arrives as many events).
const BATCH: Duration = Duration::from_millis(50);

/// How often the control reconciles with no event (to retry status writes that failed).
const RESYNC: Duration = Duration::from_secs(30);

/// One watched API: an origin and where it is served.
struct Source {
    origin: Origin,
    resource: ApiResource,
    /// Optional APIs (Gateway API) may not be installed: their absence means no objects.
    optional: bool,
}

fn sources() -> Vec<Source> {
    let mut out: Vec<Source> = crate::crd::KINDS
        .iter()
        .map(|k| Source {
            origin: Origin::Strait(k.kind),
            resource: ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(crate::crd::GROUP, crate::crd::VERSION, k.kind),
                k.plural,
            ),
            optional: false,
        })
        .collect();
    out.push(Source {
        origin: Origin::GatewayHttpRoute,
        resource: ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(gateway::GROUP, "v1", "HTTPRoute"),
            "httproutes",
        ),
        optional: true,
    });
    out
}

/// What the runner knows of one watched API.
#[derive(Default)]
struct Seen {
    /// `(namespace, name)` → the object as last seen.
    objects: BTreeMap<(String, String), Value>,
    /// Objects of a relist in progress (replace `objects` when it is done).
    relist: Option<BTreeMap<(String, String), Value>>,
    /// Listed once (or, for an optional API, found missing).
    synced: bool,
}

/// Watches the cluster and keeps `policy` and the objects' status in step, until the task is
/// dropped.
pub async fn run(client: kube::Client, policy: Arc<PolicyStore>) {
    let sources = sources();
    let mut seen: Vec<Seen> = sources.iter().map(|_| Seen::default()).collect();
    let streams = sources.iter().enumerate().map(|(i, s)| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &s.resource);
        watcher::watcher(api, watcher::Config::default())
            .default_backoff()
            .map(move |event| (i, event))
            .boxed()
    });
    let mut events = futures_util::stream::select_all(streams);
    let mut written: BTreeMap<ObjectKey, String> = BTreeMap::new();
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            event = events.next() => match event {
                Some(event) => batch.push(event),
                None => return,
            },
            // Again from what is known: status writes that failed are retried.
            _ = resync.tick() => {}
        }
        if !batch.is_empty() {
            while let Ok(Some(more)) = tokio::time::timeout(BATCH, events.next()).await {
                batch.push(more);
            }
        }
        for (i, event) in batch {
            let (Some(source), Some(state)) = (sources.get(i), seen.get_mut(i)) else {
                continue;
            };
            apply_event(source, state, event);
        }
        if seen.iter().all(|s| s.synced) {
            reconcile_once(&client, &sources, &seen, &policy, &mut written).await;
        }
    }
}

fn name_of(object: &DynamicObject) -> (String, String) {
    (
        object
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

fn apply_event(
    source: &Source,
    state: &mut Seen,
    event: Result<Event<DynamicObject>, watcher::Error>,
) {
    let value = |o: &DynamicObject| serde_json::to_value(o).unwrap_or_default();
    match event {
        Ok(Event::Apply(o)) => {
            state.objects.insert(name_of(&o), value(&o));
        }
        Ok(Event::Delete(o)) => {
            state.objects.remove(&name_of(&o));
        }
        Ok(Event::Init) => state.relist = Some(BTreeMap::new()),
        Ok(Event::InitApply(o)) => {
            if let Some(relist) = &mut state.relist {
                relist.insert(name_of(&o), value(&o));
            }
        }
        Ok(Event::InitDone) => {
            if let Some(relist) = state.relist.take() {
                state.objects = relist;
            }
            state.synced = true;
        }
        Err(e) => {
            if source.optional && !state.synced {
                tracing::info!(api = %source.resource.api_version, kind = %source.resource.kind, error = %e, "API not served; no such objects until it is");
                state.synced = true;
            } else {
                tracing::warn!(api = %source.resource.api_version, kind = %source.resource.kind, error = %e, "watch failed; retrying");
            }
        }
    }
}

async fn reconcile_once(
    client: &kube::Client,
    sources: &[Source],
    seen: &[Seen],
    policy: &Arc<PolicyStore>,
    written: &mut BTreeMap<ObjectKey, String>,
) {
    let mut candidates: BTreeMap<ObjectKey, Candidate> = BTreeMap::new();
    let mut raw: BTreeMap<ObjectKey, (&Source, &Value)> = BTreeMap::new();
    for (source, state) in sources.iter().zip(seen) {
        for object in state.objects.values() {
            if let Some((key, candidate)) = object::candidate(source.origin, object) {
                raw.insert(key.clone(), (source, object));
                candidates.insert(key, candidate);
            }
        }
    }
    let previous: BTreeMap<String, Value> = match policy.list(None, None) {
        Ok(items) => items
            .into_iter()
            .map(|r| {
                let key = crate::policy::key(&r.kind, &r.namespace, &r.name);
                let mut document = r.document;
                strip_version(&mut document);
                (key, document)
            })
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the policy store");
            return;
        }
    };
    let outcome = reconcile::reconcile(&candidates, &previous);
    let store = policy.clone();
    let documents = outcome.documents.clone();
    match tokio::task::spawn_blocking(move || store.replace(&documents)).await {
        Ok(Ok(Some(revision))) => {
            tracing::info!(
                revision,
                resources = outcome.documents.len(),
                "policies from the cluster stored"
            );
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "cannot store the cluster's policies"),
        Err(e) => tracing::error!(error = %e, "cannot store the cluster's policies"),
    }
    let now = now_rfc3339();
    written.retain(|k, _| raw.contains_key(k));
    for (key, verdict) in &outcome.verdicts {
        let Some((source, object)) = raw.get(key) else {
            continue;
        };
        let generation = candidates.get(key).and_then(|c| c.generation);
        let existing = status::written(key.origin, object);
        let conditions = status::conditions(verdict, generation, &existing, &now);
        if conditions == existing {
            continue;
        }
        let seen_version = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if written.get(key).is_some_and(|v| v == seen_version) {
            continue; // written from this version already; the watch has not shown it yet
        }
        let body = status::patch(key.origin, object, &conditions);
        if !verdict.accepted() {
            tracing::warn!(kind = key.origin.kind(), namespace = %key.namespace, name = %key.name, problems = %verdict.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "), "resource not accepted");
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &key.namespace, &source.resource);
        match api
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                written.insert(key.clone(), seen_version.to_owned());
            }
            Err(e) => {
                tracing::warn!(kind = key.origin.kind(), namespace = %key.namespace, name = %key.name, error = %e, "cannot write status");
            }
        }
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

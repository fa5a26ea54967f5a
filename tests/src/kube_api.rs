//! A stand-in for the Kubernetes API server's list/watch protocol, for any collection: HTTPS on
//! loopback with a test CA and a bearer token, reached through a kubeconfig file
//! ([`KubeApi::kubeconfig`]) or the in-cluster environment ([`KubeApi::env`]).
//!
//! What it speaks, as the API concepts documentation describes it:
//! - collections `/api/v1[/namespaces/NS]/RESOURCE` and
//!   `/apis/GROUP/VERSION[/namespaces/NS]/RESOURCE` (cluster-wide: every namespace), with
//!   `labelSelector` (`k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and
//!   `fieldSelector` (`metadata.name`, `metadata.namespace`);
//! - a list answers `{kind: XList, metadata: {resourceVersion}, items}` (no pagination:
//!   every item in one page, no `continue`);
//! - `?watch=1&resourceVersion=RV` streams newline-delimited JSON events (`ADDED`, `MODIFIED`,
//!   `DELETED`, `BOOKMARK` when `allowWatchBookmarks=true`, `ERROR`) in a chunked response,
//!   every change after RV first; a RV older than the compaction floor gets an `ERROR` event
//!   with a `Status` of code 410 (Gone, reason Expired) and the stream ends, as a real server
//!   does after etcd compaction; `timeoutSeconds` ends the stream;
//! - objects: GET, POST (create), PUT (replace; a stale `metadata.resourceVersion` is 409),
//!   PATCH with `application/merge-patch+json`, `application/strategic-merge-patch+json`
//!   (applied as a merge patch: lists are replaced) and `application/apply-patch+yaml`
//!   (server-side apply as kube-rs sends it: a JSON body, merged onto the live object; no
//!   managed-fields tracking, so fields dropped from an applied config are not removed), DELETE;
//!   the `/status` subresource changes `status` only, and writes to the object leave `status`
//!   alone; `metadata.generation` counts changes outside `status` and `metadata`.
//!
//! Tests drive it with [`KubeApi::apply`] / [`KubeApi::delete`], and break it on purpose with
//! [`KubeApi::expire_watches`] (410 on every open watch) and [`KubeApi::close_watches`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::process::TempDir;
use crate::tls::TestCa;

/// The bearer token the stand-in requires (the kubeconfig's and the ServiceAccount dir's).
pub const TOKEN: &str = "strait-control-sa-token";

/// Largest request body read.
const MAX_BODY: usize = 4 * 1024 * 1024;

type Body = BoxBody<Bytes, Infallible>;

/// The stand-in API server.
pub struct KubeApi {
    /// Where it listens (HTTPS).
    pub address: SocketAddr,
    dir: TempDir,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
}

/// Everything the server knows.
#[derive(Default)]
struct State {
    /// The last resourceVersion given out (one counter for every collection, as etcd's).
    revision: u64,
    /// Watches from a resourceVersion below this are 410 Gone.
    floor: u64,
    objects: BTreeMap<Key, Value>,
    /// Every change, oldest first: (revision, event type, key, object).
    history: Vec<(u64, &'static str, Key, Value)>,
    watches: Vec<Watch>,
    /// `METHOD path?query` of every request, in order.
    requests: Vec<String>,
    /// Kind names learned from applied objects, by resource.
    kinds: BTreeMap<String, String>,
    /// Interval of BOOKMARK events on watches that allow them.
    bookmark_every: Option<Duration>,
    uids: u64,
}

/// Where an object lives: `group/version` (`v1` for the core group), resource, namespace
/// (empty for cluster-scoped), name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    api_version: String,
    resource: String,
    namespace: String,
    name: String,
}

/// A parsed request path.
struct Target {
    api_version: String,
    resource: String,
    /// `None`: every namespace (or a cluster-scoped collection).
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

/// What one watch wants and where its events go.
struct Watch {
    filter: Filter,
    events: mpsc::UnboundedSender<Bytes>,
}

/// A list or watch's scope.
struct Filter {
    api_version: String,
    resource: String,
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<(String, String)>,
}

enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl KubeApi {
    /// Starts the stand-in on a free loopback port; watches that allow them get a BOOKMARK
    /// every second.
    pub async fn start() -> Self {
        let ca = TestCa::new("kubernetes");
        let leaf = ca.server("127.0.0.1");
        let dir = TempDir::new("kube-api");
        std::fs::write(dir.path().join("ca.crt"), &ca.bundle).expect("write ca.crt");
        std::fs::write(dir.path().join("token"), TOKEN).expect("write token");
        std::fs::write(dir.path().join("namespace"), "strait-system").expect("write namespace");
        let acceptor = leaf.http1_acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                bookmark_every: Some(Duration::from_secs(1)),
                ..State::default()
            }),
        });
        let server = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, shared) = (acceptor.clone(), server.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(Shared::answer(&shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let api = Self {
            address,
            dir,
            shared,
            task,
        };
        std::fs::write(api.kubeconfig(), api.kubeconfig_json().to_string())
            .expect("write kubeconfig");
        api
    }

    /// A kubeconfig file (JSON, which is YAML) with the server, its CA and the bearer token.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubeconfig_json(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {
                "server": format!("https://{}", self.address),
                "certificate-authority": self.dir.path().join("ca.crt"),
            }}],
            "users": [{"name": "strait-control", "user": {"token": TOKEN}}],
            "contexts": [{"name": "stand-in", "context": {
                "cluster": "stand-in", "user": "strait-control", "namespace": "strait-system",
            }}],
            "current-context": "stand-in",
        })
    }

    /// The environment of a process running in the stand-in's "cluster": the API server's
    /// address and the ServiceAccount directory (`token`, `ca.crt`, `namespace`).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "KUBERNETES_SERVICE_HOST".into(),
                self.address.ip().to_string(),
            ),
            (
                "KUBERNETES_SERVICE_PORT".into(),
                self.address.port().to_string(),
            ),
            (
                "STRAIT_KUBE_SERVICEACCOUNT_DIR".into(),
                self.dir.path().to_string_lossy().into_owned(),
            ),
        ]
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// Creates or replaces `object` (it names its `apiVersion`, `kind` and `metadata`) as a
    /// client's PUT would, status included; returns it as stored (with its resourceVersion).
    pub fn apply(&self, object: Value) -> Value {
        let key = Key::of(&object).expect("object with apiVersion, kind and metadata.name");
        let mut state = self.state();
        state.learn_kind(&key.resource, &object);
        state.store(key, object, Write::Whole)
    }

    /// Deletes an object; whether it existed.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> bool {
        let key = Key {
            api_version: api_version.into(),
            resource: plural(kind),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.state().remove(&key).is_some()
    }

    /// An object as stored.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            api_version: api_version.into(),
            resource: plural(kind),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.state().objects.get(&key).cloned()
    }

    /// Ends every open watch with an `ERROR` event of code 410 (Gone) and makes every
    /// resourceVersion given out so far too old to watch from: clients must list again.
    pub fn expire_watches(&self) {
        let mut state = self.state();
        state.floor = state.revision + 1;
        let gone = watch_line("ERROR", &gone_status(state.revision));
        for watch in state.watches.drain(..) {
            let _ = watch.events.send(gone.clone());
        }
    }

    /// Ends every open watch stream cleanly (as a server restart or a load balancer would);
    /// clients may resume from their last resourceVersion.
    pub fn close_watches(&self) {
        self.state().watches.clear();
    }

    /// How many watches are open now.
    pub fn open_watches(&self) -> usize {
        let mut state = self.state();
        state.watches.retain(|w| !w.events.is_closed());
        state.watches.len()
    }

    /// Requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    /// How many lists (GETs of a collection without `watch`) of `resource` were served.
    pub fn lists_of(&self, resource: &str) -> usize {
        let suffix = format!("/{resource}");
        self.requests()
            .iter()
            .filter(|r| {
                let (path, query) = r.split_once('?').unwrap_or((r.as_str(), ""));
                path.starts_with("GET ") && path.ends_with(&suffix) && !query.contains("watch=")
            })
            .count()
    }

    /// Sets (or with `None` stops) the periodic BOOKMARK events of watches opened from now on.
    pub fn set_bookmark_interval(&self, every: Option<Duration>) {
        self.state().bookmark_every = every;
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.state().watches.clear();
    }
}

/// How a write treats `status`.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    /// The object as given, status included (the tests' own writes).
    Whole,
    /// A client's write to the object: the stored status stays.
    Object,
    /// A client's write to `/status`: only status changes.
    Status,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn answer(self: &Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query: BTreeMap<String, String> = request
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .map(|(k, v)| (k.to_owned(), decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        self.lock().requests.push(match request.uri().query() {
            Some(q) => format!("{method} {path}?{q}"),
            None => format!("{method} {path}"),
        });
        let bearer = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer != Some(TOKEN) {
            return status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
        let content_type = request
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let Some(target) = Target::parse(&path) else {
            return status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let body = match http_body_util::Limited::new(request.into_body(), MAX_BODY)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return status_response(StatusCode::BAD_REQUEST, "BadRequest", "unreadable body")
            }
        };
        match (method, &target.name) {
            (Method::GET, None) if is_true(query.get("watch")) => self.watch(&target, &query),
            (Method::GET, None) => self.list(&target, &query),
            (Method::GET, Some(_)) => match self.lock().objects.get(&target.key()) {
                Some(object) => json_response(StatusCode::OK, object),
                None => not_found(&target),
            },
            (Method::POST, None) => self.create(&target, &body),
            (Method::PUT, Some(_)) => self.replace(&target, &body),
            (Method::PATCH, Some(_)) => self.patch(&target, &content_type, &body),
            (Method::DELETE, Some(_)) => match self.lock().remove(&target.key()) {
                Some(object) => json_response(StatusCode::OK, &object),
                None => not_found(&target),
            },
            _ => status_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "method not allowed",
            ),
        }
    }

    fn list(&self, target: &Target, query: &BTreeMap<String, String>) -> Response<Body> {
        let filter = match Filter::new(target, query) {
            Ok(f) => f,
            Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let state = self.lock();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|(key, object)| filter.matches(key, object))
            .map(|(_, object)| object.clone())
            .collect();
        let kind = state.kind(&target.resource);
        json_response(
            StatusCode::OK,
            &json!({
                "kind": format!("{kind}List"),
                "apiVersion": target.api_version,
                "metadata": {"resourceVersion": state.revision.to_string()},
                "items": items,
            }),
        )
    }

    fn watch(
        self: &Arc<Self>,
        target: &Target,
        query: &BTreeMap<String, String>,
    ) -> Response<Body> {
        let filter = match Filter::new(target, query) {
            Ok(f) => f,
            Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let from = query
            .get("resourceVersion")
            .filter(|rv| !rv.is_empty() && rv.as_str() != "0");
        let from = match from.map(|rv| rv.parse::<u64>()) {
            Some(Ok(rv)) => Some(rv),
            Some(Err(_)) => {
                return status_response(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "resourceVersion: not a number",
                )
            }
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.lock();
        match from {
            Some(rv) if rv < state.floor => {
                let _ = tx.send(watch_line("ERROR", &gone_status(rv)));
                return stream_response(rx);
            }
            Some(rv) => {
                for (_, kind, key, object) in state.history.iter().filter(|(at, ..)| *at > rv) {
                    if filter.matches(key, object) {
                        let _ = tx.send(watch_line(kind, object));
                    }
                }
            }
            // No resourceVersion: the current state as ADDED events, then changes.
            None => {
                for (key, object) in &state.objects {
                    if filter.matches(key, object) {
                        let _ = tx.send(watch_line("ADDED", object));
                    }
                }
            }
        }
        let bookmarks = is_true(query.get("allowWatchBookmarks"))
            .then_some(state.bookmark_every)
            .flatten();
        let kind = state.kind(&target.resource);
        state.watches.push(Watch {
            filter,
            events: tx.clone(),
        });
        drop(state);
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        let shared = Arc::downgrade(self);
        let api_version = target.api_version.clone();
        // Only the watch list keeps the stream open: dropping it there ends the stream.
        let events = tx.downgrade();
        drop(tx);
        tokio::spawn(async move {
            let ends = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
            tokio::pin!(ends);
            let mut tick = tokio::time::interval(bookmarks.unwrap_or(Duration::from_secs(3600)));
            tick.tick().await;
            loop {
                tokio::select! {
                    () = &mut ends => break,
                    _ = tick.tick() => {
                        let (Some(shared), Some(tx)) = (shared.upgrade(), events.upgrade()) else {
                            return;
                        };
                        if bookmarks.is_some() {
                            let revision = shared.lock().revision;
                            let mark = json!({"kind": kind, "apiVersion": api_version,
                                "metadata": {"resourceVersion": revision.to_string()}});
                            let _ = tx.send(watch_line("BOOKMARK", &mark));
                        }
                    }
                }
            }
            // `timeoutSeconds` is up: the watch goes, and with it the stream.
            if let (Some(shared), Some(tx)) = (shared.upgrade(), events.upgrade()) {
                shared
                    .lock()
                    .watches
                    .retain(|w| !w.events.same_channel(&tx));
            }
        });
        stream_response(rx)
    }

    fn create(&self, target: &Target, body: &[u8]) -> Response<Body> {
        let Ok(mut object) = serde_json::from_slice::<Value>(body) else {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "body: not JSON");
        };
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
            return status_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name: Required value",
            );
        };
        if let Some(ns) = &target.namespace {
            object["metadata"]["namespace"] = json!(ns);
        }
        let key = Key {
            name,
            ..target.key()
        };
        let mut state = self.lock();
        if state.objects.contains_key(&key) {
            return status_response(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{} \"{}\" already exists", key.resource, key.name),
            );
        }
        state.learn_kind(&key.resource, &object);
        let stored = state.store(key, object, Write::Object);
        json_response(StatusCode::CREATED, &stored)
    }

    fn replace(&self, target: &Target, body: &[u8]) -> Response<Body> {
        let Ok(object) = serde_json::from_slice::<Value>(body) else {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "body: not JSON");
        };
        let key = target.key();
        let mut state = self.lock();
        let current = state.objects.get(&key);
        if current.is_none() && target.status {
            return not_found(target);
        }
        let expected = object["metadata"]["resourceVersion"].as_str();
        if let (Some(expected), Some(current)) = (expected, current) {
            if current["metadata"]["resourceVersion"].as_str() != Some(expected) {
                return status_response(StatusCode::CONFLICT, "Conflict", "the object has been modified; please apply your changes to the latest version and try again");
            }
        }
        state.learn_kind(&key.resource, &object);
        let write = if target.status {
            Write::Status
        } else {
            Write::Object
        };
        json_response(StatusCode::OK, &state.store(key, object, write))
    }

    fn patch(&self, target: &Target, content_type: &str, body: &[u8]) -> Response<Body> {
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "body: not JSON");
        };
        let apply = content_type.starts_with("application/apply-patch+yaml");
        let merge = content_type.starts_with("application/merge-patch+json")
            || content_type.starts_with("application/strategic-merge-patch+json");
        if !apply && !merge {
            return status_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!("the body of the request was in an unknown format: {content_type}"),
            );
        }
        let key = target.key();
        let mut state = self.lock();
        let mut object = match state.objects.get(&key) {
            Some(current) => current.clone(),
            // Server-side apply creates what does not exist yet.
            None if apply && !target.status => json!({"metadata": {"name": key.name}}),
            None => return not_found(target),
        };
        merge_patch(&mut object, &patch);
        if !key.namespace.is_empty() {
            object["metadata"]["namespace"] = json!(key.namespace);
        }
        state.learn_kind(&key.resource, &object);
        let write = if target.status {
            Write::Status
        } else {
            Write::Object
        };
        json_response(StatusCode::OK, &state.store(key, object, write))
    }
}

impl State {
    fn kind(&self, resource: &str) -> String {
        self.kinds
            .get(resource)
            .cloned()
            .unwrap_or_else(|| kind_of(resource))
    }

    fn learn_kind(&mut self, resource: &str, object: &Value) {
        if let Some(kind) = object["kind"].as_str() {
            self.kinds.insert(resource.to_owned(), kind.to_owned());
        }
    }

    /// Stores `object` at `key` with a new resourceVersion and tells the watches.
    fn store(&mut self, key: Key, mut object: Value, write: Write) -> Value {
        self.revision += 1;
        let current = self.objects.get(&key).cloned();
        let kind = self.kind(&key.resource);
        if let Some(current) = &current {
            match write {
                Write::Whole => {}
                Write::Object => object["status"] = current["status"].clone(),
                Write::Status => {
                    let status = object["status"].take();
                    object = current.clone();
                    object["status"] = status;
                }
            }
            if object["status"].is_null() {
                if let Some(map) = object.as_object_mut() {
                    map.remove("status");
                }
            }
            for field in ["uid", "creationTimestamp", "generation"] {
                object["metadata"][field] = current["metadata"][field].clone();
            }
            let spec_changed = |v: &Value| {
                let mut v = v.clone();
                if let Some(map) = v.as_object_mut() {
                    map.remove("status");
                    map.remove("metadata");
                }
                v
            };
            if spec_changed(&object) != spec_changed(current) {
                let generation = current["metadata"]["generation"].as_u64().unwrap_or(1);
                object["metadata"]["generation"] = json!(generation + 1);
            }
        } else {
            self.uids += 1;
            object["metadata"]["uid"] =
                json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
            object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
            object["metadata"]["generation"] = json!(1);
        }
        object["apiVersion"] = json!(key.api_version);
        object["kind"] = json!(kind);
        object["metadata"]["name"] = json!(key.name);
        if !key.namespace.is_empty() {
            object["metadata"]["namespace"] = json!(key.namespace);
        }
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let change = if current.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.announce(change, &key, current.as_ref(), Some(&object));
        self.history
            .push((self.revision, change, key.clone(), object.clone()));
        self.objects.insert(key, object.clone());
        object
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.objects.remove(key)?;
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        self.announce("DELETED", key, Some(&object), None);
        self.history
            .push((self.revision, "DELETED", key.clone(), object.clone()));
        Some(object)
    }

    /// Sends a change to every watch that sees it: a change moving an object into a watch's
    /// selector is ADDED there, out of it DELETED, as the API server does.
    fn announce(&mut self, change: &str, key: &Key, old: Option<&Value>, new: Option<&Value>) {
        self.watches.retain(|w| !w.events.is_closed());
        for watch in &self.watches {
            let was = old.is_some_and(|o| watch.filter.matches(key, o));
            let is = new.is_some_and(|n| watch.filter.matches(key, n));
            let line = match (was, is, new, old) {
                (false, true, Some(n), _) => watch_line("ADDED", n),
                (true, true, Some(n), _) => watch_line(change, n),
                (true, false, Some(n), _) => watch_line("DELETED", n),
                (true, false, None, Some(o)) => watch_line("DELETED", o),
                _ => continue,
            };
            let _ = watch.events.send(line);
        }
    }
}

impl Key {
    fn of(object: &Value) -> Option<Self> {
        Some(Self {
            api_version: object["apiVersion"].as_str()?.to_owned(),
            resource: plural(object["kind"].as_str()?),
            namespace: object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            name: object["metadata"]["name"].as_str()?.to_owned(),
        })
    }
}

impl Target {
    /// `/api/v1/...` or `/apis/GROUP/VERSION/...`, then `[namespaces/NS/]RESOURCE[/NAME[/status]]`.
    fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (api_version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ((*version).to_owned(), rest),
            ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, resource, rest @ ..] => (Some((*ns).to_owned()), {
                let mut r = vec![*resource];
                r.extend_from_slice(rest);
                r
            }),
            rest => (None, rest.to_vec()),
        };
        let (resource, name, status) = match rest.as_slice() {
            [resource] => (*resource, None, false),
            [resource, name] => (*resource, Some(*name), false),
            [resource, name, "status"] => (*resource, Some(*name), true),
            _ => return None,
        };
        if resource.is_empty() || name.is_some_and(str::is_empty) {
            return None;
        }
        Some(Self {
            api_version,
            resource: resource.to_owned(),
            namespace,
            name: name.map(str::to_owned),
            status,
        })
    }

    fn key(&self) -> Key {
        Key {
            api_version: self.api_version.clone(),
            resource: self.resource.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name: self.name.clone().unwrap_or_default(),
        }
    }
}

impl Filter {
    fn new(target: &Target, query: &BTreeMap<String, String>) -> Result<Self, String> {
        let labels = match query.get("labelSelector") {
            Some(s) => parse_labels(s)?,
            None => Vec::new(),
        };
        let mut fields = Vec::new();
        for requirement in query
            .get("fieldSelector")
            .map_or("", String::as_str)
            .split(',')
        {
            if requirement.is_empty() {
                continue;
            }
            let (field, value) = requirement
                .split_once("==")
                .or_else(|| requirement.split_once('='))
                .ok_or_else(|| format!("fieldSelector: `{requirement}` is not FIELD=VALUE"))?;
            if field != "metadata.name" && field != "metadata.namespace" {
                return Err(format!("fieldSelector: field label not supported: {field}"));
            }
            fields.push((field.to_owned(), value.to_owned()));
        }
        Ok(Self {
            api_version: target.api_version.clone(),
            resource: target.resource.clone(),
            namespace: target.namespace.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, key: &Key, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let label = |k: &String| labels[k.as_str()].as_str();
        key.api_version == self.api_version
            && key.resource == self.resource
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| *ns == key.namespace)
            && self
                .fields
                .iter()
                .all(|(field, value)| match field.as_str() {
                    "metadata.name" => key.name == *value,
                    _ => key.namespace == *value,
                })
            && self.labels.iter().all(|r| match r {
                LabelRequirement::Equals(k, v) => label(k) == Some(v.as_str()),
                LabelRequirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
                LabelRequirement::Exists(k) => label(k).is_some(),
                LabelRequirement::Absent(k) => label(k).is_none(),
                LabelRequirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
                LabelRequirement::NotIn(k, vs) => {
                    label(k).is_none_or(|l| vs.iter().all(|v| v != l))
                }
            })
    }
}

/// A label selector: requirements separated by commas outside parentheses.
fn parse_labels(selector: &str) -> Result<Vec<LabelRequirement>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    let set = |values: &str| -> Vec<String> {
        values
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|v| v.trim().to_owned())
            .collect()
    };
    let mut requirements = Vec::new();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let requirement = if let Some((k, v)) = part.split_once(" notin ") {
            LabelRequirement::NotIn(k.trim().to_owned(), set(v))
        } else if let Some((k, v)) = part.split_once(" in ") {
            LabelRequirement::In(k.trim().to_owned(), set(v))
        } else if let Some((k, v)) = part.split_once("!=") {
            LabelRequirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            LabelRequirement::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some(k) = part.strip_prefix('!') {
            LabelRequirement::Absent(k.trim().to_owned())
        } else if part.contains(['(', ')', ' ']) {
            return Err(format!("labelSelector: cannot parse `{part}`"));
        } else {
            LabelRequirement::Exists(part.to_owned())
        };
        requirements.push(requirement);
    }
    Ok(requirements)
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Some(map) = target.as_object_mut() {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// The resource (plural, lower case) of a kind: `EndpointSlice` → `endpointslices`,
/// `AuthorizationPolicy` → `authorizationpolicies`, `Endpoints` → `endpoints`.
pub fn plural(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    if let Some(stem) = lower.strip_suffix('y') {
        format!("{stem}ies")
    } else if lower.ends_with('s') {
        lower
    } else {
        format!("{lower}s")
    }
}

/// A best guess at the kind of a resource nobody stored yet (list and bookmark `kind`).
fn kind_of(resource: &str) -> String {
    let known = [
        ("endpointslices", "EndpointSlice"),
        ("pods", "Pod"),
        ("services", "Service"),
        ("httproutes", "HTTPRoute"),
    ];
    if let Some((_, kind)) = known.iter().find(|(r, _)| *r == resource) {
        return (*kind).to_owned();
    }
    let singular = resource
        .strip_suffix("ies")
        .map(|s| format!("{s}y"))
        .or_else(|| resource.strip_suffix('s').map(str::to_owned))
        .unwrap_or_else(|| resource.to_owned());
    let mut chars = singular.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn is_true(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "1" || v == "true")
}

/// Percent-decoding of a query value (`+` is a space).
fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object})
        .to_string()
        .into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

/// The `Status` a watch from a compacted resourceVersion gets.
fn gone_status(rv: u64) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {rv}"),
        "reason": "Expired",
        "code": 410,
    })
}

fn not_found(target: &Target) -> Response<Body> {
    let message = format!(
        "{} \"{}\" not found",
        target.resource,
        target.name.as_deref().unwrap_or_default()
    );
    status_response(StatusCode::NOT_FOUND, "NotFound", &message)
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A chunked response carrying every line sent on `rx` until its senders are gone.
fn stream_response(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(line)), rx))
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_collections_and_objects() {
        let t = Target::parse("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices").unwrap();
        assert_eq!(
            (t.api_version.as_str(), t.resource.as_str()),
            ("discovery.k8s.io/v1", "endpointslices")
        );
        assert_eq!(t.namespace.as_deref(), Some("shop"));
        assert!(t.name.is_none());
        let t = Target::parse("/api/v1/pods").unwrap();
        assert!(t.namespace.is_none() && t.name.is_none());
        let t = Target::parse("/apis/strait.dev/v1alpha1/namespaces/a/services/b/status").unwrap();
        assert_eq!(t.name.as_deref(), Some("b"));
        assert!(t.status);
        assert!(Target::parse("/healthz").is_none());
    }

    #[test]
    fn label_selectors_as_the_api_reads_them() {
        let key = Key {
            api_version: "v1".into(),
            resource: "pods".into(),
            namespace: "a".into(),
            name: "p".into(),
        };
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let target = Target::parse("/api/v1/pods").unwrap();
        let with = |s: &str| {
            let query = BTreeMap::from([("labelSelector".to_owned(), s.to_owned())]);
            Filter::new(&target, &query).unwrap().matches(&key, &pod)
        };
        assert!(with("app=web"));
        assert!(with("app==web,tier"));
        assert!(!with("app!=web"));
        assert!(with("!missing"));
        assert!(with("tier in (back, front),app notin (db)"));
        assert!(!with("app in (db)"));
    }

    #[test]
    fn merge_patches_merge_and_null_removes() {
        let mut object = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut object, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(object, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn kinds_and_resources() {
        assert_eq!(plural("EndpointSlice"), "endpointslices");
        assert_eq!(plural("AuthorizationPolicy"), "authorizationpolicies");
        assert_eq!(plural("Endpoints"), "endpoints");
        assert_eq!(kind_of("proxyconfigs"), "Proxyconfig");
        assert_eq!(kind_of("endpointslices"), "EndpointSlice");
        assert_eq!(
            decode("kubernetes.io%2Fservice-name%3Dweb"),
            "kubernetes.io/service-name=web"
        );
    }
}

//! What concerns one proxy: the routes attached to its listeners, the Services those routes
//! reach, the policies that target its listeners or those routes, and its own ProxyConfig.
//! Pure: stored resources in, rendered pieces out.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::Value;

use crate::policy::{key, StoredResource};

/// One resource as a proxy receives it: its store key, its JSON text, and a hash of the text
/// (what a stream remembers of what it sent).
#[derive(Debug, Clone)]
pub struct Piece {
    /// `Kind/namespace/name`.
    pub key: Arc<str>,
    /// The document, serialized once for every proxy that receives it.
    pub json: Arc<str>,
    /// Hash of `json`.
    pub hash: u64,
}

impl Piece {
    /// The piece of `document` stored under `kind/namespace/name`.
    pub fn new(kind: &str, namespace: &str, name: &str, document: &Value) -> Self {
        let json = document.to_string();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        json.hash(&mut hasher);
        Self {
            key: key(kind, namespace, name).into(),
            json: json.into(),
            hash: hasher.finish(),
        }
    }
}

/// A Service a route sends to: (namespace, name).
type ServiceRef<'a> = (&'a str, &'a str);

/// Everything but the ProxyConfig that a proxy with `listeners` receives, in store key order.
/// With no listener known, every route, every Service and every listener-targeted policy.
/// `service` turns a stored Service into what is sent (registry endpoints filled in).
pub fn for_listeners(
    resources: &[StoredResource],
    listeners: &[String],
    service: impl Fn(&Value) -> Value,
) -> Vec<Piece> {
    let mut routes = BTreeSet::new();
    let mut reached: BTreeSet<ServiceRef<'_>> = BTreeSet::new();
    let mut attached = Vec::new();
    for r in resources {
        if !matches!(r.kind.as_str(), "HTTPRoute" | "TCPRoute" | "TLSRoute") {
            continue;
        }
        if let Some(doc) = attach(&r.document, listeners) {
            if r.kind == "HTTPRoute" {
                routes.insert((r.namespace.as_str(), r.name.as_str()));
            }
            backends(&r.document, &r.namespace, &mut reached);
            attached.push((r, doc));
        }
    }
    let mut pieces = Vec::new();
    let mut attached = attached.into_iter().peekable();
    for r in resources {
        match r.kind.as_str() {
            "Service" => {
                let wanted = listeners.is_empty()
                    || reached.contains(&(r.namespace.as_str(), r.name.as_str()));
                if wanted {
                    let doc = service(&r.document);
                    pieces.push(Piece::new(&r.kind, &r.namespace, &r.name, &doc));
                }
            }
            "HTTPRoute" | "TCPRoute" | "TLSRoute" => {
                if let Some((_, doc)) = attached.next_if(|(a, _)| std::ptr::eq(*a, r)) {
                    pieces.push(Piece::new(&r.kind, &r.namespace, &r.name, &doc));
                }
            }
            "AuthorizationPolicy" => {
                if let Some(doc) = target(&r.document, &r.namespace, listeners, &routes) {
                    pieces.push(Piece::new(&r.kind, &r.namespace, &r.name, &doc));
                }
            }
            _ => {}
        }
    }
    pieces
}

/// The listener names of a ProxyConfig document.
pub fn listeners_of(proxy_config: &Value) -> Vec<String> {
    proxy_config["spec"]["listeners"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Adds the Services a route's rules (backends and mirrors) or a TCP route's backends send to.
fn backends<'a>(route: &'a Value, namespace: &'a str, into: &mut BTreeSet<ServiceRef<'a>>) {
    let mut add = |backend: &'a Value| {
        if let Some(name) = backend["name"].as_str() {
            into.insert((backend["namespace"].as_str().unwrap_or(namespace), name));
        }
    };
    let spec = &route["spec"];
    for backend in spec["backendRefs"].as_array().into_iter().flatten() {
        add(backend);
    }
    for rule in spec["rules"].as_array().into_iter().flatten() {
        for backend in rule["backendRefs"].as_array().into_iter().flatten() {
            add(backend);
        }
        let mirror = &rule["mirror"]["backendRef"];
        if mirror.is_object() {
            add(mirror);
        }
    }
}

/// A route attached to `listeners`: kept if it names none of its parents (attaches to all) or
/// at least one of them, with `parentRefs` narrowed to those the node has. With no listener
/// known, routes are sent as they are.
fn attach(document: &Value, listeners: &[String]) -> Option<Value> {
    let parents = document["spec"]["parentRefs"].as_array();
    let Some(parents) = parents.filter(|p| !p.is_empty() && !listeners.is_empty()) else {
        return Some(document.clone());
    };
    let kept: Vec<Value> = parents
        .iter()
        .filter(|p| {
            p["name"]
                .as_str()
                .is_some_and(|n| listeners.iter().any(|l| l == n))
        })
        .cloned()
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut doc = document.clone();
    doc["spec"]["parentRefs"] = Value::Array(kept);
    Some(doc)
}

/// An AuthorizationPolicy as `listeners` see it: kept if it targets one of them or one of the
/// `routes` sent to the node, with `targetRefs` narrowed to those. With no listener known,
/// listener targets are all kept (as routes are sent as they are).
fn target(
    document: &Value,
    namespace: &str,
    listeners: &[String],
    routes: &BTreeSet<(&str, &str)>,
) -> Option<Value> {
    let refs = document["spec"]["targetRefs"].as_array()?;
    let kept: Vec<Value> = refs
        .iter()
        .filter(|t| {
            let name = t["name"].as_str().unwrap_or_default();
            match t["kind"].as_str() {
                Some("Listener") => listeners.is_empty() || listeners.iter().any(|l| l == name),
                Some("HTTPRoute") => routes.contains(&(namespace, name)),
                _ => false,
            }
        })
        .cloned()
        .collect();
    if kept.is_empty() {
        return None;
    }
    let mut doc = document.clone();
    doc["spec"]["targetRefs"] = Value::Array(kept);
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(kind: &str, namespace: &str, name: &str, spec: Value) -> StoredResource {
        serde_json::from_value(json!({
            "kind": kind, "namespace": namespace, "name": name,
            "resourceVersion": 1, "updatedAt": 0, "document": {"kind": kind, "spec": spec},
        }))
        .unwrap()
    }

    fn keys(pieces: &[Piece]) -> Vec<&str> {
        pieces.iter().map(|p| &*p.key).collect()
    }

    #[test]
    fn a_proxy_gets_the_services_its_routes_reach_and_no_others() {
        let resources = [
            stored(
                "HTTPRoute",
                "default",
                "web",
                json!({"parentRefs": [{"name": "web"}], "rules": [
                    {"backendRefs": [{"name": "a"}, {"name": "b", "namespace": "shop"}],
                     "mirror": {"backendRef": {"name": "copy"}, "percent": 5}}]}),
            ),
            stored(
                "HTTPRoute",
                "default",
                "other",
                json!({"parentRefs": [{"name": "admin"}], "rules": [{"backendRefs": [{"name": "x"}]}]}),
            ),
            stored("Service", "default", "a", json!({})),
            stored("Service", "default", "b", json!({})),
            stored("Service", "default", "copy", json!({})),
            stored("Service", "default", "x", json!({})),
            stored("Service", "shop", "b", json!({})),
            stored(
                "TCPRoute",
                "default",
                "db",
                json!({"parentRefs": [{"name": "web"}], "backendRefs": [{"name": "pg"}]}),
            ),
            stored("Service", "default", "pg", json!({})),
        ];
        let web = for_listeners(&resources, &["web".into()], Value::clone);
        assert_eq!(
            keys(&web),
            [
                "HTTPRoute/default/web",
                "Service/default/a",
                "Service/default/copy",
                "Service/shop/b",
                "TCPRoute/default/db",
                "Service/default/pg",
            ]
        );
        let unknown = for_listeners(&resources, &[], Value::clone);
        assert_eq!(
            unknown.len(),
            resources.len(),
            "unknown listeners: send all"
        );
    }

    #[test]
    fn equal_documents_hash_equal() {
        let a = Piece::new("Service", "default", "a", &json!({"spec": {"x": 1}}));
        let b = Piece::new("Service", "default", "a", &json!({"spec": {"x": 1}}));
        let c = Piece::new("Service", "default", "a", &json!({"spec": {"x": 2}}));
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

    #[test]
    fn routes_attach_to_the_nodes_listeners_only() {
        let route =
            serde_json::json!({"spec": {"parentRefs": [{"name": "web"}, {"name": "admin-web"}]}});
        let web = attach(&route, &["web".into()]).unwrap();
        assert_eq!(
            web["spec"]["parentRefs"],
            serde_json::json!([{"name": "web"}])
        );
        assert!(attach(&route, &["db".into()]).is_none());
        assert!(attach(&route, &[]).is_some(), "unknown listeners: send all");
        let any = serde_json::json!({"spec": {}});
        assert!(attach(&any, &["db".into()]).is_some());
    }

    #[test]
    fn policies_go_to_the_nodes_that_have_their_targets_only() {
        let policy = serde_json::json!({"spec": {"targetRefs": [
            {"kind": "Listener", "name": "inbound"},
            {"kind": "HTTPRoute", "name": "reviews"},
        ]}});
        let routes = BTreeSet::from([("default", "reviews")]);
        let none = BTreeSet::new();
        let both = target(&policy, "default", &["inbound".into()], &routes).unwrap();
        assert_eq!(both["spec"]["targetRefs"].as_array().map(Vec::len), Some(2));
        let route_only = target(&policy, "default", &["outbound".into()], &routes).unwrap();
        assert_eq!(
            route_only["spec"]["targetRefs"],
            serde_json::json!([{"kind": "HTTPRoute", "name": "reviews"}])
        );
        assert!(target(&policy, "default", &["outbound".into()], &none).is_none());
        assert!(
            target(&policy, "other", &["outbound".into()], &routes).is_none(),
            "a route of another namespace is another route"
        );
        assert!(
            target(&policy, "default", &[], &none).is_some(),
            "unknown listeners: send"
        );
    }
}

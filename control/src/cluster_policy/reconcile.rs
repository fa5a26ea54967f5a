//! Which of the cluster's objects make up the mesh's config, and why the others do not: pure,
//! from the objects as last seen and the set accepted before.
//!
//! Each object is first read alone (its own errors reject it), then the survivors are
//! validated together; an object named by an error of the set is rejected and the set is
//! validated again without it. A rejected object whose earlier version was accepted keeps
//! that version in the set (the last good config keeps serving), unless that version no
//! longer fits either. The result always validates, as the policy store requires.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use strait_config::error::PathSeg;
use strait_config::{ConfigError, LoadedDoc, Source};

/// Where an object lives in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// A Strait custom resource of this kind.
    Strait(&'static str),
    /// A Gateway API `HTTPRoute`.
    GatewayHttpRoute,
}

impl Origin {
    /// The Strait kind its document has.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Strait(kind) => kind,
            Self::GatewayHttpRoute => "HTTPRoute",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Strait(_) => "",
            Self::GatewayHttpRoute => "gateway.networking.k8s.io ",
        }
    }
}

/// One object of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Its API and kind.
    pub origin: Origin,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// `Kind/namespace/name` of the Strait document it becomes.
    pub fn document_key(&self) -> String {
        crate::policy::key(self.origin.kind(), &self.namespace, &self.name)
    }

    fn label(&self) -> String {
        format!(
            "<{}{} {}/{}>",
            self.origin.label(),
            self.origin.kind(),
            self.namespace,
            self.name
        )
    }
}

/// An object as the reconciler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Its Strait document, or why it has none (a Gateway API field Strait cannot serve).
    pub document: Result<Value, Vec<Problem>>,
}

/// One thing wrong with an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, e.g. `spec.rules[0].backendRefs[0].name`.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// It is a reference that does not resolve (a backend, parent or target).
    pub reference: bool,
    /// It is a field Strait does not support (rather than a wrong value).
    pub unsupported: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Problem {
    /// A field Strait cannot serve (`path: message` as the Gateway mapping writes them).
    pub fn unsupported(text: &str) -> Self {
        let (path, message) = text.split_once(": ").unwrap_or(("spec", text));
        Self {
            path: path.to_owned(),
            message: message.to_owned(),
            reference: false,
            unsupported: true,
        }
    }

    fn from_config(e: &ConfigError) -> Self {
        let reference = e.path.segments().iter().any(|s| {
            matches!(s, PathSeg::Key(k) if matches!(k.as_ref(), "backendRefs" | "backendRef" | "parentRefs" | "targetRefs"))
        });
        Self {
            path: e.path.to_string(),
            message: e.message.clone(),
            reference,
            unsupported: false,
        }
    }
}

/// What became of one object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Why it is not accepted; empty when it is.
    pub problems: Vec<Problem>,
    /// Not accepted, but an earlier version of it still serves.
    pub previous_serves: bool,
}

impl Verdict {
    /// Whether the object as it is now is in the config.
    pub fn accepted(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The set to serve and a verdict for every object.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// `Kind/namespace/name` → document, valid together.
    pub documents: BTreeMap<String, Value>,
    /// Every object's verdict.
    pub verdicts: BTreeMap<ObjectKey, Verdict>,
}

/// One entry of the set being built.
struct Entry {
    document: Value,
    doc: LoadedDoc,
    /// The object it stands for; `None` for an earlier accepted version.
    object: Option<ObjectKey>,
}

/// Decides the set to serve from the cluster's `objects` and the `previous` set.
pub fn reconcile(
    objects: &BTreeMap<ObjectKey, Candidate>,
    previous: &BTreeMap<String, Value>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut set: BTreeMap<String, Entry> = BTreeMap::new();
    let mut rejected: Vec<String> = Vec::new();
    for (key, candidate) in objects {
        let verdict = outcome.verdicts.entry(key.clone()).or_default();
        let doc_key = key.document_key();
        let document = match &candidate.document {
            Ok(document) => document,
            Err(problems) => {
                verdict.problems = problems.clone();
                rejected.push(doc_key);
                continue;
            }
        };
        if let Some(other) = set.get(&doc_key).and_then(|e| e.object.clone()) {
            verdict.problems.push(Problem {
                path: "metadata.name".into(),
                message: format!(
                    "{} {}/{} of another API has this name; rename one",
                    other.origin.kind(),
                    other.namespace,
                    other.name
                ),
                reference: false,
                unsupported: false,
            });
            continue;
        }
        match parse_one(&key.label(), document) {
            Ok(doc) => {
                set.insert(
                    doc_key,
                    Entry {
                        document: document.clone(),
                        doc,
                        object: Some(key.clone()),
                    },
                );
            }
            Err(problems) => {
                verdict.problems = problems;
                rejected.push(doc_key);
            }
        }
    }
    for doc_key in rejected {
        fall_back(&mut set, &doc_key, previous);
    }
    // Each round removes at least one entry, so this ends.
    for _ in 0..=objects.len() + previous.len() {
        let docs: Vec<LoadedDoc> = set.values().map(|e| e.doc.clone()).collect();
        let Err(errors) = strait_config::compile::validate(&docs) else {
            break;
        };
        let mut culprits: BTreeMap<String, Vec<Problem>> = BTreeMap::new();
        for e in errors.iter() {
            let named = set
                .iter()
                .find(|(_, entry)| Path::new(&*entry.doc.file) == e.file);
            let doc_key = match named {
                Some((k, _)) => k.clone(),
                // Not attributable: give up on every new version.
                None => match set.iter().find(|(_, entry)| entry.object.is_some()) {
                    Some((k, _)) => k.clone(),
                    None => break,
                },
            };
            culprits
                .entry(doc_key)
                .or_default()
                .push(Problem::from_config(e));
        }
        if culprits.is_empty() {
            set.clear();
            break;
        }
        for (doc_key, problems) in culprits {
            let Some(entry) = set.remove(&doc_key) else {
                continue;
            };
            if let Some(object) = entry.object {
                if let Some(verdict) = outcome.verdicts.get_mut(&object) {
                    verdict.problems = problems;
                }
                if previous.get(&doc_key) != Some(&entry.document) {
                    fall_back(&mut set, &doc_key, previous);
                }
            }
        }
    }
    for (key, verdict) in outcome.verdicts.iter_mut() {
        let doc_key = key.document_key();
        verdict.previous_serves =
            !verdict.accepted() && set.get(&doc_key).is_some_and(|e| e.object.is_none());
    }
    outcome.documents = set.into_iter().map(|(k, e)| (k, e.document)).collect();
    outcome
}

/// Puts the earlier accepted version of `doc_key`, if any, in the set.
fn fall_back(set: &mut BTreeMap<String, Entry>, doc_key: &str, previous: &BTreeMap<String, Value>) {
    let Some(document) = previous.get(doc_key) else {
        return;
    };
    if set.contains_key(doc_key) {
        return;
    }
    if let Ok(doc) = parse_one(&format!("<accepted {doc_key}>"), document) {
        set.insert(
            doc_key.to_owned(),
            Entry {
                document: document.clone(),
                doc,
                object: None,
            },
        );
    }
}

fn parse_one(label: &str, document: &Value) -> Result<LoadedDoc, Vec<Problem>> {
    let source = Source {
        file: label.into(),
        text: document.to_string(),
    };
    match strait_config::load::parse_sources(&[source]) {
        Ok(mut docs) if docs.len() == 1 => Ok(docs.remove(0)),
        Ok(_) => Err(vec![Problem {
            path: "(document)".into(),
            message: "not one document".into(),
            reference: false,
            unsupported: false,
        }]),
        Err(errors) => Err(errors.iter().map(Problem::from_config).collect()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(kind: &'static str, name: &str) -> ObjectKey {
        ObjectKey {
            origin: Origin::Strait(kind),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn service(name: &str, port: u16) -> Value {
        json!({"apiVersion": "strait.dev/v1alpha1", "kind": "Service",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"protocol": "http1", "endpoints": [{"address": format!("127.0.0.1:{port}")}]}})
    }

    fn route(name: &str, backend: &str) -> Value {
        json!({"apiVersion": "strait.dev/v1alpha1", "kind": "HTTPRoute",
               "metadata": {"name": name, "namespace": "default"},
               "spec": {"rules": [{"backendRefs": [{"name": backend}]}]}})
    }

    fn objects(items: Vec<(ObjectKey, Value)>) -> BTreeMap<ObjectKey, Candidate> {
        items
            .into_iter()
            .map(|(k, d)| {
                (
                    k,
                    Candidate {
                        generation: Some(1),
                        document: Ok(d),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_valid_set_is_accepted_whole() {
        let objects = objects(vec![
            (key("Service", "a"), service("a", 1)),
            (key("HTTPRoute", "r"), route("r", "a")),
        ]);
        let out = reconcile(&objects, &BTreeMap::new());
        assert_eq!(out.documents.len(), 2);
        assert!(out.verdicts.values().all(Verdict::accepted));
    }

    #[test]
    fn a_dangling_reference_rejects_only_its_route() {
        let objects = objects(vec![
            (key("Service", "a"), service("a", 1)),
            (key("HTTPRoute", "good"), route("good", "a")),
            (key("HTTPRoute", "bad"), route("bad", "nope")),
        ]);
        let out = reconcile(&objects, &BTreeMap::new());
        assert_eq!(out.documents.len(), 2, "{:?}", out.documents.keys());
        let bad = &out.verdicts[&key("HTTPRoute", "bad")];
        assert!(!bad.accepted());
        assert!(bad.problems.iter().all(|p| p.reference), "{bad:?}");
        assert!(bad.problems[0].path.contains("backendRefs"), "{bad:?}");
        assert!(!bad.previous_serves);
    }

    #[test]
    fn an_invalid_new_version_leaves_the_last_good_one_serving() {
        let previous: BTreeMap<String, Value> =
            [("Service/default/a".to_owned(), service("a", 1))].into();
        let mut broken = service("a", 2);
        broken["spec"]["protocol"] = json!("http3");
        let out = reconcile(&objects(vec![(key("Service", "a"), broken)]), &previous);
        assert_eq!(out.documents["Service/default/a"], service("a", 1));
        let verdict = &out.verdicts[&key("Service", "a")];
        assert!(
            !verdict.accepted() && verdict.previous_serves,
            "{verdict:?}"
        );
        assert!(verdict.problems[0].path.contains("protocol"), "{verdict:?}");
    }

    #[test]
    fn a_gateway_route_may_not_shadow_a_strait_one() {
        let mut items = vec![
            (key("Service", "a"), service("a", 1)),
            (key("HTTPRoute", "r"), route("r", "a")),
        ];
        let gateway = ObjectKey {
            origin: Origin::GatewayHttpRoute,
            ..key("HTTPRoute", "r")
        };
        items.push((gateway.clone(), route("r", "a")));
        let out = reconcile(&objects(items), &BTreeMap::new());
        assert!(out.verdicts[&key("HTTPRoute", "r")].accepted());
        assert!(!out.verdicts[&gateway].accepted());
    }
}

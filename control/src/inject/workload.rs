//! `straitctl inject`: find the pod template of each workload in a YAML stream and inject it.
//! Documents of other kinds (and workloads left alone) are echoed exactly as written.

use serde_json::Value;

use super::patch::with_prefix;
use super::pod::{plan, Decision, Scope, Skip};
use super::settings::Settings;
use super::yaml;

/// Where each workload kind keeps its pod template (a JSON Pointer; `""`: it is the pod).
pub const POD_TEMPLATES: [(&str, &str); 8] = [
    ("Pod", ""),
    ("Deployment", "/spec/template"),
    ("StatefulSet", "/spec/template"),
    ("DaemonSet", "/spec/template"),
    ("ReplicaSet", "/spec/template"),
    ("ReplicationController", "/spec/template"),
    ("Job", "/spec/template"),
    ("CronJob", "/spec/jobTemplate/spec/template"),
];

/// What happened to one workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The proxy was added.
    Injected,
    /// Left alone, and why.
    Skipped(Skip),
}

/// One line of the report `straitctl inject` prints to stderr.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `kind/name` (with `namespace/` when set).
    pub object: String,
    /// What happened.
    pub change: Change,
}

/// A document that cannot be injected.
#[derive(Debug, thiserror::Error)]
#[error("document {document}{object}: {message}")]
pub struct WorkloadError {
    /// 1-based position in the stream.
    pub document: usize,
    /// ` (kind/name)` when known.
    pub object: String,
    /// Why.
    pub message: String,
}

fn object_name(doc: &Value) -> String {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("?");
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    match doc.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{}/{ns}/{name}", kind.to_lowercase()),
        None => format!("{}/{name}", kind.to_lowercase()),
    }
}

/// A pod template found in a document.
struct Template {
    /// `kind/name` of its workload.
    object: String,
    /// JSON Pointer to it.
    at: String,
    /// Its workload's `metadata.namespace`, when written.
    namespace: Option<String>,
}

/// The pod templates in `doc` (several for a `List`).
fn templates(doc: &Value) -> Vec<Template> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "List" {
        return doc
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .flat_map(|(i, item)| {
                templates(item).into_iter().map(move |t| Template {
                    at: format!("/items/{i}{}", t.at),
                    ..t
                })
            })
            .collect();
    }
    POD_TEMPLATES
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, at)| {
            vec![Template {
                object: object_name(doc),
                at: (*at).to_owned(),
                namespace: doc
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }]
        })
        .unwrap_or_default()
}

/// Injects every workload of the YAML stream `text`; returns the new stream and a report.
/// A workload's proxy gets the identity of its `metadata.namespace`, or of `namespace` when
/// it names none (where `kubectl apply` will put it). Idempotent: the output given again
/// comes back unchanged.
pub fn inject_documents(
    text: &str,
    namespace: &str,
    scope: Scope,
    settings: &Settings,
) -> Result<(String, Vec<Report>), WorkloadError> {
    let mut out = String::new();
    let mut reports = Vec::new();
    for (i, part) in yaml::split_documents(text).into_iter().enumerate() {
        let fail = |object: String, message: String| WorkloadError {
            document: i + 1,
            object,
            message,
        };
        if part.trim().is_empty() {
            continue;
        }
        let parsed = yaml::parse(&part).map_err(|e| fail(String::new(), e))?;
        let mut rewritten = None;
        if let Some(mut doc) = parsed {
            let json = yaml::to_json(&doc);
            let mut changed = false;
            for Template {
                object,
                at,
                namespace: written,
            } in templates(&json)
            {
                let named = format!(" ({object})");
                let pod = json
                    .pointer(&at)
                    .ok_or_else(|| fail(named.clone(), format!("no pod template at `{at}`")))?;
                let namespace = written.as_deref().unwrap_or(namespace);
                let change = match plan(pod, namespace, scope, settings)
                    .map_err(|e| fail(named.clone(), e.to_string()))?
                {
                    Decision::Skip(why) => Change::Skipped(why),
                    Decision::Inject(ops) => {
                        yaml::apply(&mut doc, &with_prefix(&ops, &at))
                            .map_err(|e| fail(named.clone(), e.to_string()))?;
                        changed = true;
                        Change::Injected
                    }
                };
                reports.push(Report { object, change });
            }
            if changed {
                rewritten = Some(yaml::emit(&doc).map_err(|e| fail(String::new(), e))?);
            }
        }
        out.push_str("---\n");
        let body = rewritten.unwrap_or(part);
        out.push_str(&body);
        if !body.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok((out, reports))
}

//! Deciding about one pod (or pod template) and producing its patch.

use serde_json::{json, Map, Value};

use super::annotations::{self, INJECT};
use super::identity::{self, WorkloadIdentity};
use super::patch::{escape, Op};
use super::settings::Settings;
use super::sidecar::{self, INIT_CONTAINER, PROXY_CONTAINER};
use super::InjectError;

/// Where the opt-in may come from besides the pod itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only the pod's own `strait.dev/inject: enabled` opts it in.
    Pod,
    /// The namespace opted in (its label matched the webhook's `namespaceSelector`), or the
    /// user ran `straitctl inject`: every pod not opted out is injected.
    Everything,
}

/// Why a pod is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// `strait.dev/inject: disabled`.
    OptedOut,
    /// No opt-in.
    NotOptedIn,
    /// It already has the proxy.
    AlreadyInjected,
    /// `hostNetwork: true`: the rules would redirect the node's traffic.
    HostNetwork,
}

impl Skip {
    /// A short explanation for logs and the CLI.
    pub fn reason(self) -> &'static str {
        match self {
            Self::OptedOut => "strait.dev/inject: disabled",
            Self::NotOptedIn => {
                "not opted in (annotate the pod strait.dev/inject: enabled, or label its namespace)"
            }
            Self::AlreadyInjected => "already injected",
            Self::HostNetwork => "hostNetwork pods are never injected",
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Leave it.
    Skip(Skip),
    /// Apply these operations (pointers relative to the pod).
    Inject(Vec<Op>),
}

fn map_at<'a>(pod: &'a Value, path: &[&str]) -> Option<&'a Map<String, Value>> {
    path.iter()
        .try_fold(pod, |v, k| v.get(*k))
        .and_then(Value::as_object)
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .collect()
}

/// Decides about `pod` (an object with `metadata` and `spec`: a Pod or a pod template)
/// created in `namespace`, and returns the patch that injects it. The same input always
/// gives the same output.
pub fn plan(
    pod: &Value,
    namespace: &str,
    scope: Scope,
    settings: &Settings,
) -> Result<Decision, InjectError> {
    let empty = Map::new();
    let annotations = map_at(pod, &["metadata", "annotations"]).unwrap_or(&empty);
    let labels = map_at(pod, &["metadata", "labels"]).unwrap_or(&empty);
    let spec = pod.get("spec").unwrap_or(&Value::Null);
    let containers = names(spec.get("containers"));
    let init_containers = names(spec.get("initContainers"));

    if annotations.contains_key(annotations::INJECTED)
        || containers.contains(&PROXY_CONTAINER)
        || init_containers.contains(&PROXY_CONTAINER)
        || init_containers.contains(&INIT_CONTAINER)
    {
        return Ok(Decision::Skip(Skip::AlreadyInjected));
    }
    let asked = annotations
        .get(INJECT)
        .or_else(|| labels.get(INJECT))
        .map(|v| v.as_str().unwrap_or_default().trim().to_ascii_lowercase());
    match asked.as_deref() {
        Some("disabled") => return Ok(Decision::Skip(Skip::OptedOut)),
        Some("enabled") => {}
        None if scope == Scope::Everything => {}
        None => return Ok(Decision::Skip(Skip::NotOptedIn)),
        Some(other) => {
            return Err(InjectError {
                key: INJECT.into(),
                message: format!("`{other}` must be \"enabled\" or \"disabled\""),
            })
        }
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Decision::Skip(Skip::HostNetwork));
    }
    let options = annotations::read(annotations, settings)?;
    if settings.trust_bundle.trim().is_empty() {
        return Err(InjectError {
            key: annotations::TRUST_BUNDLE.into(),
            message: "no trust bundle to give the proxy (straitctl inject --trust-bundle FILE, from `straitctl identity bundle`)".into(),
        });
    }
    let workload = WorkloadIdentity::of(namespace, spec);
    let name = identity::workload_name(labels);
    let identity_annotations =
        identity::annotations(&workload, name, settings).map_err(|message| InjectError {
            key: annotations::BOOTSTRAP.into(),
            message,
        })?;

    let mut ops = Vec::new();
    // Annotations: create the map before adding keys to it.
    let mut added = sidecar::added_annotations(annotations, containers.first().copied());
    added.extend(identity_annotations);
    if pod
        .pointer("/metadata/annotations")
        .is_some_and(Value::is_object)
    {
        for (key, value) in added {
            ops.push(Op::add(
                format!("/metadata/annotations/{}", escape(&key)),
                value,
            ));
        }
    } else {
        if pod.get("metadata").is_none() {
            ops.push(Op::add("/metadata", json!({})));
        }
        let map: Map<String, Value> = added.into_iter().collect();
        ops.push(Op::add("/metadata/annotations", Value::Object(map)));
    }
    // strait-init first: the rules are in place before anything else runs. A native proxy
    // comes right after it, so later init containers already have a working network.
    let mut first_inits = vec![sidecar::init_container(&options, settings)];
    if options.native {
        first_inits.push(sidecar::proxy_container(&options, settings));
    }
    if spec.get("initContainers").is_some_and(Value::is_array) {
        for (i, container) in first_inits.into_iter().enumerate() {
            ops.push(Op::add(format!("/spec/initContainers/{i}"), container));
        }
    } else {
        ops.push(Op::add("/spec/initContainers", Value::Array(first_inits)));
    }
    if !options.native {
        // Classic sidecar: first, so the kubelet starts it before the app.
        ops.push(Op::add(
            "/spec/containers/0",
            sidecar::proxy_container(&options, settings),
        ));
    }
    let volumes = [identity::bootstrap_volume(), identity::token_volume()];
    if spec.get("volumes").is_some_and(Value::is_array) {
        for volume in volumes {
            ops.push(Op::add("/spec/volumes/-", volume));
        }
    } else {
        ops.push(Op::add("/spec/volumes", json!(volumes)));
    }
    Ok(Decision::Inject(ops))
}

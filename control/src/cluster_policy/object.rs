//! A cluster object (as the API server returns it) as the reconciler's candidate: its Strait
//! document, without what the cluster adds (`status`, `managedFields`, `uid`, annotations...).

use serde_json::{json, Map, Value};

use super::gateway;
use super::reconcile::{Candidate, ObjectKey, Origin, Problem};

/// The key and candidate of `object`; `None` without a name.
pub fn candidate(origin: Origin, object: &Value) -> Option<(ObjectKey, Candidate)> {
    let metadata = object.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_owned();
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let generation = metadata.get("generation").and_then(Value::as_i64);
    let document = match origin {
        Origin::Strait(kind) => {
            let mut meta = Map::new();
            meta.insert("name".into(), json!(name));
            meta.insert("namespace".into(), json!(namespace));
            if let Some(labels) = metadata.get("labels").filter(|l| l.is_object()) {
                meta.insert("labels".into(), labels.clone());
            }
            Ok(json!({
                "apiVersion": strait_config::spec::API_VERSION,
                "kind": kind,
                "metadata": meta,
                "spec": object.get("spec").cloned().unwrap_or_else(|| json!({})),
            }))
        }
        Origin::GatewayHttpRoute => gateway::to_strait(object, &namespace, &name)
            .map_err(|errors| errors.iter().map(|e| Problem::unsupported(e)).collect()),
    };
    let key = ObjectKey {
        origin,
        namespace,
        name,
    };
    Some((
        key,
        Candidate {
            generation,
            document,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_fields_stay_behind() {
        let object = json!({
            "apiVersion": "strait.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "shop", "generation": 4, "uid": "u",
                         "resourceVersion": "9", "annotations": {"x": "y"}, "labels": {"app": "a"}},
            "spec": {"protocol": "http1"},
            "status": {"conditions": []},
        });
        let (key, c) = candidate(Origin::Strait("Service"), &object).unwrap();
        assert_eq!(key.document_key(), "Service/shop/a");
        assert_eq!(c.generation, Some(4));
        assert_eq!(
            c.document.unwrap(),
            json!({"apiVersion": "strait.dev/v1alpha1", "kind": "Service",
                   "metadata": {"name": "a", "namespace": "shop", "labels": {"app": "a"}},
                   "spec": {"protocol": "http1"}})
        );
    }
}

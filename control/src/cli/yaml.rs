//! Printing JSON documents as YAML (`straitctl get -o yaml`).

use yaml_rust2::yaml::{Hash, Yaml};
use yaml_rust2::YamlEmitter;

fn to_yaml(value: &serde_json::Value) -> Yaml {
    match value {
        serde_json::Value::Null => Yaml::Null,
        serde_json::Value::Bool(b) => Yaml::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        serde_json::Value::String(s) => Yaml::String(s.clone()),
        serde_json::Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        serde_json::Value::Object(o) => {
            let mut h = Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

/// `documents` as a multi-document YAML stream.
pub fn documents(documents: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for doc in documents {
        let mut text = String::new();
        if YamlEmitter::new(&mut text).dump(&to_yaml(doc)).is_ok() {
            out.push_str(&text);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_through_the_config_parser() {
        let doc = serde_json::json!({"apiVersion": "strait.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"protocol": "http1", "endpoints": [{"address": "127.0.0.1:1", "weight": 2}]}});
        let text = super::documents(&[doc]);
        assert!(
            text.starts_with("---\napiVersion: strait.dev/v1alpha1"),
            "{text}"
        );
        strait_config::load::parse_sources(&[strait_config::Source {
            file: "x".into(),
            text,
        }])
        .expect("valid YAML of the contract");
    }
}

//! The CustomResourceDefinitions of Strait's kinds (`deploy/crds/`), generated from the
//! config crate's spec types so that the schema the API server enforces and the parser the
//! proxy runs cannot drift apart (`straitctl crds` writes them; a test compares).
//!
//! ```text
//!  strait_config::spec::*Spec ──schemars──▶ JSON Schema ──structural──▶ openAPIV3Schema.spec
//!  condition::ResourceStatus  ──schemars──▶ JSON Schema ──structural──▶ openAPIV3Schema.status
//! ```

pub mod condition;
pub mod structural;

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Value};
use strait_config::spec;

pub use structural::StructuralError;

/// The API group of every Strait kind.
pub const GROUP: &str = "strait.dev";
/// The one version served.
pub const VERSION: &str = "v1alpha1";

/// One Strait kind as a custom resource.
#[derive(Debug, Clone, Copy)]
pub struct CrdKind {
    /// `kind:` as written in YAML.
    pub kind: &'static str,
    /// The resource name in URLs (`/apis/strait.dev/v1alpha1/namespaces/NS/PLURAL`).
    pub plural: &'static str,
    /// Columns `kubectl get` prints besides NAME, Accepted and Age: (name, JSONPath, type).
    columns: &'static [(&'static str, &'static str, &'static str)],
    /// The OpenAPI schema of `spec`, as schemars generates it.
    spec_schema: fn() -> Value,
}

/// Every Strait kind, in the order of [`strait_config::spec::KINDS`].
pub const KINDS: [CrdKind; 6] = [
    CrdKind {
        kind: "ProxyConfig",
        plural: "proxyconfigs",
        columns: &[("Admin", ".spec.admin", "string")],
        spec_schema: schema_of::<spec::ProxyConfigSpec>,
    },
    CrdKind {
        kind: "Service",
        plural: "services",
        columns: &[
            ("Protocol", ".spec.protocol", "string"),
            ("Discovery", ".spec.discovery", "string"),
        ],
        spec_schema: schema_of::<spec::ServiceSpec>,
    },
    CrdKind {
        kind: "HTTPRoute",
        plural: "httproutes",
        columns: &[
            ("Hostnames", ".spec.hostnames", "string"),
            ("Parents", ".spec.parentRefs[*].name", "string"),
        ],
        spec_schema: schema_of::<spec::HttpRouteSpec>,
    },
    CrdKind {
        kind: "TCPRoute",
        plural: "tcproutes",
        columns: &[("Parents", ".spec.parentRefs[*].name", "string")],
        spec_schema: schema_of::<spec::TcpRouteSpec>,
    },
    CrdKind {
        kind: "TLSRoute",
        plural: "tlsroutes",
        columns: &[
            ("Hostnames", ".spec.hostnames", "string"),
            ("Parents", ".spec.parentRefs[*].name", "string"),
        ],
        spec_schema: schema_of::<spec::TlsRouteSpec>,
    },
    CrdKind {
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        columns: &[
            ("Action", ".spec.action", "string"),
            ("Targets", ".spec.targetRefs[*].name", "string"),
        ],
        spec_schema: schema_of::<spec::AuthorizationPolicySpec>,
    },
];

/// The kind named `kind`.
pub fn kind(kind: &str) -> Option<&'static CrdKind> {
    KINDS.iter().find(|k| k.kind == kind)
}

fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft07()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

impl CrdKind {
    /// `PLURAL.strait.dev`, the CRD's name.
    pub fn crd_name(&self) -> String {
        format!("{}.{GROUP}", self.plural)
    }

    /// The whole object's schema: `spec` from the config types, `status` from [`condition`].
    pub fn object_schema(&self) -> Result<Value, StructuralError> {
        let spec = structural::structural((self.spec_schema)())?;
        let mut status = structural::structural(schema_of::<condition::ResourceStatus>())?;
        // One condition per type, merged by type when two writers patch the list.
        if let Some(conditions) = status.pointer_mut("/properties/conditions") {
            conditions["x-kubernetes-list-type"] = json!("map");
            conditions["x-kubernetes-list-map-keys"] = json!(["type"]);
        }
        let object = json!({
            "type": "object",
            "description": format!("Strait {}: see the `spec` fields.", self.kind),
            "required": ["spec"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": spec,
                "status": status,
            },
        });
        structural::check(&object, "")?;
        Ok(object)
    }

    /// The CustomResourceDefinition.
    pub fn definition(&self) -> Result<Value, StructuralError> {
        let mut columns: Vec<Value> = self
            .columns
            .iter()
            .map(|(name, path, kind)| json!({"name": name, "jsonPath": path, "type": kind}))
            .collect();
        columns.push(json!({
            "name": "Accepted",
            "jsonPath": ".status.conditions[?(@.type==\"Accepted\")].status",
            "type": "string",
        }));
        columns.push(
            json!({"name": "Age", "jsonPath": ".metadata.creationTimestamp", "type": "date"}),
        );
        Ok(json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {
                "name": self.crd_name(),
                "labels": {"app.kubernetes.io/part-of": "strait"},
            },
            "spec": {
                "group": GROUP,
                "names": {
                    "kind": self.kind,
                    "listKind": format!("{}List", self.kind),
                    "plural": self.plural,
                    "singular": self.kind.to_ascii_lowercase(),
                    "categories": ["strait"],
                },
                "scope": "Namespaced",
                "versions": [{
                    "name": VERSION,
                    "served": true,
                    "storage": true,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": self.object_schema()?},
                }],
            },
        }))
    }

    /// The file `straitctl crds --out DIR` writes: a comment saying so, then the YAML.
    pub fn file(&self) -> Result<(String, String), StructuralError> {
        let yaml = crate::cli::yaml::documents(&[self.definition()?]);
        let text = format!(
            "# Generated from the Rust types by `straitctl crds --out deploy/crds`: do not edit.\n{yaml}"
        );
        Ok((format!("{}.yaml", self.crd_name()), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_the_config_crate_has_a_definition() {
        let ours: Vec<&str> = KINDS.iter().map(|k| k.kind).collect();
        assert_eq!(ours, strait_config::spec::KINDS);
    }

    #[test]
    fn every_schema_is_structural() {
        for k in KINDS {
            let definition = k.definition().unwrap_or_else(|e| panic!("{}: {e}", k.kind));
            let text = definition.to_string();
            assert!(!text.contains("$ref"), "{}: {text}", k.kind);
        }
    }

    #[test]
    fn spec_fields_keep_their_yaml_names_and_required_ones() {
        let schema = kind("HTTPRoute").unwrap().object_schema().unwrap();
        let rule = &schema["properties"]["spec"]["properties"]["rules"]["items"];
        assert_eq!(rule["required"], json!(["backendRefs"]));
        let path = &rule["properties"]["matches"]["items"]["properties"]["path"];
        assert_eq!(
            path["properties"]["type"]["enum"],
            json!(["Exact", "PathPrefix", "RegularExpression"])
        );
        let timeout = &rule["properties"]["timeouts"]["properties"]["request"];
        assert_eq!(timeout["type"], "string");
    }
}

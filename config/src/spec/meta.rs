//! The header every document carries: `apiVersion`, `kind`, `metadata`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The one API version this build understands.
pub const API_VERSION: &str = "strait.dev/v1alpha1";

/// `metadata` of a resource, as in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// Name, unique per kind and namespace (lowercase letters, digits, `-` and `.`).
    pub name: String,
    /// Namespace; `default` when omitted.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Version stamped by the control process (optimistic concurrency); ignored by the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// A whole document: header plus the kind's `spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    /// Must be `strait.dev/v1alpha1`.
    pub api_version: String,
    /// The resource kind (already used to choose `S`).
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The kind-specific body.
    pub spec: S,
}

//! `status.conditions` of a Strait resource in a cluster, as Gateway API writes them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One condition of a resource's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted` (the control took the resource into the mesh's config) or `ResolvedRefs`
    /// (every reference it makes resolves).
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// One CamelCase word: `Accepted`, `Invalid`, `ResolvedRefs`, `RefNotFound`...
    pub reason: String,
    /// For people: the validation errors when not accepted.
    pub message: String,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// Whether a condition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not.
    False,
    /// Not known yet.
    Unknown,
}

/// `status` of every Strait kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The control's conditions; one of each type.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

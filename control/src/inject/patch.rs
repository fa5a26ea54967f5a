//! RFC 6902 JSON Patch: the operations injection emits (only `add`), JSON Pointer escaping,
//! and applying a patch to a JSON value (tests, and anything that wants the patched object).

use serde::Serialize;
use serde_json::Value;

/// One `add` operation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Op {
    /// Always `add`.
    pub op: &'static str,
    /// JSON Pointer (RFC 6901): `/spec/initContainers/0`, `/metadata/annotations/a~1b`.
    pub path: String,
    /// The value added.
    pub value: Value,
}

impl Op {
    /// `add` `value` at `path`.
    pub fn add(path: impl Into<String>, value: Value) -> Self {
        Self {
            op: "add",
            path: path.into(),
            value,
        }
    }
}

/// Escapes one pointer segment: `~` → `~0`, `/` → `~1` (annotation keys contain `/`).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Splits a pointer into unescaped segments.
pub fn segments(path: &str) -> Result<Vec<String>, PatchError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PatchError(format!("`{path}` does not start with `/`")));
    };
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// `ops` moved under `prefix` (a pointer to the pod inside a bigger object).
pub fn with_prefix(ops: &[Op], prefix: &str) -> Vec<Op> {
    ops.iter()
        .map(|op| Op::add(format!("{prefix}{}", op.path), op.value.clone()))
        .collect()
}

/// A patch that does not fit the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply patch: {0}")]
pub struct PatchError(pub String);

/// Applies `add` operations to `doc` (RFC 6902 §4.1: the parent must exist; `-` appends; an
/// index inserts; an object member is added or replaced).
pub fn apply(doc: &mut Value, ops: &[Op]) -> Result<(), PatchError> {
    for op in ops {
        let mut segments = segments(&op.path)?;
        let last = segments
            .pop()
            .ok_or_else(|| PatchError(format!("`{}` has no target", op.path)))?;
        let mut at = &mut *doc;
        for segment in &segments {
            at = match at {
                Value::Object(map) => map.get_mut(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| PatchError(format!("`{}`: no `{segment}`", op.path)))?;
        }
        match at {
            Value::Object(map) => {
                map.insert(last, op.value.clone());
            }
            Value::Array(items) if last == "-" => items.push(op.value.clone()),
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i <= items.len() => items.insert(i, op.value.clone()),
                _ => return Err(PatchError(format!("`{}`: bad index", op.path))),
            },
            _ => {
                return Err(PatchError(format!(
                    "`{}`: parent is not a container",
                    op.path
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_annotation_keys() {
        assert_eq!(escape("prometheus.io/scrape"), "prometheus.io~1scrape");
        assert_eq!(escape("a~b/c"), "a~0b~1c");
        assert_eq!(
            segments("/metadata/annotations/a~0b~1c").ok(),
            Some(vec![
                "metadata".into(),
                "annotations".into(),
                "a~b/c".into()
            ])
        );
    }

    #[test]
    fn applies_adds_like_rfc_6902() {
        let mut doc = json!({"spec": {"containers": [{"name": "app"}]}, "metadata": {}});
        apply(
            &mut doc,
            &[
                Op::add("/spec/initContainers", json!([{"name": "b"}])),
                Op::add("/spec/initContainers/0", json!({"name": "a"})),
                Op::add("/spec/containers/-", json!({"name": "z"})),
                Op::add("/metadata/annotations", json!({})),
                Op::add("/metadata/annotations/x~1y", json!("1")),
            ],
        )
        .expect("applies");
        assert_eq!(
            doc,
            json!({"spec": {"initContainers": [{"name": "a"}, {"name": "b"}],
                            "containers": [{"name": "app"}, {"name": "z"}]},
                   "metadata": {"annotations": {"x/y": "1"}}})
        );
        let e = apply(&mut doc, &[Op::add("/spec/volumes/-", json!({}))]);
        assert!(e.is_err(), "the parent must exist");
    }
}

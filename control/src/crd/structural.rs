//! Turns a JSON Schema that schemars generated into a structural OpenAPI v3 schema, the only
//! kind a CustomResourceDefinition may carry: every node has a `type`, no `$ref`, no
//! `additionalProperties: false` (the API server prunes unknown fields instead), no
//! `anyOf`/`oneOf` choosing between types (but `x-kubernetes-int-or-string` for a number
//! or a name), `nullable` nowhere (optional fields are simply not
//! `required`), and only the `format`s Kubernetes knows.

use serde_json::{Map, Value};

/// Why a generated schema cannot be made structural.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct StructuralError {
    /// Where in the schema, e.g. `.properties.spec.properties.rules.items`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Keys that carry nothing a CRD needs (or may not carry).
const DROPPED: [&str; 6] = [
    "$schema",
    "$id",
    "title",
    "definitions",
    "$defs",
    "examples",
];

/// The structural form of `schema`, checked.
pub fn structural(schema: Value) -> Result<Value, StructuralError> {
    let rewritten = rewrite(schema);
    check(&rewritten, "")?;
    Ok(rewritten)
}

fn rewrite(schema: Value) -> Value {
    let Value::Object(mut node) = schema else {
        return schema;
    };
    for key in DROPPED {
        node.remove(key);
    }
    if node.get("additionalProperties") == Some(&Value::Bool(false)) {
        node.remove("additionalProperties");
    }
    if node.get("default") == Some(&Value::Null) {
        node.remove("default");
    }
    if let Some(Value::Array(types)) = node.get("type") {
        let kept: Vec<&Value> = types.iter().filter(|t| *t != "null").collect();
        if let [only] = kept.as_slice() {
            let only = (*only).clone();
            node.insert("type".into(), only);
        }
    }
    if let Some(value) = node.remove("const") {
        node.insert("enum".into(), Value::Array(vec![value]));
    }
    if let Some(Value::Array(values)) = node.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    for choice in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = node.remove(choice) {
            merge_choice(&mut node, choice, options);
        }
    }
    if let Some(Value::String(format)) = node.get("format") {
        match kubernetes_format(format) {
            Some(known) => node.insert("format".into(), Value::String(known.into())),
            None => node.remove("format"),
        };
    }
    Map::from_iter(node.into_iter().map(|(k, v)| {
        let v = match k.as_str() {
            "properties" => match v {
                Value::Object(props) => {
                    Value::Object(props.into_iter().map(|(p, s)| (p, rewrite(s))).collect())
                }
                other => other,
            },
            "items" | "additionalProperties" => rewrite(v),
            _ => v,
        };
        (k, v)
    }))
    .into()
}

/// `anyOf`/`oneOf` as schemars writes them for `Option<T>` (T or null) and for enums whose
/// variants carry doc comments (one `const` each): folded into one typed node.
fn merge_choice(node: &mut Map<String, Value>, choice: &str, options: Vec<Value>) {
    let options: Vec<Value> = options
        .into_iter()
        .map(rewrite)
        .filter(|o| o.get("type").is_none_or(|t| t != "null"))
        .collect();
    let constants: Option<Vec<Value>> = options
        .iter()
        .map(|o| match o.get("enum") {
            Some(Value::Array(values)) => Some(values.clone()),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().flatten().collect());
    let types: Vec<&str> = options
        .iter()
        .filter_map(|o| o.get("type").and_then(Value::as_str))
        .collect();
    if options.len() == 2 && types.contains(&"integer") && types.contains(&"string") {
        // A port by number or by name: Kubernetes' own int-or-string.
        node.insert("x-kubernetes-int-or-string".into(), Value::Bool(true));
        return;
    }
    match (constants, options.as_slice()) {
        (_, [only]) => {
            if let Value::Object(inner) = only {
                for (k, v) in inner {
                    node.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
        }
        (Some(values), _) if values.iter().all(Value::is_string) => {
            node.insert("type".into(), Value::String("string".into()));
            node.insert("enum".into(), Value::Array(values));
        }
        _ => {
            // Left for `check` to report: not a shape the CRD can express.
            node.insert(choice.into(), Value::Array(options.to_vec()));
        }
    }
}

/// The integer and number formats Kubernetes validates; schemars' unsigned ones map onto a
/// signed one wide enough (their `minimum: 0` stays).
fn kubernetes_format(format: &str) -> Option<&'static str> {
    match format {
        "int32" | "uint16" | "uint8" | "int16" | "int8" => Some("int32"),
        "int64" | "uint32" | "uint64" | "uint" => Some("int64"),
        "double" => Some("double"),
        "float" => Some("float"),
        "date-time" => Some("date-time"),
        _ => None,
    }
}

/// Checks the rules of a structural schema that the rewrite must have met.
pub fn check(schema: &Value, path: &str) -> Result<(), StructuralError> {
    let fail = |message: &str| StructuralError {
        path: if path.is_empty() {
            ".".into()
        } else {
            path.into()
        },
        message: message.into(),
    };
    let Value::Object(node) = schema else {
        return Err(fail("a schema must be an object"));
    };
    for forbidden in ["$ref", "anyOf", "oneOf", "allOf", "not", "nullable"] {
        if node.contains_key(forbidden) {
            return Err(fail(&format!(
                "`{forbidden}` is not allowed in a CRD schema"
            )));
        }
    }
    let preserves = [
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-int-or-string",
    ]
    .iter()
    .any(|k| node.get(*k) == Some(&Value::Bool(true)));
    let kind = node.get("type").and_then(Value::as_str);
    match kind {
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
        None if preserves => {}
        _ => return Err(fail("every node needs one `type`")),
    }
    if node.contains_key("properties") && node.contains_key("additionalProperties") {
        return Err(fail(
            "`properties` and `additionalProperties` are exclusive",
        ));
    }
    if let Some(Value::Object(props)) = node.get("properties") {
        for (name, sub) in props {
            check(sub, &format!("{path}.properties.{name}"))?;
        }
    }
    if let Some(sub) = node.get("additionalProperties") {
        check(sub, &format!("{path}.additionalProperties"))?;
    }
    match (kind, node.get("items")) {
        (Some("array"), Some(sub)) => check(sub, &format!("{path}.items"))?,
        (Some("array"), None) => return Err(fail("an array needs `items`")),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn options_lose_their_null_and_refs_are_refused() {
        let schema = json!({"type": "object", "additionalProperties": false, "properties": {
            "a": {"type": ["string", "null"], "default": null},
            "b": {"anyOf": [{"type": "integer", "format": "uint32", "minimum": 0}, {"type": "null"}]},
        }});
        let out = structural(schema).unwrap();
        assert_eq!(
            out,
            json!({"type": "object", "properties": {
                "a": {"type": "string"},
                "b": {"type": "integer", "format": "int64", "minimum": 0},
            }})
        );
        let bad = json!({"type": "object", "properties": {"x": {"$ref": "#/$defs/X"}}});
        assert_eq!(
            structural(bad).unwrap_err().path,
            ".properties.x",
            "a $ref the generator left must be found"
        );
    }

    #[test]
    fn documented_enum_variants_become_one_string_enum() {
        let schema = json!({"description": "d", "oneOf": [
            {"const": "ALLOW", "type": "string", "description": "let through"},
            {"const": "DENY", "type": "string", "description": "refuse"},
        ]});
        assert_eq!(
            structural(schema).unwrap(),
            json!({"description": "d", "type": "string", "enum": ["ALLOW", "DENY"]})
        );
    }

    #[test]
    fn a_number_or_a_name_is_int_or_string() {
        let schema = json!({"description": "port", "anyOf": [
            {"type": "integer", "format": "uint32", "minimum": 0}, {"type": "string"}]});
        assert_eq!(
            structural(schema).unwrap(),
            json!({"description": "port", "x-kubernetes-int-or-string": true})
        );
    }

    #[test]
    fn untyped_nodes_are_refused() {
        let err = structural(json!({"type": "object", "properties": {"x": {}}})).unwrap_err();
        assert!(err.message.contains("type"), "{err}");
    }
}

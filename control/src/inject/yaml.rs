//! YAML for `straitctl inject`: split a stream into documents (so untouched documents are
//! echoed byte for byte), convert between YAML and JSON values, and apply a patch to a YAML
//! tree in place, keeping its key order.

use serde_json::{Number, Value};
use yaml_rust2::yaml::{Hash, Yaml};
use yaml_rust2::{YamlEmitter, YamlLoader};

use super::patch::{segments, Op, PatchError};

/// Splits a YAML stream at its `---` document markers. Each part keeps its own text (without
/// the marker line); parts that hold only comments or whitespace are kept too, so joining
/// them back reproduces the input's documents.
pub fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if is_marker {
            docs.push(String::new());
            // Content after the marker (`--- {a: 1}`) belongs to the new document.
            if let Some(rest) = bare.strip_prefix("---") {
                if !rest.trim().is_empty() {
                    if let Some(last) = docs.last_mut() {
                        last.push_str(rest.trim_start());
                        last.push('\n');
                    }
                }
            }
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
        }
    }
    // A stream starting with `---` has an empty first part: drop it.
    if docs.len() > 1 && docs.first().is_some_and(|d| d.trim().is_empty()) {
        docs.remove(0);
    }
    docs
}

/// Parses one document; `Ok(None)` when it holds nothing (comments only).
pub fn parse(text: &str) -> Result<Option<Yaml>, String> {
    let mut docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    match docs.len() {
        0 => Ok(None),
        1 => Ok(docs.pop()),
        n => Err(format!("expected one document, found {n}")),
    }
}

/// Emits one document (without the leading `---`).
pub fn emit(doc: &Yaml) -> Result<String, String> {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    emitter.dump(doc).map_err(|e| format!("{e:?}"))?;
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    let mut body = body.to_owned();
    body.push('\n');
    Ok(body)
}

/// YAML → JSON (for deciding: key order does not matter there).
pub fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or(Value::String(text.clone()), Value::Number),
        Yaml::Integer(i) => Value::Number((*i).into()),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(hash) => Value::Object(
            hash.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => Value::Null,
    }
}

/// JSON → YAML (for the values a patch adds).
pub fn from_json(value: &Value) -> Yaml {
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(from_json).collect()),
        Value::Object(map) => {
            let mut hash = Hash::new();
            for (k, v) in map {
                hash.insert(Yaml::String(k.clone()), from_json(v));
            }
            Yaml::Hash(hash)
        }
    }
}

/// Applies `add` operations to a YAML tree, as [`super::patch::apply`] does to JSON.
pub fn apply(doc: &mut Yaml, ops: &[Op]) -> Result<(), PatchError> {
    for op in ops {
        let mut path = segments(&op.path)?;
        let last = path
            .pop()
            .ok_or_else(|| PatchError(format!("`{}` has no target", op.path)))?;
        let mut at = &mut *doc;
        for segment in &path {
            at = match at {
                Yaml::Hash(hash) => hash.get_mut(&Yaml::String(segment.clone())),
                Yaml::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| PatchError(format!("`{}`: no `{segment}`", op.path)))?;
        }
        let value = from_json(&op.value);
        match at {
            Yaml::Hash(hash) => {
                hash.insert(Yaml::String(last), value);
            }
            Yaml::Array(items) if last == "-" => items.push(value),
            Yaml::Array(items) => match last.parse::<usize>() {
                Ok(i) if i <= items.len() => items.insert(i, value),
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

    #[test]
    fn splits_streams_at_markers_only() {
        let text = "# lead\na: 1\n---\nb: |\n  --- not a marker\n--- {c: 3}\n---\n";
        let docs = split_documents(text);
        assert_eq!(
            docs,
            [
                "# lead\na: 1\n",
                "b: |\n  --- not a marker\n",
                "{c: 3}\n",
                ""
            ]
        );
        assert_eq!(split_documents("---\na: 1\n"), ["a: 1\n"]);
    }

    #[test]
    fn json_round_trip_keeps_strings_strings() {
        let yaml = parse("a: \"15300\"\nb: 15300\nc: [true, 1.5, null]\n")
            .expect("parses")
            .expect("a document");
        let json = to_json(&yaml);
        assert_eq!(
            json,
            serde_json::json!({"a": "15300", "b": 15300, "c": [true, 1.5, null]})
        );
        let text = emit(&from_json(&json)).expect("emits");
        assert!(text.contains("a: \"15300\""), "{text}");
        assert!(text.contains("b: 15300"), "{text}");
    }
}

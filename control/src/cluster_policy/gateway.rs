//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) as a source of Strait routes: the
//! fields Strait shares are copied across, everything else is refused by name, so that a route
//! is either served as written or not accepted at all.
//!
//! | Gateway API | Strait |
//! |---|---|
//! | `parentRefs[].name` (kind `Gateway` or unset; or group `strait.dev`, kind `Listener`) | `parentRefs[].name`: a listener of the ProxyConfig |
//! | `hostnames`, `rules[].matches` (path, headers, queryParams, method) | the same fields |
//! | `rules[].backendRefs[]` (kind `Service` or unset): `name`, `namespace`, `weight` | `backendRefs[]`: a Strait Service of that name; `port` is ignored (the Service's endpoints carry it) |
//! | `rules[].timeouts.request` / `.backendRequest` | `timeouts.request` / `.perTry` |
//! | filters `RequestHeaderModifier` / `ResponseHeaderModifier` | `requestHeaders` / `responseHeaders` |
//! | filter `RequestMirror` (`percent` or `fraction`) | `mirror` |
//!
//! Refused: `parentRefs[].sectionName` and `.port`, parents of other kinds (e.g. GAMMA's
//! `Service`), backendRefs of other kinds or with `filters`, the filters `RequestRedirect`,
//! `URLRewrite`, `CORS` and `ExtensionRef`, `rules[].retry` and `sessionPersistence`.

use serde_json::{json, Map, Value};

/// The API group of Gateway API.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// Errors collected while mapping, each `field.path: what`.
type Errors = Vec<String>;

/// The Strait `HTTPRoute` document for a Gateway API `HTTPRoute` object, or every field
/// Strait cannot serve as written.
pub fn to_strait(object: &Value, namespace: &str, name: &str) -> Result<Value, Errors> {
    let mut errors = Vec::new();
    let spec = object.get("spec").cloned().unwrap_or_else(|| json!({}));
    let mut out = Map::new();
    let parents = array(&spec, "parentRefs")
        .iter()
        .enumerate()
        .filter_map(|(i, p)| parent(p, &format!("spec.parentRefs[{i}]"), &mut errors))
        .collect::<Vec<_>>();
    out.insert("parentRefs".into(), Value::Array(parents));
    if let Some(hostnames) = spec.get("hostnames") {
        out.insert("hostnames".into(), hostnames.clone());
    }
    let rules = array(&spec, "rules")
        .iter()
        .enumerate()
        .map(|(i, r)| rule(r, &format!("spec.rules[{i}]"), &mut errors))
        .collect::<Vec<_>>();
    out.insert("rules".into(), Value::Array(rules));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(json!({
        "apiVersion": strait_config::spec::API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": out,
    }))
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn parent(p: &Value, path: &str, errors: &mut Errors) -> Option<Value> {
    let group = text(p, "group").unwrap_or(GROUP);
    let kind = text(p, "kind").unwrap_or("Gateway");
    let supported =
        (group == GROUP && kind == "Gateway") || (group == "strait.dev" && kind == "Listener");
    if !supported {
        errors.push(format!(
            "{path}: parent {group}/{kind} is not supported; name a Strait listener (kind Gateway or strait.dev Listener)"
        ));
    }
    for field in ["sectionName", "port"] {
        if p.get(field).is_some() {
            errors.push(format!(
                "{path}.{field}: not supported; the parent's name is the Strait listener"
            ));
        }
    }
    let name = text(p, "name")?;
    supported.then(|| json!({"name": name}))
}

fn rule(r: &Value, path: &str, errors: &mut Errors) -> Value {
    let mut out = Map::new();
    for field in ["retry", "sessionPersistence"] {
        if r.get(field).is_some() {
            errors.push(format!(
                "{path}.{field}: not supported by Strait's HTTPRoute mapping"
            ));
        }
    }
    if let Some(matches) = r.get("matches") {
        out.insert("matches".into(), matches.clone());
    }
    let backends = array(r, "backendRefs")
        .iter()
        .enumerate()
        .filter_map(|(i, b)| backend(b, &format!("{path}.backendRefs[{i}]"), errors))
        .collect::<Vec<_>>();
    out.insert("backendRefs".into(), Value::Array(backends));
    if let Some(timeouts) = r.get("timeouts") {
        let mut t = Map::new();
        if let Some(request) = timeouts.get("request") {
            t.insert("request".into(), request.clone());
        }
        if let Some(per_try) = timeouts.get("backendRequest") {
            t.insert("perTry".into(), per_try.clone());
        }
        out.insert("timeouts".into(), Value::Object(t));
    }
    for (i, f) in array(r, "filters").iter().enumerate() {
        filter(f, &format!("{path}.filters[{i}]"), &mut out, errors);
    }
    Value::Object(out)
}

fn backend(b: &Value, path: &str, errors: &mut Errors) -> Option<Value> {
    let group = text(b, "group").unwrap_or("");
    let kind = text(b, "kind").unwrap_or("Service");
    if !(group.is_empty() || group == "strait.dev") || kind != "Service" {
        errors.push(format!(
            "{path}: backend {group}/{kind} is not supported; name a Service (a Strait Service of that name)"
        ));
        return None;
    }
    if b.get("filters").is_some() {
        errors.push(format!(
            "{path}.filters: per-backend filters are not supported"
        ));
    }
    let mut out = Map::new();
    out.insert("name".into(), b.get("name")?.clone());
    if let Some(ns) = b.get("namespace") {
        out.insert("namespace".into(), ns.clone());
    }
    if let Some(weight) = b.get("weight") {
        out.insert("weight".into(), weight.clone());
    }
    Some(Value::Object(out))
}

fn filter(f: &Value, path: &str, rule: &mut Map<String, Value>, errors: &mut Errors) {
    match text(f, "type") {
        Some("RequestHeaderModifier") => {
            rule.insert(
                "requestHeaders".into(),
                header_edits(f.get("requestHeaderModifier")),
            );
        }
        Some("ResponseHeaderModifier") => {
            rule.insert(
                "responseHeaders".into(),
                header_edits(f.get("responseHeaderModifier")),
            );
        }
        Some("RequestMirror") => {
            let mirror = f.get("requestMirror").cloned().unwrap_or_default();
            let percent = match (mirror.get("percent"), mirror.get("fraction")) {
                (Some(p), _) => p.as_f64().unwrap_or(100.0),
                (None, Some(fraction)) => {
                    let numerator = fraction
                        .get("numerator")
                        .and_then(Value::as_f64)
                        .unwrap_or(0.0);
                    let denominator = fraction
                        .get("denominator")
                        .and_then(Value::as_f64)
                        .unwrap_or(100.0);
                    if denominator > 0.0 {
                        numerator * 100.0 / denominator
                    } else {
                        0.0
                    }
                }
                (None, None) => 100.0,
            };
            match backend(
                &mirror.get("backendRef").cloned().unwrap_or_default(),
                &format!("{path}.requestMirror.backendRef"),
                errors,
            ) {
                Some(backend_ref) => {
                    rule.insert(
                        "mirror".into(),
                        json!({"backendRef": backend_ref, "percent": percent}),
                    );
                }
                None => errors.push(format!("{path}.requestMirror.backendRef: required")),
            }
        }
        Some(other) => errors.push(format!("{path}.type: filter {other} is not supported")),
        None => errors.push(format!("{path}.type: required")),
    }
}

/// Gateway API's `{set: [{name, value}], add: [...], remove: [...]}` as Strait's maps.
fn header_edits(modifier: Option<&Value>) -> Value {
    let pairs = |key: &str| -> Map<String, Value> {
        modifier
            .map(|m| array(m, key))
            .unwrap_or_default()
            .iter()
            .filter_map(|h| Some((text(h, "name")?.to_owned(), h.get("value")?.clone())))
            .collect()
    };
    let remove = modifier
        .and_then(|m| m.get("remove"))
        .cloned()
        .unwrap_or_else(|| json!([]));
    json!({"set": pairs("set"), "add": pairs("add"), "remove": remove})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shared_fields_map_onto_strait() {
        let object = json!({"spec": {
            "parentRefs": [{"name": "web"}],
            "hostnames": ["reviews.local"],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET"}],
                "backendRefs": [{"name": "reviews", "port": 9080, "weight": 3}],
                "timeouts": {"request": "2s", "backendRequest": "500ms"},
                "filters": [{"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}}],
            }],
        }});
        let doc = to_strait(&object, "default", "r").unwrap();
        assert_eq!(doc["spec"]["parentRefs"], json!([{"name": "web"}]));
        let rule = &doc["spec"]["rules"][0];
        assert_eq!(
            rule["backendRefs"],
            json!([{"name": "reviews", "weight": 3}])
        );
        assert_eq!(
            rule["timeouts"],
            json!({"request": "2s", "perTry": "500ms"})
        );
        assert_eq!(rule["requestHeaders"]["set"], json!({"x-a": "1"}));
        let text = doc.to_string();
        strait_config::load::parse_sources(&[strait_config::Source {
            file: "gw".into(),
            text,
        }])
        .expect("a Strait HTTPRoute");
    }

    #[test]
    fn what_strait_cannot_serve_is_refused_by_field() {
        let object = json!({"spec": {
            "parentRefs": [{"name": "gw", "sectionName": "http"}, {"kind": "Service", "group": "", "name": "s"}],
            "rules": [{"backendRefs": [{"name": "a"}],
                       "filters": [{"type": "URLRewrite", "urlRewrite": {}}]}],
        }});
        let errors = to_strait(&object, "default", "r").unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.parentRefs[0].sectionName")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.starts_with("spec.parentRefs[1]:")),
            "{errors:?}"
        );
        assert!(
            errors.iter().any(|e| e.contains("URLRewrite")),
            "{errors:?}"
        );
    }
}

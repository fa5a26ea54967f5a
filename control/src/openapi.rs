//! The OpenAPI 3 document served at `/openapi.json`. A test walks it against the running
//! server, so every path listed here is one the router serves.

use serde_json::{json, Value};

fn op(summary: &str, body: Option<&str>, ok: &str) -> Value {
    let mut o = json!({
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {
            ok: {"description": "success"},
            "400": {"description": "bad input", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            "401": {"description": "missing or invalid bearer token"},
        }
    });
    if let Some(schema) = body {
        o["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    o
}

fn param(name: &str, location: &str, required: bool) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": {"type": "string"}})
}

fn with_params(mut operation: Value, params: Vec<Value>) -> Value {
    operation["parameters"] = Value::Array(params);
    operation
}

/// The document; `extra_paths` (the event bus's) are merged in.
pub fn document(extra_paths: Value) -> Value {
    let kind_path = || {
        vec![
            param("kind", "path", true),
            param("namespace", "path", true),
            param("name", "path", true),
        ]
    };
    let mut paths = json!({
        "/healthz": {"get": {"summary": "Liveness (no token)", "responses": {"200": {"description": "ok"}}}},
        "/metrics": {"get": {"summary": "Prometheus metrics of the control (no token)", "responses": {"200": {"description": "text format"}}}},
        "/openapi.json": {"get": {"summary": "This document (no token)", "responses": {"200": {"description": "OpenAPI 3"}}}},
        "/v1/apply": {"post": op("Validate and store resources (multi-document YAML files); 409 on a stale metadata.resourceVersion", Some("ApplyRequest"), "200")},
        "/v1/resources": {"get": with_params(op("Every stored resource", None, "200"), vec![param("namespace", "query", false)])},
        "/v1/resources/{kind}": {"get": with_params(op("Resources of one kind (Service, HTTPRoute, TCPRoute, TLSRoute, ProxyConfig, AuthorizationPolicy)", None, "200"), vec![param("kind", "path", true), param("namespace", "query", false)])},
        "/v1/resources/{kind}/{namespace}/{name}": {
            "get": with_params(op("One resource with its resourceVersion", None, "200"), kind_path()),
            "delete": with_params(op("Delete a resource (refused while others reference it; 409 on a stale resourceVersion)", None, "200"), {
                let mut p = kind_path();
                p.push(param("resourceVersion", "query", false));
                p
            }),
        },
        "/v1/resources/{kind}/{namespace}/{name}/history": {"get": with_params(op("The last versions of a resource", None, "200"), kind_path())},
        "/v1/registry/instances": {
            "post": op("Register an instance (TTL heartbeats keep it)", Some("Registration"), "201"),
            "get": with_params(op("Discover instances", None, "200"), vec![param("service", "query", false), param("namespace", "query", false), param("tag", "query", false), param("capability", "query", false)]),
        },
        "/v1/registry/instances/{id}": {"delete": with_params(op("Deregister an instance", None, "200"), vec![param("id", "path", true)])},
        "/v1/registry/instances/{id}/heartbeat": {"put": with_params(op("Renew an instance's TTL", None, "204"), vec![param("id", "path", true)])},
        "/v1/push/stream": {"get": with_params(op("A proxy's config stream: NDJSON lines {version, resources} then {version, base, resources, removed}", None, "200"), vec![param("node", "query", true), param("listeners", "query", false)])},
        "/v1/push/ack": {"post": op("A proxy's ACK or NACK of a pushed version", Some("Ack"), "204")},
        "/v1/proxies": {"get": op("Every proxy: connected, applied version, last ACK/NACK, last seen", None, "200")},
    });
    if let (Some(paths), Some(extra)) = (paths.as_object_mut(), extra_paths.as_object()) {
        for (k, v) in extra {
            paths.insert(k.clone(), v.clone());
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "strait-control", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "errors": {"type": "array", "items": {"type": "string"}}}, "required": ["error"]},
                "ApplyRequest": {"type": "object", "properties": {"files": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "content": {"type": "string"}}, "required": ["name", "content"]}}}, "required": ["files"]},
                "Registration": {"type": "object", "required": ["service", "address", "port"], "properties": {
                    "service": {"type": "string"}, "namespace": {"type": "string"}, "address": {"type": "string"}, "port": {"type": "integer"},
                    "version": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}, "capabilities": {"type": "array", "items": {"type": "string"}},
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}}, "ttlSeconds": {"type": "integer"}}},
                "Ack": {"type": "object", "required": ["node", "version", "accepted"], "properties": {"node": {"type": "string"}, "version": {"type": "integer"}, "accepted": {"type": "boolean"}, "error": {"type": "string"}}},
            }
        }
    })
}

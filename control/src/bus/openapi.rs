//! OpenAPI 3.0 `paths` for the bus's routes (merged by the control into `/openapi.json`).

use serde_json::{json, Value};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": {
            "type": "object", "required": ["error"], "properties": { "error": { "type": "string" } }
        } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string" } })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn event_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "topic", "priority", "source", "metadata", "data", "publishedAt"],
        "properties": {
            "id": { "type": "integer", "format": "int64", "description": "Unique, increasing in publication order." },
            "topic": { "type": "string" },
            "priority": priority_schema(),
            "source": { "type": "string", "nullable": true },
            "metadata": { "type": "object", "additionalProperties": { "type": "string" } },
            "data": { "description": "The payload (any JSON)." },
            "publishedAt": { "type": "string", "format": "date-time" }
        }
    })
}

fn priority_schema() -> Value {
    json!({ "type": "string", "enum": ["low", "normal", "high", "critical"], "default": "normal" })
}

fn subscription_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string" },
            "pattern": { "type": "string" },
            "filters": filters_schema(),
            "ackDeadline": { "type": "string", "example": "30s" },
            "maxDeliveries": { "type": "integer" },
            "maxInFlight": { "type": "integer" },
            "backlog": { "type": "integer", "description": "Events waiting for delivery." },
            "unacked": { "type": "integer", "description": "Events delivered and not yet acknowledged." },
            "dead": { "type": "integer", "description": "Dead letters." },
            "consumers": { "type": "integer", "description": "Connected consumers." }
        }
    })
}

fn filters_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "source": { "type": "string" },
            "metadata": { "type": "object", "additionalProperties": { "type": "string" } }
        }
    })
}

fn ids_body(required: bool) -> Value {
    json!({
        "required": required,
        "content": { "application/json": { "schema": {
            "type": "object",
            "required": if required { json!(["ids"]) } else { json!([]) },
            "properties": { "ids": { "type": "array", "items": { "type": "integer", "format": "int64" } } }
        } } }
    })
}

/// The `paths` object. Schemas are inline (no `$ref`), so the object can be merged as is;
/// errors are `{"error": "..."}`.
pub(crate) fn paths() -> Value {
    let topic = path_param(
        "topic",
        "Dot-separated segments of [A-Za-z0-9_-], 1 to 16, at most 256 characters.",
    );
    let name = path_param(
        "name",
        "Durable subscription name: 1 to 128 letters, digits, `_`, `-`, `.`.",
    );
    let bad = error_response("Invalid topic, body or parameter.");
    let missing = error_response("No such durable subscription.");
    json!({
        "/v1/events/{topic}": { "post": {
            "tags": ["events"],
            "summary": "Publish an event",
            "description": "Answers once the event is committed to disk (and so in every matching durable subscription's backlog).",
            "parameters": [topic],
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["data"], "additionalProperties": false,
                "properties": {
                    "priority": priority_schema(),
                    "source": { "type": "string", "maxLength": 256 },
                    "metadata": { "type": "object", "maxProperties": 64, "additionalProperties": { "type": "string", "maxLength": 1024 } },
                    "data": { "description": "The payload (any JSON)." }
                }
            } } } },
            "responses": {
                "201": json_response("The stored event.", event_schema()),
                "400": bad,
                "413": error_response("Body larger than 1 MiB.")
            }
        } },
        "/v1/events/{topic}/batch": { "post": {
            "tags": ["events"],
            "summary": "Publish up to 1,000 events at once, in order",
            "description": "Every event is checked before any is published; answers once all are committed (one commit for the batch on the embedded bus, acks awaited together on JetStream). On a storage failure, events before the failed one may be stored.",
            "parameters": [topic],
            "requestBody": { "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["events"], "additionalProperties": false,
                "properties": { "events": { "type": "array", "minItems": 1, "maxItems": 1000, "items": {
                    "type": "object", "required": ["data"],
                    "properties": {
                        "priority": priority_schema(),
                        "source": { "type": "string", "maxLength": 256 },
                        "metadata": { "type": "object", "additionalProperties": { "type": "string" } },
                        "data": { "description": "The payload (any JSON)." }
                    }
                } } }
            } } } },
            "responses": {
                "201": json_response("The stored events, in order.", json!({ "type": "object", "properties": {
                    "events": { "type": "array", "items": event_schema() } } })),
                "400": bad,
                "413": error_response("Body larger than 1 MiB.")
            }
        } },
        "/v1/events/{topic}/history": { "get": {
            "tags": ["events"],
            "summary": "The last events of a topic (oldest first)",
            "parameters": [topic, query_param("limit", "How many (default and most 100).", json!({ "type": "integer", "minimum": 0, "maximum": 100 }))],
            "responses": {
                "200": json_response("History.", json!({ "type": "object", "properties": {
                    "topic": { "type": "string" }, "events": { "type": "array", "items": event_schema() } } })),
                "400": bad
            }
        } },
        "/v1/subscribe": { "get": {
            "tags": ["events"],
            "summary": "Subscribe (Server-Sent Events)",
            "description": "A `text/event-stream`: `: subscribed` first, then one message per event (`id:` the event id, `data:` the event JSON; with `deliveries` for durable subscriptions), and a `: keep-alive` comment after 15 s of silence. `*` matches one segment, a final `>` one or more. Plain subscribers each get every matching event; members of a `group` share them round robin; consumers of a `durable` subscription share its backlog and must acknowledge each event. A live subscriber whose queue overflows (10,000 events or 64 MiB) is disconnected.",
            "parameters": [
                query_param("pattern", "Topic pattern, e.g. `mesh.*.applied` or `mesh.>` (required unless the durable subscription exists).", json!({ "type": "string" })),
                query_param("group", "Consumer group: each event goes to one member.", json!({ "type": "string" })),
                query_param("durable", "Durable subscription name; created on first use.", json!({ "type": "string" })),
                query_param("source", "Only events with this source.", json!({ "type": "string" })),
                { "name": "meta", "in": "query", "required": false, "style": "deepObject", "explode": true,
                  "description": "`meta.KEY=VALUE`: only events with this metadata (all must match).",
                  "schema": { "type": "object", "additionalProperties": { "type": "string" } } },
                query_param("ackDeadline", "Durable only, at creation: redelivery deadline (default 30s).", json!({ "type": "string" })),
                query_param("maxDeliveries", "Durable only, at creation: deliveries before dead-lettering (default 5).", json!({ "type": "integer" })),
                query_param("maxInFlight", "Durable only, at creation: most unacknowledged events (default 1000).", json!({ "type": "integer" }))
            ],
            "responses": {
                "200": { "description": "The event stream.", "content": { "text/event-stream": { "schema": { "type": "string" } } } },
                "400": bad,
                "409": error_response("The durable subscription exists with other settings."),
                "503": error_response("Too many subscribers.")
            }
        } },
        "/v1/subscriptions": { "get": {
            "tags": ["events"],
            "summary": "List durable subscriptions",
            "responses": { "200": json_response("Durable subscriptions.", json!({ "type": "object", "properties": {
                "subscriptions": { "type": "array", "items": subscription_schema() } } })) }
        } },
        "/v1/subscriptions/{name}": {
            "get": {
                "tags": ["events"],
                "summary": "A durable subscription",
                "parameters": [name],
                "responses": { "200": json_response("The subscription.", subscription_schema()), "404": missing }
            },
            "put": {
                "tags": ["events"],
                "summary": "Create or change a durable subscription",
                "parameters": [name],
                "requestBody": { "required": true, "content": { "application/json": { "schema": {
                    "type": "object", "required": ["pattern"], "additionalProperties": false,
                    "properties": {
                        "pattern": { "type": "string" },
                        "filters": filters_schema(),
                        "ackDeadline": { "type": "string", "default": "30s", "description": "10ms to 24h." },
                        "maxDeliveries": { "type": "integer", "default": 5, "minimum": 1, "maximum": 1000 },
                        "maxInFlight": { "type": "integer", "default": 1000, "minimum": 1, "maximum": 100000 }
                    }
                } } } },
                "responses": {
                    "200": json_response("Changed.", subscription_schema()),
                    "201": json_response("Created.", subscription_schema()),
                    "400": bad,
                    "503": error_response("Too many durable subscriptions.")
                }
            },
            "delete": {
                "tags": ["events"],
                "summary": "Delete a durable subscription with its backlog and dead letters",
                "parameters": [name],
                "responses": { "204": { "description": "Deleted." }, "404": missing }
            }
        },
        "/v1/subscriptions/{name}/ack": { "post": {
            "tags": ["events"],
            "summary": "Acknowledge delivered events",
            "description": "Answers once the acknowledgements are committed. Unknown ids are ignored.",
            "parameters": [name],
            "requestBody": ids_body(true),
            "responses": {
                "200": json_response("How many were acknowledged.", json!({ "type": "object", "properties": { "acked": { "type": "integer" } } })),
                "400": bad,
                "404": missing
            }
        } },
        "/v1/subscriptions/{name}/dead-letters": { "get": {
            "tags": ["events"],
            "summary": "Dead letters (events not acknowledged after maxDeliveries)",
            "parameters": [name, query_param("limit", "How many (default 100, most 10000).", json!({ "type": "integer" }))],
            "responses": {
                "200": json_response("Dead letters, oldest event first.", json!({ "type": "object", "properties": {
                    "deadLetters": { "type": "array", "items": { "allOf": [event_schema(), { "type": "object", "properties": {
                        "deliveries": { "type": "integer" }, "deadAt": { "type": "string", "format": "date-time" } } }] } } } })),
                "404": missing
            }
        } },
        "/v1/subscriptions/{name}/dead-letters/replay": { "post": {
            "tags": ["events"],
            "summary": "Requeue dead letters (all when `ids` is omitted), deliveries reset",
            "parameters": [name],
            "requestBody": ids_body(false),
            "responses": {
                "200": json_response("How many were requeued.", json!({ "type": "object", "properties": { "replayed": { "type": "integer" } } })),
                "400": bad,
                "404": missing
            }
        } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_operations_with_responses() {
        let paths = paths();
        let paths = paths.as_object().expect("object");
        assert_eq!(paths.len(), 9);
        for (path, item) in paths {
            assert!(path.starts_with("/v1/"), "{path}");
            for (method, op) in item.as_object().expect("item") {
                assert!(op["responses"].is_object(), "{method} {path}");
                assert!(op["summary"].is_string(), "{method} {path}");
            }
        }
        assert!(!paths.values().any(|v| v.to_string().contains("$ref")));
    }
}
